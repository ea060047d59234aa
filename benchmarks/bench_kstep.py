"""The hybrid against the equal-cost baseline, measured in one run per molecule.

    .venv/bin/python benchmarks/bench_kstep.py --model PATH_OR_NAME [--molecules test] [--ps 5]
        [--replicas 4] [--timing-steps 50] [--repeats 5] [--batch 64]
    .venv/bin/python benchmarks/bench_kstep.py --model gfn2-k8 gfn2-k16 --ks 4 8 16 32 \
        [--molecules test] --ps 1 --replicas 4 [--json sweep.json]   # the k sweep

Prints, for each molecule (default: the test split of data/qm_splits.json):

1. the accuracy/cost table of ``jkstep evaluate`` (reference Verlet 0.25 fs, Verlet at k·dt, the
   zero-network corrector, the model, and Verlet at the time step that makes as many xTB calls
   as the model did, next to the noise floor);
2. wall clock per simulated ps of the hybrid and of Verlet at 0.25 fs on the same molecule
   (``--repeats`` alternating pairs of runs of ``--timing-steps`` macro-steps, after a warm-up:
   the medians and the median of the pairs' ratios, with their range), and the
   cost split: the jump alone, one xTB call after a jump, one xTB call after a single 0.25 fs
   step (the post-jump SCF starts from a poorer guess and costs more: it is counted);
3. the throughput of a vmap'd hybrid rollout of ``--batch`` replicas with the xTB batch spread
   over ``--workers`` threads (default 1 and 2).

With ``--ks`` it runs the k sweep instead (``jkstep.evaluate.compare.evaluate_ks``): per molecule
one thermalisation and one reference run shared by every k, then for each k Verlet at k·dt, the
zero-network corrector and the model of that k where one is given, a row per k. At k ≥ 16
plain Verlet at k·dt is expected to blow up: that is reported, not hidden.

Numbers are what this machine measured; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep.evaluate.compare import EvalConfig, evaluate, evaluate_ks  # noqa: E402
from jkstep.kstep import kstep_integrator, model_jump  # noqa: E402
from jkstep.rollout import runner  # noqa: E402

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int  # noqa: E402

KEYS = ("xtb_calls", "blew_up", "drift_kj_mol_ps", "energy_std_kj_mol", "mean_temperature_k", "bond_js",
        "angle_js", "dihedral_js", "spectrum_overlap", "xh_band_shift_cm1", "flip_rate_ratio")


def read_molecules(which: str) -> list[tuple[str, str]]:
    """(name, SMILES): a split of data/qm_splits.json, or a comma-separated list of names of
    data/qm_molecules.smi and SMILES (a SMILES is its own name)."""
    smiles = {}
    if os.path.exists("data/qm_molecules.smi"):
        for line in open("data/qm_molecules.smi"):
            if line.strip() and not line.startswith("#"):
                s, name = line.split()[:2]
                smiles[name] = s
    if which in ("train", "val", "test"):
        return [(n, smiles[n]) for n in json.load(open("data/qm_splits.json"))[which]]
    return [(s, smiles.get(s, s)) for s in which.split(",")]


def fmt(x):
    return "null" if x is None else str(x) if isinstance(x, bool) else f"{x:.4g}"


def accuracy_table(name, smiles, bundle, args):
    mol = jkstep.Molecule.from_smiles(smiles, seed=0)
    config = EvalConfig(ps=args.ps, n_replicas=args.replicas, seed=args.seed, fallback_steps=args.fallback_steps)
    r = evaluate(mol, lambda: jkstep.xtb_potential(mol), config, bundle=bundle)
    names = [n for n, c in r["contenders"].items() if c is not None]
    print(f"\n{name} ({len(mol)} atoms), k = {r['k']}, {r['n_replicas']} replicas x {r['simulated_fs'] / 1000} ps")
    w = 2 + max(len(n) for n in names + ["noise floor"])
    print(f"{'':20s}" + "".join(f"{n:>{w}s}" for n in names) + f"{'noise floor':>{w}s}")
    for key in KEYS:
        floor = fmt(r["noise_floor"].get(key)) if key in r["noise_floor"] else ""
        print(f"{key:20s}" + "".join(f"{fmt(r['contenders'][n].get(key)):>{w}s}" for n in names) + f"{floor:>{w}s}")
    print("one jump: " + ", ".join(f"{k} {fmt(v)}" for k, v in (r["one_jump"] or {}).items()))
    return mol, r


def k_sweep(name, smiles, bundles, names_by_k, args) -> dict:
    """The k sweep on one molecule (``evaluate_ks``): one reference run and starting states shared
    by every k; per k Verlet at k·dt, the zero-network corrector and the model of that k where
    ``--model`` gives one (else kstep is null)."""
    mol = jkstep.Molecule.from_smiles(smiles, seed=0)
    keys = ("xtb_calls", "mean_temperature_k", "energy_std_kj_mol", "bond_js", "angle_js", "dihedral_js",
            "spectrum_overlap", "xh_band_shift_cm1")
    models = {k: bundles.get(k) for k in args.ks}
    config = EvalConfig(ps=args.ps, n_replicas=args.replicas, seed=args.seed, fallback_steps=args.fallback_steps,
                        energy_rescale=args.energy_rescale)
    t0 = time.perf_counter()
    results = evaluate_ks(mol, lambda: jkstep.xtb_potential(mol), config, models)
    ref = results[args.ks[0]]["contenders"]["reference"]
    print(f"\n{name} ({len(mol)} atoms), {args.replicas} replicas x {args.ps} ps per k, "
          f"{time.perf_counter() - t0:.0f} s; "
          f"reference (Verlet 0.25 fs, shared by every k): {ref['xtb_calls']} xTB calls, "
          f"mean T {fmt(ref['mean_temperature_k'])} K, E std {fmt(ref['energy_std_kj_mol'])} kJ/mol")
    print("columns: verlet_kdt / corrector_only / kstep / verlet_equal_cost (where a model runs: Verlet at the "
          "time step that makes kstep's calls)" + (" / kstep_rescaled" if args.energy_rescale else "")
          + "; floor = the reference's replicas against each other at that frame spacing")
    print(f"{'k':>3} {'model':>10} " + " ".join(f"{key:>34}" for key in keys))
    for k in args.ks:
        r = results[k]
        names = ["verlet_kdt", "corrector_only", "kstep"]
        names += [n for n in ("verlet_equal_cost", "kstep_rescaled") if r["contenders"].get(n) is not None]
        cells = []
        for key in keys:
            cell = "/".join(fmt((r["contenders"][n] or {}).get(key)) for n in names)
            if key in r["noise_floor"]:
                cell += f" (floor {fmt(r['noise_floor'][key])})"
            cells.append(cell)
        print(f"{k:>3} {names_by_k.get(k, 'none'):>10} " + " ".join(f"{c:>34}" for c in cells), flush=True)
    return {str(k): r for k, r in results.items()}


def timing(mol, bundle, args):
    """Wall clock per simulated ps: hybrid vs Verlet at 0.25 fs, and the cost split (ms)."""
    k, dt = bundle.k, bundle.dt
    v0 = mol.thermal_velocities(300.0, args.seed)

    def compiled(init, apply, n_apply):
        """A timed run (from one fixed state every time) and the final state of the warm-up run."""
        run, state = runner(apply, 1, n_apply), init(mol.positions, v0)
        end = jax.block_until_ready(run(state)[0])  # compile and warm up

        def timed() -> float:
            t = time.perf_counter()
            jax.block_until_ready(run(state)[0].positions)
            return time.perf_counter() - t
        return timed, end

    pot = jkstep.xtb_potential(mol)
    hybrid_run, end = compiled(*kstep_integrator(model_jump(bundle, mol.numbers, mol.masses), pot, mol.numbers,
                                                 mol.masses, k, dt, fallback_steps=args.fallback_steps),
                               args.timing_steps)
    verlet_run, _ = compiled(*jkstep.verlet(jkstep.xtb_potential(mol), mol.masses, dt), args.timing_steps * k)
    # hybrid and Verlet alternate, so a slow spell of a shared machine slows both sides of a pair
    pairs = [(hybrid_run(), verlet_run()) for _ in range(args.repeats)]
    per_ps = 1000.0 / (args.timing_steps * k * dt)
    hybrid = statistics.median(h for h, _ in pairs) * per_ps
    verlet = statistics.median(v for _, v in pairs) * per_ps
    ratios = sorted(v / h for h, v in pairs)
    print(f"wall clock per simulated ps: hybrid {hybrid:.2f} s, Verlet {dt} fs {verlet:.2f} s "
          f"-> {statistics.median(ratios):.2f}x (median of {args.repeats} alternating pairs, "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f}x; each hybrid run: {args.timing_steps} macro-steps, "
          f"{int(end.force_calls)} xTB calls, {int(end.accepted)} jumps accepted, {int(end.fallbacks)} "
          f"fallbacks; Verlet: {args.timing_steps * k} calls)")

    jump = jax.jit(model_jump(bundle, mol.numbers, mol.masses))
    f0 = pot(mol.positions)[1]
    x, v = jax.numpy.asarray(mol.positions), jax.numpy.asarray(v0)
    jax.block_until_ready(jump(x, v, f0))
    t = time.perf_counter()
    for _ in range(50):
        xj, vj, _ = jax.block_until_ready(jump(x, v, f0))
    t_jump = (time.perf_counter() - t) / 50 * 1e3

    def xtb_ms(points):
        p = jkstep.xtb_potential(mol)
        p(mol.positions)
        t = time.perf_counter()
        for q in points:
            p(q)
        return (time.perf_counter() - t) / len(points) * 1e3

    small = [mol.positions + v0 * dt * (i + 1) for i in range(20)]
    jumped = [mol.positions + v0 * k * dt * (i + 1) for i in range(20)]
    t_step, t_after_jump = xtb_ms(small), xtb_ms(jumped)
    print(f"cost per macro-step: jump {t_jump:.3f} ms (standalone call), xTB after a 0.25 fs step "
          f"{t_step:.2f} ms, after a {k * dt} fs jump {t_after_jump:.2f} ms; ML overhead "
          f"{t_jump / t_after_jump:.1%} of an xTB call; ceiling {k * t_step / (t_after_jump + t_jump):.2f}x")


def throughput(mol, bundle, args):
    k, dt = bundle.k, bundle.dt
    v0 = np.stack([mol.thermal_velocities(300.0, s) for s in range(args.batch)])
    x0 = np.broadcast_to(mol.positions, v0.shape)
    for workers in args.workers:
        pot = jkstep.xtb_potential(mol, workers=workers)
        init, apply = kstep_integrator(model_jump(bundle, mol.numbers, mol.masses), pot, mol.numbers,
                                       mol.masses, k, dt, fallback_steps=args.fallback_steps)
        states = jax.vmap(init)(x0, v0)
        run = runner(apply, 1, 5, batched=True)
        jax.block_until_ready(run(states)[0].positions)
        calls = pot.calls
        t = time.perf_counter()
        jax.block_until_ready(run(states)[0].positions)
        wall = time.perf_counter() - t
        print(f"batched rollout, {args.batch} replicas, {workers} xTB thread(s): "
              f"{args.batch * 5 * k * dt / 1000 / wall:.3f} replica-ps per s, {pot.calls - calls} xTB calls")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", nargs="+", required=True,
                    help="model(s): a shipped name or checkpoint directory; with --ks, one per k at most")
    ap.add_argument("--ks", type=positive_int, nargs="+", default=None,
                    help="k sweep instead of the full report: one evaluation per k and molecule")
    ap.add_argument("--energy-rescale", action="store_true", help="with --ks: also kstep_rescaled")
    ap.add_argument("--json", default=None, help="with --ks: write every summary here ({molecule: {k: summary}})")
    ap.add_argument("--molecules", default="test",
                    help="train|val|test, or comma-separated names (data/qm_molecules.smi) or SMILES")
    ap.add_argument("--ps", type=positive_float, default=5.0)
    ap.add_argument("--replicas", type=positive_int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fallback-steps", type=positive_int, default=None,
                    help="Verlet steps per fallback macro-step (default: steps of at most 0.5 fs; "
                         "8 reproduces the figures measured before that default, at k = 8)")
    ap.add_argument("--timing-steps", type=positive_int, default=50)
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--batch", type=positive_int, default=64)
    ap.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2], help="xTB threads for the batch")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true", help="only the batched throughput")
    args = ap.parse_args()
    bundles = [jkstep.load_pretrained(m) for m in args.model]
    if args.ks:
        by_k = {b.k: b for b in bundles}
        out = {}
        for name, smiles in read_molecules(args.molecules):
            out[name] = k_sweep(name, smiles, by_k, {b.k: m for b, m in zip(bundles, args.model)}, args)
            if args.json:
                with open(args.json + ".tmp", "w") as f:
                    json.dump(out, f, indent=1)
                os.replace(args.json + ".tmp", args.json)
        return
    bundle = bundles[0]
    for name, smiles in read_molecules(args.molecules):
        mol = jkstep.Molecule.from_smiles(smiles, seed=0)
        if not args.skip_accuracy:
            accuracy_table(name, smiles, bundle, args)
        if not args.skip_timing:
            timing(mol, bundle, args)
    throughput(jkstep.Molecule.from_smiles(read_molecules(args.molecules)[0][1], seed=0), bundle, args)


if __name__ == "__main__":
    main()
