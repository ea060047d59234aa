"""Per-jump total-energy error of models, exactly as the hybrid integrator makes it, on held-out xTB data.

    python benchmarks/bench_jump_energy.py --model gfn2-k8 outputs/ew/k8_w50 --molecules cytosine 1-propanol
    python benchmarks/bench_jump_energy.py --model outputs/mj/j4 --rollout 1000 --reversal-correction 0.25

One macro-step of ``jkstep.kstep`` (the learned jump, its one xTB corrector call, the angular
momentum restored) from ``--windows`` frames of each molecule's ``production`` run, ``--stride``
base steps apart, with guards that accept every jump; the error is the total energy (xTB
potential + kinetic) after the macro-step minus before it, in meV. Then ``--rollout`` macro-steps
from the first frame with the same loose guards: the same figure on the model's own states, and
how far the total energy wandered (largest |E − E_0|), and the walk ratio: the RMS change of the
total energy over ``--lag`` macro-steps divided by √lag × the RMS change over one (1 for errors
that are independent from jump to jump, a random walk; below 1 when they cancel, as Verlet's do;
above 1 when they pile up, a drift). Verlet at k·dt (the ballistic jump with the
same corrector) is shown for scale: its per-step energy error is larger but oscillates about the
shadow energy and stays bounded, while a model's errors are nearly independent from jump to jump
and add up as a random walk, which the excursion guard (``Guards.max_energy_drift``, 0.05 eV)
holds in by rejecting jumps. That walk is what the extra xTB calls of long runs pay for.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import jkstep
from jkstep.data.generate import read_splits
from jkstep.data.store import TrajectoryStore
from jkstep.integrate import kinetic_energy
from jkstep.kstep import Guards, ballistic_jump, kstep, kstep_integrator

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import existing_dir, positive_int  # noqa: E402

#: accept every jump (nothing retried, no fallback): the raw error of one macro-step
LOOSE = Guards(max_energy_drift=None, max_energy_rise=10.0, max_kinetic_rise=50.0, max_attempts=1)


def store_molecule(store: TrajectoryStore) -> jkstep.Molecule:
    """The molecule of a trajectory store (its first frame's positions, the stored masses, charge, spin)."""
    meta = store.meta
    return jkstep.Molecule(numbers=np.asarray(meta["numbers"]), positions=np.asarray(store.frame(0)["positions"]),
                           masses=np.asarray(meta["masses"], np.float64), charge=int(meta.get("charge", 0)),
                           spin=int(meta.get("spin", 0)))


def total_energy(state, masses) -> float:
    return float(state.energy + kinetic_energy(state.velocities, masses))


def measure(init_fn, apply_fn, frames, masses, rollout: int) -> dict:
    """Per-macro-step total-energy errors (eV) from each frame, and along a rollout from the first."""
    step = jax.jit(apply_fn)
    errors = []
    for x, v in frames:
        s0 = init_fn(jnp.asarray(x), jnp.asarray(v))
        errors.append(total_energy(step(s0), masses) - total_energy(s0, masses))
    s = init_fn(jnp.asarray(frames[0][0]), jnp.asarray(frames[0][1]))
    energies = [total_energy(s, masses)]
    for _ in range(rollout):
        s = step(s)
        energies.append(total_energy(s, masses))
    energies = np.asarray(energies)
    return {"off": np.asarray(errors), "on": np.diff(energies), "wander": np.max(np.abs(energies - energies[0])),
            "energies": energies}


def walk_ratio(energies: np.ndarray, lag: int) -> float:
    """RMS of E_{n+lag} − E_n over √lag × RMS of E_{n+1} − E_n (nan if the rollout is not longer than lag)."""
    if len(energies) <= lag:
        return float("nan")
    one = np.sqrt(np.mean(np.diff(energies) ** 2))
    return float(np.sqrt(np.mean((energies[lag:] - energies[:-lag]) ** 2)) / (np.sqrt(lag) * one))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", required=True, help="shipped names or checkpoint directories")
    ap.add_argument("--data", type=existing_dir, default="data/qm", help="trajectory root")
    ap.add_argument("--splits", default="data/qm_splits.json", help="splits file (its val molecules are the default)")
    ap.add_argument("--molecules", nargs="+", default=None, help="default: the validation molecules")
    ap.add_argument("--windows", type=positive_int, default=60, help="starting frames per molecule")
    ap.add_argument("--stride", type=positive_int, default=300, help="base steps between starting frames")
    ap.add_argument("--rollout", type=int, default=250, help="macro-steps of the rollout (0: none)")
    ap.add_argument("--lag", type=positive_int, default=25, help="macro-steps of the walk ratio")
    ap.add_argument("--reversal-correction", type=float, default=None,
                    help="α of the models' time-reversal correction (default: the integrator's, 0.5; 0 = the bare jump)")
    args = ap.parse_args()
    molecules = args.molecules or read_splits(args.splits)["val"]
    options = {} if args.reversal_correction is None else {"reversal_correction": args.reversal_correction}
    bundles = {name: jkstep.load_pretrained(name) for name in args.model}
    jumps = {(b.k, b.dt) for b in bundles.values()}
    if len(jumps) > 1:
        raise SystemExit(f"the models jump different lengths {sorted(jumps)}; compare models of one k and dt")
    k, dt = jumps.pop()
    print(f"per-macro-step total-energy error, meV (k = {k}, {k * dt:g} fs jumps); "
          f"rollout: {args.rollout} macro-steps, largest |E - E0| in meV, walk ratio over {args.lag} macro-steps")
    print(f"{'molecule':<14} {'contender':<28} {'mean':>8} {'rms':>8} {'rollout mean':>13} {'rollout rms':>12} "
          f"{'wander':>8} {'walk':>6}")
    for name in molecules:
        store = TrajectoryStore(os.path.join(args.data, name, "production"))
        if not store.exists:
            print(f"{name}: no production run under {args.data}, skipped")
            continue
        meta = store.meta
        mol = store_molecule(store)
        pot = jkstep.xtb_potential(mol, method=meta.get("method", "GFN2-xTB"))
        spacing = int(meta["frame_spacing"])
        starts = [i // spacing for i in range(0, args.windows * args.stride, args.stride) if i // spacing < store.n_frames]
        frames = [(f["positions"], f["velocities"]) for f in (store.frame(i) for i in starts)]
        masses = jnp.asarray(mol.masses)
        contenders = {f"verlet {k * dt:g} fs": kstep_integrator(ballistic_jump(mol.masses, k, dt), pot, mol.numbers,
                                                                  mol.masses, k, dt, guards=LOOSE)}
        contenders.update({label: kstep(b, pot, mol, guards=LOOSE, **options) for label, b in bundles.items()})
        for label, (init_fn, apply_fn) in contenders.items():
            r = measure(init_fn, apply_fn, frames, masses, args.rollout)
            on = r["on"] if len(r["on"]) else np.zeros(1)
            print(f"{name:<14} {label[-28:]:<28} {1e3 * r['off'].mean():>+8.3f} {1e3 * np.sqrt(np.mean(r['off'] ** 2)):>8.3f} "
                  f"{1e3 * on.mean():>+13.3f} {1e3 * np.sqrt(np.mean(on ** 2)):>12.3f} {1e3 * r['wander']:>8.1f} "
                  f"{walk_ratio(r['energies'], args.lag):>6.2f}", flush=True)


if __name__ == "__main__":
    main()
