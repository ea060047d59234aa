"""The shipped model loads by name and runs; a broken checkpoint gives one clear error."""

import shutil

import numpy as np
import pytest

import jkstep
from jkstep import InputError
from jkstep.model.pretrained import PRETRAINED_DIR, shipped_names
from jkstep.rollout import runner


def test_gfn2_k8_and_k16_ship():
    assert {"gfn2-k8", "gfn2-k16"} <= set(shipped_names())


@pytest.mark.parametrize("name", shipped_names())
def test_every_shipped_model_loads_and_runs(name, ethanol):
    """Loads by name; the recorded config is what the loader builds; a few macro-steps run with
    sane counters (every macro-step accepted or fallen back, calls counted exactly)."""
    bundle = jkstep.load_pretrained(name)
    k = int(name.split("-k")[1])
    assert (bundle.k, bundle.dt) == (k, 0.25) == (bundle.config.k, bundle.config.dt_fs)
    assert bundle.meta["model_config"]["k"] == k and bundle.meta["shipped_name"] == name
    assert set(bundle.elements) == {1, 6, 7, 8, 16}
    assert bundle.meta["data_provenance"]["train"]
    pot = jkstep.xtb_potential(ethanol)
    init, apply = jkstep.kstep(bundle, pot, ethanol)
    state, _ = runner(apply, 5, 1)(init(ethanol.positions, ethanol.thermal_velocities(300.0, 0)))
    assert int(state.accepted) + int(state.fallbacks) == 5 and not bool(state.failed)
    assert int(state.accepted) >= 1
    assert pot.calls == int(state.force_calls) >= 6
    assert int(state.step) == 5 * k
    assert np.all(np.isfinite(np.asarray(state.positions)))


def test_wrong_k_or_dt_is_refused(ethanol):
    bundle = jkstep.load_pretrained("gfn2-k8")
    with pytest.raises(InputError, match="cannot run k = 16"):
        jkstep.kstep(bundle, jkstep.xtb_potential(ethanol), ethanol, k=16)


def test_missing_or_corrupt_checkpoint(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(PRETRAINED_DIR / "gfn2-k8", broken)
    step = next(p for p in broken.iterdir() if p.name.isdigit())
    shutil.rmtree(step / "ema")
    with pytest.raises(InputError, match="incomplete or corrupt"):
        jkstep.load_pretrained(str(broken))
    with pytest.raises(InputError, match="holds no jkstep checkpoint"):
        jkstep.load_pretrained(str(tmp_path))
