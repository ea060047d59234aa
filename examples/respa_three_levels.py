"""RESPA with the shipped learned fast force, in two and in three levels, from Python.

``jkstep.learned_potential("gfn2-fast", mol)`` is MMFF94 plus a small network (a Δ-potential); its
``baseline`` is the molecule's MMFF94. ``jkstep.respa(fast, pot, ...)`` runs k inner steps on the
fast force between two half kicks of the xTB-minus-fast force, one xTB call per k·dt. With
``inner=fast.baseline, fast_every=2`` the inner steps run on MMFF94 alone and the network's
correction is felt every second inner step (three-level RESPA, what ``jkstep run`` does): half
the network calls, the same one xTB call per macro-step. Both runs start from the same state.

Run:  python examples/respa_three_levels.py [SMILES] [MACRO_STEPS]
      (defaults: ethanol "CCO", 100 macro-steps of 8 x 0.25 fs; JKSTEP_EXAMPLE_QUICK=1 makes it 20)

Units: Å, fs, eV, amu, K; velocities in Å/fs.
"""

import os
import sys

import numpy as np

import jkstep  # turns on float64 (jax_enable_x64)
from jkstep import units
from jkstep.integrate import kinetic_energy
from jkstep.rollout import runner

QUICK = os.environ.get("JKSTEP_EXAMPLE_QUICK") == "1"
smiles = sys.argv[1] if len(sys.argv) > 1 else "CCO"
n_macro = int(sys.argv[2]) if len(sys.argv) > 2 else (20 if QUICK else 100)

mol = jkstep.Molecule.from_smiles(smiles, seed=0)
fast = jkstep.learned_potential("gfn2-fast", mol)   # MMFF94 + network; fast.baseline is the MMFF94
v0 = mol.thermal_velocities(300.0, seed=0)

for label, split in (("two levels", {}), ("three levels", {"inner": fast.baseline, "fast_every": 2})):
    pot = jkstep.xtb_potential(mol)                  # a fresh potential: its own call counter
    init_fn, apply_fn = jkstep.respa(fast, pot, mol.masses, k=8, dt=0.25, **split)
    state, frames = runner(apply_fn, n_frames=n_macro)(init_fn(mol.positions, v0))
    total = np.asarray(frames.energy) + np.asarray(kinetic_energy(frames.velocities, mol.masses))
    print(f"{label}: {n_macro} macro-steps of 2 fs, xTB calls {pot.calls} (force_calls "
          f"{int(state.force_calls)}), total energy std {np.std(total) / units.KJ_MOL:.4f} kJ/mol")
    assert pot.calls == n_macro + 1 == int(state.force_calls)
print("one xTB call per macro-step in both: OK")
