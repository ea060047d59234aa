"""`jkstep run`: summary keys of API.md, the trajectory file, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read

from jkstep import cli, units
from jkstep.errors import InputError

SUMMARY_KEYS = {"molecule", "integrator", "ensemble", "dt_fs", "k", "simulated_fs", "xtb_calls", "accepted",
                "rejected", "fallbacks", "blew_up", "drift_kj_mol_ps", "energy_std_kj_mol",
                "mean_temperature_k", "wall_s"}


@pytest.mark.slow
def test_run_verlet_writes_summary_and_trajectory(tmp_path, capsys):
    out, summary = tmp_path / "t.traj", tmp_path / "run.json"
    rc = cli.main(["run", "--smiles", "CCO", "--integrator", "verlet", "--dt", "0.25", "--ps", "0.02",
                   "--save-every", "8", "--out", str(out), "--summary", str(summary)])
    assert rc == 0
    s = json.loads(summary.read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["molecule"] == "CCO" and s["integrator"] == "verlet" and s["ensemble"] == "nve"
    assert s["simulated_fs"] == 20.0 and s["xtb_calls"] == 81 == s["integrator_force_calls"]
    assert s["blew_up"] is False and s["drift_kj_mol_ps"] is not None and s["velocities_from"] is None
    assert abs(s["drift_kj_mol_ps"]) < 1.0 and s["energy_std_kj_mol"] < 0.05
    assert 50 < s["mean_temperature_k"] < 400
    frames = read(out, index=":")
    assert len(frames) == 11  # start + 80 steps / 8
    v = units.velocities_from_ase(frames[-1].get_velocities())
    assert 0.001 < np.abs(v).max() < 0.1  # Å/fs: thermal, not ASE units
    assert frames[-1].get_potential_energy() < -300
    assert "xTB calls 81" in capsys.readouterr().out


@pytest.mark.slow
def test_run_langevin_exchanges_heat_with_the_bath_and_is_reproducible(tmp_path):
    """`jkstep run --integrator langevin`: NVT, so no drift figure (null by design); the thermostat
    moves energy in and out (total-energy spread far above NVE Verlet's from the same start), and
    the same seed gives the same run."""
    def run(name, integrator):
        summary = tmp_path / f"{name}.json"
        assert cli.main(["run", "--smiles", "CCO", "--integrator", integrator, "--ps", "0.01", "--dt", "0.25",
                         "--summary", str(summary)]) == 0
        return json.loads(summary.read_text())

    s = run("langevin", "langevin")
    assert s["ensemble"] == "nvt" and s["drift_kj_mol_ps"] is None and s["xtb_calls"] == 41
    nve = run("verlet", "verlet")
    assert s["energy_std_kj_mol"] > 10 * nve["energy_std_kj_mol"], (s["energy_std_kj_mol"], nve["energy_std_kj_mol"])
    again = run("again", "langevin")
    assert (again["energy_std_kj_mol"], again["mean_temperature_k"]) == (s["energy_std_kj_mol"], s["mean_temperature_k"])


@pytest.mark.slow
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


def test_models_lists_every_shipped_model_from_its_record(capsys, monkeypatch, tmp_path):
    """`jkstep models`: each shipped name with its jump and description, the default marked; a
    record that cannot be read is one clear error."""
    from jkstep.model import pretrained

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in pretrained.shipped_names():
        record = json.loads((pretrained.PRETRAINED_DIR / name / "provenance.json").read_text())
        assert f"{name}{' (default)' if name == cli.DEFAULT_MODEL else ''}: k = {record['k']} x" in out
    assert "gfn2-k8 (default): k = 8 x 0.25 fs (2 fs jumps), elements H C N O S" in out
    assert "(4 fs jumps)" in out and "MMFF94" in out
    (tmp_path / "broken").mkdir()
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["models"])
    assert exc.value.code == 2 and "cannot be read" in capsys.readouterr().err


@pytest.mark.slow
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


def test_run_respa_with_repartitioned_hydrogen_masses(tmp_path):
    """`jkstep run --hydrogen-mass`: the run and its trajectory carry the repartitioned masses
    (H 3.024 amu, the total kept), one xTB call per macro-step of k = 16."""
    out, summary = tmp_path / "t.traj", tmp_path / "run.json"
    assert cli.main(["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "mmff", "--k", "16", "--ps", "0.02",
                     "--equilibrate-ps", "0", "--hydrogen-mass", "3.024", "--save-every", "16",
                     "--out", str(out), "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert (s["integrator"], s["k"], s["hydrogen_mass"], s["xtb_calls"], s["blew_up"]) == ("respa", 16, 3.024, 6, False)
    atoms = read(out, index=-1)
    masses = atoms.get_masses()
    np.testing.assert_allclose(masses[atoms.numbers == 1], 3.024)
    np.testing.assert_allclose(masses.sum(), 46.069, atol=0.01)


def test_run_respa_learned_fast_force_in_three_levels(tmp_path):
    """`jkstep run --fast gfn2-fast`: three levels by default (the network every 2nd inner step),
    the whole fast force every step with --fast-every 1; one xTB call per macro-step either way."""
    for extra, every in (([], 2), (["--fast-every", "1"], 1)):
        summary = tmp_path / f"run{every}.json"
        assert cli.main(["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "gfn2-fast", "--ps", "0.02",
                         "--equilibrate-ps", "0", "--save-every", "8", "--summary", str(summary), *extra]) == 0
        s = json.loads(summary.read_text())
        assert (s["fast"], s["fast_every"], s["k"], s["xtb_calls"], s["fallbacks"], s["blew_up"]) == \
            ("gfn2-fast", every, 8, 11, 0, False)


@pytest.mark.slow
def test_run_respa_adapted_fast_force(tmp_path):
    """`jkstep run --adapt`: gfn2-fast fine-tuned on the equilibration's frames (0.1 ps at 0.5 fs, every
    step; --adapt-steps 300) before the run; the run itself is still one xTB call per macro-step."""
    summary = tmp_path / "run.json"
    assert cli.main(["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "gfn2-fast", "--adapt",
                     "--adapt-steps", "300", "--ps", "0.02", "--equilibrate-ps", "0.1", "--equilibrate-dt", "0.5", "--save-every", "8",
                     "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    a = s["fast_adaptation"]
    assert (a["frames"], a["train_frames"], a["holdout_frames"], a["steps"]) == (200, 160, 40, 300)
    assert a["force_rmse_after_ev_a"] < a["force_rmse_before_ev_a"]
    # over the 20 fs held out here the curvature is too noisy to be sure to fall (docs/results.md)
    assert 0 < a["curvature_rms_after"] < 1.0 and 0 < a["curvature_rms_before"] < 1.0
    assert (s["fast"], s["fast_every"], s["xtb_calls"], s["fallbacks"], s["blew_up"]) == ("gfn2-fast", 2, 11, 0, False)


@pytest.mark.parametrize("argv, message", [
    (["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "mmff", "--adapt"],
     "adapt (--adapt) fine-tunes a learned fast force"),
    (["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "gfn2-fast", "--adapt", "--equilibrate-ps", "0.05"],
     "of at least 0.1 ps, got 0.05"),
    (["evaluate", "--smiles", "CCO", "--adapt"], "give one too (fast=NAME, --fast NAME)"),
    (["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "gfn2-fast", "--adapt-steps", "300"],
     "--adapt-steps sets the fine-tuning of --adapt: give --adapt too"),
    (["evaluate", "--smiles", "CCO", "--fast", "gfn2-fast", "--adapt", "--adapt-steps", "0"],
     "adapt_steps (--adapt-steps): adaptation steps must be a whole number ≥ 1, got 0"),
    (["run", "--smiles", "C1CC"], "cannot parse SMILES 'C1CC'"),
    (["run", "--file", "/no/such.xyz"], "no such file: /no/such.xyz"),
    (["run", "--smiles", "CCO", "--dt", "0"], "dt must be a finite value > 0, got 0.0"),
    (["run", "--integrator", "leapfrog"], "invalid choice: 'leapfrog'"),
    (["run", "--smiles", "CCO", "--file", "x.xyz"], "not allowed with argument"),
    (["run", "--smiles", "[Fr]F", "--integrator", "verlet"], "no parameters for atomic number"),
    (["run", "--smiles", "CCO", "--fallback-steps", "0"], "fallback_steps must be an integer ≥ 1"),
    (["evaluate", "--smiles", "CCO", "--fallback-steps", "0"], "fallback_steps must be an integer ≥ 1"),
    (["evaluate", "--smiles", "CCO", "--mollify"], "mollify (--mollify) applies to the respa contender"),
    (["evaluate", "--smiles", "CCO", "--fast-every", "2"], "fast_every (--fast-every) applies to the respa contender"),
    (["evaluate", "--smiles", "CCO", "--fast", "gfn2-fast", "--fast-every", "3"], "fast_every = 3 must divide every k"),
    (["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "mmff", "--fast-every", "2"],
     "fast_every > 1 (--fast-every) splits a learned fast force"),
    (["run", "--smiles", "CCO", "--integrator", "verlet", "--fast-every", "2"],
     "--fast, --k, --fast-every and --adapt are only used with --integrator respa"),
    (["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "gfn2-fast", "--fast-every", "0"],
     "fast_every must be an integer ≥ 1"),
    (["run", "--smiles", "CCO", "--integrator", "respa", "--fast", "gfn2-fast", "--fast-every", "3"],
     "fast_every = 3 must divide k = 8"),
    (["run", "--smiles", "CCO", "--equilibrate-ps", "0.1", "--equilibrate-dt", "0"], "equilibrate_dt must be a finite value > 0 fs"),
    (["run", "--smiles", "CCO", "--ps", "-1"], "ps must be a finite value > 0, got -1.0"),
    (["run", "--smiles", "CCO", "--hydrogen-mass", "0"], "hydrogen_mass must be a positive mass in amu"),
    (["run", "--smiles", "CCO", "--temperature", "-5"], "temperature must be a finite value ≥ 0"),
    (["run", "--smiles", "CCO", "--temperature", "1e9"], "temperature must be at most 10000 K"),
    (["evaluate", "--smiles", "CCO", "--temperature", "1e9"], "temperature must be at most 10000 K"),
    (["run", "--smiles", "CCO", "--model", "no-such-model"], "no pretrained model 'no-such-model'"),
    (["run", "--smiles", "CCO", "--ensemble", "npt"], "invalid choice: 'npt'"),
    (["evaluate", "--smiles", "CCO", "--ps", "0"], "ps must be a finite value > 0 ps, got 0.0"),
    (["evaluate", "--smiles", "CCO", "--replicas", "1"], "at least 2 replicas"),
    (["run", "--smiles", ""], "cannot parse SMILES ''"),  # not the default molecule
    (["run", "--smiles", "[He]", "--integrator", "verlet"], "[He] is a single atom"),
    # output paths that cannot be written are refused before the run, not after it
    (["run", "--smiles", "CCO", "--summary", os.path.dirname(__file__)], "is a directory; give the path of a file"),
    (["run", "--smiles", "CCO", "--out", os.path.join(__file__, "x.traj")], "is a file, not a directory"),
    (["evaluate", "--smiles", "CCO", "--plots", __file__], "is a file; give a directory"),
    (["generate", "--summary", os.path.dirname(__file__)], "is a directory; give the path of a file"),
    (["export", "--from", "gfn2-k8", "--name", "../gfn2-k8"], "a shipped name is letters, digits"),
    # lengths, steps and seeds that cannot make a run
    (["run", "--smiles", "CCO", "--ps", "inf"], "ps must be a finite value > 0, got inf"),
    (["run", "--smiles", "CCO", "--equilibrate-ps", "inf"], "equilibrate_ps must be a finite value ≥ 0, got inf"),
    (["run", "--smiles", "CCO", "--integrator", "verlet", "--dt", "1e-300"], "the run would take 5e+302 steps"),
    (["run", "--smiles", "CCO", "--save-every", "400", "--ps", "0.01"],
     "the run (40 steps of 0.25 fs) is shorter than one saved frame (400 steps)"),
    (["run", "--smiles", "CCO", "--seed", "-1"], "seed must be an integer from 0 to 2147483647, got -1"),
    (["run", "--smiles", "CCO", "--conformer-seed", "-1"], "conformer seed must be an integer from 0"),
    (["evaluate", "--smiles", "CCO", "--ps", "nan"], "ps must be a finite value > 0 ps, got nan"),
    (["evaluate", "--smiles", "CCO", "--equilibrate-ps", "inf"], "equilibrate_ps must be a finite value ≥ 0 ps"),
    (["evaluate", "--smiles", "CCO", "--temperature", "0"], "temperature must be a finite value > 0 K, got 0.0"),
    (["evaluate", "--smiles", "CCO", "--seed", "-3"], "seed must be an integer from 0"),
    # options that do not apply are refused, not ignored
    (["run", "--smiles", "CCO", "--charge", "1"], "--charge 1 contradicts the SMILES, which gives charge 0"),
    (["run", "--smiles", "[CH3]", "--spin", "0"], "--spin 0 contradicts the SMILES, which gives spin 1"),
    (["run", "--smiles", "CCO", "--integrator", "verlet", "--ensemble", "nvt"], "velocity Verlet is NVE"),
    (["run", "--smiles", "CCO", "--integrator", "langevin", "--ensemble", "nve"], "langevin is NVT"),
    # acceptance thresholds that would reject every jump
    (["run", "--smiles", "CCO", "--max-displacement", "nan"], "Guards.max_displacement must be > 0"),
    (["run", "--smiles", "CCO", "--max-energy-rise", "-1"], "Guards.max_energy_rise must be > 0"),
    (["run", "--smiles", "CCO", "--max-energy-drift", "nan"], "Guards.max_energy_drift must be > 0"),
    (["run", "--smiles", "CCO", "--clash-ratio", "-1"], "Guards.clash_ratio must be in [0, 1)"),
    (["run", "--smiles", "CCO", "--max-attempts", "0"], "Guards.max_attempts must be an integer ≥ 1"),
    (["run", "--smiles", "CCO", "--out", "run.txt"], "cannot tell the trajectory format of run.txt"),
    (["run", "--smiles", "CCO", "--out", "run.sdf"], "ASE cannot write a multi-frame trajectory as sdf"),
    (["run", "--file", os.path.dirname(__file__)], "is a directory; give a molecule file"),
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


def test_outputs_that_would_overwrite_the_input_or_each_other_are_refused(tmp_path, capsys):
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    before = xyz.read_text()
    for extra, message in ((["--out", str(xyz)], "--file and --out name the same file"),
                           (["--summary", str(tmp_path / "." / "water.xyz")], "--file and --summary name the same"),
                           (["--out", str(tmp_path / "a.json"), "--summary", str(tmp_path / "a.json")],
                            "--out and --summary name the same file")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["run", "--file", str(xyz), "--integrator", "verlet", "--ps", "0.01", *extra])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert xyz.read_text() == before and sorted(os.listdir(tmp_path)) == ["water.xyz"]


def test_file_errors_name_the_problem(tmp_path):
    unknown = tmp_path / "mol.txt"
    unknown.write_text("hello\n")
    with pytest.raises(InputError, match="ASE does not know the format of .*mol.txt"):
        cli.load_molecule(cli.build_parser().parse_args(["run", "--file", str(unknown)]))
    element = tmp_path / "qq.xyz"
    element.write_text("2\n\nO 0 0 0\nQq 0.96 0 0\n")
    with pytest.raises(InputError, match="unknown element or key 'Qq'"):
        cli.load_molecule(cli.build_parser().parse_args(["run", "--file", str(element)]))


@pytest.mark.slow
def test_trajectory_format_follows_the_extension(tmp_path):
    for name in ("t.xyz", "t.traj"):
        cli.main(["run", "--smiles", "O", "--integrator", "verlet", "--ps", "0.005", "--save-every", "10",
                  "--out", str(tmp_path / name)])
    xyz, traj = read(tmp_path / "t.xyz", ":"), read(tmp_path / "t.traj", ":")
    assert len(xyz) == len(traj) == 3
    assert (tmp_path / "t.xyz").read_text().startswith("3\n")  # text, not ASE's binary format
    np.testing.assert_allclose(xyz[-1].get_velocities(), traj[-1].get_velocities(), atol=1e-7)
    np.testing.assert_allclose(xyz[-1].get_forces(), traj[-1].get_forces(), atol=1e-7)


@pytest.mark.slow
def test_keep_velocities_continues_a_run(tmp_path, capsys):
    """A run continued from its --out file's last frame follows the uninterrupted run."""
    def run(out, ps, *extra):
        assert cli.main(["run", *extra, "--integrator", "verlet", "--ps", ps, "--save-every", "4",
                         "--out", str(tmp_path / out)]) == 0
        return read(tmp_path / out, ":")

    whole = run("whole.traj", "0.01", "--smiles", "O")
    first = run("first.traj", "0.005", "--smiles", "O")
    rest = run("rest.traj", "0.005", "--file", str(tmp_path / "first.traj"), "--keep-velocities",
               "--summary", str(tmp_path / "rest.json"))
    assert json.loads((tmp_path / "rest.json").read_text())["velocities_from"] == str(tmp_path / "first.traj")
    assert len(whole) == 11 and len(first) == len(rest) == 6
    np.testing.assert_allclose(rest[0].get_velocities(), first[-1].get_velocities(), rtol=1e-12)
    for a, b in zip(rest, whole[5:]):   # the SCF restarts from scratch: equal to ~1e-9
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-7)
        np.testing.assert_allclose(a.get_velocities(), b.get_velocities(), atol=1e-7)
    assert np.abs(whole[-1].positions - whole[5].positions).max() > 1e-3   # the atoms did move
    capsys.readouterr()
    for argv, message in ((["--smiles", "O"], "give it with --file"),
                          (["--file", str(_plain_water(tmp_path))], "holds no velocities")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["run", *argv, "--keep-velocities", "--integrator", "verlet", "--ps", "0.005"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def _plain_water(tmp_path):
    path = tmp_path / "water.xyz"
    path.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    return path


@pytest.mark.slow
def test_console_script_runs_as_installed(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "jkstep")
    proc = subprocess.run([exe, "run", "--smiles", "C1CC"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "jkstep: error: cannot parse SMILES 'C1CC'"
    # a reader that stops early gets no traceback
    proc = subprocess.run(f"'{exe}' models | head -1", shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("gfn2-") and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("extra", [[], ["--equilibrate-ps", "0.01"]])
def test_an_scf_failure_at_the_start_is_named_as_such(monkeypatch, capsys, extra):
    """Not a 'blow-up' and not a traceback: one line naming the SCF and what to check, status 1."""
    from tblite.exceptions import TBLiteRuntimeError
    from tblite.interface import Calculator

    def broken(calc, res=None, copy=False):
        raise TBLiteRuntimeError("SCF not converged (injected)")

    monkeypatch.setattr(Calculator, "singlepoint", broken)
    assert cli.main(["run", "--smiles", "O", "--integrator", "verlet", "--ps", "0.01", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the xTB SCF did not converge at the starting geometry of O" in err[0]
    assert "check the charge and unpaired electrons" in err[0]
