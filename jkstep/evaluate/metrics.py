"""Metrics that judge trajectories: pure numpy on arrays of frames, no MD and no xTB.

Units: positions Å, velocities Å/fs, energies eV, time fs, masses amu; every output names its
unit. Frames are (F, N, 3) arrays (any leading shape where noted). A metric that cannot be
measured (empty or non-finite input, an X–H band above the Nyquist limit, a reference without
torsion flips) is None, never a made-up number.
"""

from __future__ import annotations

import itertools

import numpy as np
from ase.data import covalent_radii
from scipy import stats
from scipy.integrate import trapezoid
from scipy.ndimage import gaussian_filter1d
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import jensenshannon

from jkstep import units
from jkstep.analysis import energy_drift, energy_std, temperature  # noqa: F401  (re-exported)
from jkstep.errors import InputError

#: Speed of light in cm/fs: wavenumber (cm⁻¹) = frequency (1/fs) / C_CM_FS.
C_CM_FS = 2.99792458e-5
#: Histogram bin widths of ``distribution_js``: Å for bonds, degrees for angles and dihedrals.
BIN_WIDTH = {"bond": 0.005, "angle": 2.0, "dihedral": 5.0}
#: Rotamer well centres in degrees (g+, t, g−) and the half-width of their cores.
WELLS_DEG = np.array([60.0, 180.0, -60.0])
CORE_DEG = 40.0
_VALENCE = {6: 4, 7: 3, 8: 2, 14: 4, 15: 3, 16: 2}  # for the no-mol-block multiple-bond guess

# -- topology ------------------------------------------------------------------------------


def _mol(numbers, mol_block):
    from rdkit import Chem

    mol = Chem.MolFromMolBlock(mol_block, removeHs=False, sanitize=True)
    if mol is None:
        raise InputError("mol_block could not be parsed by RDKit")
    z = [a.GetAtomicNum() for a in mol.GetAtoms()]
    if z != list(np.asarray(numbers).tolist()):
        raise InputError(f"mol_block atoms {z} do not match numbers {list(numbers)} (same order needed)")
    return mol


def _bonds(numbers, positions_ref, mol_block=None) -> np.ndarray:
    """(n, 2) bonded pairs i < j: from the mol block, else d < 1.25 (r_i + r_j) at the reference."""
    numbers = np.asarray(numbers)
    pos = np.asarray(positions_ref, np.float64)
    if pos.shape != (len(numbers), 3):
        raise InputError(f"positions_ref must be ({len(numbers)}, 3) Å, got {pos.shape}")
    if mol_block is not None:
        mol = _mol(numbers, mol_block)
        pairs = [sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in mol.GetBonds()]
    else:
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        r = covalent_radii[numbers]
        pairs = np.argwhere(np.triu(d < 1.25 * (r[:, None] + r[None]), 1))
    return np.array(sorted(map(tuple, pairs)), np.int64).reshape(-1, 2)


def _neighbours(n_atoms, bonds):
    nb = [[] for _ in range(n_atoms)]
    for i, j in bonds:
        nb[i].append(int(j))
        nb[j].append(int(i))
    return [sorted(x) for x in nb]


def internal_coordinates(numbers, positions_ref, mol_block=None):
    """Bonds (nb, 2), angles (na, 3) and proper dihedrals (nd, 4) as int index arrays.

    The topology comes from an RDKit mol block (same atom order) when given, else from
    covalent radii at the reference geometry ``positions_ref`` (N, 3) Å; ``numbers`` (N,).
    Angles i-j-k have j at the centre; dihedrals i-j-k-l run around each bond j-k (3-rings,
    i == l, left out).
    """
    bonds = _bonds(numbers, positions_ref, mol_block)
    nb = _neighbours(len(numbers), bonds)
    angles = [(i, j, k) for j in range(len(nb)) for i, k in itertools.combinations(nb[j], 2)]
    dihedrals = [(i, j, k, l) for j, k in bonds for i in nb[j] if i != k
                 for l in nb[k] if l != j and l != i]
    return (bonds, np.array(angles, np.int64).reshape(-1, 3),
            np.array(dihedrals, np.int64).reshape(-1, 4))


def rotatable_dihedrals(numbers, positions_ref, mol_block=None) -> np.ndarray:
    """One heavy-atom dihedral (n, 4) per rotatable bond: single, non-ring, both ends heavy with
    other heavy neighbours (lowest-index neighbours chosen).

    With a mol block the candidates are RDKit's rotatable-bond SMARTS (``Lipinski``, non-strict:
    amide C–N included). Without one, a guess from the covalent-radius topology: a bond is left
    out when it lies in a ring, an end is near-linear (> 170°), or both ends have fewer neighbours
    than their usual valence (a possible double bond; conjugated biaryl bonds are lost too).
    """
    numbers = np.asarray(numbers)
    pos = np.asarray(positions_ref, np.float64)
    bonds = _bonds(numbers, pos, mol_block)
    nb = _neighbours(len(numbers), bonds)
    heavy = [[n for n in nb[a] if numbers[n] > 1] for a in range(len(numbers))]
    if mol_block is not None:
        from rdkit.Chem import Lipinski

        cand = sorted(tuple(sorted(m)) for m in _mol(numbers, mol_block).GetSubstructMatches(
            Lipinski.RotatableBondSmarts))
    else:
        adj = np.zeros((len(numbers),) * 2, bool)
        adj[bonds[:, 0], bonds[:, 1]] = adj[bonds[:, 1], bonds[:, 0]] = True
        cand = []
        for j, k in bonds:
            a = adj.copy()
            a[j, k] = a[k, j] = False
            lab = connected_components(a, directed=False)[1]
            linear = any(len(nb[x]) == 2 and angles(pos, np.array([[nb[x][0], x, nb[x][1]]]))[0] > 170
                         for x in (j, k))
            unsat = all(len(nb[x]) < _VALENCE.get(int(numbers[x]), 0) for x in (j, k))
            if lab[j] != lab[k] and not linear and not unsat:
                cand.append((int(j), int(k)))
    out = []
    for j, k in cand:
        hi = [n for n in heavy[j] if n != k]
        hl = [n for n in heavy[k] if n != j and (not hi or n != hi[0])]
        if numbers[j] > 1 and numbers[k] > 1 and hi and hl:
            out.append((hi[0], j, k, hl[0]))
    return np.array(out, np.int64).reshape(-1, 4)


# -- internal coordinates over frames ------------------------------------------------------


def bond_lengths(positions, bonds) -> np.ndarray:
    """Bond lengths in Å: positions (..., N, 3), bonds (nb, 2) → (..., nb)."""
    p = np.asarray(positions, np.float64)
    b = np.asarray(bonds, np.int64).reshape(-1, 2)
    return np.linalg.norm(p[..., b[:, 1], :] - p[..., b[:, 0], :], axis=-1)


def angles(positions, angles) -> np.ndarray:
    """Angles i-j-k in degrees (atan2, finite at 0° and 180°): (..., N, 3) → (..., na)."""
    p = np.asarray(positions, np.float64)
    a = np.asarray(angles, np.int64).reshape(-1, 3)
    u = p[..., a[:, 0], :] - p[..., a[:, 1], :]
    v = p[..., a[:, 2], :] - p[..., a[:, 1], :]
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(u, v), axis=-1), np.sum(u * v, axis=-1)))


def dihedrals(positions, dihedrals) -> np.ndarray:
    """Proper dihedrals i-j-k-l in degrees in [−180, 180] (IUPAC sign): (..., N, 3) → (..., nd)."""
    p = np.asarray(positions, np.float64)
    d = np.asarray(dihedrals, np.int64).reshape(-1, 4)
    b1, b2, b3 = (p[..., d[:, n + 1], :] - p[..., d[:, n], :] for n in range(3))
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.sum(b1 * n2, axis=-1)
    return np.degrees(np.arctan2(y, np.sum(n1 * n2, axis=-1)))


def wrap_deg(x):
    """Angles in degrees wrapped to [−180, 180)."""
    return (np.asarray(x, np.float64) + 180.0) % 360.0 - 180.0


_VALUES = {"bond": bond_lengths, "angle": angles, "dihedral": dihedrals}


def _kind(kind: str) -> str:
    k = kind.rstrip("s")
    if k not in _VALUES:
        raise InputError(f"kind must be 'bond', 'angle' or 'dihedral', got {kind!r}")
    return k


# -- single-jump errors --------------------------------------------------------------------


def _rms(x):
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size and np.all(np.isfinite(x)) else None


def one_jump_errors(pred_positions, true_positions, pred_forces=None, true_forces=None,
                    bonds=(), angles=(), dihedrals=()) -> dict:
    """RMS errors of predicted frames (..., N, 3) against the ground truth.

    ``position_rmse_a``: RMS over atoms of the displacement length (Å); ``bond_rmse_a`` (Å),
    ``angle_rmse_deg``, ``dihedral_rmse_deg`` (differences wrapped to ±180°); ``force_rmse_ev_a``:
    RMS over Cartesian components (eV/Å), None without forces. None where there are no terms or
    the input is not finite.
    """
    p, t = np.asarray(pred_positions, np.float64), np.asarray(true_positions, np.float64)
    if p.shape != t.shape:
        raise InputError(f"pred_positions {p.shape} and true_positions {t.shape} differ in shape")
    out = {"position_rmse_a": _rms(np.linalg.norm(p - t, axis=-1)),
           "bond_rmse_a": _rms(bond_lengths(p, bonds) - bond_lengths(t, bonds)),
           "angle_rmse_deg": _rms(_VALUES["angle"](p, angles) - _VALUES["angle"](t, angles)),
           "dihedral_rmse_deg": _rms(wrap_deg(_VALUES["dihedral"](p, dihedrals)
                                              - _VALUES["dihedral"](t, dihedrals))),
           "force_rmse_ev_a": None}
    if pred_forces is not None and true_forces is not None:
        out["force_rmse_ev_a"] = _rms(np.asarray(pred_forces, np.float64) - np.asarray(true_forces))
    return out


# -- distribution divergences --------------------------------------------------------------


def js_divergence(samples_a, samples_b, bins=50, range=None) -> float | None:
    """Base-2 Jensen–Shannon divergence in [0, 1] of two samples' histograms (``bins`` a count
    or edges; ``range`` defaults to the pooled range). None if a sample is empty, not finite, or
    has nothing inside the range."""
    a, b = np.ravel(samples_a).astype(np.float64), np.ravel(samples_b).astype(np.float64)
    if not a.size or not b.size or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    if range is None and np.ndim(bins) == 0:
        range = (min(a.min(), b.min()), max(a.max(), b.max()))
        range = range if range[1] > range[0] else (range[0] - 0.5, range[0] + 0.5)
    ha, edges = np.histogram(a, bins, range)
    hb, _ = np.histogram(b, edges)
    if not ha.sum() or not hb.sum():
        return None
    pa, pb = ha / ha.sum() + 1e-12, hb / hb.sum() + 1e-12
    return float(min(1.0, jensenshannon(pa, pb, base=2) ** 2))


def _edges(kind, a, b):
    w = BIN_WIDTH[kind]
    if kind == "dihedral":
        return np.linspace(-180.0, 180.0, int(round(360 / w)) + 1)
    lo = np.floor(min(a.min(), b.min()) / w) * w
    return lo + w * np.arange(int((max(a.max(), b.max()) - lo) // w) + 2)  # top edge above max


def distribution_js(frames_a, frames_b, terms, kind: str) -> float | None:
    """Mean over terms of the JS divergence between two runs' histograms of each term.

    frames (..., N, 3) Å (leading axes, e.g. replicas, are pooled); ``kind`` 'bond' (0.005 Å
    bins over the pooled range), 'angle' (2°) or 'dihedral' (5° over −180..180, wrapped). None if
    either run is empty or not finite, or there are no terms.
    """
    kind = _kind(kind)
    terms = np.asarray(terms, np.int64)
    fa, fb = np.asarray(frames_a, np.float64), np.asarray(frames_b, np.float64)
    if not terms.size or not fa.size or not fb.size:
        return None
    va = _VALUES[kind](fa.reshape(-1, *fa.shape[-2:]), terms)
    vb = _VALUES[kind](fb.reshape(-1, *fb.shape[-2:]), terms)
    if not (np.all(np.isfinite(va)) and np.all(np.isfinite(vb))):
        return None
    if kind == "dihedral":
        va, vb = wrap_deg(va), wrap_deg(vb)
    js = [js_divergence(va[:, n], vb[:, n], _edges(kind, va[:, n], vb[:, n])) for n in range(va.shape[1])]
    return None if any(x is None for x in js) else float(np.mean(js))


# -- vibrational spectrum ------------------------------------------------------------------


def vibrational_spectrum(velocities, masses, dt_fs, smoothing_cm1=15.0, max_cm1=4500.0, step_cm1=1.0):
    """Power spectrum of the mass-weighted velocities: (wavenumbers cm⁻¹, intensity per cm⁻¹).

    Equals the Fourier transform of the mass-weighted VACF (Wiener–Khinchin); summed over atoms
    and components, zero-padded (FFT grid ≤ ``step_cm1``), smoothed by a Gaussian of
    ``smoothing_cm1`` FWHM, put on the grid 0, step, ... up to min(max_cm1, Nyquist
    1/(2·dt·c)) and normalised to unit area. velocities (F, N, 3) Å/fs, masses (N,) amu,
    ``dt_fs`` the frame spacing (fs); both returned arrays have the grid's length. None with fewer than 2 frames or non-finite velocities.
    """
    v = np.asarray(velocities, np.float64)
    m = np.asarray(masses, np.float64)
    if v.ndim != 3 or v.shape[1:] != (len(m), 3) or dt_fs <= 0:
        raise InputError(f"velocities must be (F, {len(m)}, 3) Å/fs and dt_fs > 0, got {v.shape}, {dt_fs}")
    if len(v) < 2 or not np.all(np.isfinite(v)):
        return None
    x = (v * np.sqrt(m)[:, None]).reshape(len(v), -1)
    n = 1 << int(np.ceil(np.log2(max(2 * len(v), 1.0 / (dt_fs * C_CM_FS * step_cm1)))))
    power = np.zeros(n // 2 + 1)
    for c in np.arange(0, x.shape[1], 8):  # chunks bound the memory of long runs
        power += np.sum(np.abs(np.fft.rfft(x[:, c:c + 8], n, axis=0)) ** 2, axis=1)
    wn_fft = np.fft.rfftfreq(n, dt_fs) / C_CM_FS
    sigma = smoothing_cm1 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    if sigma > 0:  # 'mirror' = the spectrum's own symmetry about 0 and Nyquist
        power = gaussian_filter1d(power, sigma / wn_fft[1], mode="mirror")
    top = min(max_cm1, wn_fft[-1])
    wn = step_cm1 * np.arange(int(np.floor(top / step_cm1 + 1e-9)) + 1)
    spec = np.interp(wn, wn_fft, power)
    return wn, spec / trapezoid(spec, wn)


def average_spectra(spectra):
    """Mean of (wn, I) spectra on one grid (replicas with the same frame spacing); None if any
    is None."""
    spectra = list(spectra)
    if not spectra or any(s is None for s in spectra):
        return None
    wn = spectra[0][0]
    if any(len(s[0]) != len(wn) or not np.allclose(s[0], wn) for s in spectra):
        raise InputError("average_spectra needs spectra on one wavenumber grid (same dt_fs and max_cm1)")
    return wn, np.mean([s[1] for s in spectra], axis=0)


def spectrum_overlap(spec_a, spec_b, min_top_cm1: float = 3700.0) -> float | None:
    """Overlap ∫min(a, b) dν̃ of two spectra (1 = identical, 0 = disjoint), b interpolated onto
    a's grid. Spectra of different frame spacings end at different wavenumbers (their Nyquist
    limits): both are then compared up to the lower end, each renormalised to unit area there,
    provided that end lies above ``min_top_cm1`` (cm⁻¹; default above the X–H stretches, the
    highest fundamentals of organic molecules: below it the coarser spectrum holds modes aliased
    from above its Nyquist limit, which the finer one does not), else None. None if either is None."""
    if spec_a is None or spec_b is None:
        return None
    (wa, a), (wb, b) = spec_a, spec_b
    top = min(wa[-1], wb[-1])
    same_end = abs(wa[-1] - wb[-1]) <= max(wa[1] - wa[0], wb[1] - wb[0])
    if (top < min_top_cm1 and not same_end) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    grid = wa[wa <= top + 1e-9]
    a, b = a[:len(grid)], np.interp(grid, wb, b)
    a, b = a / trapezoid(a, grid), b / trapezoid(b, grid)
    return float(trapezoid(np.minimum(a, b), grid))


def band_centroid(wn, spec, lo=2500.0, hi=3700.0) -> float | None:
    """Intensity-weighted mean wavenumber (cm⁻¹) between lo and hi; None if the grid stops below
    ``hi`` (Nyquist limit of the frame spacing), or the band is empty or not finite."""
    if wn is None or spec is None or wn[-1] < hi:
        return None
    sel = (wn >= lo) & (wn <= hi)
    area = trapezoid(spec[sel], wn[sel])
    if not np.isfinite(area) or area <= 0:
        return None
    return float(trapezoid(wn[sel] * spec[sel], wn[sel]) / area)


def xh_band_shift(spec_a, spec_ref, lo=2500.0, hi=3700.0) -> float | None:
    """Centroid of a's X–H band minus the reference's, in cm⁻¹; None if either is unmeasurable."""
    if spec_a is None or spec_ref is None:
        return None
    ca, cr = band_centroid(*spec_a, lo, hi), band_centroid(*spec_ref, lo, hi)
    return None if ca is None or cr is None else ca - cr


# -- torsion flips -------------------------------------------------------------------------


def torsion_transitions(dihedral_series_deg, dt_fs) -> dict:
    """Transitions between rotamer wells (g+ 60°, t 180°, g− −60°) in a dihedral series (F,) or
    (F, n_torsions) in degrees, frames ``dt_fs`` apart.

    A transition counts when the angle enters the core (±40°) of a well other than the last core
    visited (hysteresis: noise across a 120° sector border is not a flip). Returns
    ``n_transitions`` (total), ``per_torsion``, ``time_ps`` ((F − 1)·dt, per torsion),
    ``rate_per_ps`` (total / time_ps, None for zero time) and ``wells`` (F, n) sector index
    0/1/2 = g+/t/g−, −1 where not finite.
    """
    x = np.asarray(dihedral_series_deg, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    finite = np.isfinite(x)
    dist = np.where(finite[..., None], np.abs(wrap_deg(x[..., None] - WELLS_DEG)), np.inf)  # (F, n, 3)
    wells = np.where(finite, np.argmin(dist, axis=-1), -1)
    core = np.where(dist.min(axis=-1) <= CORE_DEG, wells, -1)
    per = np.array([np.count_nonzero(np.diff(c[c >= 0])) for c in core.T], np.int64)
    time_ps = max(len(x) - 1, 0) * dt_fs / 1000.0
    return {"n_transitions": int(per.sum()), "per_torsion": per, "time_ps": time_ps,
            "rate_per_ps": float(per.sum() / time_ps) if time_ps > 0 else None, "wells": wells}


def poisson_interval(n: int, confidence=0.95) -> tuple[float, float]:
    """Exact (Garwood, chi²-based) confidence interval of a Poisson mean given ``n`` counts."""
    alpha = 1.0 - confidence
    low = 0.0 if n == 0 else stats.chi2.ppf(alpha / 2, 2 * n) / 2
    return float(low), float(stats.chi2.ppf(1 - alpha / 2, 2 * n + 2) / 2)


def flip_rate_ratio(counts_a, time_a_ps, counts_b, time_b_ps, confidence=0.95) -> dict:
    """Rate ratio (a / b, b the reference) of transition counts over observed times (ps).

    Interval by the conditional binomial method: given n = n_a + n_b, n_a is binomial with
    p = ρ·t_a / (ρ·t_a + t_b); the Clopper–Pearson interval of p maps to ρ = p/(1−p)·t_b/t_a.
    Also each rate (1/ps) with its exact Poisson interval. ``ratio`` and ``high`` are None
    when the reference has no transitions.
    """
    na, nb, alpha = int(counts_a), int(counts_b), 1.0 - confidence
    if time_a_ps <= 0 or time_b_ps <= 0 or na < 0 or nb < 0:
        raise InputError(f"flip_rate_ratio needs counts >= 0 and times > 0 ps, got "
                         f"{na}, {time_a_ps}, {nb}, {time_b_ps}")
    p_lo = 0.0 if na == 0 else stats.beta.ppf(alpha / 2, na, nb + 1)
    p_hi = 1.0 if nb == 0 else stats.beta.ppf(1 - alpha / 2, na + 1, nb)
    scale = time_b_ps / time_a_ps
    out = {"ratio": None if nb == 0 else na / nb * scale,
           "low": None if na + nb == 0 else float(p_lo / (1 - p_lo) * scale),
           "high": None if nb == 0 else float(p_hi / (1 - p_hi) * scale), "n_a": na, "n_b": nb}
    for key, n, t in (("a", na, time_a_ps), ("b", nb, time_b_ps)):
        out[f"rate_{key}_per_ps"] = n / t
        out[f"rate_{key}_ci"] = tuple(c / t for c in poisson_interval(n, confidence))
    return out


# -- energy, temperature, stability --------------------------------------------------------


def mean_temperature(velocities, masses, dof=None) -> float | None:
    """Mean kinetic temperature in K over frames (..., N, 3) Å/fs with masses (N,) amu; dof
    defaults to 3N − 3."""
    t = np.asarray(temperature(np.asarray(velocities, np.float64), np.asarray(masses, np.float64), dof))
    return float(np.mean(t)) if t.size and np.all(np.isfinite(t)) else None


def blew_up(positions, bonds, ref_positions=None, max_stretch=2.0, min_distance=0.5) -> bool:
    """True if any frame (..., N, 3) is not finite, stretches a bond beyond ``max_stretch`` × its
    length in ``ref_positions`` (default: the first frame), or has any atom pair closer than
    ``min_distance`` Å (bonded or not)."""
    p = np.asarray(positions, np.float64)
    p = p.reshape(-1, *p.shape[-2:])
    if not np.all(np.isfinite(p)):
        return True
    ref = bond_lengths(p[0] if ref_positions is None else ref_positions, bonds)
    if np.any(bond_lengths(p, bonds) > max_stretch * ref):
        return True
    i, j = np.triu_indices(p.shape[1], 1)
    chunk = max(1, 2_000_000 // max(len(i), 1))
    return any(np.any(np.linalg.norm(p[s:s + chunk, i] - p[s:s + chunk, j], axis=-1) < min_distance)
               for s in range(0, len(p), chunk))


def kabsch_align(positions, reference, masses=None) -> np.ndarray:
    """Frames (F, N, 3) optimally rotated and translated (proper rotations only) onto the
    reference (N, 3), weighted by ``masses`` (N,) amu (None: equal weights); Å in, Å out,
    shape (F, N, 3)."""
    p, r = np.asarray(positions, np.float64), np.asarray(reference, np.float64)
    w = np.ones(r.shape[0]) if masses is None else np.asarray(masses, np.float64)
    w = w / w.sum()
    pc = p - np.einsum("n,...nd->...d", w, p)[..., None, :]
    rcom = w @ r
    h = np.einsum("n,...ni,nj->...ij", w, pc, r - rcom)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    u[..., :, 2] *= d[..., None]  # reflection guard
    return pc @ (u @ vt) + rcom


def rmsd_to_start(positions, masses=None) -> np.ndarray:
    """Mass-weighted RMSD in Å of every frame (F, N, 3) to frame 0 after Kabsch superposition:
    shape (F,), NaN for non-finite frames; ``masses`` (N,) amu, None for equal weights."""
    p = np.asarray(positions, np.float64)
    w = np.ones(p.shape[1]) if masses is None else np.asarray(masses, np.float64)
    ok = np.all(np.isfinite(p), axis=(1, 2))
    out = np.full(len(p), np.nan)
    if ok.any() and ok[0]:
        sq = np.sum((kabsch_align(p[ok], p[0], w) - p[0]) ** 2, axis=-1)
        out[ok] = np.sqrt(sq @ w / w.sum())
    return out


# -- plots ---------------------------------------------------------------------------------


def _figure(n_panels=1, width=6.0, height=3.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    fig = Figure(figsize=(width * (1 if n_panels == 1 else cols / 1.5), height * -(-n_panels // cols)))
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    return fig, [fig.add_subplot(-(-n_panels // cols), cols, k + 1) for k in range(n_panels)]


def plot_energy(path, series: dict) -> None:
    """PNG of total energy change E(t) − E(0) in kJ/mol against time (ps); series name → (t_fs, E_ev)."""
    fig, (ax,) = _figure()
    for name, (t, e) in series.items():
        e = np.asarray(e, np.float64)
        ax.plot(np.asarray(t) / 1000.0, (e - e[0]) / units.KJ_MOL, lw=0.8, label=name)
    ax.set(xlabel="time (ps)", ylabel="E − E(0) (kJ/mol)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_distributions(path, series: dict, kind="bond", labels=None, max_panels=12) -> None:
    """PNG of per-term histograms, one panel per term (at most ``max_panels``); series name →
    values (F, n_terms) in Å or degrees, binned as in ``distribution_js``."""
    kind = _kind(kind)
    vals = {k: np.asarray(v, np.float64).reshape(-1, np.shape(v)[-1]) for k, v in series.items()}
    n = min(max_panels, next(iter(vals.values())).shape[1]) if vals else 0
    fig, axes = _figure(max(n, 1), width=4.0, height=2.8)
    unit = "Å" if kind == "bond" else "deg"
    for t, ax in zip(range(n), axes):
        cols = [v[:, t][np.isfinite(v[:, t])] for v in vals.values()]
        cols = [wrap_deg(c) if kind == "dihedral" else c for c in cols]
        good = [c for c in cols if c.size]
        edges = _edges(kind, np.concatenate(good), np.concatenate(good)) if good else 10
        for name, c in zip(vals, cols):
            ax.hist(c, edges, density=True, histtype="step", label=name)
        ax.set(xlabel=f"{kind} {labels[t] if labels is not None else t} ({unit})")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_spectra(path, series: dict, band=(2500.0, 3700.0)) -> None:
    """PNG of vibrational spectra, series name → (wn cm⁻¹, I) or None; the X–H band shaded."""
    fig, (ax,) = _figure(width=7.0)
    ax.axvspan(*band, color="0.9")
    for name, spec in series.items():
        if spec is not None:
            ax.plot(spec[0], spec[1], lw=0.8, label=name)
    ax.set(xlabel="wavenumber (cm⁻¹)", ylabel="intensity (unit area)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
