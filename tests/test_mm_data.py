"""Classical (MMFF94) pretraining data: molecule list, bucket padding, NVE generation with
resume and failure handling, the windows loader on MM data, and the CLI.

Every generation in this file uses the same small system and settings (bucket, replicas, chunk,
thermalisation steps), so the jitted MM functions compile once for the whole module."""

from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import pytest
import yaml

import jkstep  # noqa: F401  (float64 mode)
from jkstep.data import mm
from jkstep.data.generate import read_molecules, read_splits
from jkstep.data.store import ARRAYS, TrajectoryStore, load
from jkstep.data.windows import WindowDataset
from jkstep.errors import InputError
from jkstep.molecule import Molecule
from jkstep.potentials.mmff import KCAL_MOL, mmff_potential
from jkstep.units import KJ_MOL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MM_SMI = os.path.join(REPO, "data", "mm_molecules.smi")
QM_SMI = os.path.join(REPO, "data", "qm_molecules.smi")
QM_SPLITS = os.path.join(REPO, "data", "qm_splits.json")

#: The one small system of this module's runs: two molecules in one bucket.
SMALL = "CCO ethanol\nCCS ethanethiol\n"
SETTINGS = dict(equilibration_ps=0.05, production_ps=0.1, replicas=2, chunk_frames=64, buckets=[12])
N_FRAMES = 401  # 0.1 ps / 0.25 fs + the start frame


# -- the molecule list --------------------------------------------------------------------


def _rdkit_mmff(smiles, positions):
    """RDKit's MMFF94 energy (eV) and gradient (eV/Å) of ``smiles`` (RDKit's atom order) at ``positions``."""
    from rdkit import Chem
    from rdkit.Chem import rdForceFieldHelpers

    mol = Chem.MolFromMolBlock(Molecule.from_smiles(smiles, seed=0).mol_block, removeHs=False)
    ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(
        mol, rdForceFieldHelpers.MMFFGetMoleculeProperties(mol), ignoreInterfragInteractions=False)
    x = np.asarray(positions, np.float64).ravel().tolist()
    return ff.CalcEnergy(x) * KCAL_MOL, np.array(ff.CalcGrad(x)).reshape(-1, 3) * KCAL_MOL


def _skeleton(smiles: str) -> str:
    """InChIKey first block: the same for every protonation state, tautomer and stereoisomer."""
    from rdkit import Chem
    from rdkit.Chem import inchi

    return inchi.MolToInchiKey(Chem.MolFromSmiles(smiles))[:14]


def test_mm_molecule_file_is_valid_diverse_and_free_of_qm_test_molecules():
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdForceFieldHelpers

    molecules = read_molecules(MM_SMI)
    assert len(molecules) >= 100
    canonical, elements, charged, sulfur = set(), set(), 0, 0
    for smiles, name in molecules:
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, name
        can = Chem.MolToSmiles(mol)
        assert can not in canonical, f"{name} is listed twice"
        canonical.add(can)
        mol = Chem.AddHs(mol)
        assert 10 <= mol.GetNumAtoms() <= 40, (name, mol.GetNumAtoms())
        symbols = {a.GetSymbol() for a in mol.GetAtoms()}
        assert symbols <= {"C", "H", "N", "O", "S"}, (name, symbols)
        elements |= symbols
        charged += any(a.GetFormalCharge() for a in mol.GetAtoms())
        sulfur += "S" in symbols
        with rdBase.BlockLogs():
            assert rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol), f"{name} is not MMFF94-typeable"
    assert elements == {"C", "H", "N", "O", "S"} and charged >= 5 and sulfur >= 10
    # the xTB test molecules, in any protonation state / tautomer / stereoisomer, are not in it
    qm = {name: smiles for smiles, name in read_molecules(QM_SMI)}
    test = read_splits(QM_SPLITS, list(qm))["test"]
    assert set(test) == {"alanine_dipeptide", "cysteine", "adenine", "paracetamol"}
    forbidden = {_skeleton(qm[name]): name for name in test}
    clashes = [(name, forbidden[_skeleton(s)]) for s, name in molecules if _skeleton(s) in forbidden]
    assert not clashes
    assert not {name for _, name in molecules} & set(test)


# -- padding ------------------------------------------------------------------------------


@pytest.mark.slow
def test_padded_potential_equals_unpadded_and_padded_atoms_feel_nothing():
    from rdkit import Chem
    from rdkit.Chem import rdForceFieldHelpers

    smiles = ["[NH3+]CC(=O)[O-]", "Sc1ccccc1", "CC(=O)c1ccccc1"]  # charged, sulfur, aromatic
    mols = [Molecule.from_smiles(s, seed=1) for s in smiles]
    pots = [mmff_potential(m) for m in mols]
    bucket = 20
    sizes = {k: max(mm.term_counts(p)[k] for p in pots) + 3 for k in mm.term_counts(pots[0])}
    run = jax.jit(lambda p, x: p(x))  # the padded potential travels as an argument
    for mol, pot in zip(mols, pots):
        n = len(mol)
        padded = mm.pad_potential(pot, bucket, sizes)
        assert padded.n_atoms == bucket + mm.GHOSTS and padded.name == ""
        assert mm.term_counts(padded) == sizes
        x, v, masses, mask = mm.pad_state(mol.positions, np.zeros((n, 3)), mol.masses, bucket)
        assert mask.sum() == n and np.all(masses[n:] == 1.0) and np.all(v[n:] == 0.0)
        far = np.linalg.norm(x[n:, None] - np.concatenate([x[:n], x[n:]])[None], axis=-1)
        far[np.arange(len(far)), n + np.arange(len(far))] = np.inf
        assert far.min() >= mm.FAR - 50.0  # every padded atom ~1000 Å from everything
        e_pad, f_pad = run(padded, x)
        np.testing.assert_array_equal(np.asarray(f_pad)[n:], 0.0)
        # against RDKit's MMFF94 (the unpadded JAX potential equals it: tests/test_mmff.py)
        rd = Chem.MolFromMolBlock(mol.mol_block, removeHs=False)
        ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(
            rd, rdForceFieldHelpers.MMFFGetMoleculeProperties(rd), ignoreInterfragInteractions=False)
        e_rd = ff.CalcEnergy(mol.positions.ravel().tolist()) * KCAL_MOL
        g_rd = np.array(ff.CalcGrad(mol.positions.ravel().tolist())).reshape(n, 3) * KCAL_MOL
        np.testing.assert_allclose(float(e_pad), e_rd, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(f_pad)[:n], -g_rd, rtol=1e-6, atol=1e-8)
    assert run._cache_size() == 1  # three molecules, one compilation
    # and the padded numbers equal the unpadded JAX potential's to round-off
    e, f = pots[1](mols[1].positions)
    x, *_ = mm.pad_state(mols[1].positions, np.zeros((len(mols[1]), 3)), mols[1].masses, bucket)
    e_pad, f_pad = run(mm.pad_potential(pots[1], bucket, sizes), x)
    np.testing.assert_allclose(float(e_pad), float(e), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(f_pad)[:len(mols[1])], np.asarray(f), rtol=1e-10, atol=1e-12)


def test_bucket_assignment_and_padding_errors():
    assert mm.bucket_of(9, (12, 24)) == 12 and mm.bucket_of(12, (12, 24)) == 12 and mm.bucket_of(13, (12, 24)) == 24
    with pytest.raises(InputError, match="larger than the largest bucket 24"):
        mm.bucket_of(25, (12, 24))
    pot = mmff_potential(Molecule.from_smiles("CCO", seed=0))
    with pytest.raises(InputError, match="more than its bucket"):
        mm.pad_potential(pot, 8, mm.term_counts(pot))
    with pytest.raises(InputError, match="more than the padded size"):
        mm.pad_potential(pot, 12, dict(mm.term_counts(pot), pairs=1))


# -- generation ---------------------------------------------------------------------------


def _config(tmp_path, **changes) -> mm.MMConfig:
    smi = tmp_path / "small.smi"
    if not smi.exists():
        smi.write_text(SMALL)
    return mm.MMConfig(**{**SETTINGS, "molecules": str(smi), "output": str(tmp_path / "mm"), **changes})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted generation of the small system: (config, results)."""
    tmp = tmp_path_factory.mktemp("mm_reference")
    cfg = _config(tmp)
    totals, done = [], []
    compiled = mm.compiled_functions()
    results = mm.generate_mm(cfg, progress=done.append, on_total=totals.append)
    # two molecules, two replicas each, one bucket: thermalisation and NVE chunk compiled once each
    assert mm.compiled_functions() - compiled <= 2
    return cfg, results, totals, sum(done)


@pytest.mark.slow
def test_generation_writes_every_frame_in_the_shared_format(reference):
    cfg, results, totals, done = reference
    assert [r["status"] for r in results] == ["complete", "complete"]
    assert totals == [2 * (cfg.equilibration_steps + N_FRAMES - 1)] and done == totals[0]
    for name in ("ethanol", "ethanethiol"):
        runs = sorted(os.listdir(os.path.join(cfg.output, name)))
        assert runs == ["production", "replica_01"]
        starts = []
        for run in runs:
            data = load(os.path.join(cfg.output, name, run))
            meta = data["meta"]
            np.testing.assert_array_equal(data["step"], np.arange(N_FRAMES))
            assert data["positions"].shape == (N_FRAMES, 9, 3)  # real atoms only
            for key in ARRAYS:
                assert np.all(np.isfinite(data[key]))
            assert [c["n_frames"] for c in meta["chunks"]] == [64] * 6 + [17]
            assert meta["kind"] == "mm" and meta["method"] == "MMFF94" and meta["run"] == run
            assert meta["integrator"] == "velocity_verlet" and meta["ensemble"] == "nve"
            assert meta["dt_fs"] == 0.25 and meta["frame_spacing"] == 1 and meta["status"] == "complete"
            assert meta["padding"]["bucket"] == 12 and meta["padding"]["padded_atoms"] == 16
            assert meta["steps_run"] == N_FRAMES - 1 and meta["failure"] is None
            ke = 0.5 * jkstep.units.KINETIC * np.sum(data["masses"][None, :, None] * data["velocities"] ** 2,
                                                     axis=(1, 2))
            np.testing.assert_allclose(data["kinetic"], ke, rtol=1e-12)
            starts.append(data["positions"][0])
            # energy and forces are MMFF94's (RDKit's) at the stored positions
            e_rd, g_rd = _rdkit_mmff(meta["smiles"], data["positions"][-1])
            np.testing.assert_allclose(data["energy"][-1], e_rd, rtol=1e-6)
            np.testing.assert_allclose(data["forces"][-1], -g_rd, rtol=1e-6, atol=1e-8)
            # rigid motion removed at the start, and (NVE) kept at zero
            from jkstep.data.replicas import momentum

            np.testing.assert_allclose(momentum(data["velocities"][-1], data["masses"]), 0.0, atol=1e-10)
        assert not np.allclose(starts[0], starts[1])  # replicas are independent
    assert not glob.glob(os.path.join(cfg.output, "**", ".tmp-*"), recursive=True)


@pytest.mark.slow
def test_short_nve_run_conserves_energy(reference):
    cfg, *_ = reference
    paths = mm.run_paths(cfg.output)
    assert len(paths) == 4, paths                                    # two molecules, two replicas each
    for path in paths:
        data = load(path)
        total = (data["energy"] + data["kinetic"]) / KJ_MOL
        kinetic = data["kinetic"] / KJ_MOL
        assert np.std(total) < 0.05, (path, np.std(total))          # kJ/mol, 0.1 ps at 0.25 fs
        assert np.std(total) < 0.02 * np.std(kinetic), path        # energy flows, the total stays
        assert data["meta"]["total_energy"]["std_kj_mol"] == pytest.approx(np.std(total), rel=1e-6)
        temperature = 2 * np.mean(data["kinetic"]) / (3 * 9 - 6) / jkstep.units.KB
        assert 100 < temperature < 600, (path, temperature)         # thermalised, not frozen or hot


@pytest.mark.slow
def test_interrupted_generation_resumes_without_loss_or_duplication(tmp_path, reference):
    ref_cfg, *_ = reference
    cfg = _config(tmp_path)
    # 7 chunks per run, written alternately: stop after 5 of production and 4 of replica_01
    first = mm.generate_mm(cfg, max_chunks=9)
    assert [r["status"] for r in first] == ["interrupted", "interrupted"]
    stores = [TrajectoryStore(p) for p in mm.run_paths(cfg.output, complete_only=False)]
    assert [s.n_frames for s in stores] == [320, 256]  # ethanol only; the replicas out of step
    totals = []
    second = mm.generate_mm(cfg, on_total=totals.append)
    assert [r["status"] for r in second] == ["complete", "complete"]
    assert totals == [(N_FRAMES - 256) + cfg.equilibration_steps + N_FRAMES - 1]
    for name in ("ethanol", "ethanethiol"):
        for run in ("production", "replica_01"):
            got, want = (load(os.path.join(c.output, name, run)) for c in (cfg, ref_cfg))
            np.testing.assert_array_equal(got["step"], np.arange(N_FRAMES))
            for key in ("positions", "velocities", "forces", "energy", "kinetic"):
                np.testing.assert_array_equal(got[key], want[key])  # bit for bit
    # finished molecules are skipped
    assert mm.generate_mm(cfg)[0]["wall_s"] == 0.0
    # a longer production extends every run, again bit for bit
    short = _config(tmp_path, output=str(tmp_path / "short"), production_ps=0.05)
    mm.generate_mm(short)
    assert TrajectoryStore(os.path.join(short.output, "ethanol", "production")).n_frames == 201
    mm.generate_mm(_config(tmp_path, output=short.output))
    for name in ("ethanol", "ethanethiol"):
        for run in ("production", "replica_01"):
            got, want = (load(os.path.join(out, name, run)) for out in (short.output, ref_cfg.output))
            assert got["meta"]["status"] == "complete" and got["meta"]["total_energy"] is not None
            for key in ("step", "positions", "velocities", "forces", "energy"):
                np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(InputError, match="temperature_k"):
        mm.generate_mm(_config(tmp_path, temperature_k=310.0))


@pytest.mark.slow
def test_non_finite_frames_stop_that_run_only(tmp_path, monkeypatch):
    real = mm._nve_chunk
    calls = []

    def poisoned(*args, **kwargs):  # replica 1 turns NaN in the 3rd chunk of the 1st molecule
        start, frames = jax.tree.map(np.array, jax.device_get(real(*args, **kwargs)))
        calls.append(1)
        if len(calls) == 3:
            frames.energy[1, 10:] = np.nan
            frames.positions[1, 20:] = np.nan
        return start, frames

    monkeypatch.setattr(mm, "_nve_chunk", poisoned)
    cfg = _config(tmp_path)
    results = mm.generate_mm(cfg)
    assert results[0]["status"] == "failed" and results[1]["status"] == "complete"
    prod, rep = (TrajectoryStore(os.path.join(cfg.output, "ethanol", r)) for r in ("production", "replica_01"))
    assert prod.meta["status"] == "complete" and prod.n_frames == N_FRAMES
    assert rep.meta["status"] == "failed" and rep.n_frames == 128  # chunk in progress dropped
    assert "non-finite" in rep.meta["failure"] and "at step 139," in rep.meta["failure"]
    assert np.all(np.isfinite(load(rep.path)["energy"]))
    # a failed run is recorded and not retried
    monkeypatch.setattr(mm, "_nve_chunk", real)
    again = mm.generate_mm(cfg)
    assert again[0]["status"] == "failed" and again[0]["wall_s"] == 0.0


@pytest.mark.slow
def test_windows_loader_reads_mm_data(reference):
    cfg, *_ = reference
    paths = mm.run_paths(cfg.output)
    assert len(paths) == 4
    ds = WindowDataset(paths, k=8, stride=4, buckets=(16, 32))
    assert ds.dt_fs == 0.25 and ds.n_windows == 4 * len(range(0, N_FRAMES - 8, 4))
    assert ds.elements == (1, 6, 8, 16)
    batch = next(ds.batches(16, shuffle=False))
    assert batch["positions"].shape == (16, 16, 3) and batch["mask"][:, :9].all() and not batch["mask"][:, 9:].any()
    data = load(paths[0])
    np.testing.assert_array_equal(batch["positions"][1, :9], data["positions"][4])
    np.testing.assert_array_equal(batch["target_positions"][1, :9], data["positions"][12])


# -- config and CLI -----------------------------------------------------------------------


def _yaml(tmp_path, **settings):
    (tmp_path / "small.smi").write_text(SMALL)
    base = dict(SETTINGS, molecules=str(tmp_path / "small.smi"), output=str(tmp_path / "mm"))
    base.update(settings)
    path = tmp_path / "mm.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_shipped_config_loads_and_covers_every_molecule():
    cfg = mm.load_config(os.path.join(REPO, "configs", "mm.yaml"))
    assert cfg.dt_fs == 0.25 and cfg.frame_spacing == 1 and cfg.method == "MMFF94"
    assert cfg.molecules == "data/mm_molecules.smi" and cfg.output == "data/mm"
    assert cfg.replicas >= 2 and cfg.buckets[-1] >= 40


@pytest.mark.slow
def test_cli_generate_mm_runs_and_resumes(tmp_path, capsys):
    from jkstep import cli

    config = _yaml(tmp_path, only=["ethanethiol"])  # same term counts as ethanol: no recompilation
    assert cli.main(["generate-mm", "--config", str(config), "--summary", str(tmp_path / "sum.json")]) == 0
    assert "ethanethiol: complete, 2 run(s), 802 frames" in capsys.readouterr().out
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["molecules"][0]["runs"]["replica_01"]["n_frames"] == N_FRAMES
    assert sorted(os.listdir(tmp_path / "mm")) == ["ethanethiol"]
    assert cli.main(["generate-mm", "--config", str(config)]) == 0  # nothing left: skipped
    assert "ethanethiol: complete" in capsys.readouterr().out


@pytest.mark.parametrize("settings, message", [
    ({"production_length": 1.0}, "unknown key(s) production_length"),
    ({"production_ps": 0}, "production_ps must be > 0"),
    ({"temperature_k": 1e9}, "temperature_k must be at most 10000 K, got 1e+09"),
    ({"replicas": 0}, "replicas must be an integer ≥ 1"),
    ({"buckets": [24, 12]}, "buckets must be increasing"),
    ({"buckets": [8]}, "larger than the largest bucket 8"),
    ({"method": "UFF"}, "method 'UFF' is unknown"),
    ({"molecules": "/nonexistent/m.smi"}, "no such molecules file"),
    ({"only": ["benzene"]}, "names unknown molecule(s) benzene; the names are those of"),
])
def test_cli_generate_mm_bad_config_exits_2_with_one_line(tmp_path, capsys, settings, message):
    from jkstep import cli

    config = _yaml(tmp_path, **settings)
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate-mm", "--config", str(config)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jkstep: error: ") and message in err, err


@pytest.mark.parametrize("target", ["mm.yaml", "small.smi", "mm/ethanethiol/production/meta.json"])
def test_generate_mm_summary_never_overwrites_its_inputs_or_data(tmp_path, capsys, target):
    from jkstep import cli

    config = _yaml(tmp_path, only=["ethanethiol"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate-mm", "--config", str(config), "--summary", str(tmp_path / target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("is one of the job's inputs" in err or "inside the data directory" in err)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_generate_mm_refuses_single_atoms_and_an_output_that_is_a_file(tmp_path):
    (tmp_path / "ions.smi").write_text("CCO ethanol\n[Cl-] chloride\n")
    with pytest.raises(InputError, match=r"molecule 'chloride': \[Cl-\] is a single atom"):
        mm.plan(mm.MMConfig(molecules=str(tmp_path / "ions.smi"), output=str(tmp_path / "mm")))
    (tmp_path / "one.smi").write_text("CCO ethanol\n")
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(InputError, match="output: .*taken .* is a file"):
        mm.generate_mm(mm.MMConfig(molecules=str(tmp_path / "one.smi"), output=str(tmp_path / "taken"),
                                   replicas=1, production_ps=0.001, equilibration_ps=0.0), max_chunks=0)
    assert (tmp_path / "taken").read_text() == "mine"


def test_triple_bonds_are_not_comments():
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".smi", delete=False) as fh:
        fh.write("# a comment line\nC#C acetylene  # a trailing comment\nN#N nitrogen\n")
    assert read_molecules(fh.name) == [("C#C", "acetylene"), ("N#N", "nitrogen")]
    os.remove(fh.name)


def test_untypeable_molecule_is_a_clear_input_error(tmp_path):
    (tmp_path / "bad.smi").write_text("C[Se]CC dimethylselenide\n")
    with pytest.raises(InputError, match="dimethylselenide.*MMFF"):
        mm.plan(mm.MMConfig(molecules=str(tmp_path / "bad.smi"), output=str(tmp_path / "mm")))
