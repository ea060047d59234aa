"""The xTB reference-data pipeline: store format, generation with resume, replicas, windows, CLI."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

import jkstep  # noqa: F401  (float64 mode)
from jkstep.data import generate as gen
from jkstep import analysis
from jkstep.data.replicas import (momentum, remove_rigid_motion,
                                  same_energy_velocities)
from jkstep.integrate import angular_momentum
from jkstep.data.store import ARRAYS, TrajectoryStore, load
from jkstep.data.windows import KEYS, WindowDataset
from jkstep.errors import InputError
from jkstep.molecule import Molecule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMI = os.path.join(REPO, "data", "qm_molecules.smi")
SPLITS = os.path.join(REPO, "data", "qm_splits.json")


# -- molecule list and splits -------------------------------------------------------------


def test_molecule_file_has_22_molecules_of_10_to_30_atoms():
    from rdkit import Chem

    molecules = gen.read_molecules(SMI)
    assert len(molecules) == 22
    elements = set()
    for smiles, name in molecules:
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, name
        mol = Chem.AddHs(mol)
        assert 10 <= mol.GetNumAtoms() <= 30, (name, mol.GetNumAtoms())
        elements |= {a.GetSymbol() for a in mol.GetAtoms()}
    assert {"C", "H", "N", "O", "S"} <= elements
    names = [n for _, n in molecules]
    assert "alanine_dipeptide" in names and "cysteine" in names


def test_splits_are_disjoint_and_cover_the_molecules():
    names = [n for _, n in gen.read_molecules(SMI)]
    splits = gen.read_splits(SPLITS, names)
    sets = {k: set(v) for k, v in splits.items()}
    assert [len(splits[k]) for k in ("train", "val", "test")] == [14, 4, 4]
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) \
        and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(names)
    smiles = dict((n, s) for s, n in gen.read_molecules(SMI))

    def elements(split):
        return {int(z) for n in splits[split] for z in Molecule.from_smiles(smiles[n], relax=False).numbers}

    assert elements("val") | elements("test") <= elements("train")


def test_splits_reject_overlap(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}))
    with pytest.raises(InputError, match="both train and val"):
        gen.read_splits(path)


# -- store --------------------------------------------------------------------------------


def _frames(first_step, n_frames, n_atoms=3, spacing=1, seed=0):
    rng = np.random.default_rng(seed)
    return {"positions": rng.normal(size=(n_frames, n_atoms, 3)),
            "velocities": rng.normal(size=(n_frames, n_atoms, 3)),
            "forces": rng.normal(size=(n_frames, n_atoms, 3)),
            "energy": rng.normal(size=n_frames), "kinetic": rng.random(n_frames),
            "step": first_step + spacing * np.arange(n_frames)}


def _new_store(path, n_atoms=3, spacing=1):
    return TrajectoryStore(path).create({"numbers": [8, 1, 1][:n_atoms] + [6] * max(0, n_atoms - 3),
                                         "masses": [16.0, 1.0, 1.0][:n_atoms] + [12.0] * max(0, n_atoms - 3),
                                         "dt_fs": 0.25, "frame_spacing": spacing, "name": "water"})


def test_store_round_trip(tmp_path):
    store = _new_store(tmp_path / "run", spacing=2)
    a, b = _frames(0, 4, spacing=2, seed=1), _frames(8, 3, spacing=2, seed=2)
    assert store.append(a, note="first") == 0
    assert store.append(b) == 1
    reopened = TrajectoryStore(tmp_path / "run")
    assert reopened.n_chunks == 2 and reopened.n_frames == 7 and reopened.meta["last_step"] == 12
    assert reopened.meta["note"] == "first" and reopened.meta["name"] == "water"
    data = load(tmp_path / "run")
    for key in ARRAYS:
        np.testing.assert_array_equal(data[key], np.concatenate([a[key], b[key]]))
        assert data[key].dtype == ARRAYS[key]
    np.testing.assert_array_equal(data["numbers"], [8, 1, 1])
    assert data["meta"]["n_frames"] == 7
    positions, velocities, step = reopened.last_state()
    np.testing.assert_array_equal(positions, b["positions"][-1])
    np.testing.assert_array_equal(velocities, b["velocities"][-1])
    assert step == 12
    some = reopened.load(frames=[5, 0, 5])
    np.testing.assert_array_equal(some["step"], [10, 0, 10])
    with np.load(tmp_path / "run" / "chunk_00001.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(ARRAYS)
        assert npz["positions"].dtype == np.float64 and npz["step"].dtype == np.int64


def test_store_refuses_nan_gaps_and_overwrites(tmp_path):
    store = _new_store(tmp_path / "run")
    store.append(_frames(0, 3))
    bad = _frames(3, 2)
    bad["forces"][1, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        store.append(bad)
    with pytest.raises(InputError, match="continue"):
        store.append(_frames(4, 2))  # step 3 missing
    assert store.n_chunks == 1 and not os.path.exists(tmp_path / "run" / "chunk_00001.npz")
    with pytest.raises(InputError, match="already holds"):
        _new_store(tmp_path / "run")


def test_store_chunk_writes_are_atomic(tmp_path, monkeypatch):
    store = _new_store(tmp_path / "run")
    store.append(_frames(0, 3))
    meta_before = (tmp_path / "run" / "meta.json").read_text()

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        store.append(_frames(3, 3))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "run")) == ["chunk_00000.npz", "meta.json"]  # no temp, no chunk
    assert (tmp_path / "run" / "meta.json").read_text() == meta_before
    # a chunk file that a crash left without its meta update is not counted and is rewritten;
    # a temporary file of a killed writer is swept away
    (tmp_path / "run" / "chunk_00001.npz").write_bytes(b"stale")
    (tmp_path / "run" / ".tmp-abc-chunk_00001.npz").write_bytes(b"killed")
    fresh = TrajectoryStore(tmp_path / "run")
    assert fresh.n_chunks == 1 and fresh.n_frames == 3
    fresh.append(_frames(3, 3, seed=5))
    np.testing.assert_array_equal(load(tmp_path / "run")["step"], np.arange(6))
    assert sorted(os.listdir(tmp_path / "run")) == ["chunk_00000.npz", "chunk_00001.npz", "meta.json"]


# -- same-energy replicas -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ethanol():
    return Molecule.from_smiles("CCO", seed=0)


def test_remove_rigid_motion(ethanol):
    rng = np.random.default_rng(0)
    v = ethanol.thermal_velocities(300.0, 1) + rng.normal(size=3) * 0.01
    v = v + np.cross(rng.normal(size=3) * 0.01, ethanol.positions)  # add a rigid spin
    out = remove_rigid_motion(ethanol.positions, v, ethanol.masses)
    assert np.abs(momentum(out, ethanol.masses)).max() < 1e-12
    assert np.abs(angular_momentum(ethanol.positions, out, ethanol.masses)).max() < 1e-10
    assert ke(out, ethanol.masses) < ke(v, ethanol.masses)


def test_same_energy_velocities_keep_the_energy_shell(ethanol):
    from jkstep.potentials.xtb import xtb_potential

    x = ethanol.positions
    v = remove_rigid_motion(x, ethanol.thermal_velocities(300.0, 3), ethanol.masses)
    new = same_energy_velocities(ethanol, x, v, seed=7)
    ke0 = ke(v, ethanol.masses)
    assert ke(new, ethanol.masses) == pytest.approx(ke0, rel=1e-13)
    assert np.abs(momentum(new, ethanol.masses)).max() < 1e-12
    assert np.abs(angular_momentum(x, new, ethanol.masses)).max() < 1e-10
    assert np.abs(new - v).max() > 1e-3  # new directions
    mv2 = np.sum(v * v * ethanol.masses[:, None])
    assert abs(np.sum(new * v * ethanol.masses[:, None]) / mv2) < 0.9  # mass-weighted cosine (equal norms)
    np.testing.assert_array_equal(new, same_energy_velocities(ethanol, x, v, seed=7))
    assert not np.allclose(new, same_energy_velocities(ethanol, x, v, seed=8))
    energy = float(xtb_potential(ethanol, workers=1)(x)[0])
    assert energy + ke(new, ethanol.masses) == pytest.approx(energy + ke0, abs=1e-12)


# -- generation: resume, meta, failure ----------------------------------------------------


def _config(tmp_path, out="out", **changes):
    tmp_path.joinpath("m.smi").write_text("# tiny\nCCO ethanol\n")
    tmp_path.joinpath("s.json").write_text(json.dumps({"train": [], "val": ["ethanol"], "test": []}))
    settings = dict(molecules=str(tmp_path / "m.smi"), splits=str(tmp_path / "s.json"),
                    output=str(tmp_path / out), equilibration_ps=0.005, production_ps=0.00975,
                    replicas=1, replica_ps=0.00475, chunk_frames=10, workers=1)
    settings.update(changes)
    return gen.GenerateConfig(**settings)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted ethanol run: 20 Langevin steps, 40 NVE frames, one 20-frame replica."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = _config(tmp)
    total, done = [], []
    result = gen.generate(cfg, progress=done.append, on_total=total.append, processes=False)
    return cfg, result, total, done


def test_generate_writes_all_frames(reference_run):
    cfg, result, total, done = reference_run
    assert result[0]["status"] == "complete"
    assert total == [20 + 39 + 19] and sum(done) == total[0]
    prod = load(os.path.join(cfg.output, "ethanol", "production"))
    np.testing.assert_array_equal(prod["step"], np.arange(40))
    assert prod["positions"].shape == (40, 9, 3) and prod["meta"]["n_chunks"] == 4
    rep = load(os.path.join(cfg.output, "ethanol", "replica_01"))
    np.testing.assert_array_equal(rep["step"], np.arange(20))
    np.testing.assert_array_equal(rep["positions"][0], prod["positions"][0])
    # same energy shell: identical start energy, and both conserve it
    e_prod = prod["energy"] + prod["kinetic"]
    e_rep = rep["energy"] + rep["kinetic"]
    assert e_rep[0] == pytest.approx(e_prod[0], abs=1e-9)
    assert np.std(e_prod) < 2e-4 and np.std(e_rep) < 2e-4
    m = prod["masses"]
    np.testing.assert_allclose(prod["kinetic"], kinetic_energy_frames(prod["velocities"], m), rtol=1e-12)
    assert np.abs(momentum(prod["velocities"][0], m)).max() < 1e-10
    assert np.abs(angular_momentum(prod["positions"][0], prod["velocities"][0], m)).max() < 1e-9


def ke(v, m) -> float:
    """Kinetic energy (eV) of one frame."""
    return float(analysis.kinetic_energy(v, m))


def kinetic_energy_frames(v, m):
    return np.array([float(analysis.kinetic_energy(x, m)) for x in v])


def test_meta_records_what_a_reader_needs(reference_run):
    cfg, *_ = reference_run
    meta = TrajectoryStore(os.path.join(cfg.output, "ethanol", "production")).meta
    assert meta["numbers"] == [6, 6, 8, 1, 1, 1, 1, 1, 1] and len(meta["masses"]) == 9
    assert meta["charge"] == 0 and meta["spin"] == 0 and meta["smiles"] == "CCO"
    assert meta["name"] == "ethanol" and meta["method"] == "GFN2-xTB" and meta["accuracy"] == 0.01
    assert meta["dt_fs"] == 0.25 and meta["frame_spacing"] == 1 and meta["temperature_k"] == 300.0
    assert meta["ensemble"] == "nve" and meta["equilibration"]["friction_per_fs"] == 0.01
    assert meta["equilibration"]["steps"] == 20 and meta["seed"] == 0
    assert set(meta["versions"]) >= {"jax", "tblite", "ase", "rdkit", "numpy", "jkstep"}
    assert meta["counters"]["calls"] >= 40 and meta["counters"]["failed"] == 0
    assert meta["equilibration_counters"]["calls"] == 21  # init + 20 Langevin steps
    assert meta["n_frames"] == 40 and meta["status"] == "complete" and meta["failure"] is None
    replica = TrajectoryStore(os.path.join(cfg.output, "ethanol", "replica_01")).meta
    assert replica["run"] == "replica_01" and "replica_seed" in replica["start"]


def test_interrupted_generation_resumes_without_loss_or_duplication(tmp_path, reference_run):
    cfg_ref, *_ = reference_run
    cfg = _config(tmp_path)
    calls = []

    def crash(n):  # calls: 2 Langevin pieces, then one per production chunk; dies with the
        calls.append(n)  # third chunk computed but not yet written
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gen.generate(cfg, progress=crash, processes=False)
    store = TrajectoryStore(os.path.join(cfg.output, "ethanol", "production"))
    assert store.n_chunks == 2 and store.n_frames == 20
    result = gen.generate(cfg, processes=False)
    assert result[0]["status"] == "complete"
    for run in ("production", "replica_01"):
        ref = load(os.path.join(cfg_ref.output, "ethanol", run))
        got = load(os.path.join(cfg.output, "ethanol", run))
        np.testing.assert_array_equal(got["step"], ref["step"])
        np.testing.assert_array_equal(got["step"], np.arange(len(ref["step"])))
        np.testing.assert_allclose(got["positions"], ref["positions"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["velocities"], ref["velocities"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(load(store.path)["positions"][:20],
                                  load(os.path.join(cfg_ref.output, "ethanol", "production"))["positions"][:20])
    # a finished molecule is skipped: no new calls, nothing rewritten
    before = store.reload().meta
    again = gen.generate(cfg, processes=False)
    assert again[0]["status"] == "complete" and store.reload().meta == before


class _FlakyHarmonic:
    """Springs to a reference geometry (eV/Å²), computed on the host; NaN from call ``fail_at`` on."""

    def __init__(self, molecule, fail_at=None):
        import jax

        self.x0 = np.asarray(molecule.positions)
        self.fail_at = fail_at
        self.calls = 0
        self._jax = jax

    def _host(self, x):
        self.calls += 1
        d = np.asarray(x) - self.x0
        e, f = 5.0 * np.sum(d * d), -10.0 * d
        if self.fail_at is not None and self.calls >= self.fail_at:
            return np.float64(np.nan), np.full_like(f, np.nan)
        return np.float64(e), f

    def __call__(self, x):
        import jax.numpy as jnp

        shapes = (self._jax.ShapeDtypeStruct((), jnp.float64), self._jax.ShapeDtypeStruct(x.shape, jnp.float64))
        return self._jax.pure_callback(self._host, shapes, x)

    def counters(self):
        return {"calls": self.calls, "failed": int(self.fail_at is not None and self.calls >= self.fail_at)}


def test_scf_failure_stops_at_last_good_chunk(tmp_path):
    cfg = _config(tmp_path, equilibration_ps=0.0, production_ps=0.01225, replicas=0)  # 50 frames
    made = []

    def factory(molecule, cfg):
        made.append(_FlakyHarmonic(molecule, fail_at=25))
        return made[-1]

    result = gen.generate(cfg, processes=False, potential_factory=factory)
    run = result[0]["runs"]["production"]
    assert result[0]["status"] == "failed" and run["status"] == "failed" and run["n_frames"] == 20
    assert "SCF failed" in run["failure"] and "step 2" in run["failure"]
    data = load(os.path.join(cfg.output, "ethanol", "production"))
    np.testing.assert_array_equal(data["step"], np.arange(20))
    assert all(np.isfinite(data[k]).all() for k in ARRAYS)
    assert data["meta"]["counters"]["failed"] >= 1
    again = gen.generate(cfg, processes=False, potential_factory=factory)  # recorded: not retried
    assert again[0]["status"] == "failed" and len(made) == 1  # no potential built, no calls


def test_max_chunks_interrupts_and_a_longer_run_extends(tmp_path):
    cfg = _config(tmp_path, equilibration_ps=0.0, production_ps=0.00725, replicas=0)  # 30 frames

    def factory(molecule, cfg):
        return _FlakyHarmonic(molecule)

    first = gen.generate(cfg, processes=False, max_chunks=1, potential_factory=factory)
    assert first[0]["status"] == "interrupted"
    store = TrajectoryStore(os.path.join(cfg.output, "ethanol", "production"))
    assert store.n_frames == 10
    gen.generate(cfg, processes=False, potential_factory=factory)
    assert store.reload().n_frames == 30 and store.meta["status"] == "complete"
    longer = _config(tmp_path, equilibration_ps=0.0, production_ps=0.01225, replicas=0)
    gen.generate(longer, processes=False, potential_factory=factory)
    np.testing.assert_array_equal(load(store.path)["step"], np.arange(50))
    changed = _config(tmp_path, equilibration_ps=0.0, production_ps=0.01225, replicas=0, dt_fs=0.5)
    with pytest.raises(InputError, match="dt_fs"):
        gen.generate(changed, processes=False, potential_factory=factory)


# -- windows ------------------------------------------------------------------------------


def _window_store(path, n_atoms, n_frames, spacing=1, name="m"):
    store = TrajectoryStore(path).create({"numbers": list(range(1, n_atoms + 1)), "name": name,
                                          "masses": [2.0] * n_atoms, "dt_fs": 0.25, "frame_spacing": spacing})
    steps = spacing * np.arange(n_frames)
    code = steps[:, None, None] + np.zeros((1, n_atoms, 3))  # every value encodes its step
    for lo in range(0, n_frames, 7):
        sl = slice(lo, lo + 7)
        store.append({"positions": code[sl], "velocities": code[sl] + 0.5, "forces": -code[sl],
                      "energy": steps[sl] * 1.0, "kinetic": steps[sl] * 0.0, "step": steps[sl]})
    return store


def test_windows_shapes_masks_padding_and_buckets(tmp_path):
    _window_store(tmp_path / "a", 5, 30, name="small")
    _window_store(tmp_path / "b", 12, 30, name="large")
    ds = WindowDataset([tmp_path / "a", tmp_path / "b"], k=4, stride=3, buckets=(8, 16))
    assert ds.k == 4 and ds.dt_fs == 0.25 and ds.elements == tuple(range(1, 13))
    assert ds.n_windows == 18 and ds.bucket_sizes() == {8: 9, 16: 9}
    seen = []
    batches = list(ds.batches(4, seed=0))
    assert len(batches) == ds.n_batches(4) == 6
    for b in batches:
        assert list(b) == list(KEYS)
        size, n = b["numbers"].shape
        assert n in (8, 16) and b["numbers"].dtype == np.int32 and b["mask"].dtype == bool
        atoms = 5 if n == 8 else 12
        assert b["mask"][:, :atoms].all() and not b["mask"][:, atoms:].any()
        assert (b["numbers"][:, atoms:] == 0).all() and (b["masses"][:, atoms:] == 1.0).all()
        for key in KEYS[3:]:
            assert b[key].shape == (size, n, 3) and b[key].dtype == np.float64
            assert (b[key][:, atoms:] == 0).all()
        t = b["positions"][:, 0, 0]
        np.testing.assert_array_equal(b["target_positions"][:, 0, 0], t + 4)
        np.testing.assert_array_equal(b["target_velocities"][:, 0, 0], t + 4.5)
        np.testing.assert_array_equal(b["target_forces"][:, 0, 0], -(t + 4))
        seen += [(n, int(x)) for x in t]
    assert sorted(seen) == sorted((n, s) for n in (8, 16) for s in range(0, 25, 3))
    order = [b["positions"][:, 0, 0].tolist() for b in ds.batches(4, seed=0)]
    assert order == [b["positions"][:, 0, 0].tolist() for b in batches]
    assert order != [b["positions"][:, 0, 0].tolist() for b in ds.batches(4, seed=1)]
    assert all(len(b["mask"]) == 4 for b in ds.batches(4, seed=0, drop_last=True))
    plain = list(ds.batches(4, shuffle=False))
    assert plain[0]["positions"][:, 0, 0].tolist() == [0, 3, 6, 9]


def test_windows_check_spacing_and_bucket_size(tmp_path):
    _window_store(tmp_path / "a", 5, 20, spacing=2)
    with pytest.raises(InputError, match="multiple of the frame spacing"):
        WindowDataset([tmp_path / "a"], k=3, stride=2)
    ds = WindowDataset([tmp_path / "a"], k=4, stride=2)
    assert ds.n_windows == 18
    with pytest.raises(InputError, match="largest bucket"):
        WindowDataset([tmp_path / "a"], k=4, stride=2, buckets=(4,))


def test_multi_jump_windows_carry_the_path(tmp_path):
    """Windows of J jumps hold the frames at t + k … t + Jk (target_* is the first), need J·k steps
    of trajectory, and are the same from a store and from a window file (chained pairs)."""
    from jkstep.data.dataset import build_dataset
    from jkstep.data.windows import PATH_KEYS

    _window_store(tmp_path / "a", 5, 30, name="small")
    ds = WindowDataset([tmp_path / "a"], k=4, stride=3, buckets=(8,), jumps=3)
    assert ds.jumps == 3 and ds.n_windows == len(range(0, 30 - 12, 3))
    for b in ds.batches(4, seed=0):
        assert list(b) == list(KEYS) + list(PATH_KEYS)
        t = b["positions"][:, 0, 0]
        for j in range(3):
            np.testing.assert_array_equal(b["path_positions"][:, j, 0, 0], t + 4 * (j + 1))
            np.testing.assert_array_equal(b["path_velocities"][:, j, 0, 0], t + 4 * (j + 1) + 0.5)
            np.testing.assert_array_equal(b["path_forces"][:, j, 0, 0], -(t + 4 * (j + 1)))
        np.testing.assert_array_equal(b["target_positions"], b["path_positions"][:, 0])
        assert b["path_positions"].shape == (len(t), 3, 8, 3) and (b["path_positions"][:, :, 5:] == 0).all()
    assert "path_positions" not in next(WindowDataset([tmp_path / "a"], k=4).batches(4))
    with pytest.raises(InputError, match="jumps must be an integer"):
        WindowDataset([tmp_path / "a"], k=4, jumps=0)
    store = _random_store(tmp_path / "r")
    row = build_dataset([store.path], [8], 4, tmp_path / "windows")[0]
    from_file = WindowDataset([row["file"]], k=8, stride=8, jumps=2)
    from_store = WindowDataset([store.path], k=8, stride=8, jumps=2)
    assert from_file.n_windows == from_store.n_windows == len(range(0, 41 - 16, 8))
    a, b = next(from_file.batches(8, shuffle=False)), next(from_store.batches(8, shuffle=False))
    np.testing.assert_allclose(a["path_forces"], b["path_forces"])


def test_windows_from_split(tmp_path):
    for name in ("x", "y", "z"):
        _window_store(tmp_path / "qm" / name / "production", 5, 12, name=name)
    (tmp_path / "s.json").write_text(json.dumps({"train": ["x", "y"], "val": ["z"], "test": []}))
    ds = WindowDataset.from_split(tmp_path / "qm", tmp_path / "s.json", "train", k=2, stride=5)
    assert ds.names == ["x/production", "y/production"] and ds.n_windows == 4
    with pytest.raises(InputError, match="empty"):
        WindowDataset.from_split(tmp_path / "qm", tmp_path / "s.json", "test", k=2)


# -- command line -------------------------------------------------------------------------


def _yaml(tmp_path, **settings):
    import yaml

    tmp_path.joinpath("m.smi").write_text("CCO ethanol\n")
    tmp_path.joinpath("s.json").write_text(json.dumps({"train": [], "val": ["ethanol"], "test": []}))
    base = dict(molecules=str(tmp_path / "m.smi"), splits=str(tmp_path / "s.json"),
                output=str(tmp_path / "qm"), equilibration_ps=0.0025, production_ps=0.0025,
                replicas=1, replica_ps=0.0025, chunk_frames=8, workers=1)
    base.update(settings)
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.mark.slow
def test_cli_generate_runs_in_a_worker_process(tmp_path, capsys):
    from jkstep import cli

    config = _yaml(tmp_path)
    assert cli.main(["generate", "--config", str(config), "--summary", str(tmp_path / "sum.json")]) == 0
    out = capsys.readouterr().out
    assert "ethanol: complete" in out
    for run in ("production", "replica_01"):
        data = load(tmp_path / "qm" / "ethanol" / run)
        np.testing.assert_array_equal(data["step"], np.arange(11))
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["molecules"][0]["runs"]["production"]["n_frames"] == 11
    assert not glob.glob(str(tmp_path / "qm" / "**" / ".tmp-*"), recursive=True)


@pytest.mark.parametrize("settings, message", [
    ({"production_length": 1.0}, "unknown key(s) production_length"),
    ({"production_ps": -1.0}, "production_ps must be > 0"),
    ({"replicas": -2}, "replicas must be an integer"),
    ({"production_ps": "abc"}, "production_ps must be a number, got 'abc'"),
    ({"replicas": True}, "replicas must be an integer, got True"),
    ({"temperature_k": 1e9}, "temperature_k must be at most 10000 K, got 1e+09"),
    ({"molecules": "/nonexistent/m.smi"}, "no such molecules file"),
    ({"method": "GFN-FF"}, "method 'GFN-FF' is unknown"),
    ({"only": ["benzene"]}, "names unknown molecule(s) benzene; the names are those of"),
])
def test_cli_generate_bad_config_exits_2_with_one_line(tmp_path, capsys, settings, message):
    from jkstep import cli

    config = _yaml(tmp_path, **settings)
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--config", str(config)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jkstep: error: ") and message in err


def test_cli_generate_missing_config_exits_2(tmp_path, capsys):
    from jkstep import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--config", str(tmp_path / "none.yaml")])
    assert exc.value.code == 2 and "no such config file" in capsys.readouterr().err


def _random_store(path, n_atoms=4, n_frames=41, name="r"):
    rng = np.random.default_rng(3)
    store = TrajectoryStore(path).create({"numbers": [6, 1, 1, 8][:n_atoms], "name": name,
                                          "masses": [12.0, 1.0, 1.0, 16.0][:n_atoms], "dt_fs": 0.25,
                                          "frame_spacing": 1})
    steps = np.arange(n_frames)
    store.append({"positions": rng.normal(size=(n_frames, n_atoms, 3)) + 5.0,
                  "velocities": rng.normal(size=(n_frames, n_atoms, 3)) * 0.01,
                  "forces": rng.normal(size=(n_frames, n_atoms, 3)), "energy": rng.normal(size=n_frames),
                  "kinetic": rng.random(n_frames), "step": steps})
    return store


def test_window_files_index_frames_k_steps_apart(tmp_path, capsys):
    from jkstep.cli import main
    from jkstep.data.dataset import build_dataset, read_file

    store = _random_store(tmp_path / "qm" / "r" / "production")
    raw = store.load()
    out = tmp_path / "windows"
    row = build_dataset([store.path], [4, 8, 16], 4, out)[0]
    d = read_file(row["file"])
    assert int(d["frame_step"]) == 4 and d["positions"].shape == (11, 4, 3) and d["name"] == "r"
    m = raw["masses"][None, :, None]
    com_x = (m * raw["positions"]).sum(1) / m.sum()
    for k in (4, 8, 16):
        pairs = d[f"windows_k{k}"]
        assert len(pairs) == (41 - k - 1) // 4 + 1
        np.testing.assert_array_equal(d["steps"][pairs[:, 1]] - d["steps"][pairs[:, 0]], k)
        t = d["steps"][pairs[:, 1]]
        np.testing.assert_allclose(d["positions"][pairs[:, 1]], raw["positions"][t] - com_x[t][:, None], atol=1e-12)
        np.testing.assert_array_equal(d["forces"][pairs[:, 1]], raw["forces"][t])
    # centre of mass at rest at the origin in every frame
    md = d["masses"][None, :, None]
    np.testing.assert_allclose((md * d["positions"]).sum(1), 0, atol=1e-10)
    np.testing.assert_allclose((md * d["velocities"]).sum(1), 0, atol=1e-12)
    # the dataset reads files and stores alike (files: COM removed); stride must fit the file
    from_file = WindowDataset([row["file"]], k=8, stride=8)
    from_store = WindowDataset([store.path], k=8, stride=8)
    assert from_file.n_windows == from_store.n_windows == 5
    a, b = next(from_file.batches(8, shuffle=False)), next(from_store.batches(8, shuffle=False))
    np.testing.assert_allclose(a["target_forces"], b["target_forces"])
    mb, vb = b["masses"][:, :4, None], b["velocities"][:, :4]
    np.testing.assert_allclose(a["velocities"][:, :4], vb - (mb * vb).sum(1, keepdims=True) / mb.sum(1, keepdims=True),
                               atol=1e-12)
    with pytest.raises(InputError, match="not k = 32"):
        WindowDataset([row["file"]], k=32, stride=4)
    with pytest.raises(InputError, match="multiple of the file's stride"):
        WindowDataset([row["file"]], k=8, stride=6)
    # a rerun keeps existing files; the CLI builds the same
    assert build_dataset([store.path], [4, 8, 16], 4, out)[0].get("skipped")
    assert main(["dataset", "--data", str(tmp_path / "qm"), "--out", str(tmp_path / "cli"), "--k", "4", "8"]) == 0
    assert "1 trajectories" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset", "--data", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "no data directory" in capsys.readouterr().err


def test_training_data_from_window_files_alone(tmp_path):
    """A data section with `windows` needs only the window files (trajectories elsewhere), and a
    trajectory present without its window file is an error; batches equal the stores' batches."""
    import json
    import shutil

    from jkstep.data.dataset import build_dataset
    from jkstep.data.windows import datasets_from_config

    stores = [_random_store(tmp_path / "qm" / name / "production", name=name) for name in ("a", "b")]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ["a", "missing"], "val": ["b"], "test": []}))
    build_dataset([s.path for s in stores], [8], 4, tmp_path / "w")
    data = {"dir": str(tmp_path / "qm"), "splits": str(splits), "windows": str(tmp_path / "w"), "stride": 4}
    train, val = datasets_from_config(data, 8)
    assert train.n_windows == val.n_windows == 9
    from_store = WindowDataset([stores[0].path], k=8, stride=4)
    a = next(train.batches(9, shuffle=False))
    b = next(from_store.batches(9, shuffle=False))
    np.testing.assert_array_equal(a["target_forces"], b["target_forces"])
    assert a["mask"][:, :4].all() and not a["mask"][:, 4:].any()
    shutil.rmtree(tmp_path / "qm")                      # another machine: window files only
    train2, _ = datasets_from_config(data, 8)
    np.testing.assert_array_equal(next(train2.batches(9, shuffle=False))["positions"], a["positions"])
    _random_store(tmp_path / "qm" / "b" / "production", name="b")
    (tmp_path / "w" / "b__production.npz").unlink()     # a trajectory without its window file
    with pytest.raises(InputError, match="no window file"):
        datasets_from_config(data, 8)
