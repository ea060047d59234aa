"""The learned fast force (jkstep.model.potential): invariance, conservative forces, a smooth
cutoff, jit/vmap, padded batches, energy conservation in NVE, checkpoints and errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jkstep
from jkstep.errors import InputError
from jkstep.model.potential import (EnergyNet, LearnedPotential, PotentialConfig, energy_and_forces,
                                    fit_element_energies, init_params, learned_potential, save_potential)

CFG = PotentialConfig(features=16, layers=2, cutoff=4.0, n_rbf=8,
                      element_energies=(-10.0, -48.0, -71.0, -103.0, -90.0), energy_scale=0.3)


def _randomised(params, seed=1, scale=0.3):
    """Random non-zero weights everywhere (a fresh net has some zero biases): a stronger test."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [l + scale * jax.random.normal(k, l.shape, l.dtype) / np.sqrt(max(l.shape[0], 1))
                                     for l, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def mol():
    return jkstep.Molecule.from_smiles("CC(=O)NCCS", seed=0)


@pytest.fixture(scope="module")
def pot(mol):
    return LearnedPotential(_randomised(init_params(CFG)), CFG, mol.numbers)


def _rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def test_invariance_and_equivariance(pot, mol):
    x = np.asarray(mol.positions)
    e0, f0 = pot(x)
    for seed in range(3):
        rot = _rotation(seed)   # a rotation or a reflection
        shift = np.random.default_rng(seed).normal(size=3) * 5
        e1, f1 = pot(x @ rot.T + shift)
        assert abs(float(e1 - e0)) < 1e-5 * max(1.0, abs(float(e0)))
        np.testing.assert_allclose(np.asarray(f1), np.asarray(f0) @ rot.T, atol=2e-4)
    perm = np.random.default_rng(0).permutation(len(mol))
    p2 = LearnedPotential(pot.params, CFG, mol.numbers[perm])
    e2, f2 = p2(x[perm])
    assert abs(float(e2 - e0)) < 1e-5 * max(1.0, abs(float(e0)))
    np.testing.assert_allclose(np.asarray(f2), np.asarray(f0)[perm], atol=2e-4)


def test_forces_are_minus_gradient(pot, mol):
    x = np.asarray(mol.positions)
    e, f = pot(x)
    assert e.dtype == jnp.float64 and f.dtype == jnp.float64 and f.shape == x.shape
    assert float(jnp.abs(f).max()) > 1e-3   # not a trivially flat potential
    np.testing.assert_allclose(np.asarray(f), -np.asarray(jax.grad(pot.energy)(jnp.asarray(x))), rtol=1e-6, atol=1e-8)
    rng = np.random.default_rng(0)
    h = 1e-3
    for _ in range(3):   # central differences along random directions (float32 inside: loose)
        d = rng.standard_normal(x.shape)
        d /= np.linalg.norm(d)
        fd = -(float(pot.energy(x + h * d)) - float(pot.energy(x - h * d))) / (2 * h)
        assert abs(fd - float(np.sum(np.asarray(f) * d))) < 2e-3 + 1e-2 * abs(fd)


def test_smooth_at_cutoff():
    """Energy and forces are continuous as an atom crosses the cutoff; beyond it nothing acts."""
    cfg = PotentialConfig(features=16, layers=2, cutoff=3.0, n_rbf=8)
    p = LearnedPotential(_randomised(init_params(cfg), seed=3, scale=1.0), cfg, np.array([6, 8, 1]))
    base = np.array([[0.0, 0, 0], [1.2, 0, 0]])

    def at(r):
        x = np.concatenate([base, [[-r, 0.3, 0.0]]])
        e, f = p(x)
        return float(e), np.asarray(f)

    rc = np.sqrt(3.0**2 - 0.3**2)   # H at this x is exactly 3 Å from C
    for delta in (1e-3, 1e-4):
        e_in, f_in = at(rc - delta)
        e_out, f_out = at(rc + delta)
        assert abs(e_in - e_out) < 50 * delta**2 + 1e-6
        assert np.abs(f_in - f_out).max() < 100 * delta + 1e-4
    e_far, f_far = at(rc + 0.5)
    assert abs(e_far - at(rc + 1.0)[0]) < 1e-6   # H beyond the cutoff of C and O: fixed energy
    assert np.abs(f_far[2]).max() < 1e-6
    # inside the cutoff the H feels a force (the test above is not about a dead network)
    assert np.abs(at(rc - 0.5)[1][2]).max() > 1e-3


def test_jit_vmap_and_padding(pot, mol):
    x = np.asarray(mol.positions)
    rng = np.random.default_rng(1)
    batch = x + 0.05 * rng.standard_normal((4,) + x.shape)
    e_v, f_v = jax.jit(jax.vmap(pot))(jnp.asarray(batch))
    e_b, f_b = pot(batch)
    for i in range(4):
        e_i, f_i = jax.jit(pot)(batch[i])
        np.testing.assert_allclose(float(e_v[i]), float(e_i), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(f_v[i]), np.asarray(f_i), atol=1e-5)
        np.testing.assert_allclose(float(e_b[i]), float(e_i), rtol=1e-6)
    # padded batch of two different molecules: padding changes nothing
    other = jkstep.Molecule.from_smiles("CO", seed=0)
    n = len(mol)
    z = np.zeros((2, n), np.int32)
    pos = np.zeros((2, n, 3))
    z[0], pos[0] = mol.numbers, x
    z[1, :len(other)], pos[1, :len(other)] = other.numbers, other.positions
    pos[1, len(other):] = rng.normal(size=(n - len(other), 3))   # junk on padding
    mask = z > 0
    e, f = jax.jit(lambda p, z, m, x: energy_and_forces(EnergyNet(CFG), p, z, m, x))(pot.params, z, mask, pos)
    e_other, f_other = LearnedPotential(pot.params, CFG, other.numbers)(other.positions)
    np.testing.assert_allclose(float(e[0]), float(pot(x)[0]), rtol=1e-6)
    np.testing.assert_allclose(float(e[1]), float(e_other), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(f[1, :len(other)]), np.asarray(f_other), atol=1e-5)
    assert np.all(np.asarray(f[1, len(other):]) == 0)


def test_nve_verlet_conserves_energy(pot, mol):
    init, apply = jkstep.verlet(pot, mol.masses, dt=0.25)
    state = init(jnp.asarray(mol.positions), jnp.asarray(mol.thermal_velocities(300.0, seed=0)))

    def body(state, _):
        state = apply(state)
        kin = 0.5 * jkstep.units.KINETIC * jnp.sum(jnp.asarray(mol.masses)[:, None] * state.velocities**2)
        return state, (state.energy + kin, kin)

    _, (total, kin) = jax.jit(lambda s: jax.lax.scan(body, s, None, length=800))(state)
    total, kin = np.asarray(total), np.asarray(kin)
    assert np.all(np.isfinite(total))
    assert np.std(kin) > 10 * np.std(total)         # the atoms move, the total stays
    assert np.std(total) < 2e-3 and abs(total[-1] - total[0]) < 5e-3   # eV, 200 fs


def test_checkpoint_round_trip_and_errors(tmp_path, mol, pot):
    save_potential(tmp_path / "fast", pot.params, CFG, step=7, note="test")
    loaded = jkstep.learned_potential(tmp_path / "fast", mol)
    x = np.asarray(mol.positions)
    np.testing.assert_allclose(np.asarray(loaded(x)[1]), np.asarray(pot(x)[1]), atol=1e-6)
    assert loaded.meta["note"] == "test" and loaded.config == CFG
    step_dir = learned_potential(tmp_path / "fast" / "7", mol)   # one step directory works too
    assert step_dir.n_atoms == len(mol)
    with pytest.raises(InputError, match=r"atom 0 \(Cl"):
        learned_potential(tmp_path / "fast", jkstep.Molecule.from_smiles("ClCC", seed=0))
    with pytest.raises(InputError, match="no pretrained model"):
        learned_potential(tmp_path / "missing", mol)
    with pytest.raises(InputError, match="no pretrained model"):
        learned_potential("no-such-fast-force", mol)
    with pytest.raises(InputError, match="not a learned potential"):
        learned_potential("gfn2-k8", mol)
    with pytest.raises(InputError, match=f"for {len(mol)} atoms"):
        loaded(np.zeros((3, 3)))
    # the command line's three-level default: 2 for a Δ-potential on MMFF94, 1 for this full network
    from argparse import Namespace

    from jkstep.cli import _fast_every
    assert _fast_every(Namespace(fast_every=None, fast=str(tmp_path / "fast")), 8) == 1
    assert _fast_every(Namespace(fast_every=None, fast="gfn2-fast"), 8) == 2
    assert _fast_every(Namespace(fast_every=None, fast="gfn2-fast"), 3) == 1
    assert _fast_every(Namespace(fast_every=None, fast="mmff"), 8) == 1
    assert _fast_every(Namespace(fast_every=4, fast=str(tmp_path / "fast")), 8) == 4


def test_config_errors_and_offsets():
    with pytest.raises(InputError, match="features"):
        PotentialConfig(features=0)
    with pytest.raises(InputError, match="element_energies"):
        PotentialConfig(elements=(1, 6), element_energies=(1.0,))
    with pytest.raises(InputError, match="norm_eps must be a positive number"):
        PotentialConfig(norm_eps=0.0)
    assert PotentialConfig.from_dict(PotentialConfig(norm_eps=0.01).to_dict()).norm_eps == 0.01
    # per-element offsets recover exact per-element energies
    mols = [np.array([6, 1, 1, 1, 1]), np.array([6, 6, 1, 1, 1, 1, 1, 1]), np.array([8, 1, 1]), np.array([6, 8, 1, 1])]
    truth = {1: -10.0, 6: -48.0, 8: -103.0}
    energies = [sum(truth[z] for z in m) for m in mols]
    fitted = fit_element_energies(mols, energies, (1, 6, 8))
    np.testing.assert_allclose(fitted, [-10.0, -48.0, -103.0], atol=1e-3)


def test_inverse_mass_force_weighting(tmp_path, mol, pot):
    """force_weighting: inverse_mass weighs each atom's squared force error by 1/m (mean 1 over the
    batch's atoms): an error on one hydrogen costs m̄/m_H times what it costs uniformly; the
    reported RMSE stays unweighted."""
    from ase.data import atomic_masses

    from jkstep.model.config import TrainConfig
    from jkstep.model.potential import compute_potential_losses

    x = jnp.asarray(mol.positions)[None]
    z = jnp.asarray(mol.numbers)[None]
    mask = jnp.ones_like(z, bool)
    e, f = energy_and_forces(pot.model, pot.params, z, mask, x)
    h = int(np.flatnonzero(mol.numbers == 1)[0])
    batch = {"numbers": z, "mask": mask, "positions": x, "energy": e, "forces": f.at[0, h, 0].add(0.5)}
    scales = jnp.ones(4)
    losses = {w: compute_potential_losses(pot.model, pot.params, batch, scales,
                                          TrainConfig(w_force=1.0, w_energy=0.0, force_weighting=w))
              for w in ("uniform", "inverse_mass")}
    inv_m = 1.0 / atomic_masses[mol.numbers]
    ratio = (inv_m[h] / inv_m.mean())
    np.testing.assert_allclose(losses["inverse_mass"][0], ratio * losses["uniform"][0], rtol=1e-6)
    assert ratio > 1.5                    # a hydrogen weighs 12× a carbon; half the atoms are H
    np.testing.assert_allclose(losses["inverse_mass"][1]["rmse_force"], losses["uniform"][1]["rmse_force"])
    with pytest.raises(InputError, match="force_weighting must be one of uniform, inverse_mass"):
        TrainConfig(force_weighting="mass")
    from jkstep.model.network import ModelConfig
    from jkstep.model.train import train

    with pytest.raises(InputError, match="force_weighting 'inverse_mass' applies to a learned potential"):
        train(ModelConfig(), TrainConfig(force_weighting="inverse_mass"), [], None, tmp_path / "out")


def test_delta_potential_is_mmff_plus_the_network(tmp_path, mol, pot, monkeypatch):
    """baseline: mmff adds the molecule's MMFF94 to the network (energy and forces = −∂E/∂x);
    a checkpoint with it loads with its baseline; the training data are xTB minus MMFF94."""
    delta_cfg = dataclasses_replace(CFG, baseline="mmff")
    mm = jkstep.mmff_potential(mol)
    delta = LearnedPotential(pot.params, delta_cfg, mol.numbers, baseline=mm)
    x = np.asarray(mol.positions) + 0.03 * np.random.default_rng(4).standard_normal((len(mol), 3))
    (e, f), (e_nn, f_nn), (e_mm, f_mm) = delta(x), pot(x), mm(x)
    np.testing.assert_allclose(float(e), float(e_nn) + float(e_mm), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(f), np.asarray(f_nn) + np.asarray(f_mm), atol=1e-10)
    np.testing.assert_allclose(np.asarray(f), -np.asarray(jax.grad(lambda y: delta(y)[0])(jnp.asarray(x))), atol=1e-8)
    save_potential(tmp_path / "delta", pot.params, delta_cfg, step=1)
    loaded = learned_potential(tmp_path / "delta", mol)
    np.testing.assert_allclose(np.asarray(loaded(x)[1]), np.asarray(f), atol=1e-6)
    with pytest.raises(InputError, match="needs the molecule's MMFF94"):
        LearnedPotential(pot.params, delta_cfg, mol.numbers)
    with pytest.raises(InputError, match="baseline must be one of"):
        PotentialConfig(baseline="uff")
    from jkstep.model.potential import potential_data

    frames = {"name": "x", "numbers": np.array([6, 1]), "positions": np.zeros((4, 2, 3)),
              "xtb_energy": np.full(4, -5.0), "mmff_energy": np.full(4, 1.0), "source": np.arange(4, dtype=np.int8),
              "xtb_forces": np.ones((4, 2, 3)), "mmff_forces": np.full((4, 2, 3), 0.25)}
    import jkstep.data.fastforce as fastforce

    monkeypatch.setattr(fastforce, "load_frames", lambda path: [dict(frames, name=n) for n in ("a", "b", "c")])
    _, train, _, prov = potential_data(delta_cfg, {"frames": "any.npz", "val_molecules": ["c"], "batch_size": 4})
    batch = next(iter(train))
    assert prov["labels"] == "delta"
    np.testing.assert_allclose(batch["forces"][batch["mask"]], 0.75)
    np.testing.assert_allclose(batch["energy"], -6.0)
    with pytest.raises(InputError, match="labels: mmff has nothing to learn"):
        potential_data(delta_cfg, {"frames": "any.npz", "labels": "mmff"})
    # sources: only the named kinds of frames (one of each kind per molecule here), counted
    assert prov["frames_of_other_sources_left_out"] == 0 and prov["train_frames"] == 8
    _, train, _, prov = potential_data(delta_cfg, {"frames": "any.npz", "val_molecules": ["c"], "batch_size": 4,
                                                   "sources": ["mmff_md", "xtb_md", "displaced"]})
    assert prov["frames_of_other_sources_left_out"] == 3 and prov["train_frames"] == 6
    for bad in ("xtb_md", ["xtb"], []):
        with pytest.raises(InputError, match="data: sources must be a list of frame kinds from mmff_md"):
            potential_data(delta_cfg, {"frames": "any.npz", "sources": bad})


def _mm_frames(smiles, n, seed):
    mol = jkstep.Molecule.from_smiles(smiles, seed=0)
    mm = jkstep.mmff_potential(mol)
    x = np.asarray(mol.positions) + 0.05 * np.random.default_rng(seed).standard_normal((n, len(mol), 3))
    e, f = jax.vmap(mm)(jnp.asarray(x))
    return {"name": smiles, "numbers": np.asarray(mol.numbers), "positions": x, "mmff_energy": np.asarray(e),
            "mmff_forces": np.asarray(f), "xtb_energy": np.asarray(e), "xtb_forces": np.asarray(f)}


@pytest.mark.slow
def test_training_through_the_package_loop(tmp_path):
    """Energy-and-force matching with the package's train loop: the loss falls, the best
    checkpoint loads with learned_potential, a resumed run continues, fine-tuning restores it."""
    from jkstep.model.config import TrainConfig
    from jkstep.model.potential import PotentialBatches
    from jkstep.model.train import train

    mols = [_mm_frames("CCO", 64, 0), _mm_frames("CN", 64, 1)]
    val_mol = _mm_frames("CCO", 16, 2)
    cfg = dataclasses_replace(CFG, element_energies=fit_element_energies(
        [m["numbers"] for m in mols], [m["mmff_energy"].mean() for m in mols], CFG.elements))
    tc = TrainConfig(learning_rate=3e-3, warmup_steps=5, total_steps=60, w_force=1.0, w_energy=0.05,
                     val_every=30, log_every=10, checkpoint_every=30, patience=None, ema_decay=0.9,
                     clip_norm=10.0)
    batches = PotentialBatches(mols, "mmff", 16, seed=0)
    val = PotentialBatches([val_mol], "mmff", 16, shuffle=False).once()
    out = tmp_path / "run"
    first = train(cfg, tc, batches, val, out, max_steps=30)
    assert first.steps == 30
    resumed = train(cfg, tc, PotentialBatches(mols, "mmff", 16, seed=0), val, out)
    assert resumed.steps == 60 and len(resumed.history) == 2
    h0 = resumed.history
    assert h0[-1]["rmse_force"] < h0[0]["rmse_force"] or h0[0]["rmse_force"] < 0.5
    mol = jkstep.Molecule.from_smiles("CCO", seed=0)
    pot = learned_potential(out, mol)
    f_ref = jkstep.mmff_potential(mol)(mol.positions)[1]
    rmse = float(np.sqrt(np.mean((np.asarray(pot(mol.positions)[1]) - np.asarray(f_ref)) ** 2)))
    assert rmse < float(np.sqrt(np.mean(np.asarray(f_ref) ** 2))) + 1.0   # a sane force field, not NaN
    assert pot.meta["kind"] == "potential" and pot.meta["step"] in (30, 60)
    # fine-tuning starts from the restored weights
    from jkstep.model.potential import read_potential_checkpoint

    params, _, _ = read_potential_checkpoint(out)
    tune = train(cfg, dataclasses_replace(tc, total_steps=2, val_every=1), PotentialBatches(mols, "xtb", 16),
                 val, tmp_path / "tune", init_params=params, learning_rate=1e-6)
    assert tune.steps == 2


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


@pytest.mark.slow
def test_generate_fast_resumes_one_task_per_molecule(tmp_path):
    """generate runs one task per molecule, writes each molecule's file once and resumes: a second
    run labels nothing and gives the same summary; other settings in the same directory are refused."""
    from jkstep.data import fastforce
    from jkstep.parallel import SerialExecutor

    (tmp_path / "m.smi").write_text("C methane\nO water\n")
    cfg = fastforce.FastDataConfig(molecules=str(tmp_path / "m.smi"), output=str(tmp_path / "out"),
                                   mm_temperatures=(300.0,), mm_frames=2, mm_every=2, xtb_temperatures=(300.0,),
                                   xtb_frames=2, xtb_every=2, displaced=2, compressed=1)
    seen = []
    first = fastforce.generate(cfg, progress=lambda name, i, n: seen.append((name, i, n)), executor=SerialExecutor())
    assert sorted(n for n, _, _ in seen) == ["methane", "water"] and [i for _, i, _ in seen] == [1, 2]
    assert first["molecules"] == 2 and first["frames"] == 2 * (2 + 2 + 2 + 1)
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.npz")}
    again = fastforce.generate(cfg, executor=SerialExecutor())
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.npz")} == stamp
    assert (again["frames"], again["xtb_calls"]) == (first["frames"], first["xtb_calls"])
    fastforce.compact(tmp_path / "out", tmp_path / "frames.npz", command="test")
    frames = fastforce.load_frames(tmp_path / "frames.npz")
    assert {f["name"]: len(f["xtb_energy"]) for f in frames} == {"methane": 7, "water": 7}
    with pytest.raises(InputError, match="other settings"):
        fastforce.generate(dataclasses.replace(cfg, seed=1), executor=SerialExecutor())


def test_shipped_gfn2_fast_is_closer_to_xtb_than_mmff94_on_held_out_molecules():
    """The shipped fast force, loaded by name, on committed frames of molecules it was not trained
    on (its record's validation molecules): force RMSE against GFN2-xTB clearly below MMFF94's."""
    import json

    from jkstep.data.fastforce import load_frames
    from jkstep.model import pretrained

    record = json.loads((pretrained.PRETRAINED_DIR / "gfn2-fast" / "provenance.json").read_text())
    held_out = sorted(record["data_provenance"]["val_molecules"])[:4]
    frames = {f["name"]: f for f in load_frames("data/fast_frames.npz") if f["name"] in held_out}
    assert sorted(frames) == held_out
    err_net, err_mm = [], []
    for f in frames.values():
        mol = jkstep.Molecule.from_smiles(f["smiles"], seed=0)
        assert list(mol.numbers) == list(f["numbers"])
        pot = learned_potential("gfn2-fast", mol)
        # the frames training keeps: Δ label components within max_label_force (20 eV/Å)
        keep = np.max(np.abs(f["xtb_forces"] - f["mmff_forces"]), axis=(1, 2)) <= 20.0
        x, ref = f["positions"][keep][::4], f["xtb_forces"][keep][::4]
        _, forces = jax.jit(jax.vmap(pot))(jnp.asarray(x))
        err_net.append(np.asarray(forces) - ref)
        err_mm.append(f["mmff_forces"][keep][::4] - ref)
    rmse = lambda errs: float(np.sqrt(np.mean(np.concatenate([e.ravel() for e in errs]) ** 2)))  # noqa: E731
    assert rmse(err_net) < 0.75 * rmse(err_mm), (rmse(err_net), rmse(err_mm))
