"""A vmap'd batched rollout: several replicas of one molecule in one jitted scan.

Part 1 runs R replicas of velocity Verlet with ``jkstep.rollout.runner(..., batched=True)``:
the state gets a leading replica axis and every step makes one batched xTB request, which the
potential spreads over a thread pool (tblite releases the GIL).

Part 2 does the same with the hybrid k-step integrator (``jkstep.kstep.kstep_integrator``)
around the zero network (``ballistic_jump``: constant-force motion over k·dt). This is the
``corrector_only`` control of ``jkstep evaluate``: with jkstep's final kick it equals velocity
Verlet at k·dt, so it shows the plumbing (guards, retries, fallbacks, per-replica call counts)
without a trained model. Give a model instead with ``jkstep.kstep.model_jump(bundle, ...)``.
Replicas that are done, or need no fallback, cost no xTB call: the integrator passes an
``active`` mask to the potential.

Part 3 tightens the guards to show rejections and fallbacks in the counters. Part 4 runs
different molecules in one padded batch with the shipped model (``jkstep.padded``).

Run:  python examples/batched_rollout.py [REPLICAS]
      (default 4 replicas of ethanol; JKSTEP_EXAMPLE_QUICK=1 shortens the runs)
"""

import os
import sys

import jax
import numpy as np

import jkstep
from jkstep.kstep import Guards, ballistic_jump, fallback_step_count, kstep_integrator
from jkstep.rollout import runner

QUICK = os.environ.get("JKSTEP_EXAMPLE_QUICK") == "1"
n_replicas = int(sys.argv[1]) if len(sys.argv) > 1 else 4
dt, k = 0.25, 8

mol = jkstep.Molecule.from_smiles("CCO", seed=0)
# Start every replica from the same geometry with its own Maxwell–Boltzmann velocities.
x0 = np.broadcast_to(mol.positions, (n_replicas, len(mol), 3)).copy()
v0 = np.stack([mol.thermal_velocities(300.0, seed=r) for r in range(n_replicas)])

# -- Part 1: velocity Verlet, replicas batched ------------------------------------------------
pot = jkstep.xtb_potential(mol)
init_fn, apply_fn = jkstep.verlet(pot, mol.masses, dt=dt)
states = jax.vmap(init_fn)(x0, v0)                        # one batched xTB request
n_frames, every = (4, 4) if QUICK else (10, 8)
states, frames = runner(apply_fn, n_frames, every, batched=True)(states)
print(f"verlet: {n_replicas} replicas x {n_frames * every} steps of {dt} fs; "
      f"frames {tuple(frames.positions.shape)} (replica, frame, atom, xyz)")
print(f"verlet: xTB calls {pot.calls} in all, {pot.calls // n_replicas} per replica; "
      f"force_calls per replica {np.asarray(states.force_calls).tolist()}")

# -- Part 2: the hybrid integrator with the zero network, replicas batched --------------------
pot = jkstep.xtb_potential(mol)
jump = ballistic_jump(mol.masses, k, dt)                  # the "zero network"
guards = Guards(max_displacement=0.2, max_energy_rise=0.1, max_attempts=3)   # the defaults at k = 8
init_fn, apply_fn = kstep_integrator(jump, pot, mol.numbers, mol.masses, k, dt, guards=guards)
states = jax.vmap(init_fn)(x0, v0)
n_macro = 4 if QUICK else 12
states, frames = runner(apply_fn, n_macro, 1, batched=True)(states)
print(f"kstep: {n_replicas} replicas x {n_macro} macro-steps (k = {k}, {k * dt} fs each) = "
      f"{n_macro * k * dt:.0f} fs per replica")
for r in range(n_replicas):
    print(f"  replica {r}: xTB calls {int(states.force_calls[r])}, accepted {int(states.accepted[r])}, "
          f"rejected {int(states.rejected[r])}, fallbacks {int(states.fallbacks[r])}, "
          f"steps {int(states.step[r])}")
print(f"kstep: xTB calls {pot.calls} in all (the potential's own count) = "
      f"sum of per-replica force_calls {int(np.sum(states.force_calls))}")
assert pot.calls == int(np.sum(states.force_calls))
# A replica with no rejections and no fallbacks pays exactly 1 + n_macro calls, against
# 1 + n_macro * k for Verlet at dt: that is the saving a learned jump must keep.
print(f"Verlet at {dt} fs would need {1 + n_macro * k} calls per replica")

# -- Part 3: strict guards, to see rejections and fallbacks in the counters ------------------
# With a tiny allowed energy rise some jumps are rejected. An attempt rejected after its
# corrector call cost one xTB call (one rejected by the free geometry guards costs none); after
# max_attempts the macro-step falls back to plain Verlet over k·dt in steps of at most 0.5 fs
# (fallback_step_count: 4 calls at k = 8, dt = 0.25 fs; fallback_steps=k gives steps of dt). Replicas that
# accepted cost nothing while the others retry. (A retry halves the learned correction; the
# zero network has none, so its retry repeats the same jump.)
pot = jkstep.xtb_potential(mol)
strict = Guards(max_energy_rise=2e-4, max_attempts=2)
init_fn, apply_fn = kstep_integrator(jump, pot, mol.numbers, mol.masses, k, dt, guards=strict)
states, _ = runner(apply_fn, 3, 1, batched=True)(jax.vmap(init_fn)(x0, v0))
acc, rej, fb = (int(np.sum(a)) for a in (states.accepted, states.rejected, states.fallbacks))
nf = fallback_step_count(k, dt)   # xTB calls of one fallback macro-step
print(f"strict guards: accepted {acc}, rejected attempts {rej}, fallbacks {fb}; xTB calls {pot.calls}; "
      f"at most init + accepted + rejected + {nf} x fallbacks = {n_replicas + acc + rej + fb * nf}")
assert pot.calls == int(np.sum(states.force_calls))

# -- Part 4: different molecules in one batch, padded, with the shipped k = 8 model -----------
# Each member is padded to the largest atom count (padding: Z = 0, far away, never moving);
# member i runs molecule i with its own tblite calculator. batched_rollout tells every member
# its index (jkstep.potentials.xtb.replica_slots), which is how the padded pair finds its molecule.
from jkstep.padded import pad, padded_kstep, padded_xtb_potential, unpad  # noqa: E402
from jkstep.rollout import batched_rollout  # noqa: E402

mixed = [jkstep.Molecule.from_smiles(s, seed=0) for s in ("CCO", "O", "CC(=O)N")]
batch = pad(mixed)
pot = padded_xtb_potential(mixed)
init_fn, apply_fn = padded_kstep(jkstep.load_pretrained("gfn2-k8"), pot, batch)
v_mixed = batch.pad_array([m.thermal_velocities(300.0, seed=i) for i, m in enumerate(mixed)])
states, frames = batched_rollout(init_fn, apply_fn, batch.positions, v_mixed, 2 if QUICK else 10)
for m, x, calls, acc in zip(mixed, unpad(frames.positions, batch), states.force_calls, states.accepted):
    print(f"padded: {m.formula} frames {x.shape}, xTB calls {int(calls)}, accepted {int(acc)}")
print(f"padded: xTB calls {pot.calls} in all = sum of per-member force_calls {int(np.sum(states.force_calls))}")
assert pot.calls == int(np.sum(states.force_calls))
