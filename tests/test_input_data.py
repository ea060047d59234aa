"""Bad input to generate, dataset and train: one InputError (CLI: one line, status 2), before any
long work, and nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

import jkstep  # noqa: F401  (float64 mode)
from jkstep import cli
from jkstep.data import generate as gen
from jkstep.data.store import TrajectoryStore
from jkstep.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fails(argv, capsys, *messages):
    """Run the CLI: status 2 and one stderr line containing every message."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("jkstep: error: "), err
    for message in messages:
        assert message in err, err
    return err


def _store(path, n_frames, name):
    """A 4-atom trajectory of random frames, every base step stored (0.25 fs)."""
    rng = np.random.default_rng(len(name))
    store = TrajectoryStore(path).create({"numbers": [6, 1, 1, 8], "name": name, "masses": [12.0, 1.0, 1.0, 16.0],
                                          "dt_fs": 0.25, "frame_spacing": 1})
    store.append({"positions": rng.normal(size=(n_frames, 4, 3)) + 5.0,
                  "velocities": rng.normal(size=(n_frames, 4, 3)) * 0.01,
                  "forces": rng.normal(size=(n_frames, 4, 3)), "energy": rng.normal(size=n_frames),
                  "kinetic": rng.random(n_frames), "step": np.arange(n_frames)})
    return store


# -- train ----------------------------------------------------------------------------------


@pytest.fixture
def train_setup(tmp_path):
    """Two 41-frame trajectories (train a, val b: 5 windows each at k = 8, stride 8), a small
    model config and a train config; ``write(**data)`` writes a train config with those data keys."""
    for name in ("a", "b"):
        _store(tmp_path / "qm" / name / "production", 41, name)
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": []}))
    model = yaml.safe_load(open(os.path.join(REPO, "configs", "model_qm_k8.yaml")))
    model.update(features=8, layers=1, n_rbf=4)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))

    def write(**data):
        section = {"dir": str(tmp_path / "qm"), "splits": str(tmp_path / "splits.json"), "stride": 8,
                   "batch_size": 4, **data}
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump({"total_steps": 2, "warmup_steps": 1, "val_every": 1, "log_every": 1,
                                        "checkpoint_every": 1, "data": section}))
        return ["train", "--model-config", str(tmp_path / "model.yaml"), "--train-config", str(path),
                "--out", str(tmp_path / "out")]

    return tmp_path, write


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_train_refuses_max_steps_below_one_and_writes_nothing(train_setup, capsys, steps):
    tmp_path, write = train_setup
    _fails(write() + ["--max-steps", steps], capsys, "--max-steps must be an integer ≥ 1", steps)
    assert not (tmp_path / "out").exists()


def test_train_api_refuses_max_steps_zero(tmp_path):
    from jkstep.model.train import TrainConfig, train

    with pytest.raises(InputError, match="max_steps must be an integer ≥ 1"):
        train(None, TrainConfig(), [], None, tmp_path / "out", max_steps=0)
    assert not (tmp_path / "out").exists()


def test_train_config_data_must_be_a_mapping(tmp_path, capsys):
    from jkstep.model.train import TrainConfig, load_train_config

    (tmp_path / "t.yaml").write_text("data: 5\n")
    with pytest.raises(InputError, match="data must be a mapping.*got 5"):
        load_train_config(tmp_path / "t.yaml")
    with pytest.raises(InputError, match="data must be a mapping"):
        TrainConfig(data=[1, 2])
    _fails(["train", "--train-config", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "out")], capsys,
           "data must be a mapping")


def test_train_total_steps_zero_in_the_yaml_is_refused(tmp_path):
    from jkstep.model.train import load_train_config

    (tmp_path / "t.yaml").write_text("total_steps: 0\n")
    with pytest.raises(InputError, match="total_steps must be >= 1"):
        load_train_config(tmp_path / "t.yaml")


def test_model_and_train_configs_name_an_unknown_key(tmp_path):
    from jkstep.model.train import load_model_config, load_train_config

    (tmp_path / "m.yaml").write_text("model:\n  cutof: 5.0\n")
    with pytest.raises(InputError, match=r"unknown key\(s\) cutof in model config; known keys: .*cutoff"):
        load_model_config(tmp_path / "m.yaml")
    (tmp_path / "t.yaml").write_text("learning_rat: 0.001\ntotal_steps: 10\n")
    with pytest.raises(InputError, match=r"unknown key\(s\) learning_rat in train config; known keys: .*learning_rate"):
        load_train_config(tmp_path / "t.yaml")


def test_train_batch_larger_than_the_windows_names_both_numbers(train_setup, capsys):
    tmp_path, write = train_setup
    _fails(write(batch_size=32), capsys, "batch_size 32", "larger than the 5 training windows",
           "set batch_size to at most 5")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("batch_size", "abc"), ("batch_size", 2.5),
                                        ("stride", "x")])
def test_train_data_integers_are_checked(train_setup, capsys, key, value):
    tmp_path, write = train_setup
    _fails(write(**{key: value}), capsys, f"data: {key} must be an integer ≥ 1, got {value!r}")
    assert not (tmp_path / "out").exists()


def test_epoch_batches_that_give_no_batch_say_what_to_change():
    from jkstep.model.train import EpochBatches

    with pytest.raises(InputError, match="lower the batch size"):
        next(EpochBatches(lambda epoch: iter(())))


# -- dataset --------------------------------------------------------------------------------


def test_dataset_out_naming_a_file_is_refused_before_work(tmp_path, capsys):
    _store(tmp_path / "qm" / "a" / "production", 41, "a")
    target = tmp_path / "w.npz"
    target.write_bytes(b"keep me")
    _fails(["dataset", "--data", str(tmp_path / "qm"), "--out", str(target), "--k", "8"], capsys,
           f"the output {target} is a file")
    assert target.read_bytes() == b"keep me"
    below = tmp_path / "w.npz" / "sub"
    _fails(["dataset", "--data", str(tmp_path / "qm"), "--out", str(below), "--k", "8"], capsys,
           "cannot create the output directory")


def test_dataset_into_an_existing_window_directory_keeps_its_files(tmp_path, capsys):
    """As docs/workflow.md says: a rerun only adds missing files; --overwrite rebuilds them."""
    _store(tmp_path / "qm" / "a" / "production", 41, "a")
    argv = ["dataset", "--data", str(tmp_path / "qm"), "--k", "8"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0 and "kept" in capsys.readouterr().out
    assert cli.main(argv + ["--overwrite"]) == 0 and "kept" not in capsys.readouterr().out


def test_dataset_k_longer_than_the_trajectories_is_refused(tmp_path, capsys):
    from jkstep.data.dataset import build_dataset

    _store(tmp_path / "qm" / "a" / "production", 41, "a")
    _store(tmp_path / "qm" / "b" / "production", 21, "b")
    _fails(["dataset", "--data", str(tmp_path / "qm"), "--k", "8", "64"], capsys,
           "k [64] is longer than every trajectory", "spans 40 base steps", "at most 40")
    assert not (tmp_path / "qm" / "windows").exists()
    rows = build_dataset([str(tmp_path / "qm" / "a" / "production")], [40], 4, tmp_path / "w")
    assert rows[0]["windows"] == {40: 1}                # the longest possible k gives one window
    with pytest.raises(InputError, match="integers ≥ 1"):
        build_dataset([str(tmp_path / "qm" / "a" / "production")], [0], 4, tmp_path / "w2")
    assert not (tmp_path / "w2").exists()


# -- generate -------------------------------------------------------------------------------


def _gen_yaml(tmp_path, smiles, **settings):
    tmp_path.joinpath("m.smi").write_text(smiles)
    names = [line.split()[1] for line in smiles.splitlines() if line.strip()]
    tmp_path.joinpath("s.json").write_text(json.dumps({"train": names, "val": [], "test": []}))
    base = dict(molecules=str(tmp_path / "m.smi"), splits=str(tmp_path / "s.json"), output=str(tmp_path / "qm"),
                equilibration_ps=0.0, production_ps=0.0025, replicas=0, chunk_frames=8, workers=1)
    base.update(settings)
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.mark.parametrize("line, message", [
    ("C1CC bad", "molecule 'bad': cannot parse SMILES 'C1CC'"),
    ("[He] he", "molecule 'he': [He] is a single atom"),
    ("O[U]O uran", "molecule 'uran': GFN2-xTB has no parameters for atomic number(s) [92]"),
])
def test_generate_checks_every_molecule_before_any_md(tmp_path, capsys, line, message):
    config = _gen_yaml(tmp_path, f"CCO ethanol\n{line}\n")
    _fails(["generate", "--config", str(config)], capsys, message)
    assert not (tmp_path / "qm").exists()                # ethanol did not run first


@pytest.mark.parametrize("settings, message", [
    ({"dt_fs": 1e-300}, "production_ps 0.0025 at dt_fs 1e-300 would take 2.5e+300 steps"),
    ({"dt_fs": 1e-12, "equilibration_ps": 1.0}, "equilibration_ps 1.0 at dt_fs 1e-12"),
    ({"dt_fs": float("nan")}, "dt_fs must be a number, got nan"),
    ({"dt_fs": float("inf")}, "dt_fs must be a number, got inf"),
    ({"dt_fs": -0.25}, "dt_fs must be > 0"),
    ({"production_ps": float("nan")}, "production_ps must be a number, got nan"),
    ({"production_ps": float("inf")}, "production_ps must be a number, got inf"),
    ({"production_ps": 0.0}, "production_ps must be > 0"),
])
def test_generate_refuses_absurd_time_steps_and_lengths(tmp_path, capsys, settings, message):
    config = _gen_yaml(tmp_path, "CCO ethanol\n", **settings)
    _fails(["generate", "--config", str(config)], capsys, message)
    assert not (tmp_path / "qm").exists()


@pytest.mark.parametrize("target", ["gen.yaml", "m.smi", "s.json", "qm/ethanol/production/meta.json"])
def test_generate_summary_never_overwrites_its_inputs_or_data(tmp_path, capsys, target):
    config = _gen_yaml(tmp_path, "CCO ethanol\n")
    _fails(["generate", "--config", str(config), "--summary", str(tmp_path / target)], capsys, "--summary")
    assert not (tmp_path / "qm").exists() and json.loads((tmp_path / "s.json").read_text())["train"] == ["ethanol"]


def test_mm_config_refuses_an_absurd_time_step(tmp_path):
    from jkstep.data.mm import MMConfig

    with pytest.raises(InputError, match="would take"):
        MMConfig(dt_fs=1e-300)


class _FailingPotential:
    """NaN energy and forces from the first call: an SCF that never converges."""

    def __init__(self, molecule, cfg):
        import jax

        self._jax, self.calls = jax, 0

    def _host(self, x):
        self.calls += 1
        return np.float64(np.nan), np.full_like(np.asarray(x), np.nan)

    def __call__(self, x):
        import jax.numpy as jnp

        shapes = (self._jax.ShapeDtypeStruct((), jnp.float64), self._jax.ShapeDtypeStruct(x.shape, jnp.float64))
        return self._jax.pure_callback(self._host, shapes, x)


@pytest.mark.parametrize("equilibration_ps", [0.0, 0.0025])
def test_scf_failure_at_the_start_geometry_is_reported_as_such(tmp_path, equilibration_ps):
    cfg = gen.load_config(_gen_yaml(tmp_path, "CCO ethanol\n", equilibration_ps=equilibration_ps))
    result = gen.generate(cfg, processes=False, potential_factory=_FailingPotential)
    run = result[0]["runs"]["production"]
    assert result[0]["status"] == "failed" and run["n_frames"] == 0
    assert "SCF did not converge at the start geometry" in run["failure"]
    assert "charge (0)" in run["failure"] and "conformer_seed" in run["failure"]
    assert "thermalisation" not in run["failure"]
