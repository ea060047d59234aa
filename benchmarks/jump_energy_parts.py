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

name, model = sys.argv[1], sys.argv[2]   # molecule under data/qm, model name or path
st = TrajectoryStore(f"data/qm/{name}/production"); meta = st.meta
mol = store_molecule(st)
pot = jkstep.xtb_potential(mol, method=meta.get("method", "GFN2-xTB")); b = jkstep.load_pretrained(model)
m = jnp.asarray(mol.masses)
rows = []
for alpha in (0.5, 0.0):
  init, apply = kstep(b, pot, mol, guards=LOOSE, reversal_correction=alpha); apply = jax.jit(apply)
  for i in range(0, 18000, 600):
    f0, f1 = st.frame(i), st.frame(i + b.k)
    s0 = init(jnp.asarray(f0["positions"]), jnp.asarray(f0["velocities"])); s1 = apply(s0)
    E0 = float(s0.energy + kinetic_energy(s0.velocities, m)); E1 = float(s1.energy + kinetic_energy(s1.velocities, m))
    xt, vt, Ft = f1["positions"], f1["velocities"], f1["forces"]
    Etrue1 = float(pot(jnp.asarray(xt))[0]) + float(kinetic_energy(jnp.asarray(vt), m))
    dx = np.asarray(s1.positions) - xt
    vtrain = np.asarray(s1.velocities) - 0.5 * b.k * b.dt * units.ACCEL * (np.asarray(s1.forces) - Ft) / mol.masses[:, None]
    ke = lambda v: float(kinetic_energy(jnp.asarray(v), m))
    pe2 = float(s1.energy) - float(pot(jnp.asarray(xt))[0])   # exact PE error at x'
    rows.append((alpha, E1 - E0, Etrue1 - E0, pe2, -np.sum(Ft * dx), ke(np.asarray(s1.velocities)) - ke(vt), ke(vtrain) - ke(vt)))
r = np.array(rows)
for a in (0.5, 0.0):
  q = r[r[:, 0] == a][:, 1:] * 1e3
  print(name, model, "alpha", a, "rms meV: exact", *[f"{x:.3f}" for x in np.sqrt((q**2).mean(0))], "| mean", *[f"{x:+.3f}" for x in q.mean(0)])
print("cols: exact dE, data dE, exact dPE, 1st-order dPE, dKE(real kick), dKE(training kick)")
