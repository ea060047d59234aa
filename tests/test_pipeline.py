"""The pipeline end to end on tiny data: generate → train (CLI) → run kstep → evaluate with the model."""

import json

import numpy as np
import pytest
import yaml
from test_evaluate import CONTENDER_KEYS

from jkstep import cli
from jkstep.data import generate as gen

#: end to end: xTB data -> training -> run -> evaluate (the module fixture alone trains a model)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    (tmp / "m.smi").write_text("CCO ethanol\nCO methanol\n")
    (tmp / "s.json").write_text(json.dumps({"train": ["ethanol"], "val": ["methanol"], "test": []}))
    cfg = gen.GenerateConfig(molecules=str(tmp / "m.smi"), splits=str(tmp / "s.json"), output=str(tmp / "qm"),
                             equilibration_ps=0.01, production_ps=0.05, replicas=0, chunk_frames=100, workers=1)
    assert all(r["status"] == "complete" for r in gen.generate(cfg, processes=False))
    model = dict(features=16, layers=1, cutoff=4.0, n_rbf=8, k=8, dt_fs=0.25, elements=[1, 6, 8])
    train = dict(learning_rate=1e-3, warmup_steps=2, total_steps=6, val_every=3, log_every=1, checkpoint_every=3,
                 data=dict(dir=str(tmp / "qm"), splits=str(tmp / "s.json"), batch_size=8, stride=4))
    (tmp / "model.yaml").write_text(yaml.safe_dump(model))
    (tmp / "train.yaml").write_text(yaml.safe_dump(train))
    rc = cli.main(["train", "--model-config", str(tmp / "model.yaml"), "--train-config", str(tmp / "train.yaml"),
                   "--out", str(tmp / "ckpt")])
    assert rc == 0
    return tmp


def test_train_writes_a_loadable_checkpoint(trained):
    import jkstep

    bundle = jkstep.load_pretrained(str(trained / "ckpt"))
    assert bundle.k == 8 and bundle.dt == 0.25 and set(bundle.elements) == {1, 6, 8}


def test_ctrl_c_during_cli_training_saves_the_step_and_the_same_command_resumes(trained, monkeypatch, capsys,
                                                                              ctrl_c_possible):
    import signal

    class CtrlCAtStep2(cli.ProgressBar):
        def __call__(self, step, metrics):
            super().__call__(step, metrics)
            if step == 2 and "loss" in metrics:
                signal.raise_signal(signal.SIGINT)

    argv = ["train", "--model-config", str(trained / "model.yaml"), "--train-config", str(trained / "train.yaml"),
            "--out", str(trained / "ckpt_int")]
    monkeypatch.setattr(cli, "ProgressBar", CtrlCAtStep2)
    assert cli.main(argv) == 130
    assert "stopped at step 2" in capsys.readouterr().err
    assert sorted(p.name for p in (trained / "ckpt_int" / "latest").iterdir()) == ["2"]
    monkeypatch.undo()
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (trained / "ckpt_int" / "latest").iterdir())[-1] == "6"


def test_run_kstep_with_the_trained_model(trained):
    rc = cli.main(["run", "--smiles", "CCO", "--integrator", "kstep", "--model", str(trained / "ckpt"),
                   "--ps", "0.02", "--fallback-steps", "2", "--summary", str(trained / "run.json")])
    s = json.loads((trained / "run.json").read_text())
    assert rc == 0 and s["integrator"] == "kstep" and s["k"] == 8 and s["simulated_fs"] == 20.0
    assert s["accepted"] + s["fallbacks"] == 10 and s["fallback_steps"] == 2
    # one call per accepted jump, one per attempt that reached the corrector (3 at most per
    # macro-step), 2 per fallback, one at the start
    assert s["accepted"] + 1 + 2 * s["fallbacks"] <= s["xtb_calls"] == s["integrator_force_calls"]
    assert s["xtb_calls"] <= 1 + 3 * 10 + 2 * s["fallbacks"]


def test_evaluate_with_the_trained_model(trained):
    rc = cli.main(["evaluate", "--smiles", "CCO", "--model", str(trained / "ckpt"), "--ps", "0.04",
                   "--replicas", "2", "--equilibrate-ps", "0.01", "--energy-relaxation", "100",
                   "--energy-window", "0.05", "--summary", str(trained / "eval.json")])
    r = json.loads((trained / "eval.json").read_text())
    assert rc == 0 and r["contenders"]["kstep"] is not None and r["fallback_steps"] == 4   # 4 × 0.5 fs
    assert CONTENDER_KEYS <= set(r["contenders"]["kstep"]) and CONTENDER_KEYS <= set(r["contenders"]["verlet_equal_cost"])
    relaxed = r["contenders"]["kstep_relaxed"]       # the weak-coupling variant, beside kstep
    assert relaxed["xtb_calls"] == relaxed["integrator_force_calls"] >= 2 * (160 // 8 + 1)
    assert relaxed["accepted"] + relaxed["fallbacks"] == 2 * 160 // 8
    windowed = r["contenders"]["kstep_windowed"]     # the energy-window variant, beside kstep
    assert windowed["accepted"] + windowed["fallbacks"] == 2 * 160 // 8 and not windowed["blew_up"]
    # Verlet at the time step that makes as many xTB calls as kstep made, over the same 40 fs
    kstep, equal = r["contenders"]["kstep"], r["contenders"]["verlet_equal_cost"]
    steps = (kstep["xtb_calls"] + 1) // 2 - 1     # calls per replica, rounded half up
    assert equal["dt_fs"] == pytest.approx(max(40.0 / steps, 0.25))
    assert equal["xtb_calls"] == 2 * (1 + round(40.0 / equal["dt_fs"])) and abs(equal["xtb_calls"] - kstep["xtb_calls"]) <= 1
    assert not equal["blew_up"] and equal["energy_std_kj_mol"] is not None and equal["bond_js"] is not None
    assert set(r["one_jump"]) == {"position_rmse_a", "bond_rmse_a", "angle_rmse_deg", "dihedral_rmse_deg",
                                  "force_rmse_ev_a"}
    assert all(v is None or np.isfinite(v) for v in r["one_jump"].values())
    assert r["one_jump"]["position_rmse_a"] < 0.2


def test_unseen_element_is_refused(trained, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--smiles", "CCN", "--integrator", "kstep", "--model", str(trained / "ckpt")])
    assert exc.value.code == 2 and "never saw N" in capsys.readouterr().err
