"""Units and the few conversions jkstep needs.

The public API uses Å, fs, eV, amu and K; velocities are in Å/fs. ASE's own time unit is
about 10.18 fs, so velocities read from or written to ASE objects are converted here and
nowhere else. tblite works in Bohr and Hartree.
"""

from ase import units as _ase

#: Bohr radius in Å.
BOHR = _ase.Bohr
#: Hartree in eV.
HARTREE = _ase.Hartree
#: Boltzmann constant in eV/K.
KB = _ase.kB
#: One kJ/mol in eV.
KJ_MOL = _ase.kJ / _ase.mol
#: One ASE time unit in fs (about 10.18).
ASE_TIME_FS = 1.0 / _ase.fs
#: Multiply a force/mass in eV/(Å·amu) by this to get an acceleration in Å/fs².
ACCEL = _ase.fs**2
#: Multiply m·v² in amu·Å²/fs² by this to get eV.
KINETIC = 1.0 / _ase.fs**2


def velocities_from_ase(v_ase):
    """Velocities in Å per ASE time unit (``Atoms.get_velocities()``) → Å/fs."""
    return v_ase * _ase.fs


def velocities_to_ase(v_fs):
    """Velocities in Å/fs → Å per ASE time unit (for ``Atoms.set_velocities``)."""
    return v_fs / _ase.fs
