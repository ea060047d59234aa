"""Differentiate through a short MD rollout (MMFF94 in pure JAX), and what xTB cannot do.

``jkstep.mmff_potential`` is MMFF94 written in JAX, so everything about it is differentiable:
forces are ``-grad(energy)``, and a velocity-Verlet rollout built on it can be differentiated
end to end. Here: the gradient of the final kinetic energy after N steps with respect to the
initial velocities, checked against a central finite difference along a random direction.

The GFN2-xTB potential is different: tblite gives energy and forces (first derivatives) only.
``jax.grad`` of the xTB energy is minus the forces, with no second call, but a second derivative
(``jax.hessian(pot.energy)``) raises ``jkstep.InputError`` with a message that says so, and the
derivative of the xTB forces is NaN, never a silent zero.

Run:  python examples/differentiate_rollout.py [STEPS]
      (default 100 steps of 0.5 fs on ethanol; JKSTEP_EXAMPLE_QUICK=1 makes it 40)

Units: Å, fs, eV, amu; velocities Å/fs.
"""

import os
import sys

import jax
import jax.numpy as jnp

import jkstep  # float64 on
from jkstep.integrate import kinetic_energy

QUICK = os.environ.get("JKSTEP_EXAMPLE_QUICK") == "1"
n_steps = int(sys.argv[1]) if len(sys.argv) > 1 else (40 if QUICK else 100)
dt = 0.5  # fs

mol = jkstep.Molecule.from_smiles("CCO", seed=0)
mm = jkstep.mmff_potential(mol)               # (energy eV, forces eV/Å), pure JAX
init_fn, apply_fn = jkstep.verlet(mm, mol.masses, dt=dt)
masses = jnp.asarray(mol.masses)
x0 = jnp.asarray(mol.positions)
v0 = jnp.asarray(mol.thermal_velocities(300.0, seed=0))


# 1. The quantity to differentiate: kinetic energy (eV) after n_steps of velocity Verlet,
#    as a function of the initial velocities (Å/fs). The rollout is a lax.scan: reverse-mode
#    differentiation goes straight through it (and through MMFF's forces, i.e. its Hessian).
def final_kinetic_energy(v_init):
    state = init_fn(x0, v_init)
    state, _ = jax.lax.scan(lambda s, _: (apply_fn(s), None), state, None, length=n_steps)
    return kinetic_energy(state.velocities, masses)


value_and_grad = jax.jit(jax.value_and_grad(final_kinetic_energy))
ke, grad = value_and_grad(v0)                 # grad: (N, 3) in eV/(Å/fs)
print(f"MMFF94 Verlet rollout: {n_steps} steps of {dt} fs on {mol.name}; final kinetic energy {float(ke):.6f} eV")
print(f"d(final KE)/d(v0): shape {grad.shape}, norm {float(jnp.linalg.norm(grad)):.6f} eV fs/Å")

# 2. Check it: central finite difference of the same function along a random unit direction.
direction = jax.random.normal(jax.random.PRNGKey(1), v0.shape, jnp.float64)
direction = direction / jnp.linalg.norm(direction)
h = 1e-6  # Å/fs (thermal velocities are ~1e-2 Å/fs)
# (value_and_grad is already compiled for this shape, so reuse it for the two values)
fd = (float(value_and_grad(v0 + h * direction)[0]) - float(value_and_grad(v0 - h * direction)[0])) / (2 * h)
ad = float(jnp.sum(grad * direction))
rel = abs(ad - fd) / max(abs(fd), 1e-30)
print(f"directional derivative: autodiff {ad:.10f}, finite difference {fd:.10f}")
print(f"gradient check: {'OK' if rel < 1e-5 else 'FAILED'} rel.err={rel:.2e}")

# 3. The xTB potential gives first derivatives only.
pot = jkstep.xtb_potential(mol)
g = jax.grad(pot.energy)(x0)                  # fine: minus the forces, one xTB call
_, forces = pot(x0)                           # a second call (restarted SCF: equal to ~1e-6 eV/Å)
print(f"xTB: grad(energy) == -forces: {bool(jnp.allclose(g, -forces, rtol=0, atol=1e-4))}, "
      f"xTB calls so far {pot.calls}")
try:
    jax.hessian(pot.energy)(x0)               # a second derivative of the xTB energy
    print("xTB hessian: no error (unexpected)")
except jkstep.InputError as err:
    print(f"xTB hessian raised jkstep.InputError: {err}")

# Differentiating a *rollout* through xTB needs the derivative of the forces, which xTB does
# not have: the result is NaN (by design, never a silent zero). Use MMFF as above for that.
init_x, apply_x = jkstep.verlet(pot, mol.masses, dt=dt)


def xtb_final_ke(v_init):
    state = jax.lax.scan(lambda s, _: (apply_x(s), None), init_x(x0, v_init), None, length=2)[0]
    return kinetic_energy(state.velocities, masses)


print(f"xTB rollout gradient is NaN: {bool(jnp.isnan(jax.grad(xtb_final_ke)(v0)).any())}")
