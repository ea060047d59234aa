"""Same-energy replicas: new velocities on the energy shell of a given state.

A noise-floor replica keeps the positions of a state and draws new random velocity directions
(Maxwell–Boltzmann, seeded), with centre-of-mass momentum and angular momentum removed, rescaled
so that the kinetic energy, and hence the total energy at the same positions, equals the
original's exactly. NVE runs from such states sit on the same energy shell as the reference but
decorrelate from it.

Units: positions Å, velocities Å/fs, masses amu, momentum amu·Å/fs, angular momentum amu·Å²/fs,
kinetic energy eV.
"""

from __future__ import annotations

import numpy as np

from jkstep import analysis
from jkstep.errors import InputError


def momentum(velocities, masses) -> np.ndarray:
    """Total linear momentum (3,) in amu·Å/fs of velocities (N, 3) Å/fs and masses (N,) amu."""
    return np.sum(np.asarray(masses, np.float64)[:, None] * np.asarray(velocities, np.float64), axis=0)


def remove_rigid_motion(positions, velocities, masses) -> np.ndarray:
    """Velocities (N, 3) Å/fs (of positions (N, 3) Å, velocities (N, 3) Å/fs, masses (N,) amu) with the centre-of-mass velocity and the rigid rotation
    ω = I⁻¹ L (inertia tensor about the centre of mass) subtracted: zero linear and zero
    angular momentum. The kinetic energy drops by that of the removed motion."""
    masses = np.asarray(masses, np.float64)
    r = np.asarray(positions, np.float64)
    v = np.asarray(velocities, np.float64)
    v = v - momentum(v, masses) / masses.sum()
    r = r - np.sum(masses[:, None] * r, axis=0) / masses.sum()
    inertia = (np.eye(3) * np.sum(masses * np.sum(r * r, axis=1))
                                       - np.einsum("i,ij,ik->jk", masses, r, r))
    omega = np.linalg.pinv(inertia, rcond=1e-10) @ np.sum(masses[:, None] * np.cross(r, v), axis=0)
    return v - np.cross(omega, r)


def same_energy_velocities(molecule, positions, velocities, seed: int) -> np.ndarray:
    """New velocities (N, 3) Å/fs for ``molecule`` at ``positions`` Å: random directions
    (Maxwell–Boltzmann draw from ``seed``), zero linear and angular momentum, rescaled to the
    kinetic energy of ``velocities`` exactly (all of it: remove rigid motion from
    ``velocities`` first if only internal motion should count).

    At the same positions the total energy is therefore identical to that of
    (positions, velocities)."""
    masses = np.asarray(molecule.masses, np.float64)
    positions = np.asarray(positions, np.float64)
    velocities = np.asarray(velocities, np.float64)
    if positions.shape != (len(masses), 3) or velocities.shape != positions.shape:
        raise InputError(f"positions and velocities must have shape ({len(masses)}, 3), got "
                         f"{positions.shape} and {velocities.shape}")
    target = float(analysis.kinetic_energy(velocities, masses))
    if not np.isfinite(target) or target <= 0:
        raise InputError(f"the reference velocities have no kinetic energy to share ({target} eV)")
    rng = np.random.default_rng(seed)
    # Maxwell–Boltzmann direction: v_i ~ N(0, 1/m_i) (the temperature drops out on rescaling)
    draw = rng.standard_normal(positions.shape) / np.sqrt(masses)[:, None]
    draw = remove_rigid_motion(positions, draw, masses)
    ke = float(analysis.kinetic_energy(draw, masses))
    if ke <= 0:
        raise InputError("a molecule this small has no internal motion to draw")
    return draw * np.sqrt(target / ke)
