"""`jkstep evaluate`: every contender from the same states, API keys, exact call counts, nulls."""

import json

import pytest

from jkstep import cli

CONTENDER_KEYS = {"xtb_calls", "blew_up", "drift_kj_mol_ps", "energy_std_kj_mol", "mean_temperature_k", "bond_js",
                  "angle_js", "dihedral_js", "spectrum_overlap", "xh_band_shift_cm1", "flip_rate_ratio", "wall_s"}
FLOOR_KEYS = {"bond_js", "angle_js", "dihedral_js", "spectrum_overlap", "xh_band_shift_cm1"}
ONE_JUMP_KEYS = {"position_rmse_a", "bond_rmse_a", "angle_rmse_deg", "dihedral_rmse_deg", "force_rmse_ev_a"}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = cli.main(["evaluate", "--smiles", "CCO", "--ps", "0.1", "--replicas", "2", "--equilibrate-ps", "0.05",
                   "--fast", "gfn2-fast", "--mollify", "--summary", str(out / "eval.json"), "--plots", str(out / "plots")])
    assert rc == 0
    return json.loads((out / "eval.json").read_text()), out


@pytest.mark.slow
def test_summary_has_the_api_keys(evaluation):
    r, _ = evaluation
    assert {"molecule", "k", "simulated_fs", "n_replicas", "one_jump", "noise_floor", "contenders"} <= set(r)
    assert r["molecule"] == "CCO" and r["k"] == 8 and r["n_replicas"] == 2 and r["simulated_fs"] == 100.0
    assert set(r["noise_floor"]) == FLOOR_KEYS
    assert set(r["contenders"]) == {"reference", "verlet_kdt", "corrector_only", "kstep", "mmff_respa", "respa"}
    assert r["mollified"] is True                    # the respa contender (gfn2-fast) is mollified
    assert r["fast_every"] == 2                      # and in three levels, by default
    assert r["contenders"]["mmff_respa"]["fallbacks"] == 0 == r["contenders"]["respa"]["fallbacks"]
    for name in ("reference", "verlet_kdt", "corrector_only", "mmff_respa", "respa"):
        assert CONTENDER_KEYS <= set(r["contenders"][name]), name
    assert r["fast_adaptation"] is None
    assert r["contenders"]["kstep"] is None and r["one_jump"] is None  # no model given
    # Verlet at k·dt's one-jump errors on the same windows, beside the model's when there is one
    base = r["one_jump_verlet_kdt"]
    assert set(base) == {"position_rmse_a", "bond_rmse_a", "angle_rmse_deg", "dihedral_rmse_deg", "force_rmse_ev_a"}
    assert 1e-4 < base["position_rmse_a"] < 0.05 and base["bond_rmse_a"] > 0 and base["force_rmse_ev_a"] > 0


@pytest.mark.slow
def test_equal_cost_and_exact_call_counts(evaluation):
    c = evaluation[0]["contenders"]
    frames = 100.0 / 2.0  # 0.1 ps in frames k·dt = 2 fs apart
    assert c["reference"]["xtb_calls"] == 2 * (1 + frames * 8)
    assert c["verlet_kdt"]["xtb_calls"] == 2 * (1 + frames) == c["corrector_only"]["xtb_calls"]
    assert c["mmff_respa"]["xtb_calls"] == 2 * (1 + frames) == c["respa"]["xtb_calls"]   # mollified: still one
    assert c["corrector_only"]["accepted"] == 2 * frames and c["corrector_only"]["fallbacks"] == 0


@pytest.mark.slow
def test_evaluate_adapt_runs_respa_adapted_beside_respa(tmp_path):
    """--adapt: gfn2-fast fine-tuned on the thermalisation's frames (0.1 ps, every 0.5 fs step;
    --adapt-steps 300) runs as respa_adapted from the same starts, one xTB call per macro-step; the
    report's held-out error falls."""
    summary = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--smiles", "CCO", "--ps", "0.04", "--replicas", "2", "--equilibrate-ps", "0.1",
                     "--fast", "gfn2-fast", "--adapt", "--adapt-steps", "300", "--summary", str(summary)]) == 0
    r = json.loads(summary.read_text())
    c, a = r["contenders"], r["fast_adaptation"]
    assert (a["frames"], a["train_frames"], a["holdout_frames"], a["steps"]) == (200, 160, 40, 300)
    assert a["force_rmse_after_ev_a"] < a["force_rmse_before_ev_a"]
    assert 0 < a["curvature_rms_after"] < 1.0 and 0 < a["curvature_rms_before"] < 1.0   # 20 fs: noisy
    assert CONTENDER_KEYS <= set(c["respa_adapted"])
    assert c["respa_adapted"]["xtb_calls"] == 2 * (1 + 20) == c["respa"]["xtb_calls"]
    assert c["respa_adapted"]["fallbacks"] == 0 and not c["respa_adapted"]["blew_up"]
    assert c["respa_adapted"]["wall_s"] > a["wall_s"] > 0     # its cost includes the fine-tuning
    assert c["respa_adapted"]["energy_std_kj_mol"] != c["respa"]["energy_std_kj_mol"]   # another force


@pytest.mark.slow
def test_corrector_only_is_verlet_at_k_dt_and_reference_is_the_floor(evaluation):
    r, _ = evaluation
    c = r["contenders"]
    for key in ("drift_kj_mol_ps", "energy_std_kj_mol", "mean_temperature_k", "bond_js", "spectrum_overlap"):
        assert c["corrector_only"][key] == pytest.approx(c["verlet_kdt"][key], rel=1e-6, abs=1e-9), key
        if key in FLOOR_KEYS:
            assert c["reference"][key] == r["noise_floor"][key]
    # the floor compares different replicas: not zero divergence, not a perfect overlap
    assert r["noise_floor"]["bond_js"] > 0 and 0 < r["noise_floor"]["spectrum_overlap"] < 1
    # Verlet at 2 fs fluctuates far more than the 0.25 fs reference
    assert c["verlet_kdt"]["energy_std_kj_mol"] > 10 * c["reference"]["energy_std_kj_mol"]
    assert c["reference"]["flip_rate_ratio"] is None  # ethanol has no rotatable heavy-atom torsion


@pytest.mark.slow
def test_plots_are_written(evaluation):
    _, out = evaluation
    for name in ("energy.png", "spectra.png", "bonds.png"):
        assert (out / "plots" / name).stat().st_size > 1000


def _without_wall(x):
    if isinstance(x, dict):
        return {k: _without_wall(v) for k, v in x.items() if k != "wall_s"}
    return x


@pytest.mark.slow
def test_k_sweep_shares_one_reference_run():
    """evaluate_ks runs the reference once (frames every gcd(ks) steps) and reads every k/g-th
    frame: each k's summary equals a separate evaluation at that k, and the reference's calls
    are counted once."""
    import jkstep
    from jkstep.evaluate.compare import EvalConfig, evaluate, evaluate_ks

    mol = jkstep.Molecule.from_smiles("CCO", seed=0)
    made = []

    def factory():
        made.append(jkstep.xtb_potential(mol))
        return made[-1]

    config = EvalConfig(ps=0.04, n_replicas=2, equilibrate_ps=0.01)
    sweep = evaluate_ks(mol, factory, config, {8: None, 4: None})
    assert sorted(sweep) == [4, 8] and sweep[4]["k"] == 4 and sweep[8]["simulated_fs"] == 40.0
    # thermalisation + one reference + (Verlet at k·dt + corrector + mmff_respa) per k
    assert len(made) == 1 + 1 + 3 * 2
    alone = evaluate(mol, lambda: jkstep.xtb_potential(mol), config)  # k = 8
    assert _without_wall(sweep[8]) == _without_wall(alone)
    assert sweep[4]["contenders"]["reference"]["xtb_calls"] == 2 * (1 + 160)
    assert sweep[4]["contenders"]["verlet_kdt"]["xtb_calls"] == 2 * (1 + 40)
    with pytest.raises(jkstep.InputError, match="ks ≥ 1"):
        evaluate_ks(mol, factory, config, {})


def test_equal_cost_time_step():
    """Verlet's time step for the calls a hybrid made: one call per replica at the start, one per
    step, the step count rounded, never finer than the reference's step."""
    from jkstep.integrate import equal_cost_dt

    assert equal_cost_dt(2 * (1 + 20), 2, 40.0, 0.25) == 2.0          # Verlet at k·dt's own calls
    assert equal_cost_dt(2 * (1 + 24), 2, 40.0, 0.25) == pytest.approx(40.0 / 24)
    assert equal_cost_dt(4797, 4, 2000.0, 0.25) == pytest.approx(2000.0 / 1198)
    assert equal_cost_dt(10**6, 2, 40.0, 0.25) == 0.25                 # dearer than the reference


@pytest.mark.slow
def test_a_contender_that_blows_up_reports_nulls():
    """At k = 32 plain Verlet at 8 fs cannot hold ethanol's O–H and C–H stretches: it is reported
    as blown up, with JSON null for every figure a broken trajectory cannot give, while the
    corrector-only control (falling back to short Verlet steps) survives the same states."""
    import jkstep
    from jkstep.evaluate.compare import EvalConfig, evaluate

    mol = jkstep.Molecule.from_smiles("CCO", seed=0)
    r = evaluate(mol, lambda: jkstep.xtb_potential(mol), EvalConfig(k=32, ps=0.128, n_replicas=2, equilibrate_ps=0.01))
    r = json.loads(json.dumps(r))  # what the summary file holds
    c = r["contenders"]
    assert c["verlet_kdt"]["blew_up"] is True
    nulls = CONTENDER_KEYS - {"xtb_calls", "blew_up", "wall_s"}
    assert all(c["verlet_kdt"][key] is None for key in nulls), {key: c["verlet_kdt"][key] for key in nulls}
    assert c["verlet_kdt"]["xtb_calls"] < 2 * (1 + 16)  # a failed trajectory stops calling
    for name in ("reference", "corrector_only"):
        assert c[name]["blew_up"] is False and c[name]["energy_std_kj_mol"] is not None, name
    assert c["corrector_only"]["fallbacks"] == 2 * 16 and c["corrector_only"]["accepted"] == 0


@pytest.mark.slow
def test_an_interrupted_evaluation_keeps_the_contenders_that_finished(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a contender: the summary is still written, with the finished contenders'
    figures, null for the rest, ``"interrupted": true``, and exit status 130."""
    import contextlib

    from jkstep import parallel
    from jkstep.evaluate import compare

    real, started = compare.run_contender, []

    def interrupted_at_the_fifth(*args, **kwargs):  # one call per replica: reference ×2, verlet_kdt ×2, then Ctrl-C
        started.append(1)
        if len(started) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    @contextlib.contextmanager
    def in_this_process(workers=None, scheduler=None):   # the same tasks, here, so that the patch reaches them
        yield parallel.SerialExecutor()

    monkeypatch.setenv("JKSTEP_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(parallel, "open_executor", in_this_process)
    monkeypatch.setattr(compare, "run_contender", interrupted_at_the_fifth)
    summary = tmp_path / "eval.json"
    rc = cli.main(["evaluate", "--smiles", "CCO", "--ps", "0.04", "--replicas", "2", "--equilibrate-ps", "0.01",
                   "--summary", str(summary)])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    r = json.loads(summary.read_text())
    assert r["interrupted"] is True
    c = r["contenders"]
    assert c["reference"]["xtb_calls"] == 2 * (1 + 160) and c["verlet_kdt"]["xtb_calls"] == 2 * (1 + 20)
    assert c["verlet_kdt"]["energy_std_kj_mol"] is not None and c["corrector_only"] is None
