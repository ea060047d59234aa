"""Energy bookkeeping of trajectories: total energy, drift (linear fit) and fluctuation.

Inputs in eV and fs; drift in kJ/mol/ps and fluctuation in kJ/mol, as MD people quote them.
"""

from __future__ import annotations

import numpy as np

from jkstep import units
from jkstep.integrate import kinetic_energy as _kinetic


def kinetic_energy(velocities, masses) -> np.ndarray:
    """Kinetic energy in eV of velocities (..., N, 3) Å/fs."""
    return np.asarray(_kinetic(np.asarray(velocities), np.asarray(masses)))


def temperature(velocities, masses, dof: int | None = None) -> np.ndarray:
    """Kinetic temperature in K (``dof`` defaults to 3N - 3)."""
    dof = 3 * len(masses) - 3 if dof is None else dof
    return 2.0 * kinetic_energy(velocities, masses) / (dof * units.KB)


def energy_drift(times_fs, total_energy_ev) -> float:
    """Slope of a linear fit of total energy against time, in kJ/mol/ps."""
    t = np.asarray(times_fs, np.float64)
    e = np.asarray(total_energy_ev, np.float64)
    if len(t) < 2 or not np.all(np.isfinite(e)):
        return float("nan")
    slope_ev_fs = np.polyfit(t - t.mean(), e - e.mean(), 1)[0]
    return float(slope_ev_fs * 1000.0 / units.KJ_MOL)


def energy_std(total_energy_ev) -> float:
    """Standard deviation of the total energy in kJ/mol."""
    return float(np.std(np.asarray(total_energy_ev, np.float64)) / units.KJ_MOL)


def finite_or_none(x) -> float | None:
    """``float(x)``, or None where x is None, NaN or infinite (JSON has no NaN: a blown-up run's
    figure is written as null)."""
    return float(x) if x is not None and np.isfinite(x) else None
