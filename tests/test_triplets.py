"""Frame triplets along a thermal motion (jkstep.data.triplets) and the curvature term in training."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jkstep
from jkstep.errors import InputError


def _frames(smiles, n, seed, sources):
    """One molecule's frame dict as ``fastforce.load_frames`` gives it, labelled by MMFF94 on both sides."""
    mol = jkstep.Molecule.from_smiles(smiles, seed=0)
    mm = jkstep.mmff_potential(mol)
    x = np.asarray(mol.positions) + 0.03 * np.random.default_rng(seed).standard_normal((n, len(mol), 3))
    e, f = (np.asarray(a) for a in jax.vmap(mm)(jnp.asarray(x)))
    return {"name": smiles, "smiles": smiles, "numbers": np.asarray(mol.numbers, np.int32), "positions": x,
            "xtb_energy": e, "xtb_forces": f, "mmff_energy": e, "mmff_forces": f,
            "source": np.asarray(sources, np.int8)}


def test_displaced_pair_is_one_verlet_step_each_way():
    from jkstep import units
    from jkstep.data.triplets import displaced_pair

    x = np.random.default_rng(0).standard_normal((400, 2, 3))
    f = np.random.default_rng(1).standard_normal((400, 2, 3))
    m = np.array([1.008, 12.011])
    minus, plus = displaced_pair(x, f, m, 0.5, 300.0, np.random.default_rng(2))
    np.testing.assert_allclose((plus + minus) / 2 - x, 0.5 * f / m[:, None] * units.ACCEL * 0.25, atol=1e-12)
    v = (plus - minus) / 1.0     # 2s = 1 fs
    # Maxwell-Boltzmann: <m v²> = kT per component
    kt = np.mean(m[None, :, None] * v**2) / units.ACCEL
    assert abs(kt / (units.KB * 300.0) - 1) < 0.05


def test_triplets_are_labelled_at_their_own_positions(tmp_path, capsys):
    """Each triplet's xTB labels belong to its x₋ and x₊ (the energy difference is the force along
    the step), its centre is the frame file's, only the asked kinds of frames are centres, and
    generation resumes and packs into a file that load_frames reads as three blocks."""
    from jkstep.data import fastforce
    from jkstep.data.triplets import TripletConfig, generate_triplets, molecule_triplets
    from jkstep.parallel import SerialExecutor

    m = _frames("CO", 3, 0, [0, 1, 2])          # the displaced frame (code 2) is no centre by default
    pot = jkstep.xtb_potential(jkstep.Molecule.from_smiles("CO"), accuracy=0.01)    # a thread pool
    m["xtb_energy"], m["xtb_forces"] = fastforce.label_xtb(pot, m["positions"])
    # one frame at a time whatever the workers (they share one calculator): as with a single worker
    one = fastforce.label_xtb(jkstep.xtb_potential(jkstep.Molecule.from_smiles("CO"), accuracy=0.01, workers=1),
                              m["positions"])
    np.testing.assert_allclose(m["xtb_energy"], one[0], atol=1e-9)
    np.testing.assert_allclose(m["xtb_forces"], one[1], atol=1e-5)
    cfg = TripletConfig(frames=str(tmp_path / "frames.npz"), output=str(tmp_path / "trip"))
    t = molecule_triplets(m, cfg)
    assert int(t["triplets"]) == 2 and t["positions"].shape == (6, 6, 3) and int(t["xtb_calls"]) == 4
    minus, centre, plus = np.split(t["positions"], 3)
    np.testing.assert_array_equal(centre, m["positions"][:2])
    np.testing.assert_array_equal(minus, minus.astype(np.float32))     # the positions the network sees
    e_minus, e_centre, e_plus = np.split(t["xtb_energy"], 3)
    np.testing.assert_array_equal(e_centre, m["xtb_energy"][:2])
    _, f_mid = fastforce.label_xtb(pot, (plus + minus) / 2)    # x + ½as², where the step is centred
    work = -np.sum(f_mid * (plus - minus), axis=(1, 2))          # = E₊ − E₋ to O(|x₊ − x₋|³)
    np.testing.assert_allclose(e_plus - e_minus, work, rtol=1e-2, atol=1e-5)
    mm = jkstep.mmff_potential(jkstep.Molecule.from_smiles("CO"))
    np.testing.assert_allclose(t["mmff_energy"][:2], [float(mm(p)[0]) for p in minus], rtol=1e-10)

    # through generate_triplets: a frame file of two molecules, resumed, packed, read back
    (tmp_path / "gen").mkdir()
    other = _frames("CC", 2, 1, [0, 1])
    other["xtb_energy"], other["xtb_forces"] = fastforce.label_xtb(
        jkstep.xtb_potential(jkstep.Molecule.from_smiles("CC"), accuracy=0.01), other["positions"])
    for mol in (m, other):
        fastforce._atomic_savez(tmp_path / "gen" / f"{mol['name']}.npz", {
            **{k: mol[k] for k in ("positions", "xtb_energy", "xtb_forces", "mmff_energy", "mmff_forces",
                                   "source", "numbers")}, "name": np.array(mol["name"]), "smiles": np.array(mol["smiles"])})
    fastforce.compact(tmp_path / "gen", tmp_path / "frames.npz")
    first = generate_triplets(cfg, executor=SerialExecutor())
    assert (first["molecules"], first["triplets"]) == (2, 4)
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trip").glob("*.npz")}
    assert generate_triplets(cfg, executor=SerialExecutor())["xtb_calls"] == first["xtb_calls"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trip").glob("*.npz")} == stamp
    (tmp_path / "trip.yaml").write_text(f"frames: {cfg.frames}\noutput: {cfg.output}\n")
    from jkstep import cli

    assert cli.main(["generate-fast", "--config", str(tmp_path / "trip.yaml"), "--triplets", "--compact",
                     str(tmp_path / "trip.npz")]) == 0
    prov = json.loads((tmp_path / "trip.provenance.json").read_text())
    assert "3 blocks" in prov["layout"] and prov["command"].startswith(
        f"jkstep generate-fast --config {tmp_path / 'trip.yaml'} --triplets && ")
    back = {b["name"]: b for b in fastforce.load_frames(tmp_path / "trip.npz")}
    assert back["CO"]["blocks"] == 3 and back["CO"]["spacing_fs"] == 0.5
    np.testing.assert_allclose(back["CO"]["xtb_energy"], t["xtb_energy"], atol=1e-5)
    # jkstep train with them: the scale measured from the labels, the curvature in the history
    from jkstep.model.potential import read_potential_checkpoint

    (tmp_path / "model.yaml").write_text("kind: potential\nfeatures: 8\nlayers: 1\ncutoff: 3.5\nn_rbf: 6\n"
                                         "baseline: mmff\nnorm_eps: 0.01\n")
    train_yaml = (f"total_steps: 2\nwarmup_steps: 1\nval_every: 2\nlog_every: 1\ncheckpoint_every: 2\n"
                  f"w_force: 1.0\nw_energy: 0.05\nw_curvature: 1.0\ncurvature_triplets: 2\npatience: null\n"
                  f"data:\n  frames: {tmp_path / 'frames.npz'}\n  triplets: {tmp_path / 'trip.npz'}\n"
                  f"  batch_size: 2\n  val_molecules: [CC]\n")
    (tmp_path / "train.yaml").write_text(train_yaml)
    assert cli.main(["train", "--model-config", str(tmp_path / "model.yaml"), "--train-config",
                     str(tmp_path / "train.yaml"), "--out", str(tmp_path / "net")]) == 0
    _, meta, _ = read_potential_checkpoint(tmp_path / "net")
    assert meta["train_config"]["scale_curvature"] == pytest.approx(meta["data_provenance"]["triplet_label_curvature_rms"])
    assert meta["history"][-1]["rms_curvature"] > 0
    (tmp_path / "train.yaml").write_text(train_yaml.replace("w_curvature: 1.0", "curvature_spacing_fs: 0.25\n"
                                                                                 "w_curvature: 1.0"))
    with pytest.raises(SystemExit):
        cli.main(["train", "--model-config", str(tmp_path / "model.yaml"), "--train-config",
                  str(tmp_path / "train.yaml"), "--out", str(tmp_path / "net2")])
    assert "triplets are 0.5 fs apart: make them agree" in capsys.readouterr().err
    with pytest.raises(InputError, match="other triplet settings"):
        generate_triplets(dataclasses.replace(cfg, seed=1), executor=SerialExecutor())
    with pytest.raises(InputError, match="sources must be a list"):
        TripletConfig(sources=("md",))
    with pytest.raises(InputError, match="not 3 equal blocks"):
        fastforce.compact(tmp_path / "gen", tmp_path / "bad.npz", blocks=3)


def _triplet_set(smiles, n, seed):
    """A molecule's triplets (3 blocks) along thermal motion on MMFF94, labelled by MMFF94."""
    from jkstep.data.triplets import displaced_pair

    c = _frames(smiles, n, seed, [0] * n)
    mol = jkstep.Molecule.from_smiles(smiles, seed=0)
    minus, plus = displaced_pair(c["positions"], c["xtb_forces"], mol.masses, 0.5, 300.0, np.random.default_rng(seed))
    x = np.concatenate([minus, c["positions"], plus])
    e, f = (np.asarray(a) for a in jax.vmap(jkstep.mmff_potential(mol))(jnp.asarray(x)))
    return {**c, "positions": x, "xtb_energy": e, "xtb_forces": f, "mmff_energy": e, "mmff_forces": f,
            "source": np.zeros(3 * n, np.int8), "blocks": 3, "spacing_fs": 0.5}


def test_batches_with_triplets_and_the_curvature_loss(tmp_path):
    """A batch is its plain frames followed by G triplets of the same size bucket in three blocks;
    the curvature term sees exactly those; the stream resumes exactly; training with it runs and
    records the validation curvature."""
    from jkstep.model.config import TrainConfig
    from jkstep.model.potential import (EnergyNet, PotentialBatches, PotentialConfig, TripletBatches, WithTriplets,
                                        compute_potential_losses, energy_and_forces, energy_error_curvature,
                                        init_params, join_triplets, prepare_potential_batch)
    from jkstep.model.train import train

    frames = [_frames("CCO", 12, 0, [0] * 12), _frames("CN", 12, 1, [0] * 12)]
    trips = [_triplet_set("CCO", 6, 2), _triplet_set("CN", 6, 3)]
    stream = WithTriplets(PotentialBatches(frames, "xtb", 4, seed=0), TripletBatches(trips, "xtb", 2, seed=1))
    batch = next(stream)
    assert batch["positions"].shape[0] == 4 + 6
    minus, centre, plus = np.split(batch["positions"][4:], 3)
    assert np.all(np.abs(plus - minus).max(axis=(1, 2)) < 0.1)         # the same molecule, one step apart
    np.testing.assert_array_equal(batch["numbers"][4:6], batch["numbers"][:2] * 0 + batch["numbers"][6:8])
    state = stream.get_state()
    ahead = [next(stream) for _ in range(5)]
    again = WithTriplets(PotentialBatches(frames, "xtb", 4, seed=0), TripletBatches(trips, "xtb", 2, seed=1))
    again.set_state(state)
    for a, b in zip(ahead, [next(again) for _ in range(5)]):
        np.testing.assert_array_equal(a["positions"], b["positions"])

    cfg = PotentialConfig(features=8, layers=1, cutoff=4.0, n_rbf=6,
                          element_energies=(-10.0, -48.0, -71.0, -103.0, -90.0), energy_scale=0.3)
    params = init_params(cfg, seed=0)
    tc = TrainConfig(w_force=1.0, w_energy=0.05, w_curvature=1.0, scale_curvature=0.01, curvature_triplets=2)
    prepared = prepare_potential_batch(batch)
    _, metrics = compute_potential_losses(EnergyNet(cfg), params, prepared, jnp.ones(4), tc)
    energy = energy_and_forces(EnergyNet(cfg), params, prepared["numbers"], prepared["mask"], prepared["positions"])[0]
    direct = energy_error_curvature((energy - prepared["energy"])[4:], 0.5)
    np.testing.assert_allclose(float(metrics["rms_curvature"]), float(jnp.sqrt(jnp.mean(direct**2))), rtol=1e-12)

    val = [join_triplets(b, TripletBatches(trips, "xtb", 2, shuffle=False))
           for b in PotentialBatches(frames, "xtb", 4, shuffle=False).once()]
    tc = dataclasses.replace(tc, learning_rate=3e-3, warmup_steps=1, total_steps=4, val_every=2, log_every=2,
                             checkpoint_every=2, patience=None, clip_norm=10.0)
    result = train(cfg, tc, stream, val[:2], tmp_path / "run")
    assert result.steps == 4 and len(result.history) == 2
    assert all(0 < h["rms_curvature"] < np.inf for h in result.history)
    with pytest.raises(InputError, match="no molecule of the size bucket"):
        TripletBatches(trips, "xtb", 2).take(30)


def test_curvature_settings_of_jkstep_train():
    from jkstep.model.config import TrainConfig
    from jkstep.model.network import ModelConfig
    from jkstep.model.potential import PotentialConfig, potential_data
    from jkstep.model.train import train

    with pytest.raises(InputError, match="scale_curvature must be > 0"):
        TrainConfig(w_curvature=1.0, scale_curvature=0.0)
    with pytest.raises(InputError, match="curvature_triplets must be >= 1"):
        TrainConfig(curvature_triplets=0)
    with pytest.raises(InputError, match="needs scale_curvature"):
        train(PotentialConfig(), TrainConfig(w_curvature=1.0), [], [], "/nonexistent/x")
    with pytest.raises(InputError, match="applies to a learned potential"):
        train(ModelConfig(), TrainConfig(w_curvature=1.0, scale_curvature=1e-3), [], [], "/nonexistent/x")
    with pytest.raises(InputError, match="go together"):
        potential_data(PotentialConfig(), {"frames": "any.npz"}, triplets_per_batch=16)
    frames = os.path.join(os.path.dirname(__file__), "..", "data", "fast_frames.npz")
    with pytest.raises(InputError, match="no triplet file nowhere.npz: make it with `jkstep generate-fast"):
        potential_data(PotentialConfig(), {"frames": frames, "triplets": "nowhere.npz"}, triplets_per_batch=16)
