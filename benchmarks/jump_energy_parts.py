"""Where a model's per-jump energy error sits: potential against kinetic, exact against the training loss's estimate.

    python benchmarks/jump_energy_parts.py cytosine gfn2-k8

30 windows of the molecule's xTB trajectory (data/qm/NAME/production, every 600 base steps), one
macro-step of the hybrid integrator each (every jump accepted), with the reversal correction
α = 0.5 (default) and 0. Columns, rms and mean over the windows, meV: the exact total-energy
error of the macro-step; the data's own energy change over the same 2 fs (the 0.25 fs reference's
error, for scale); the potential-energy error at the jump's positions, exact (an xTB call at the
stored frame) and to first order (−F·δx, as the training loss has it); the kinetic-energy error
after the corrector kick, with the real kick and with the stored force in its place (as in training).
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jkstep
from jkstep import units
from jkstep.data.store import TrajectoryStore
from jkstep.integrate import kinetic_energy
from jkstep.kstep import kstep

sys.path.insert(0, os.path.dirname(__file__))
from bench_jump_energy import LOOSE, store_molecule  # noqa: E402

WINDOWS = range(0, 18000, 600)   # start frames (base steps) of the 30 windows


def energy_parts(store: TrajectoryStore, bundle, alpha: float) -> np.ndarray:
    """Per window, eV: exact dE of the macro-step, the data's dE, exact and first-order PE error,
    KE error with the real kick and with the stored force's kick."""
    mol = store_molecule(store)
    pot = jkstep.xtb_potential(mol, method=store.meta.get("method", "GFN2-xTB"))
    m = jnp.asarray(mol.masses)
    init, apply = kstep(bundle, pot, mol, guards=LOOSE, reversal_correction=alpha)
    apply = jax.jit(apply)

    def ke(v):
        return float(kinetic_energy(jnp.asarray(v), m))

    rows = []
    for i in WINDOWS:
        f0, f1 = store.frame(i), store.frame(i + bundle.k)
        s0 = init(jnp.asarray(f0["positions"]), jnp.asarray(f0["velocities"]))
        s1 = apply(s0)
        e0, e1 = float(s0.energy) + ke(s0.velocities), float(s1.energy) + ke(s1.velocities)
        xt, vt, ft = f1["positions"], f1["velocities"], f1["forces"]
        pe_true = float(pot(jnp.asarray(xt))[0])
        dx = np.asarray(s1.positions) - xt
        v_train = np.asarray(s1.velocities) - (0.5 * bundle.k * bundle.dt * units.ACCEL
                                               * (np.asarray(s1.forces) - ft) / mol.masses[:, None])
        rows.append((e1 - e0, pe_true + ke(vt) - e0, float(s1.energy) - pe_true, -np.sum(ft * dx),
                     ke(s1.velocities) - ke(vt), ke(v_train) - ke(vt)))
    return np.array(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("molecule", help="a molecule with a trajectory under data/qm (e.g. cytosine)")
    parser.add_argument("model", help="a shipped model name or a checkpoint path")
    args = parser.parse_args()
    store = TrajectoryStore(f"data/qm/{args.molecule}/production")
    if not store.exists or store.n_frames <= WINDOWS[-1] + 32:
        parser.error(f"{store.path} must hold at least {WINDOWS[-1] + 33} frames (jkstep generate)")
    try:
        bundle = jkstep.load_pretrained(args.model)
    except jkstep.InputError as exc:
        parser.error(str(exc))
    for alpha in (0.5, 0.0):
        q = energy_parts(store, bundle, alpha) * 1e3
        print(args.molecule, args.model, "alpha", alpha, "rms meV: exact", *[f"{x:.3f}" for x in np.sqrt((q**2).mean(0))],
              "| mean", *[f"{x:+.3f}" for x in q.mean(0)])
    print("cols: exact dE, data dE, exact dPE, 1st-order dPE, dKE(real kick), dKE(training kick)")


if __name__ == "__main__":
    main()
