"""The learned fast force fine-tuned on the molecule's own thermalisation, then RESPA with it.

A Langevin thermalisation on xTB makes xTB calls anyway; ``jkstep.rollout.run_steps`` keeps every
step's frame (positions, energy, forces). ``jkstep.model.adapt.adapt_potential`` fine-tunes
gfn2-fast on those frames (no xTB call; tens of seconds of CPU): forces and energies, and the
curvature of its energy error along the path, which is what RESPA's energy fluctuation is made of.
It returns a fast force for this molecule and a report (the force error and the curvature on the
held-out last fifth of the frames, before and after). The adapted force is fixed before the run, so RESPA with it stays symplectic; both
forces then run from the same state, one xTB call per macro-step each. (``jkstep run --adapt``
and ``jkstep evaluate --adapt`` do the same from the command line.)

Run:  python examples/respa_adapted.py [SMILES] [MACRO_STEPS]
      (defaults: ethanol "CCO", 100 macro-steps of 8 x 0.25 fs; JKSTEP_EXAMPLE_QUICK=1 makes it 20
      after a 0.1 ps thermalisation instead of 0.5 ps, and 300 adaptation steps instead of 2000)

Units: Å, fs, eV, amu, K; velocities in Å/fs.
"""

import os
import sys

import jax
import numpy as np

import jkstep  # turns on float64 (jax_enable_x64)
from jkstep import units
from jkstep.integrate import kinetic_energy
from jkstep.model.adapt import AdaptConfig, adapt_potential
from jkstep.rollout import run_steps, runner

QUICK = os.environ.get("JKSTEP_EXAMPLE_QUICK") == "1"
smiles = sys.argv[1] if len(sys.argv) > 1 else "CCO"
n_macro = int(sys.argv[2]) if len(sys.argv) > 2 else (20 if QUICK else 100)
thermalise_fs = 100.0 if QUICK else 500.0

mol = jkstep.Molecule.from_smiles(smiles, seed=0)
pot = jkstep.xtb_potential(mol)

# 1. thermalise: Langevin on xTB at 0.5 fs, keeping every step's frame
init_fn, apply_fn = jkstep.langevin(pot, mol.masses, dt=0.5, temperature=300.0)
state = init_fn(mol.positions, mol.thermal_velocities(300.0, seed=0), jax.random.PRNGKey(0))
state, frames = run_steps(apply_fn, state, int(thermalise_fs / 0.5), record_every=1)
print(f"thermalised {thermalise_fs:g} fs: xTB calls {pot.calls}, {frames.energy.shape[0]} frames kept")

# 2. adapt gfn2-fast on those frames
fast = jkstep.learned_potential("gfn2-fast", mol)
adapted, report = adapt_potential(fast, np.asarray(frames.positions), np.asarray(frames.energy),
                                  np.asarray(frames.forces), AdaptConfig(steps=300 if QUICK else 2000),
                                  spacing_fs=0.5)
print(f"adapted on {report['train_frames']} frames in {report['wall_s']:.0f} s: force RMSE on the last "
      f"{report['holdout_frames']} {report['force_rmse_before_ev_a']:.3f} -> {report['force_rmse_after_ev_a']:.3f} eV/Å; "
      f"energy-error curvature {report['curvature_rms_before']:.2e} -> {report['curvature_rms_after']:.2e} eV/fs² "
      f"(RESPA at 2 fs fluctuates by about 2²/12 times it)")

# 3. RESPA (three levels: MMFF94 every 0.25 fs, the network's correction every 0.5 fs) with each
x0, v0 = state.positions, state.velocities
for label, f in (("gfn2-fast", fast), ("adapted", adapted)):
    xtb = jkstep.xtb_potential(mol)                  # a fresh potential: its own call counter
    init_r, apply_r = jkstep.respa(f, xtb, mol.masses, k=8, dt=0.25, inner=f.baseline, fast_every=2)
    run_state, run_frames = runner(apply_r, n_frames=n_macro)(init_r(x0, v0))
    total = np.asarray(run_frames.energy) + np.asarray(kinetic_energy(run_frames.velocities, mol.masses))
    print(f"{label}: {n_macro} macro-steps of 2 fs, xTB calls {xtb.calls}, "
          f"total energy std {np.std(total) / units.KJ_MOL:.4f} kJ/mol")
    assert xtb.calls == n_macro + 1 == int(run_state.force_calls)
print("one xTB call per macro-step with either force: OK")
