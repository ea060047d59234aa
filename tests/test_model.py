"""The k-step network, its training, Orbax checkpoints, load_pretrained and MM → QM transfer.

Data: short NVE trajectories of an ethanol-like and a water-like molecule under a cheap JAX
Morse elastic network (velocity Verlet, dt 0.25 fs, numpy), cut into k = 8 windows, padded to 9 atoms.
"""

import dataclasses
import functools
import json
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkstep import units
from jkstep.errors import InputError
from jkstep.model import KStepNet, ModelConfig, ballistic_baseline, init_params, load_pretrained
from jkstep.model import train as T
from jkstep.model import transfer

K, DT = 8, 0.25
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL_X = np.array([
    [1.1879, -0.3829, 0.0000], [0.0000, 0.5526, 0.0000], [-1.1867, -0.2472, 0.0000],
    [-1.9237, 0.3850, 0.0000], [2.0985, 0.2306, 0.0000], [1.1184, -1.0093, 0.8869],
    [1.1184, -1.0093, -0.8869], [0.0663, 1.1707, 0.8836], [0.0663, 1.1707, -0.8836]])
WATER_Z = np.array([8, 1, 1])
WATER_X = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
MASSES = {1: 1.008, 6: 12.011, 8: 15.999}
SMALL = ModelConfig(features=16, layers=2, n_rbf=8, k=K, dt_fs=DT, elements=(1, 6, 8))
TRAIN = T.TrainConfig(learning_rate=3e-3, finetune_learning_rate=1e-3, warmup_steps=5,
                      total_steps=40, val_every=20, log_every=5, checkpoint_every=20, patience=None,
                      ema_decay=0.9)


def morse_forces(x0):
    """Forces (eV/Å) of a Morse elastic network around x0: stiff bonds, soft 1-3 pairs."""
    d0 = np.linalg.norm(x0[:, None] - x0[None], axis=-1)
    n = len(x0)
    depth = np.where(d0 < 1.6, 4.0, 0.4) * (d0 < 2.6) * (1 - np.eye(n))
    d0 = d0 + np.eye(n)

    def forces(x):
        rij = x[:, None] - x[None]
        r = np.linalg.norm(rij, axis=-1) + np.eye(n)
        e = np.exp(-2.0 * (r - d0))
        de_dr = 2.0 * depth * 2.0 * (1 - e) * e          # dE/dr per unordered pair
        return -np.sum((de_dr / r)[..., None] * rij, axis=1)

    return forces


def trajectory(z, x0, steps, seed):
    """NVE velocity Verlet (dt 0.25 fs) from ~400 K velocities; numpy, so no compilation."""
    m = np.array([MASSES[int(e)] for e in z])
    rng = np.random.default_rng(seed)
    v = rng.normal(size=x0.shape) * np.sqrt(units.KB * 400.0 * units.ACCEL / m)[:, None]
    v -= (m[:, None] * v).sum(0) / m.sum()
    force_fn, inv_m = morse_forces(x0), units.ACCEL / m[:, None]
    x, f = x0.copy(), force_fn(x0)
    xs, vs, fs = [], [], []
    for _ in range(steps):
        v_half = v + 0.5 * DT * f * inv_m
        x = x + DT * v_half
        f = force_fn(x)
        v = v_half + 0.5 * DT * f * inv_m
        xs.append(x), vs.append(v), fs.append(f)
    return m, np.array(xs), np.array(vs), np.array(fs)


def windows(z, x0, steps, seed, n_pad=9, stride=2):
    m, xs, vs, fs = trajectory(z, x0, steps, seed)
    t = np.arange(0, steps - K, stride)
    n, pad = len(z), n_pad - len(z)

    def p(a):
        return np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))

    return {"numbers": p(np.tile(z, (len(t), 1))).astype(np.int32),
            "mask": p(np.ones((len(t), n), bool)),
            "masses": np.pad(np.tile(m, (len(t), 1)), [(0, 0), (0, pad)], constant_values=1.0),
            "positions": p(xs[t]), "velocities": p(vs[t]), "forces": p(fs[t]),
            "target_positions": p(xs[t + K]), "target_velocities": p(vs[t + K]),
            "target_forces": p(fs[t + K])}


@pytest.fixture(scope="module")
def data():
    """(train windows, val batches): ethanol and water mixed, train and val from separate runs."""
    tr = [windows(ETHANOL_Z, ETHANOL_X, 240, 0), windows(WATER_Z, WATER_X, 240, 1)]
    va = [windows(ETHANOL_Z, ETHANOL_X, 120, 2, stride=8), windows(WATER_Z, WATER_X, 120, 3, stride=8)]
    train = {k: np.concatenate([a[k] for a in tr]) for k in tr[0]}
    val = {k: np.concatenate([a[k] for a in va]) for k in va[0]}
    val_batches = [{k: v[i:i + 8] for k, v in val.items()} for i in range(0, 24, 8)]
    return train, val_batches


@jax.jit
def forward(params, *inputs):
    """The SMALL model, jitted once per input shape."""
    return KStepNet(SMALL).apply({"params": params}, *inputs)


def noisy_params(config, seed=0, scale=0.5):
    """Random weights with non-zero output heads (an untrained model outputs exactly ballistic)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(np.asarray, init_params(config, seed=seed))
    for head in ("head_dx", "head_dv", "head_force"):
        params[head]["gate_out"] = {k: (v + scale * rng.normal(size=v.shape)).astype(np.float32)
                                    for k, v in params[head]["gate_out"].items()}
    return params


def batch_jump(model, params, batch):
    """The network's jump (x, v, f) -> (x', v', F̂') over a prepared batch, as compute_losses makes it."""
    def jump(x, v, f):
        return model.apply({"params": params}, batch["numbers"], batch["mask"], batch["masses"], x, v, f)

    return jump


def ethanol_state(seed=0):
    rng = np.random.default_rng(seed)
    m = np.array([MASSES[int(e)] for e in ETHANOL_Z])
    x = ETHANOL_X + 0.05 * rng.normal(size=ETHANOL_X.shape)
    v = 0.02 * rng.normal(size=x.shape)
    f = rng.normal(size=x.shape)
    return ETHANOL_Z, m, x, v, f


def random_orthogonal(seed, reflect):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) == reflect:
        q[:, 0] *= -1
    return q


# ---------------------------------------------------------------------------------------------


def test_config_json_roundtrip_and_defaults():
    cfg = ModelConfig(k=16, elements=[8, 1, 6, 1])
    assert cfg.elements == (1, 6, 8)
    assert cfg.max_correction_a == pytest.approx(0.2)
    assert ModelConfig(k=8).max_correction_a == pytest.approx(0.1)
    assert ModelConfig(k=32).max_correction_a == pytest.approx(0.3)
    assert cfg.max_velocity_correction == pytest.approx(0.2 / (16 * 0.25))
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())
    with pytest.raises(InputError):
        ModelConfig.from_dict({"featurs": 3})
    with pytest.raises(InputError):
        ModelConfig(cutoff=-1.0)
    with pytest.raises(InputError, match="features must be an integer, got 6.5"):
        ModelConfig.from_dict({"features": 6.5})
    # a wrong type is named at load, not deep in training; YAML's 1e-4 (read as text) is a number
    with pytest.raises(InputError, match="learning_rate must be a number, got 'abc'"):
        T.TrainConfig.from_dict({"learning_rate": "abc"})
    with pytest.raises(InputError, match="patience must be an integer or null, got 'x'"):
        T.TrainConfig.from_dict({"patience": "x"})
    assert T.TrainConfig.from_dict({"learning_rate": "1e-4"}).learning_rate == 1e-4
    # the shipped YAML configs load, and the MM backbone fits the QM model
    root = pathlib.Path(__file__).resolve().parent.parent / "configs"
    mm, qm = (T.load_model_config(root / f"model_{x}_k8.yaml") for x in ("mm", "qm"))
    assert all(getattr(mm, f) == getattr(qm, f) for f in transfer.BACKBONE_FIELDS)
    assert (qm.k, qm.dt_fs, qm.max_correction_a) == (8, 0.25, 0.1)
    for x in ("mm", "qm"):
        cfg = T.load_train_config(root / f"train_{x}_k8.yaml")
        assert cfg.data["dir"] == f"data/{x}" and cfg.finetune_learning_rate < cfg.learning_rate


def test_batch_streams_resume():
    arrays = {"a": np.arange(10)}
    for make in (lambda: T.ArrayBatches(arrays, 3, seed=4),
                 lambda: T.EpochBatches(lambda e: [{"a": np.array([e, i])} for i in range(3)])):
        stream = make()
        [next(stream) for _ in range(5)]
        state = json.loads(json.dumps(stream.get_state()))
        expected = [next(stream)["a"].tolist() for _ in range(6)]
        other = make()
        other.set_state(state)
        assert [next(other)["a"].tolist() for _ in range(6)] == expected


ALL9 = np.ones(9, bool)          # explicit masks everywhere: one compilation per input shape


@pytest.mark.parametrize("reflect", [False, True])
def test_e3_equivariance(reflect):
    fn = functools.partial(forward, noisy_params(SMALL))
    z, m, x, v, f = ethanol_state()
    out = fn(z, ALL9, m, x, v, f)
    q = random_orthogonal(3, reflect)
    shift = np.array([3.0, -7.0, 11.0])
    out_r = fn(z, ALL9, m, x @ q.T + shift, v @ q.T, f @ q.T)
    assert np.abs(np.asarray(out[0]) - x).max() > 0.01          # the network does something
    np.testing.assert_allclose(out_r[0], np.asarray(out[0]) @ q.T + shift, atol=1e-5)
    np.testing.assert_allclose(out_r[1], np.asarray(out[1]) @ q.T, atol=1e-6)
    np.testing.assert_allclose(out_r[2], np.asarray(out[2]) @ q.T, atol=1e-4)


def test_permutation_padding_and_mixed_batches():
    fn = functools.partial(forward, noisy_params(SMALL))
    z, m, x, v, f = ethanol_state()
    ref = [np.asarray(a) for a in fn(z, ALL9, m, x, v, f)]
    perm = np.random.default_rng(0).permutation(len(z))
    outp = fn(z[perm], ALL9, m[perm], x[perm], v[perm], f[perm])
    for a, b in zip(ref, outp):
        np.testing.assert_allclose(b, a[perm], atol=1e-6)

    def pad(a, n, value=0.0):
        return np.pad(a, [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1), constant_values=value)

    # water padded to 9 atoms alone, then water and ethanol together in one batch padded to 12
    mw = np.array([MASSES[int(e)] for e in WATER_Z])
    rng = np.random.default_rng(5)
    water = [WATER_Z, mw, WATER_X + 0.02 * rng.normal(size=(3, 3)), 0.02 * rng.normal(size=(3, 3)),
             rng.normal(size=(3, 3))]
    zw, mw9, xw, vw, fw = (pad(a, 9, 1.0 if i == 1 else 0.0) for i, a in enumerate(water))
    ref_w = [np.asarray(a) for a in fn(zw, zw > 0, mw9, xw, vw, fw)]
    assert all(np.all(a[3:] == 0.0) for a in ref_w)
    batch = [np.stack([pad(a, 12, 1.0 if i == 1 else 0.0), pad(b, 12, 1.0 if i == 1 else 0.0)])
             for i, (a, b) in enumerate(zip((z, m, x, v, f), water))]
    out = fn(batch[0], batch[0] > 0, *batch[1:])
    for i, r in enumerate(ref):
        np.testing.assert_allclose(out[i][0, :9], r, atol=1e-6)
        np.testing.assert_allclose(out[i][1, :3], ref_w[i][:3], atol=1e-6)
        assert np.all(np.asarray(out[i][0, 9:]) == 0.0) and np.all(np.asarray(out[i][1, 3:]) == 0.0)


def test_momentum_exact_and_bound_respected():
    cfg = SMALL
    params = noisy_params(cfg, scale=20.0)                            # saturate the bounds
    z, m, x, v, f = ethanol_state(1)
    f = f + 5.0                                                        # a net force, to be removed
    pos, vel, frc = forward(params, z, ALL9, m, x, v, f)
    p0 = (m[:, None] * v).sum(0)
    scale = (m[:, None] * np.abs(v)).sum()
    assert np.abs((m[:, None] * np.asarray(vel)).sum(0) - p0).max() < 1e-10 * scale
    # the centre of mass moves with the initial momentum, exactly
    com_shift = (m[:, None] * (np.asarray(pos) - x)).sum(0) / m.sum()
    np.testing.assert_allclose(com_shift, p0 / m.sum() * K * DT, atol=1e-12)
    assert np.abs(np.asarray(frc).sum(0)).max() < 1e-10
    xb, vb = ballistic_baseline(m[None], ALL9[None], x[None], v[None], f[None], K, DT)
    dx = np.linalg.norm(np.asarray(pos) - np.asarray(xb[0]), axis=-1)
    dv = np.linalg.norm(np.asarray(vel) - np.asarray(vb[0]), axis=-1)
    assert dx.max() <= cfg.max_correction_a * (1 + 1e-9) and dx.max() > 0.5 * cfg.max_correction_a
    assert dv.max() <= cfg.max_velocity_correction * (1 + 1e-9)
    # an untrained model is exactly the ballistic jump
    pos0, vel0, _ = forward(init_params(cfg), z, ALL9, m, x, v, f)
    np.testing.assert_allclose(pos0, xb[0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(vel0, vb[0], rtol=0, atol=1e-15)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A short training run (also the MM checkpoint for the transfer tests)."""
    train, val = data
    out = tmp_path_factory.mktemp("run")
    logged = []
    result = T.train(SMALL, TRAIN, T.ArrayBatches(train, 8, seed=0), val, out,
                     callback=lambda step, m: logged.append((step, m)))
    return result, out, logged


@pytest.mark.slow
def test_training_reduces_loss_ema_and_checkpoints(trained, data):
    result, out, logged = trained
    _, val = data
    scales = result.loss_scales
    before = T.evaluate(SMALL, TRAIN, init_params(SMALL, seed=TRAIN.seed), val, scales)
    after = T.evaluate(SMALL, TRAIN, result.state.ema_params, val, scales)
    assert after["loss"] < 0.7 * before["loss"], (before["loss"], after["loss"])
    assert result.steps == TRAIN.total_steps and result.elements == (1, 6, 8)
    train_losses = [m["loss"] for _, m in logged if "loss" in m]
    assert np.mean(train_losses[-3:]) < np.mean(train_losses[:2])
    assert any("val_loss" in m for _, m in logged)
    # EMA differs from the raw weights but follows them
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                         result.state.params, result.state.ema_params))
    assert max(diffs) > 0
    # latest keeps the newest two steps, best one step, with the best validation loss
    latest = sorted(int(p.name) for p in (out / "latest").iterdir() if p.name.isdigit())
    best = [int(p.name) for p in (out / "best").iterdir() if p.name.isdigit()]
    assert latest == [20, 40] and best == [result.best_step]
    assert result.best_val_loss == min(h["loss"] for h in result.history)


@pytest.mark.slow
def test_early_stopping_and_no_overwrite(data, tmp_path):
    train, val = data
    cfg = dataclasses.replace(TRAIN, val_every=10, patience=1, min_delta=1e9)   # only the first counts
    result = T.train(SMALL, cfg, T.ArrayBatches(train, 8), val, tmp_path / "run")
    assert result.stopped_early and result.steps == 2 * cfg.val_every and result.best_step == cfg.val_every
    again = T.train(SMALL, cfg, T.ArrayBatches(train, 8), val, tmp_path / "run")   # stays stopped
    assert again.stopped_early and again.steps == result.steps
    with pytest.raises(InputError, match="already holds checkpoints"):
        T.train(SMALL, cfg, T.ArrayBatches(train, 8), val, tmp_path / "run", resume=False)
    with pytest.raises(InputError, match="another model config"):
        T.train(dataclasses.replace(SMALL, k=4), cfg, T.ArrayBatches(train, 8), val, tmp_path / "run")


@pytest.mark.slow
def test_load_pretrained_roundtrip(trained):
    result, out, _ = trained
    bundle = load_pretrained(str(out))
    assert (bundle.k, bundle.dt, bundle.config) == (K, DT, SMALL)
    assert bundle.elements == (1, 6, 8) and bundle.units["length"] == "Å"
    assert bundle.meta["step"] == result.best_step
    latest = load_pretrained(out / "latest", which="latest")
    for a, b in zip(jax.tree.leaves(latest.params), jax.tree.leaves(result.state.ema_params)):
        np.testing.assert_array_equal(a, b)
    z, m, x, v, f = ethanol_state()
    got = latest.predict(z, ALL9, m, x, v, f)                 # jax.jit(bundle.apply) inside
    want = forward(result.state.ema_params, z, ALL9, m, x, v, f)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    bundle.check_elements(z)
    with pytest.raises(InputError, match="N \\(Z=7\\)"):
        bundle.check_elements(np.array([7, 1, 1, 1, 0]))
    with pytest.raises(InputError, match="shipped models.*path"):
        load_pretrained("no-such-model")
    with pytest.raises(InputError, match="no jkstep checkpoint"):
        load_pretrained(str(out.parent))


@pytest.mark.slow
def test_transfer_conversion(trained):
    _, mm_dir, _ = trained
    mm = load_pretrained(str(mm_dir))
    qm_cfg = ModelConfig(features=16, layers=2, n_rbf=8, k=K, dt_fs=DT, elements=(1, 6, 7, 8),
                         max_correction_a=0.05)
    params, info = transfer.load_converted_params(str(mm_dir), qm_cfg)
    assert info["model_config"] == SMALL.to_dict() and info["path"] == mm.meta["path"]
    # backbone copied bitwise (loaded, not random); bound-dependent layers rescaled
    fresh = init_params(qm_cfg)
    for name in ("embedding", "interaction_0", "interaction_1"):
        for a, b, c in zip(jax.tree.leaves(params[name]), jax.tree.leaves(mm.params[name]),
                           jax.tree.leaves(fresh[name])):
            np.testing.assert_array_equal(a, b)
            assert np.any(np.asarray(a) != np.asarray(c))
    np.testing.assert_allclose(params["vector_in"]["kernel"], mm.params["vector_in"]["kernel"] * 0.5, rtol=1e-6)
    np.testing.assert_allclose(params["head_dx"]["gate_out"]["kernel"],
                               mm.params["head_dx"]["gate_out"]["kernel"] * 2.0, rtol=1e-6)
    # the same physical map while corrections are small: the QM model reproduces the MM jump
    z, m, x, v, f = ethanol_state()
    v, f = 0.2 * v, 0.2 * f
    mm_out = forward(mm.params, z, ALL9, m, x, v, f)
    qm_out = jax.jit(KStepNet(qm_cfg).apply)({"params": params}, z, ALL9, m, x, v, f)
    xb, _ = ballistic_baseline(m[None], ALL9[None], x[None], v[None], f[None], K, DT)
    mm_dx = np.asarray(mm_out[0]) - np.asarray(xb[0])
    assert np.abs(mm_dx).max() > 1e-4
    np.testing.assert_allclose(np.asarray(qm_out[0]) - np.asarray(xb[0]), mm_dx, atol=0.05 * np.abs(mm_dx).max())
    reinit, _ = transfer.load_converted_params(str(mm_dir), qm_cfg, heads="reinit")
    assert float(jnp.abs(reinit["head_dx"]["gate_out"]["kernel"]).max()) == 0.0
    state0 = T.transfer_state(str(mm_dir), qm_cfg, TRAIN, freeze=FREEZE)
    assert int(state0.step) == 0
    for a, b in zip(jax.tree.leaves(state0.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="names no layer"):
        T.frozen_mask(params, ("interaction_9",))
    with pytest.raises(InputError, match="backbone"):
        transfer.convert_params(mm.params, SMALL, ModelConfig(features=32, layers=2, n_rbf=8))


@pytest.mark.slow
def test_transfer_to_another_k_keeps_the_input_layers_exact(trained):
    """A model converted to twice the k (and bound) gives the input layers the same
    pre-activations for the same physical velocities and forces (inputs v·T/b and ½aT²/b)."""
    _, mm_dir, _ = trained
    mm = load_pretrained(str(mm_dir))
    dst = dataclasses.replace(SMALL, k=2 * SMALL.k, max_correction_a=3.0 * SMALL.max_correction_a,
                              max_velocity_correction=None)
    params = transfer.convert_params(mm.params, SMALL, dst)
    rng = np.random.default_rng(0)
    v, acc = rng.normal(size=3) * 0.01, rng.normal(size=3) * 1e-3

    def pre(cfg, p):
        t, b = cfg.jump_fs, cfg.max_correction_a
        vin, fin = v * t / b, 0.5 * acc * t**2 / b
        vec = np.stack([vin, fin], -1) @ np.asarray(p["vector_in"]["kernel"], np.float64)
        inv = np.array([np.linalg.norm(vin), np.linalg.norm(fin), vin @ fin, 0.0])
        return vec, inv @ np.asarray(p["scalar_in"]["kernel"], np.float64)

    for a, b in zip(pre(SMALL, mm.params), pre(dst, params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-9)


FREEZE = ("embedding", "interaction_0")


@pytest.mark.slow
def test_finetune_freezes_layers_and_resumes_exactly(trained, data, tmp_path):
    """Fine-tune from the MM checkpoint with frozen layers: 20 steps straight, and 15 steps, a
    crash, a resume from the step-10 checkpoint and 10 more: identical weights."""
    _, mm_dir, _ = trained
    train, val = data
    mm = load_pretrained(str(mm_dir))
    cfg = dataclasses.replace(TRAIN, checkpoint_every=10)
    straight = T.finetune(str(mm_dir), SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val,
                                 tmp_path / "a", freeze=FREEZE, max_steps=20)

    class Crash(Exception):
        pass

    def crash(step, _):
        if step == 15:
            raise Crash

    with pytest.raises(Crash):
        T.finetune(str(mm_dir), SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val,
                          tmp_path / "b", freeze=FREEZE, callback=crash)
    assert sorted(p.name for p in (tmp_path / "b" / "latest").iterdir()) == ["10"]
    resumed = T.finetune(str(mm_dir), SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val,
                                tmp_path / "b", freeze=FREEZE, max_steps=20)
    assert resumed.steps == straight.steps == 20
    for tree in ("params", "ema_params", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(straight.state, tree)),
                        jax.tree.leaves(getattr(resumed.state, tree))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert resumed.best_step == straight.best_step and resumed.history == straight.history

    # frozen layers (and their EMA) bitwise unchanged, every other layer trained
    frozen = T.frozen_mask(mm.params, FREEZE)

    def changed(tree):
        return jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), tree, mm.params)

    for f_, c, e in zip(jax.tree.leaves(frozen), jax.tree.leaves(changed(resumed.state.params)),
                        jax.tree.leaves(changed(resumed.state.ema_params))):
        assert (not c and not e) if f_ else (c and e)
    meta = load_pretrained(str(tmp_path / "b")).meta
    assert meta["pretrained_from"]["path"] == mm.meta["path"] and meta["freeze"] == list(FREEZE)
    assert meta["learning_rate"] == TRAIN.finetune_learning_rate
    assert meta["pretrained_from"]["pretrained_from"] is None      # the MM model was trained from scratch
    # a second transfer keeps the chain: c <- b <- the MM model
    T.finetune(str(tmp_path / "b"), SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val,
                      tmp_path / "c", max_steps=1)
    chain = load_pretrained(str(tmp_path / "c")).meta["pretrained_from"]
    assert chain["path"] == meta["path"] and chain["pretrained_from"] == meta["pretrained_from"]


@pytest.mark.slow
def test_ctrl_c_saves_the_step_it_interrupts_and_training_resumes_exactly(data, tmp_path, ctrl_c_possible):
    """A Ctrl-C at step 13 (checkpoints every 10) saves latest at 13 before the KeyboardInterrupt;
    resuming to 20 gives the weights of an uninterrupted run. A second Ctrl-C acts at once."""
    train, val = data
    cfg = dataclasses.replace(TRAIN, checkpoint_every=10, val_every=10, log_every=1)
    straight = T.train(SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val, tmp_path / "a", max_steps=20)

    def ctrl_c(times):
        def callback(step, metrics):
            if step == 13 and "loss" in metrics:
                for _ in range(times):
                    signal.raise_signal(signal.SIGINT)
        return callback

    with pytest.raises(KeyboardInterrupt):
        T.train(SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val, tmp_path / "b", callback=ctrl_c(1))
    assert sorted(int(p.name) for p in (tmp_path / "b" / "latest").iterdir()) == [10, 13]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is back
    resumed = T.train(SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val, tmp_path / "b", max_steps=20)
    assert resumed.steps == 20 and resumed.history == straight.history
    for tree in ("params", "ema_params", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(straight.state, tree)),
                        jax.tree.leaves(getattr(resumed.state, tree))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    with pytest.raises(KeyboardInterrupt):   # twice: no waiting for the step's end
        T.train(SMALL, cfg, T.ArrayBatches(train, 8, seed=1), val, tmp_path / "c", callback=ctrl_c(2))
    assert sorted(int(p.name) for p in (tmp_path / "c" / "latest").iterdir()) == [10]


def test_time_reversal_is_an_exact_window(data):
    """Reversed windows are windows of the same NVE trajectory run backwards: Verlet from the
    reversed start reproduces the reversed target."""
    m, xs, vs, fs = trajectory(ETHANOL_Z, ETHANOL_X, 40, 5)
    batch = {"positions": xs[None, 10], "velocities": vs[None, 10], "forces": fs[None, 10],
             "target_positions": xs[None, 10 + K], "target_velocities": vs[None, 10 + K],
             "target_forces": fs[None, 10 + K], "numbers": ETHANOL_Z[None], "mask": np.ones((1, 9), bool),
             "masses": m[None]}
    rev = T.time_reversed(batch)
    force_fn, inv_m = morse_forces(ETHANOL_X), units.ACCEL / m[:, None]
    x, v, f = rev["positions"][0], rev["velocities"][0], rev["forces"][0]
    for _ in range(K):
        v_half = v + 0.5 * DT * f * inv_m
        x = x + DT * v_half
        f = force_fn(x)
        v = v_half + 0.5 * DT * f * inv_m
    np.testing.assert_allclose(x, rev["target_positions"][0], atol=1e-10)
    np.testing.assert_allclose(v, rev["target_velocities"][0], atol=1e-12)
    np.testing.assert_allclose(rev["target_velocities"], -batch["velocities"])


def test_energy_error_and_corrector_velocity():
    """The energy term is exact in KE and first order in the potential; a perfect prediction
    has zero energy error; the corrector velocity adds w·(F_{t+k} − F̂)/m."""
    z, m, x, v, f = ethanol_state(1)
    tf = f + 0.3
    b = T.prepare_batch({"numbers": z[None], "mask": np.ones((1, 9), bool), "masses": m[None],
                         "positions": x[None], "velocities": v[None], "forces": f[None],
                         "target_positions": x[None] + 0.01, "target_velocities": v[None],
                         "target_forces": tf[None]})
    assert float(T.jump_energy_error(b, b["target_positions"], b["target_velocities"])[0]) == 0.0
    dv = np.zeros_like(v)
    dv[0, 0] = 1e-3
    ke = float(T.jump_energy_error(b, b["target_positions"], b["target_velocities"] + dv)[0])
    expected = 0.5 * m[0] * ((v[0, 0] + 1e-3) ** 2 - v[0, 0] ** 2) / units.ACCEL
    assert ke == pytest.approx(expected, rel=1e-12)
    dx = np.zeros_like(x)
    dx[2, 1] = 1e-3
    pe = float(T.jump_energy_error(b, b["target_positions"] + dx, b["target_velocities"])[0])
    assert pe == pytest.approx(-tf[2, 1] * 1e-3, rel=1e-12)
    vc = np.asarray(T.corrector_velocity(b, b["velocities"], b["forces"], SMALL))[0]
    np.testing.assert_allclose(vc - v, np.broadcast_to(0.5 * K * DT * units.ACCEL * 0.3 / m[:, None], v.shape), rtol=1e-12)


@pytest.mark.slow
def test_energy_loss_and_reversal_train(data, tmp_path):
    """The energy loss, corrector velocity and time reversal train end to end and lower the loss."""
    train, val = data
    cfg = dataclasses.replace(TRAIN, w_energy=1.0, corrector_velocity=True, time_reversal=True, total_steps=30)
    result = T.train(SMALL, cfg, T.ArrayBatches(train, 8, seed=0), val, tmp_path / "run")
    assert "energy" in result.loss_scales and result.loss_scales["energy"] > 0
    before = T.evaluate(SMALL, cfg, init_params(SMALL, seed=cfg.seed), val, result.loss_scales)
    after = T.evaluate(SMALL, cfg, result.state.ema_params, val, result.loss_scales)
    assert after["loss"] < before["loss"] and after["loss_energy"] < before["loss_energy"]


@pytest.mark.slow
def test_reversal_corrected_loss_trains_the_integrators_jump(data):
    """With reversal_correction α the loss is that of kstep.reversal_corrected's jump (what the
    hybrid integrator makes), its gradient is finite on padded batches (water padded to 9 atoms:
    the back jump differentiates through the padding's zero vectors), and α outside [0, 1] is refused."""
    from jkstep.kstep import reversal_corrected

    _, val = data
    batch = T.prepare_batch(val[-1], SMALL)
    assert not bool(np.all(np.asarray(batch["mask"])))
    params = noisy_params(SMALL, seed=3, scale=0.2)
    model = KStepNet(SMALL)
    scales = jnp.asarray([1e-3, 1e-3, 0.5, 0.1])
    cfg = dataclasses.replace(TRAIN, w_energy=1.0, corrector_velocity=True, reversal_correction=0.5)
    loss, metrics = T.compute_losses(model, params, batch, scales, cfg)

    jump = batch_jump(model, params, batch)
    px, _, _ = reversal_corrected(jump, 0.5)(batch["positions"], batch["velocities"], batch["forces"])
    mask = np.asarray(batch["mask"])[..., None]
    expected = np.sqrt(np.sum((np.asarray(px - batch["target_positions"]) * mask) ** 2) / (3 * mask.sum()))
    assert float(metrics["rmse_x_a"]) == pytest.approx(expected, rel=1e-6)
    plain = T.compute_losses(model, params, batch, scales, dataclasses.replace(cfg, reversal_correction=0.0))[0]
    assert float(plain) != pytest.approx(float(loss), rel=1e-6)
    grads = jax.grad(lambda p: T.compute_losses(model, p, batch, scales, cfg)[0])(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    with pytest.raises(InputError, match="reversal_correction"):
        T.TrainConfig(reversal_correction=1.5)


def test_energy_bias_term_is_the_squared_batch_mean_of_the_energy_error(data):
    """w_energy_bias weighs (mean over the batch of the jump's energy error)² / scale²; the mean is
    reported as a metric, and it is what the ``loss_energy`` (mean square) term cannot tell from noise."""
    _, val = data
    batch = T.prepare_batch(val[0], SMALL)
    params = noisy_params(SMALL, seed=4, scale=0.2)
    model = KStepNet(SMALL)
    scales = jnp.asarray([1e-3, 1e-3, 0.5, 0.1])
    only_bias = dataclasses.replace(TRAIN, w_x=0.0, w_v=0.0, w_force=0.0, w_bond=0.0, w_energy=0.0, w_energy_bias=2.0)
    loss, metrics = jax.jit(lambda p, b: T.compute_losses(model, p, b, scales, only_bias))(params, batch)
    pos, vel, _ = jax.jit(lambda p, b: model.apply({"params": p}, b["numbers"], b["mask"], b["masses"],
                                                   b["positions"], b["velocities"], b["forces"]))(params, batch)
    mean_error = float(np.mean(np.asarray(T.jump_energy_error(batch, pos, vel))))
    assert mean_error != 0.0
    assert float(metrics["mean_energy_error_ev"]) == pytest.approx(mean_error, rel=1e-9)
    assert float(loss) == pytest.approx(2.0 * mean_error**2 / 0.1**2, rel=1e-9)
    assert float(metrics["rmse_energy_ev"]) > abs(mean_error)


def path_windows(z, x0, steps, seed, jumps, stride=8):
    """Windows of ``jumps`` consecutive k-step jumps (the path_* keys), unpadded."""
    m, xs, vs, fs = trajectory(z, x0, steps, seed)
    t = np.arange(0, steps - jumps * K, stride)
    out = {"numbers": np.tile(z, (len(t), 1)).astype(np.int32), "mask": np.ones((len(t), len(z)), bool),
           "masses": np.tile(m, (len(t), 1)), "positions": xs[t], "velocities": vs[t], "forces": fs[t],
           "target_positions": xs[t + K], "target_velocities": vs[t + K], "target_forces": fs[t + K]}
    later = t[:, None] + K * np.arange(1, jumps + 1)
    out.update(path_positions=xs[later], path_velocities=vs[later], path_forces=fs[later])
    return out


@pytest.mark.slow
def test_multi_jump_loss_is_the_mean_over_a_rollout():
    """jumps = J averages every term over J consecutive jumps, each starting where the last one
    landed with the corrector's velocity and the stored force; J = 1 is the one-jump loss exactly,
    and a J = 2 loss without path frames is refused."""
    batch = T.prepare_batch(path_windows(ETHANOL_Z, ETHANOL_X, 120, 5, jumps=2))
    params = noisy_params(SMALL, seed=6, scale=0.2)
    model = KStepNet(SMALL)
    scales = jnp.asarray([1e-3, 1e-3, 0.5, 0.1])
    cfg = dataclasses.replace(TRAIN, w_energy=1.0, corrector_velocity=True, jumps=2)
    loss, metrics = T.compute_losses(model, params, batch, scales, cfg)

    jump = batch_jump(model, params, batch)
    x1, v1, f1 = jump(batch["positions"], batch["velocities"], batch["forces"])
    first = dict(batch)
    v1 = T.corrector_velocity(first, v1, f1, SMALL)
    second = dict(batch, target_positions=batch["path_positions"][:, 1],
                  target_velocities=batch["path_velocities"][:, 1], target_forces=batch["path_forces"][:, 1])
    x2, v2, f2 = jump(x1, v1, batch["path_forces"][:, 0])
    v2 = T.corrector_velocity(second, v2, f2, SMALL)
    n3 = 3 * np.prod(batch["mask"].shape)
    mse_x = [np.sum(np.asarray(x1 - batch["path_positions"][:, 0]) ** 2) / n3,
             np.sum(np.asarray(x2 - batch["path_positions"][:, 1]) ** 2) / n3]
    assert float(metrics["rmse_x_a"]) == pytest.approx(np.sqrt(np.mean(mse_x)), rel=1e-9)
    e2 = np.asarray(T.jump_energy_error(second, x2, v2))
    assert float(metrics["rmse_energy_last_jump_ev"]) == pytest.approx(np.sqrt(np.mean(e2**2)), rel=1e-9)
    one = dataclasses.replace(cfg, jumps=1)
    one_jump = {key: value for key, value in batch.items() if not key.startswith("path_")}
    loss_1, metrics_1 = T.compute_losses(model, params, one_jump, scales, one)
    assert float(metrics_1["rmse_x_a"]) == pytest.approx(np.sqrt(mse_x[0]), rel=1e-9)
    assert float(loss) != pytest.approx(float(loss_1), rel=1e-6)
    with pytest.raises(InputError, match="needs windows of 2 jumps"):
        T.compute_losses(model, params, one_jump, scales, cfg)
    with pytest.raises(InputError, match="jumps must be >= 1"):
        T.TrainConfig(jumps=0)


def test_multi_jump_time_reversal_runs_the_path_backwards():
    """A reversed multi-jump window starts at the last frame with −v and visits the path in
    reverse; reversing twice gives the window back."""
    batch = path_windows(ETHANOL_Z, ETHANOL_X, 80, 7, jumps=3)
    rev = T.time_reversed(batch)
    np.testing.assert_array_equal(rev["positions"], batch["path_positions"][:, 2])
    np.testing.assert_array_equal(rev["velocities"], -batch["path_velocities"][:, 2])
    np.testing.assert_array_equal(rev["path_positions"][:, 2], batch["positions"])
    np.testing.assert_array_equal(rev["path_forces"][:, 1], batch["path_forces"][:, 0])
    np.testing.assert_array_equal(rev["target_velocities"], -batch["path_velocities"][:, 1])
    again = T.time_reversed(rev)
    for key in batch:
        np.testing.assert_array_equal(again[key], batch[key])


@pytest.mark.slow
def test_multi_jump_training_lowers_the_rollout_loss(tmp_path):
    """jumps = 2 trains end to end (time reversal included) and lowers its own validation loss."""
    train = {k: np.concatenate([path_windows(ETHANOL_Z, ETHANOL_X, 200, s, jumps=2, stride=4)[k]
                                for s in (0, 1)]) for k in path_windows(ETHANOL_Z, ETHANOL_X, 40, 0, 2)}
    val = [path_windows(ETHANOL_Z, ETHANOL_X, 120, 2, jumps=2)]
    cfg = dataclasses.replace(TRAIN, w_energy=1.0, corrector_velocity=True, time_reversal=True,
                              total_steps=30, jumps=2)
    result = T.train(SMALL, cfg, T.ArrayBatches(train, 8, seed=0), val, tmp_path / "run")
    before = T.evaluate(SMALL, cfg, init_params(SMALL, seed=cfg.seed), val, result.loss_scales)
    after = T.evaluate(SMALL, cfg, result.state.ema_params, val, result.loss_scales)
    assert after["loss"] < before["loss"] and "rmse_energy_last_jump_ev" in after
