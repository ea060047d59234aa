"""`jkstep run`: summary keys of API.md, the trajectory file, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read

from jkstep import cli, units

SUMMARY_KEYS = {"molecule", "integrator", "ensemble", "dt_fs", "k", "simulated_fs", "xtb_calls", "accepted",
                "rejected", "fallbacks", "blew_up", "drift_kj_mol_ps", "energy_std_kj_mol",
                "mean_temperature_k", "wall_s"}


def test_run_verlet_writes_summary_and_trajectory(tmp_path, capsys):
    out, summary = tmp_path / "t.traj", tmp_path / "run.json"
    rc = cli.main(["run", "--smiles", "CCO", "--integrator", "verlet", "--dt", "0.25", "--ps", "0.02",
                   "--save-every", "8", "--out", str(out), "--summary", str(summary)])
    assert rc == 0
    s = json.loads(summary.read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["molecule"] == "CCO" and s["integrator"] == "verlet" and s["ensemble"] == "nve"
    assert s["simulated_fs"] == 20.0 and s["xtb_calls"] == 81 == s["integrator_force_calls"]
    assert s["blew_up"] is False and s["drift_kj_mol_ps"] is not None
    assert abs(s["drift_kj_mol_ps"]) < 1.0 and s["energy_std_kj_mol"] < 0.05
    assert 50 < s["mean_temperature_k"] < 400
    frames = read(out, index=":")
    assert len(frames) == 11  # start + 80 steps / 8
    v = units.velocities_from_ase(frames[-1].get_velocities())
    assert 0.001 < np.abs(v).max() < 0.1  # Å/fs: thermal, not ASE units
    assert frames[-1].get_potential_energy() < -300
    assert "xTB calls 81" in capsys.readouterr().out


def test_run_langevin_has_no_drift(tmp_path):
    summary = tmp_path / "run.json"
    assert cli.main(["run", "--smiles", "CCO", "--integrator", "langevin", "--ps", "0.01",
                     "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert s["ensemble"] == "nvt" and s["drift_kj_mol_ps"] is None and s["xtb_calls"] == 41


def test_run_kstep_with_the_shipped_model_in_nvt(tmp_path):
    """`jkstep run --integrator kstep --model gfn2-k8 --ensemble nvt`: the API's summary keys, one
    macro-step per 2 fs, the calls accounted for, no drift figure outside NVE, and every
    macro-step in the trajectory file."""
    out, summary = tmp_path / "k.traj", tmp_path / "run.json"
    assert cli.main(["run", "--smiles", "CCO", "--integrator", "kstep", "--model", "gfn2-k8", "--ensemble", "nvt",
                     "--ps", "0.02", "--equilibrate-ps", "0", "--out", str(out), "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert SUMMARY_KEYS <= set(s)
    assert (s["integrator"], s["ensemble"], s["k"], s["dt_fs"]) == ("kstep", "nvt", 8, 0.25)
    assert s["accepted"] + s["fallbacks"] == 10 and s["accepted"] >= 1 and s["blew_up"] is False
    # init, one call per accepted jump, 4 per fallback (0.5 fs steps), at most one per rejected attempt
    floor = 1 + s["accepted"] + 4 * s["fallbacks"]
    assert floor <= s["xtb_calls"] <= floor + s["rejected"]
    assert s["drift_kj_mol_ps"] is None
    assert len(read(out, index=":")) == 11


def test_equilibrate_dt_starts_runs_of_different_steps_from_one_state(tmp_path):
    """--equilibrate-dt: Verlet at 0.5 fs starts where a 0.25 fs run with the same thermalisation
    does (the equal-cost comparison of `jkstep run` needs the same start); without it, not."""
    starts = {}
    for name, extra in (("a", ["--dt", "0.25"]), ("b", ["--dt", "0.5", "--equilibrate-dt", "0.25"]),
                        ("c", ["--dt", "0.5"])):
        out = tmp_path / f"{name}.traj"
        assert cli.main(["run", "--smiles", "CO", "--integrator", "verlet", "--ps", "0.005", "--equilibrate-ps",
                         "0.01", "--save-every", "10", "--out", str(out), *extra]) == 0
        first = read(out, index=0)
        starts[name] = np.concatenate([first.positions, first.get_velocities()])
    np.testing.assert_allclose(starts["b"], starts["a"], atol=1e-12)
    assert np.abs(starts["c"] - starts["a"]).max() > 1e-4


@pytest.mark.parametrize("argv, message", [
    (["run", "--smiles", "C1CC"], "cannot parse SMILES 'C1CC'"),
    (["run", "--file", "/no/such.xyz"], "no such file: /no/such.xyz"),
    (["run", "--smiles", "CCO", "--dt", "0"], "dt must be > 0"),
    (["run", "--integrator", "leapfrog"], "invalid choice: 'leapfrog'"),
    (["run", "--smiles", "CCO", "--file", "x.xyz"], "not allowed with argument"),
    (["run", "--smiles", "[Fr]F", "--integrator", "verlet"], "no parameters for atomic number"),
    (["run", "--smiles", "CCO", "--fallback-steps", "0"], "fallback_steps must be an integer ≥ 1"),
    (["evaluate", "--smiles", "CCO", "--fallback-steps", "0"], "fallback_steps must be an integer ≥ 1"),
    (["run", "--smiles", "CCO", "--equilibrate-ps", "0.1", "--equilibrate-dt", "0"], "equilibrate_dt must be > 0"),
    (["run", "--smiles", "CCO", "--ps", "-1"], "ps must be > 0"),
    (["run", "--smiles", "CCO", "--temperature", "-5"], "temperature must be ≥ 0"),
    (["run", "--smiles", "CCO", "--model", "no-such-model"], "no pretrained model 'no-such-model'"),
    (["run", "--smiles", "CCO", "--ensemble", "npt"], "invalid choice: 'npt'"),
    (["evaluate", "--smiles", "CCO", "--ps", "0"], "ps > 0 are needed"),
    (["evaluate", "--smiles", "CCO", "--replicas", "1"], "at least 2 replicas"),
    (["run", "--smiles", ""], "cannot parse SMILES ''"),  # not the default molecule
    (["run", "--smiles", "[He]", "--integrator", "verlet"], "[He] is a single atom"),
    # output paths that cannot be written are refused before the run, not after it
    (["run", "--smiles", "CCO", "--summary", os.path.dirname(__file__)], "is a directory; give the path of a file"),
    (["run", "--smiles", "CCO", "--out", os.path.join(__file__, "x.traj")], "is a file, not a directory"),
    (["evaluate", "--smiles", "CCO", "--plots", __file__], "is a file; give a directory"),
    (["generate", "--summary", os.path.dirname(__file__)], "is a directory; give the path of a file"),
    (["export", "--from", "gfn2-k8", "--name", "../gfn2-k8"], "a shipped name is letters, digits"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jkstep: error: ") and message in err[0]


def test_atoms_on_top_of_each_other_are_refused_before_any_call(tmp_path, capsys):
    xyz = tmp_path / "overlap.xyz"
    xyz.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH 0.96 0.1 0\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--file", str(xyz), "--integrator", "verlet", "--ps", "0.01"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jkstep: error: atoms 1 and 2 of {xyz} are 0.10 Å apart (closer than 0.5 Å): "
                   "not a molecular geometry; check the coordinates"]


def test_console_script_runs_as_installed(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "jkstep")
    proc = subprocess.run([exe, "run", "--smiles", "C1CC"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "jkstep: error: cannot parse SMILES 'C1CC'"
