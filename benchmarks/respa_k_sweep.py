"""RESPA over k, NVE and NVT: MMFF94 as the fast force (or, in NVT, ``--fast NAME``).

For each molecule: one Langevin thermalisation at 300 K and 4 same-energy replicas
(``jkstep.evaluate.compare.thermalised_starts``), then

* NVE, every k of ``--ks``: ``mmff_respa`` (k inner steps of 0.25 fs per xTB call) and Verlet at
  k·dt (``verlet_kdt``, the same calls), against one 0.25 fs Verlet reference (the k sweep of
  ``evaluate_ks``): energy fluctuation, drift, mean temperature against the reference's, blow-ups;
* NVT, every k of ``--nvt-ks``: RESPA with the Langevin thermostat around the macro-step
  ("macro") and inside the inner loop ("inner"), friction 0.01 /fs, target 300 K, against a 0.5 fs
  Langevin xTB reference from the same starts: mean kinetic temperature (3N degrees of freedom)
  against the target, bond/angle/dihedral Jensen–Shannon divergence against that reference
  (contender's first replica half vs the reference's second half; the floor is the reference
  against itself).

``--fast NAME|PATH`` puts a learned fast force in the NVT runs instead of MMFF94;
``--hydrogen-mass 3.024`` runs them with repartitioned hydrogen masses
(``Molecule.repartition_hydrogen_mass``: the same canonical distribution of positions, slower X–H
vibrations; start velocities scaled by sqrt(m/m'), temperatures from the repartitioned masses) while
the Langevin reference keeps the true ones; ``--mollify`` runs them mollified on the X–H bonds
(``jkstep.respa.xh_mollifier``); ``--fast-every N`` runs a learned fast force in three levels
(MMFF94 every inner step); ``--ks`` with no value skips the NVE sweep. Prints one
table per ensemble and writes everything as JSON (``--out``).

    python benchmarks/respa_k_sweep.py --molecules 1-propanol cytosine --ps 2 --out outputs/respa_k_sweep.json
    python benchmarks/respa_k_sweep.py --molecules cysteine --ks --nvt-ks 32 --fast gfn2-fast --out outputs/k32.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int, qm_smiles  # noqa: E402


def nvt_runs(molecule, factory, config, starts, ks, terms, fast="mmff", hydrogen_mass=None, mollify=False,
             fast_every=1):
    import jax

    from jkstep import integrate
    from jkstep.evaluate.compare import run_contender
    from jkstep.md import three_levels
    from jkstep.model.potential import learned_potential
    from jkstep.potentials.mmff import mmff_potential
    from jkstep.respa import respa, xh_mollifier

    masses = np.asarray(molecule.masses)
    respa_mol = molecule.repartition_hydrogen_mass(hydrogen_mass) if hydrogen_mass else molecule
    respa_masses = respa_mol.masses
    mollifier = xh_mollifier(respa_mol) if mollify else None
    keys = np.stack([np.asarray(jax.random.PRNGKey(1000 + r)) for r in range(config.n_replicas)])
    respa_starts = (starts[0], starts[1] * np.sqrt(masses / respa_masses)[:, None], keys)
    starts = (*starts, keys)

    def run(build, cfg, per_frame, starts=starts):
        pot = factory()
        init, apply = build(pot)
        return run_contender(init, apply, per_frame, starts, cfg, lambda: pot.calls)

    mm = mmff_potential(molecule) if fast == "mmff" else learned_potential(fast, molecule)
    split = three_levels(respa_mol, mm, fast_every)
    out = {}
    for k in ks:
        cfg = dataclasses.replace(config, k=k)
        # Langevin reference at 0.5 fs, frames every k·dt (k·0.25 fs = k/2 steps of 0.5 fs)
        ref_cfg = dataclasses.replace(config, k=k, dt=config.dt)
        ref = run(lambda pot: integrate.langevin(pot, masses, 0.5, config.temperature, config.friction),
                  ref_cfg, k // 2)
        row = {"langevin_0.5fs": summarise(ref, ref, masses, terms, k * config.dt, config.temperature)}
        for where in ("macro", "inner"):
            r = run(lambda pot, w=where: respa(mm, pot, respa_masses, k, config.dt, ensemble="nvt",
                                               temperature=config.temperature, friction=config.friction,
                                               thermostat=w, mollifier=mollifier, **split), cfg, 1, respa_starts)
            row[where] = summarise(r, ref, respa_masses, terms, k * config.dt, config.temperature)
        out[k] = row
    return out


def summarise(run, ref, masses, terms, frame_fs, target):
    from jkstep import analysis
    from jkstep.evaluate.compare import distribution_metrics

    fr = run["frames"]
    failed = bool(np.asarray(fr.failed).any())
    t = analysis.temperature(fr.velocities, masses, dof=3 * len(masses))
    res = {"xtb_calls": int(run["xtb_calls"]), "blew_up": failed or not np.isfinite(t).all(),
           "mean_temperature_k": float(np.mean(t)), "temperature_error_pct": float(100 * (np.mean(t) / target - 1)),
           "fallbacks": int(np.sum(getattr(run["state"], "fallbacks", 0)))}
    if not res["blew_up"]:
        dist, _ = distribution_metrics(fr, ref["frames"], masses, terms, frame_fs)
        res.update({key: dist[key] for key in ("bond_js", "angle_js", "dihedral_js")})
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", nargs="+", default=["1-propanol", "cytosine"],
                        help="names in data/qm_molecules.smi (validation molecules by default)")
    parser.add_argument("--ks", type=positive_int, nargs="*", default=[8, 12, 16, 24, 32])
    parser.add_argument("--nvt-ks", type=positive_int, nargs="*", default=[16, 32])
    parser.add_argument("--ps", type=positive_float, default=2.0, help="length of every replica, ps (2)")
    parser.add_argument("--replicas", type=positive_int, default=4)
    parser.add_argument("--fast", default="mmff", help="fast force of the NVT runs: mmff (default), a name or a path")
    parser.add_argument("--hydrogen-mass", type=positive_float, default=None,
                        help="NVT RESPA with hydrogen mass repartitioning to this H mass, amu (e.g. 3.024)")
    parser.add_argument("--mollify", action="store_true", help="NVT RESPA mollified on the X–H bonds")
    parser.add_argument("--fast-every", type=positive_int, default=1,
                        help="NVT RESPA with a learned --fast in three levels: MMFF94 every inner step, the rest "
                             "of the fast force as kicks every N inner steps (default 1)")
    parser.add_argument("--out", default="outputs/respa_k_sweep.json")
    args = parser.parse_args(argv)
    if args.fast_every > 1 and args.fast == "mmff":
        parser.error("--fast-every splits a learned --fast; MMFF94 alone has nothing to split")
    if any(k % 2 for k in args.nvt_ks):
        parser.error("--nvt-ks must be even (the 0.5 fs Langevin reference is read every k/2 steps)")

    import jkstep
    from jkstep.evaluate import metrics
    from jkstep.evaluate.compare import EvalConfig, evaluate_ks, thermalised_starts

    smiles = qm_smiles(parser, args.molecules)
    results = {}
    for name in args.molecules:
        mol = jkstep.Molecule.from_smiles(smiles[name], seed=0)
        factory = lambda: jkstep.xtb_potential(mol)  # noqa: E731
        config = EvalConfig(k=8, ps=args.ps, n_replicas=args.replicas)
        nve = evaluate_ks(mol, factory, config, {k: None for k in args.ks}) if args.ks else {}
        starts = thermalised_starts(mol, factory(), config)
        terms = metrics.internal_coordinates(mol.numbers, starts[0][0], mol.mol_block)
        nvt = nvt_runs(mol, factory, config, starts, args.nvt_ks, terms, args.fast,
                       args.hydrogen_mass, args.mollify, args.fast_every) if args.nvt_ks else {}
        results[name] = {"nve": {k: {"reference_temperature_k": s["contenders"]["reference"]["mean_temperature_k"],
                                     "verlet_kdt": s["contenders"]["verlet_kdt"],
                                     "mmff_respa": s["contenders"]["mmff_respa"]} for k, s in nve.items()},
                         "nvt": nvt, "nvt_fast": args.fast, "nvt_fast_every": args.fast_every,
                         "nvt_hydrogen_mass": args.hydrogen_mass, "nvt_mollified": args.mollify}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w") as fh:
            json.dump(results, fh, indent=1)
        os.replace(args.out + ".tmp", args.out)
    print_tables(results)
    return 0


def fmt(x, spec=".3g"):
    return "—" if x is None else format(x, spec)


def print_tables(results):
    print("NVE (E std kJ/mol / drift kJ/mol/ps / T vs reference %): mmff_respa | verlet_kdt")
    print("| molecule | k | mmff_respa E std | drift | T % | blew up | fallbacks | Verlet k·dt E std | drift | T % | blew up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for k, row in r["nve"].items():
            t_ref = row["reference_temperature_k"]
            cells = []
            for c in ("mmff_respa", "verlet_kdt"):
                s = row[c] or {}
                t = s.get("mean_temperature_k")
                cells += [fmt(s.get("energy_std_kj_mol")), fmt(s.get("drift_kj_mol_ps")),
                          fmt(None if t is None else 100 * (t / t_ref - 1), "+.1f"), str(s.get("blew_up"))]
                if c == "mmff_respa":
                    cells.append(str(s.get("fallbacks")))
            print(f"| {name} | {k} | " + " | ".join(cells) + " |")
    print("\nNVT at 300 K (T error % of the target; bond / angle / dihedral JS against a 0.5 fs Langevin reference)")
    print("| molecule | k | run | T % | bond JS | angle JS | dihedral JS | blew up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for k, row in r["nvt"].items():
            for run, s in row.items():
                print(f"| {name} | {k} | {run} | {fmt(s['temperature_error_pct'], '+.1f')} | {fmt(s.get('bond_js'))} | "
                      f"{fmt(s.get('angle_js'))} | {fmt(s.get('dihedral_js'))} | {s['blew_up']} |")


if __name__ == "__main__":
    sys.exit(main())
