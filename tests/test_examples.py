"""Every script in examples/ runs (as a user would run it: a subprocess) and prints what it promises.

Each runs shortened (JKSTEP_EXAMPLE_QUICK=1) in its own temporary working directory.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jkstep.kstep import fallback_step_count


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args, cwd):
    env = dict(os.environ, JKSTEP_EXAMPLE_QUICK="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_compose_integrator(tmp_path):
    out = run_example("compose_integrator.py", cwd=tmp_path)
    assert "recorded 40 kinetic energies" in out
    assert "steps 40, xTB calls 41 (init 1 + one per step), integrator force_calls 41" in out
    assert "calls == steps + 1: OK" in out


@pytest.mark.slow
def test_batched_rollout(tmp_path):
    out = run_example("batched_rollout.py", 3, cwd=tmp_path)
    assert "verlet: xTB calls 51 in all, 17 per replica; force_calls per replica [17, 17, 17]" in out
    replicas = re.findall(r"replica (\d): xTB calls (\d+), accepted (\d+), rejected (\d+), fallbacks (\d+)", out)
    assert len(replicas) == 3
    per_fallback = fallback_step_count(8, 0.25)        # the example's k and dt
    for _, calls, accepted, rejected, fallbacks in replicas:
        # 4 macro-steps; one call at init, one per accepted jump, per_fallback per fallback, and one
        # per rejected attempt that got as far as its corrector call (the free guards cost none)
        accepted, rejected, fallbacks = int(accepted), int(rejected), int(fallbacks)
        assert accepted + fallbacks == 4
        assert 1 + accepted + per_fallback * fallbacks <= int(calls) <= 1 + accepted + rejected + per_fallback * fallbacks
    m = re.search(r"kstep: xTB calls (\d+) in all .* = sum of per-replica force_calls (\d+)", out)
    assert m and m.group(1) == m.group(2)
    m = re.search(r"strict guards: accepted (\d+), rejected attempts (\d+), fallbacks (\d+); xTB calls (\d+)", out)
    assert m and int(m.group(2)) > 0 and int(m.group(3)) > 0   # the guards did bite
    padded = re.findall(r"padded: (\w+) frames \((\d+), (\d+), 3\), xTB calls (\d+)", out)
    assert [(f, int(n)) for f, _, n, _ in padded] == [("C2H6O", 9), ("H2O", 3), ("C2H5NO", 9)]
    m = re.search(r"padded: xTB calls (\d+) in all = sum of per-member force_calls (\d+)", out)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 3 * 3


@pytest.mark.slow
def test_differentiate_rollout(tmp_path):
    out = run_example("differentiate_rollout.py", cwd=tmp_path)
    m = re.search(r"gradient check: (\w+) rel\.err=(\S+)", out)
    assert m, out
    assert m.group(1) == "OK" and float(m.group(2)) < 1e-5
    assert "xTB: grad(energy) == -forces: True" in out
    assert "xTB hessian raised jkstep.InputError: the xTB potential gives first derivatives only" in out
    assert "xTB rollout gradient is NaN: True" in out


def _ase_front_checks(out, tmp_path):
    assert "ran 5 macro-steps = 40 base steps = 10.0 fs" in out
    assert "ASE timestep 2.00 fs" in out
    m = re.search(r"xTB calls (\d+), accepted (\d+), rejected (\d+), fallbacks (\d+)", out)
    assert m and int(m.group(2)) + int(m.group(4)) == 5
    assert "trajectory kstep_md.traj: 6 frames" in out
    assert (tmp_path / "kstep_md.traj").is_file() and (tmp_path / "kstep_md.log").is_file()


@pytest.mark.slow
def test_ase_front_zero_network(tmp_path):
    out = run_example("ase_front.py", cwd=tmp_path)
    assert "zero network (ballistic jump)" in out
    _ase_front_checks(out, tmp_path)


@pytest.mark.slow
def test_ase_front_with_a_checkpoint(tmp_path):
    """The model branch: a small untrained checkpoint (an untrained network is the ballistic jump)."""
    from jkstep.model import train as T
    from jkstep.model.network import ModelConfig, init_params

    config = ModelConfig(features=16, layers=1, cutoff=4.0, n_rbf=8, k=8, dt_fs=0.25, elements=(1, 6, 8))
    train_config = T.TrainConfig()
    state = T.create_train_state(init_params(config), T.make_optimizer(train_config, train_config.learning_rate))
    store = T.CheckpointStore(tmp_path / "ckpt")
    store.save("best", state, T.checkpoint_meta(config, elements=[1, 6, 8]), val_loss=1.0)
    store.close()
    out = run_example("ase_front.py", tmp_path / "ckpt", cwd=tmp_path)
    assert f"KStepMD with model {tmp_path / 'ckpt'}: k = 8, base dt = 0.25 fs" in out
    _ase_front_checks(out, tmp_path)


DOCS = Path(__file__).resolve().parent.parent / "docs"
USER_DOCS = ("workflow.md", "installation.md", "troubleshooting.md")


def _cli_options():
    from jkstep.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "run" in a.choices)
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def test_every_jkstep_command_in_the_docs_parses():
    """The commands in the user docs are accepted by the CLI parser, and every --flag they name exists."""
    import shlex

    from jkstep.cli import build_parser

    parser, options = build_parser(), _cli_options()
    every_option = set().union(*options.values())
    commands = 0
    for name in USER_DOCS:
        text = (DOCS / name).read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text.replace("\\\n", " "), re.S):
            for line in block.splitlines():
                m = re.match(r"\s*(?:\.venv/bin/)?jkstep (.*)", line)
                if m:
                    parser.parse_args(shlex.split(m.group(1).split(" #")[0]))   # exits on a bad flag
                    commands += 1
        jkstep_text = "\n".join(line for line in text.splitlines() if "pytest" not in line)   # pytest's own flags
        unknown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", jkstep_text)) - every_option
        assert not unknown, f"{name} names flags jkstep does not have: {sorted(unknown)}"
    assert commands >= 8


@pytest.mark.slow
def test_qmmm_droplet(tmp_path):
    out = run_example("qmmm_droplet.py", "--ps", "0.04", "--waters", "30", "--plot", tmp_path / "q.png", cwd=tmp_path)
    assert "12 QM atoms, 90 MM atoms" in out and "20 macro-steps of 8 x 0.25 fs" in out
    assert "verlet (reference)   xTB calls    161" in out
    assert "kstep (hybrid)" in out and "accepted" in out and "xTB calls saved by the hybrid" in out
    assert (tmp_path / "q.png").stat().st_size > 0


@pytest.mark.slow
def test_respa_three_levels(tmp_path):
    out = run_example("respa_three_levels.py", cwd=tmp_path)
    for label in ("two levels", "three levels"):
        m = re.search(label + r": 20 macro-steps of 2 fs, xTB calls 21 \(force_calls 21\), total energy std "
                      r"([0-9.]+) kJ/mol", out)
        assert m and 0 < float(m.group(1)) < 1.0, out
    assert "one xTB call per macro-step in both: OK" in out


@pytest.mark.slow
def test_respa_adapted(tmp_path):
    out = run_example("respa_adapted.py", cwd=tmp_path)
    assert "thermalised 100 fs: xTB calls 201, 200 frames kept" in out
    m = re.search(r"adapted on 160 frames in \d+ s: force RMSE on the last 40 ([\d.]+) -> ([\d.]+) eV/Å; "
                  r"energy-error curvature ([\d.e+-]+) -> ([\d.e+-]+) eV/fs²", out)
    assert m and float(m.group(2)) < float(m.group(1)) and float(m.group(4)) < float(m.group(3))
    assert "gfn2-fast: 20 macro-steps of 2 fs, xTB calls 21" in out
    assert "adapted: 20 macro-steps of 2 fs, xTB calls 21" in out
    assert "one xTB call per macro-step with either force: OK" in out
