"""What uncertainty-triggered escalation buys, on the validation molecules.

    .venv/bin/python benchmarks/bench_escalation.py --model PATH_OR_NAME [--molecules val]
        [--ps 1] [--replicas 2] [--max-force-error 0.4] [--rescale]

For each molecule: one Langevin-thermalised state with ``--replicas`` same-energy velocity sets
(as ``jkstep evaluate`` makes them), then NVE hybrid runs of ``--ps`` from those states (the
replicas batched under vmap), once with the default guards and once with escalation on
(``Guards.max_force_error``: the RMS difference, eV/Å, between the jump's own force estimate and
the forces of the corrector's xTB call; above it the macro-step skips its retries and takes k
real Verlet steps). Printed per molecule and setting: xTB calls, calls per jump, accepted /
rejected attempts / fallback macro-steps / escalations, failed (blown-up) replicas, final total
energy error |ΔE| (kJ/mol, mean over replicas) and mean kinetic temperature. ``--rescale``
runs both settings with the FlashMD-style energy rescale on (reported as such).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep import units  # noqa: E402
from jkstep.evaluate.compare import EvalConfig, thermalised_starts  # noqa: E402
from jkstep.integrate import kinetic_energy  # noqa: E402
from jkstep.kstep import Guards  # noqa: E402
from jkstep.rollout import runner  # noqa: E402

from bench_kstep import read_molecules  # noqa: E402

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int  # noqa: E402


def run(bundle, mol, starts, guards, rescale, n_macro, fallback_steps=None):
    pot = jkstep.xtb_potential(mol)
    init, apply = jkstep.kstep(bundle, pot, mol, guards=guards, energy_rescale=rescale,
                               fallback_steps=fallback_steps)
    state = jax.vmap(init)(*starts)
    state, frames = runner(apply, n_macro, 1, batched=True)(state)
    ke = jax.vmap(lambda v: kinetic_energy(v, mol.masses))(frames.velocities.reshape(-1, len(mol), 3))
    ndf = 3 * len(mol) - 6
    return {"calls": int(np.sum(state.force_calls)), "host_calls": pot.calls,
            "accepted": int(np.sum(state.accepted)), "rejected": int(np.sum(state.rejected)),
            "fallbacks": int(np.sum(state.fallbacks)), "escalations": int(np.sum(state.escalations)),
            "failed": int(np.sum(state.failed)),
            "abs_de_kj_mol": float(np.mean(np.abs(state.energy + jax.vmap(
                lambda v: kinetic_energy(v, mol.masses))(state.velocities) - state.reference_energy))) / units.KJ_MOL,
            "mean_t_k": float(np.mean(ke)) * 2.0 / (ndf * units.KB)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gfn2-k8")
    p.add_argument("--molecules", default="val")
    p.add_argument("--ps", type=positive_float, default=1.0)
    p.add_argument("--replicas", type=positive_int, default=2)
    p.add_argument("--max-force-error", type=positive_float, default=0.4)
    p.add_argument("--rescale", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fallback-steps", type=positive_int, default=None,
                   help="Verlet steps per fallback macro-step (default: steps of at most 0.5 fs)")
    args = p.parse_args()
    bundle = jkstep.load_pretrained(args.model)
    n_macro = int(round(args.ps * 1000 / (bundle.k * bundle.dt)))
    print(f"model {args.model}: k = {bundle.k}, dt = {bundle.dt} fs; {args.replicas} replicas x {args.ps} ps "
          f"({n_macro} macro-steps each); energy rescale {'on' if args.rescale else 'off'}")
    print(f"{'molecule':18s} {'setting':12s} {'calls':>7s} {'/jump':>6s} {'acc':>6s} {'rej':>6s} {'fallb':>6s} "
          f"{'escal':>6s} {'failed':>6s} {'|dE| kJ/mol':>11s} {'T K':>6s}")
    for name, smiles in read_molecules(args.molecules):
        mol = jkstep.Molecule.from_smiles(smiles, seed=0)
        config = EvalConfig(k=bundle.k, dt=bundle.dt, n_replicas=args.replicas, seed=args.seed)
        starts = thermalised_starts(mol, jkstep.xtb_potential(mol), config)
        for label, guards in (("default", Guards()), ("escalation", Guards(max_force_error=args.max_force_error))):
            r = run(bundle, mol, starts, guards, args.rescale, n_macro, args.fallback_steps)
            per_jump = r["calls"] / (args.replicas * n_macro)
            print(f"{name:18s} {label:12s} {r['calls']:7d} {per_jump:6.2f} {r['accepted']:6d} {r['rejected']:6d} "
                  f"{r['fallbacks']:6d} {r['escalations']:6d} {r['failed']:6d} {r['abs_de_kj_mol']:11.2f} "
                  f"{r['mean_t_k']:6.1f}", flush=True)
    print(f"equal-cost baseline: Verlet at k·dt makes 1.00 call per jump; the 0.25 fs reference {bundle.k}.")


if __name__ == "__main__":
    main()
