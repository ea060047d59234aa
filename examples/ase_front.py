"""The ASE front: hybrid k-step MD of an ase.Atoms, with an ordinary trajectory file and log.

``jkstep.ase_md.KStepMD`` is an ``ase.md.md.MolecularDynamics``: ``dyn.run(n)`` makes n
macro-steps of k base steps each, keeps the Atoms' positions and velocities current, attaches
the xTB energy and forces of every frame, and writes the usual ``trajectory=`` / ``logfile=``.

Run:  python examples/ase_front.py [MODEL]
      MODEL: a shipped model name or a checkpoint directory (``jkstep train --out DIR``). Without
      it the zero network (``ballistic_jump``, k = 8, dt = 0.25 fs) is used: the corrector-only
      control, equal to velocity Verlet at 2 fs. Writes kstep_md.traj and kstep_md.log in the
      current directory. JKSTEP_EXAMPLE_QUICK=1 makes fewer macro-steps.

The ASE time-unit pitfall: ASE's own time unit is about 10.18 fs (``ase.units.fs`` = 0.098).
``atoms.get_velocities()`` is in Å per ASE time unit and ``dyn.dt`` is in ASE time units; jkstep
works in fs and Å/fs and converts only at this boundary (``jkstep.units``).
"""

import os
import sys

import numpy as np
from ase import units as ase_units
from ase.io import read

import jkstep
from jkstep import units
from jkstep.ase_md import KStepMD
from jkstep.kstep import ballistic_jump

QUICK = os.environ.get("JKSTEP_EXAMPLE_QUICK") == "1"
model = sys.argv[1] if len(sys.argv) > 1 else None
n_macro = 5 if QUICK else 25

# An ase.Atoms with 300 K velocities. jkstep's Molecule hands out velocities in Å/fs;
# to_atoms converts them to ASE's unit. (Any Atoms works: read one with ase.io.read.)
mol = jkstep.Molecule.from_smiles("CCO", seed=0)
atoms = mol.to_atoms(velocities=mol.thermal_velocities(300.0, seed=0))

# ASE overwrites the trajectory file but *appends* to an existing logfile: start both afresh.
for name in ("kstep_md.traj", "kstep_md.log"):
    if os.path.exists(name):
        os.remove(name)

if model:
    bundle = jkstep.load_pretrained(model)   # k and dt come from the checkpoint
    dyn = KStepMD(atoms, bundle, trajectory="kstep_md.traj", logfile="kstep_md.log")
    label = f"model {model}"
else:
    k, dt = 8, 0.25                           # fs
    dyn = KStepMD(atoms, jump=ballistic_jump(atoms.get_masses(), k, dt), k=k, dt=dt,
                  trajectory="kstep_md.traj", logfile="kstep_md.log")
    label = "zero network (ballistic jump)"

# dyn.dt is one macro-step in ASE time units; in fs it is k * dt.
print(f"KStepMD with {label}: k = {dyn.k}, base dt = {dyn.base_dt} fs, "
      f"ASE timestep {dyn.dt / ase_units.fs:.2f} fs ({dyn.dt:.4f} ASE time units)")
dyn.run(n_macro)                              # n_macro macro-steps; the start frame is written too

s = dyn.state
print(f"ran {n_macro} macro-steps = {int(s.step)} base steps = {int(s.step) * dyn.base_dt:.1f} fs")
print(f"xTB calls {dyn.potential.calls}, accepted {int(s.accepted)}, rejected {int(s.rejected)}, "
      f"fallbacks {int(s.fallbacks)}")

# Read the trajectory back with plain ASE: positions, velocities (ASE units), energy, forces.
frames = read("kstep_md.traj", index=":")
last = frames[-1]
v_fs = units.velocities_from_ase(last.get_velocities())   # back to Å/fs
print(f"trajectory kstep_md.traj: {len(frames)} frames; last frame E_pot {last.get_potential_energy():.4f} eV, "
      f"T {last.get_temperature():.1f} K, max |v| {np.abs(v_fs).max():.4f} Å/fs")
assert len(frames) == n_macro + 1
assert np.allclose(last.positions, atoms.positions)
with open("kstep_md.log") as fh:
    log = fh.read().splitlines()
assert len(log) == n_macro + 2                # header + one line per frame (start included)
print(f"log kstep_md.log: {len(log)} lines; header: {log[0].strip()}")
print(f"                  last: {log[-1].strip()}")
