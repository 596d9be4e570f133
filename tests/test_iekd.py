"""IE-KD (Huang et al. 2021): its losses against hand computations, the
student's split, where the gradients go, the teachers' auto-encoders, the
objective, save/load, a run through the real distiller, and the flags."""

import json

import numpy as np
import pytest
from conftest import flag_parser
from keras import ops

from multidistill import distiller, iekd, losses, networks, objectives, pipeline, students


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _f(x):
    return float(_np(x))


# -- the losses, by hand --------------------------------------------------------------

S = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
T = np.array([[0.0, 1.0], [1.0, 1.0]], np.float32)
# u = S / ||S||: [[0.6, 0.8], [1, 0]]; v = T / ||T||: [[0, 1], [1/sqrt2, 1/sqrt2]];
# |u - v| = [[0.6, 0.2], [1 - 1/sqrt2, 1/sqrt2]]: per-sample means 0.4 and 0.5.
HAND = (0.4 + 0.5) / 2


def test_l2_normalisation_by_hand():
    np.testing.assert_allclose(_np(losses.l2_normalised(S)), [[0.6, 0.8], [1.0, 0.0]],
                               atol=1e-6)
    # Padding outside the mask is neither kept nor counted in the norm.
    padded = np.array([[3.0, 4.0, 100.0]], np.float32)
    np.testing.assert_allclose(_np(losses.l2_normalised(padded, np.array([[1, 1, 0]]))),
                               [[0.6, 0.8, 0.0]], atol=1e-6)
    # A zero vector stays zero (the norm is floored), with no NaN.
    np.testing.assert_array_equal(_np(losses.l2_normalised(np.zeros((1, 3), np.float32))), 0)


def test_inheritance_and_exploration_losses_by_hand():
    assert _f(losses.factor_distance(S, T)) == pytest.approx(HAND, rel=1e-6)
    assert _f(losses.inheritance_loss(S, T)) == pytest.approx(HAND, rel=1e-6)
    # Exploration: the same distance, negated (a dis-similarity to minimise).
    assert _f(losses.exploration_loss(S, T)) == pytest.approx(-HAND, rel=1e-6)


def test_the_losses_see_directions_not_lengths():
    assert _f(losses.inheritance_loss(7.5 * S, 0.1 * T)) == pytest.approx(HAND, rel=1e-6)
    assert _f(losses.inheritance_loss(2.0 * T, T)) == pytest.approx(0.0, abs=1e-7)
    # Opposite directions are the farthest: 2/sqrt(k) per factor, k = 2.
    assert _f(losses.factor_distance(np.array([[1.0, 1.0]]), np.array([[-1.0, -1.0]]))) == \
        pytest.approx(2 / np.sqrt(2), rel=1e-6)


def test_per_sample_factor_counts_with_a_mask():
    # Sample 1 has 3 factors, sample 2 only 2 (its third is padding, ignored).
    s = np.array([[1.0, 0.0, 0.0], [3.0, 4.0, 9.0]], np.float32)
    t = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, -9.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    # Sample 1: |u - v| = [1, 1, 0], mean over 3 factors = 2/3.
    # Sample 2: u = [0.6, 0.8], v = [0, 1]: mean over 2 factors = 0.4.
    expected = (2 / 3 + 0.4) / 2
    assert _f(losses.inheritance_loss(s, t, mask)) == pytest.approx(expected, rel=1e-6)
    assert _f(losses.exploration_loss(s, t, mask)) == pytest.approx(-expected, rel=1e-6)


def test_reconstruction_loss_by_hand():
    x = np.array([[1.0, 2.0], [0.0, -1.0]], np.float32)
    r = np.array([[1.5, 2.0], [1.0, 1.0]], np.float32)
    assert _f(losses.reconstruction_l1(x, r)) == pytest.approx((0.5 + 0 + 1 + 2) / 4)


def _grad(f, x):
    """d f(x) / dx on the current backend (x an array)."""
    import keras

    x = np.asarray(x, np.float32)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            y = f(v)
        return np.asarray(tape.gradient(y, v), np.float64)
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(f)(x), np.float64)
    pytest.skip(f"no gradient helper for the {keras.backend.backend()} backend")


def test_a_zero_factor_vector_has_a_finite_gradient():
    # A sample whose half of the hidden layer is all ReLU-dead has zero factors.
    s = np.array([[0.0, 0.0, 0.0], [0.5, 0.1, 0.2]], np.float32)
    t = np.array([[1.0, 0.2, 0.1], [0.3, 0.6, 0.9]], np.float32)
    for loss in (losses.inheritance_loss, losses.exploration_loss):
        g = _grad(lambda v, loss=loss: loss(v, t), s)
        assert np.all(np.isfinite(g)), g
        np.testing.assert_array_equal(g[0], 0)


def test_a_step_down_each_loss_moves_the_factors_the_right_way():
    s = np.array([[0.9, 0.3, 0.2], [0.1, 0.8, 0.5]], np.float32)
    t = np.array([[1.0, 0.2, 0.1], [0.3, 0.6, 0.9]], np.float32)
    before = _f(losses.factor_distance(s, t))
    step = 0.05
    closer = s - step * _grad(lambda v: losses.inheritance_loss(v, t), s)
    farther = s - step * _grad(lambda v: losses.exploration_loss(v, t), s)
    assert _f(losses.factor_distance(closer, t)) < before  # Inheritance pulls toward T.
    assert _f(losses.factor_distance(farther, t)) > before  # Exploration pushes away.


# -- the student's split ----------------------------------------------------------------


def _student(fc=10, split=(3, 2), feature_dims=(16, 8), **kw):
    s = networks.MultiTaskStudent(["pong", "freeway"], [6, 3], feature_dims=list(feature_dims),
                                  conv_filters=(4, 4, 4), fc_units=fc, head_units=0,
                                  split_factor_dims=None if split is None else list(split),
                                  **kw)
    return s.build_for_inputs()


def _x(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"frames": rng.integers(0, 256, (n, 4, 84, 84), dtype=np.uint8),
            "game_id": np.arange(n, dtype=np.int32) % 2}


def test_split_sizes_and_outputs():
    for fc, inh, exp in ((10, 5, 5), (7, 3, 4)):
        s = _student(fc=fc)
        assert (s.inheritance_units, s.fc_units - s.inheritance_units) == (inh, exp)
        for encoders, units in ((s.inheritance_encoders, inh), (s.exploration_encoders, exp)):
            assert [[tuple(layer.kernel.shape) for layer in e] for e in encoders] == [
                [(units, units), (units, 3), (3, 3)], [(units, units), (units, 2), (2, 2)]]
    s = _student()
    out = s(_x())
    assert set(out) == {"logits", "features", "inheritance_factors", "exploration_factors"}
    for name in ("inheritance_factors", "exploration_factors"):
        assert tuple(out[name].shape) == (4, 3)
        np.testing.assert_array_equal(_np(out[name])[1::2, 2], 0)  # freeway: 2 factors.
    np.testing.assert_array_equal(_np(s.factor_mask(np.array([0, 1]))), [[1, 1, 1], [1, 1, 0]])
    hidden = _np(s.shared_hidden(_x()["frames"]))
    inh, exp = (_np(h) for h in s.split_hidden(ops.convert_to_tensor(hidden)))
    np.testing.assert_array_equal(np.concatenate([inh, exp], axis=1), hidden)


def test_the_plain_student_is_unchanged():
    plain, split = _student(split=None), _student()
    assert "split_factor_dims" not in plain.get_config()
    assert set(plain(_x())) == {"logits", "features"}
    assert not plain.inheritance_encoders and not plain.exploration_encoders
    # The split adds encoders only: the same seed gives the plain student's
    # trunk and heads.
    import keras

    keras.utils.set_random_seed(5)
    plain = _student(split=None)
    keras.utils.set_random_seed(5)
    split = _student()
    for a, b in zip(plain.weights, split.weights):
        np.testing.assert_array_equal(_np(a), _np(b))
    np.testing.assert_allclose(_np(plain(_x())["logits"]), _np(split(_x())["logits"]))


@pytest.mark.parametrize("kw, message", [
    (dict(split=(3,)), "split_factor_dims: expected, for each of the 2 games"),
    (dict(split=(3, 0)), "its teacher's factor count (>= 1), found [3, 0]"),
    (dict(fc=1), "at least 2 units to split in halves, found fc_units=1"),
])
def test_bad_splits_are_refused(kw, message):
    with pytest.raises(ValueError) as e:
        _student(**kw)
    assert message in str(e.value)


def _gradients(student, loss_of_outputs, x):
    """Per trainable variable (by path), d loss / d variable, numpy."""
    import keras

    variables = student.trainable_variables
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_of_outputs(student(x))
        grads = tape.gradient(loss, variables)
    elif keras.backend.backend() == "jax":
        import jax

        non_trainable = [v.value for v in student.non_trainable_variables]

        def f(values):
            out, _ = student.stateless_call(values, non_trainable, x)
            return loss_of_outputs(out)

        grads = jax.grad(f)([v.value for v in variables])
    else:
        pytest.skip(f"no gradient helper for the {keras.backend.backend()} backend")
    return {v.path: (np.zeros(v.shape) if g is None else _np(g))
            for v, g in zip(variables, grads)}


def test_each_loss_reaches_its_own_half_only():
    s = _student(fc=10)
    x = _x(8)
    t = np.random.default_rng(1).uniform(0.1, 1.0, (8, 3)).astype(np.float32)
    mask = s.factor_mask(x["game_id"])
    n = s.inheritance_units
    hidden_kernel = next(v.path for v in s.trunk[-1].weights if "kernel" in v.path)
    hidden_bias = next(v.path for v in s.trunk[-1].weights if "bias" in v.path)
    for loss, name, own, other in (
            (losses.inheritance_loss, "inheritance_factors", slice(0, n), slice(n, None)),
            (losses.exploration_loss, "exploration_factors", slice(n, None), slice(0, n))):
        g = _gradients(s, lambda out, loss=loss, name=name: loss(out[name], t, mask), x)
        # The other half's units of the shared hidden layer get nothing...
        assert np.all(g[hidden_kernel][:, other] == 0)
        assert np.all(g[hidden_bias][other] == 0)
        # ... their own half does, and so does the convolutional trunk below both.
        assert np.abs(g[hidden_kernel][:, own]).sum() > 0
        assert np.abs(g[next(p for p in g if "conv0" in p)]).sum() > 0
        # Each part's encoders get gradients from their own loss only; the
        # heads get none.
        mine = "inheritance" if name == "inheritance_factors" else "exploration"
        theirs = "exploration" if mine == "inheritance" else "inheritance"
        assert any(np.abs(v).sum() > 0 for p, v in g.items() if f"_{mine}_encoder" in p)
        assert all(np.all(v == 0) for p, v in g.items() if f"_{theirs}_encoder" in p)
        assert all(np.all(v == 0) for p, v in g.items() if "_logits" in p)


# -- the teachers' auto-encoders -------------------------------------------------------


def _features(n=200, d=6, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(2, d))
    return np.maximum(rng.normal(size=(n, 2)) @ basis, 0).astype(np.float32)


def test_fit_autoencoder_learns_and_reports():
    x = _features()
    weights, summary = iekd.fit_autoencoder(x, 3, grad_steps=300, batch_size=32,
                                            learning_rate=3e-3, seed=0)
    assert [(w.shape, b.shape) for w, b in weights] == [((6, 6), (6,)), ((6, 3), (3,)),
                                                         ((3, 3), (3,))]
    assert summary["rows"] == 200 and summary["heldout_rows"] == 10
    assert summary["grad_steps"] == 300
    # Better than reconstructing every vector as the mean vector.
    assert summary["heldout_l1"] < 0.7 * summary["heldout_l1_of_mean_vector"]
    again, _ = iekd.fit_autoencoder(x, 3, grad_steps=300, batch_size=32, learning_rate=3e-3,
                                    seed=0)
    for a, b in zip(weights, again):  # Seeded: the same fit.
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def _factors():
    rng = np.random.default_rng(2)
    weights = [[(rng.normal(size=(d, d)), rng.normal(size=d)),
                (rng.normal(size=(d, k)), rng.normal(size=k)),
                (rng.normal(size=(k, k)), rng.normal(size=k))] for d, k in ((4, 2), (2, 1))]
    return iekd.TeacherFactors(["pong", "freeway"], [4, 2], [2, 1], weights, {"note": 1})


def test_teacher_factors_encode_by_hand_and_round_trip(tmp_path):
    f = _factors()
    feats = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    # By hand: three affine maps, each followed by a LeakyReLU of slope 0.1.
    h = feats[:1]
    for w, b in f.weights[0]:
        h = h @ w + b
        h = np.where(h > 0, h, 0.1 * h)
    np.testing.assert_allclose(f.encode_numpy(feats[:1], 0), h, rtol=1e-5)
    game_id = np.array([0, 1, 0], np.int32)
    got = _np(f.encode(feats, game_id))
    np.testing.assert_allclose(got[0], f.encode_numpy(feats[:1], 0)[0], rtol=1e-5, atol=1e-6)
    # A freeway sample reads its 2 features and has 1 factor (then a zero).
    np.testing.assert_allclose(got[1], [f.encode_numpy(feats[1:2], 1)[0, 0], 0.0],
                               rtol=1e-5, atol=1e-6)
    f.save(tmp_path)
    back = iekd.TeacherFactors.load(tmp_path / iekd.FACTORS_FILE)
    assert (back.games, back.feature_dims, back.factor_dims, back.summary) == (
        f.games, f.feature_dims, f.factor_dims, f.summary)
    np.testing.assert_allclose(_np(back.encode(feats, game_id)), got, rtol=1e-6)
    summary = json.loads((tmp_path / iekd.SUMMARY_FILE).read_text())
    assert summary["factor_dims"] == [2, 1]
    (tmp_path / "bad.npz").write_bytes(b"no")
    with pytest.raises(ValueError, match="is not an IE-KD teacher factors file"):
        iekd.TeacherFactors.load(tmp_path / "bad.npz")


# -- the objective -----------------------------------------------------------------------


def test_objective_settings_and_errors():
    o = iekd.IEKD(temperatures=(0.01, 1.0))
    assert o.fields == ("teacher_outputs", "teacher_features")
    assert not o.needs_feature_projections
    assert o.factor_dims([512, 16, 1]) == [256, 8, 1]
    d = o.to_dict()
    assert d["name"] == "iekd" and "teacher_factors" not in d
    assert (d["inheritance_weight"], d["exploration_weight"], d["factor_rate"]) == (1.0, 1.0,
                                                                                    0.5)
    import dataclasses

    assert dataclasses.replace(o, teacher_factors=_factors()) == o  # Not a setting.
    for kw, message in ((dict(inheritance_weight=-1), "inheritance_weight must be >= 0"),
                        (dict(exploration_weight=-0.5), "exploration_weight must be >= 0"),
                        (dict(factor_rate=0), "factor_rate must be in (0, 1]"),
                        (dict(policy_loss="l1"), "policy_loss must be one of"),
                        (dict(autoencoder_grad_steps=0), "autoencoder_grad_steps must be >= 1")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            iekd.IEKD(**kw)


def test_objective_terms_by_hand():
    f = _factors()
    s = _student(fc=10, split=(2, 1), feature_dims=(4, 2))
    x = _x(4)
    rng = np.random.default_rng(4)
    y = {"teacher_outputs": rng.normal(size=(4, 6)).astype(np.float32),
         "teacher_features": rng.normal(size=(4, 4)).astype(np.float32)}
    y["teacher_outputs"][1::2, 3:] = 0
    y_pred = s(x)
    o = iekd.IEKD(temperatures=(0.01, 1.0), inheritance_weight=0.5, exploration_weight=2.0,
                  teacher_factors=f)
    terms = o.terms(s, x, y, y_pred)
    assert set(terms) == {"policy", "inheritance", "exploration"}
    policy = objectives.Distillation(temperatures=(0.01, 1.0)).terms(s, x, y, y_pred)["policy"]
    assert _f(terms["policy"]) == pytest.approx(_f(policy), rel=1e-6)

    # By hand, in numpy: each sample's factors over its own game's k.
    def distance(student_factors):
        total = []
        for i, g in enumerate(x["game_id"]):
            k = f.factor_dims[g]
            u = _np(student_factors)[i, :k]
            v = f.encode_numpy(y["teacher_features"][i:i + 1], g)[0]
            total.append(np.mean(np.abs(u / np.linalg.norm(u) - v / np.linalg.norm(v))))
        return np.mean(total)

    assert _f(terms["inheritance"]) == pytest.approx(
        0.5 * distance(y_pred["inheritance_factors"]), rel=1e-5)
    assert _f(terms["exploration"]) == pytest.approx(
        -2.0 * distance(y_pred["exploration_factors"]), rel=1e-5)
    assert _f(o.loss(s, x, y, y_pred)) == pytest.approx(
        sum(_f(v) for v in terms.values()), rel=1e-5, abs=1e-6)
    import dataclasses

    off = dataclasses.replace(o, exploration_weight=0.0)
    assert set(off.terms(s, x, y, y_pred)) == {"policy", "inheritance"}
    with pytest.raises(ValueError, match="no teacher factors yet: call prepare"):
        iekd.IEKD(temperatures=(0.01, 1.0)).terms(s, x, y, y_pred)
    plain = _student(split=None, feature_dims=(4, 2))
    with pytest.raises(ValueError, match="needs a student with the split"):
        o.terms(plain, x, y, plain(x))


def test_the_plain_runs_identity_is_unchanged():
    plain = distiller.DistillConfig(games=("pong",),
                                    objective=objectives.Distillation(temperatures=(0.01,)))
    # Exactly what runs and sweep rows recorded before IE-KD existed.
    assert plain.identity() == {
        "games": ["pong"], "student_size": "dqn", "head_units": 128, "learning_rate": 2.5e-4,
        "objective": {"policy_loss": "kl", "temperatures": [0.01], "feature_beta": 0.0,
                      "policy_weight": 1.0, "name": "distillation"},
        "pipeline": {"batch_size_per_game": 32, "game_weights": None, "block_rows": 256,
                     "blocks_in_memory": 64, "holdout_fraction": 0.05, "seed": 0}}
    ie = distiller.DistillConfig(games=("pong",), objective=iekd.IEKD(temperatures=(0.01,)))
    assert ie.identity()["objective"]["name"] == "iekd"
    assert ie.identity() != plain.identity()


# -- save and load, acting --------------------------------------------------------------


def test_a_split_student_saves_loads_and_acts_as_it_trained(tmp_path):
    s = _student()
    x = _x(4)
    path = students.save_student(s, tmp_path / "student.keras")
    back = students.load_student(path)
    assert back.split_factor_dims == [3, 2]
    out, got = s(x), back(x)
    for name in ("logits", "inheritance_factors", "exploration_factors"):
        np.testing.assert_allclose(_np(got[name]), _np(out[name]), rtol=1e-5, atol=1e-6)
    # Acting reads the heads only: the policy network is the plain one's.
    pong = x["frames"][x["game_id"] == 0]
    np.testing.assert_allclose(_np(back.policy_network("pong")(pong)),
                               _np(out["logits"])[x["game_id"] == 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(students.head_predictor(back, "freeway")(
        x["frames"][x["game_id"] == 1]), _np(out["logits"])[x["game_id"] == 1][:, :3],
        rtol=1e-5, atol=1e-5)


# -- through the real distiller ----------------------------------------------------------


def _config(num_grad_steps=4):
    return distiller.DistillConfig(
        games=("pong", "freeway"),
        objective=iekd.IEKD(temperatures=(0.01, 1.0), autoencoder_rows_per_game=64,
                            autoencoder_grad_steps=20, autoencoder_batch_size=16),
        student_size="net3", head_units=16, num_grad_steps=num_grad_steps,
        checkpoint_every_steps=2, eval_every_steps=2, learning_rate=1e-3,
        pipeline=pipeline.PipelineConfig(batch_size_per_game=8, block_rows=64,
                                         blocks_in_memory=4))


def _distiller(run_dir, datasets_dir, spec, config):
    paths = [str(datasets_dir / f"{g}.h5") for g in config.games]
    source = pipeline.HDF5Source(paths, config.pipeline, fields=config.objective.fields,
                                 max_episodes=distiller.data_prefix(run_dir))
    try:
        return distiller.Distiller(run_dir, config, source, spec,
                                   teacher_kinds=["q_values", "logits"])
    except BaseException:
        source.close()
        raise


@pytest.mark.slow
def test_distillation_step_fit_save_and_resume(tmp_path, datasets_dir, spec):
    run = tmp_path / "run"
    d = _distiller(run, datasets_dir, spec, _config(num_grad_steps=2))
    feature_dims = d.source.feature_dims
    assert d.student.split_factor_dims == [max(1, round(f / 2)) for f in feature_dims]
    assert d.student.objective.teacher_factors is not None
    x, y = d.source.batch(0)
    terms = d.config.objective.terms(d.student, x, y, d.student(x))
    assert set(terms) == {"policy", "inheritance", "exploration"}
    assert all(np.isfinite(_f(v)) for v in terms.values())
    encoder = [np.asarray(v) for v in d.student.inheritance_encoders[0][0].weights]
    d.train(progress=False)
    trained = [np.asarray(v) for v in d.student.inheritance_encoders[0][0].weights]
    assert any(not np.allclose(a, b) for a, b in zip(encoder, trained))  # It learnt.
    d.close()
    factors_file = run / iekd.FACTORS_FILE
    first = factors_file.read_bytes()
    summary = json.loads((run / iekd.SUMMARY_FILE).read_text())["summary"]["games"]
    assert set(summary) == {"pong", "freeway"} and summary["pong"]["rows"] == 64
    saved = json.loads((run / "config.json").read_text())
    assert saved["identity"]["config"]["objective"]["name"] == "iekd"

    # Resumed: the auto-encoders are read back, not fitted again.
    resumed = _distiller(run, datasets_dir, spec, _config(num_grad_steps=4))
    assert resumed.grad_step == 2
    assert factors_file.read_bytes() == first
    for a, b in zip(resumed.config.objective.teacher_factors.weights[0],
                    iekd.TeacherFactors.load(factors_file).weights[0]):
        np.testing.assert_array_equal(a[0], b[0])
    resumed.train(progress=False)
    assert resumed.grad_step == 4
    resumed.close()
    student = students.load_student(run / "student.keras")
    assert student.split_factor_dims == resumed.student.split_factor_dims

    # The file of another run's games or sizes is refused with its name.
    meta = iekd.TeacherFactors.load(factors_file)
    iekd.TeacherFactors(meta.games, meta.feature_dims, [k + 1 for k in meta.factor_dims],
                        [[(w, b) for w, b in g] for g in meta.weights]).save(run)
    with pytest.raises(ValueError, match="iekd_teacher_factors.npz holds the auto-encoders"):
        _distiller(run, datasets_dir, spec, _config(num_grad_steps=4))


# -- the flags ---------------------------------------------------------------------------


@pytest.fixture()
def parse():
    from multidistill import cli

    yield from flag_parser(("control", cli.define_rounds_flags))


def test_the_flag_maps_to_the_objective(parse):
    cli = parse()
    assert not cli.FLAGS.iekd
    plain = cli.distill_config_from_flags(["pong", "freeway"], ["q_values", "logits"])
    assert isinstance(plain.objective, objectives.Distillation)
    assert cli.FLAGS["iekd_inheritance_weight"].default == iekd.IEKD().inheritance_weight
    assert cli.FLAGS["iekd_exploration_weight"].default == iekd.IEKD().exploration_weight
    cli = parse("--iekd", "--loss=nll")
    d = cli.distill_config_from_flags(["pong", "freeway"], ["q_values", "logits"])
    assert d.objective == iekd.IEKD(policy_loss="nll", temperatures=(0.01, 1.0))
    cli = parse("--iekd", "--iekd_inheritance_weight=0.5", "--iekd_exploration_weight=0",
                "--iekd_autoencoder_steps=7")
    o = cli.distill_config_from_flags(["pong"], ["q_values"]).objective
    assert (o.inheritance_weight, o.exploration_weight, o.autoencoder_grad_steps) == (
        0.5, 0.0, 7)
    assert cli.FLAGS["iekd_autoencoder_steps"].default == iekd.IEKD().autoencoder_grad_steps
    from multidistill import stages

    assert stages.PRESETS["smoke"]["iekd_autoencoder_steps"] == 100
    for name in ("iekd", "iekd_inheritance_weight", "iekd_exploration_weight",
                 "iekd_autoencoder_steps"):
        assert "IE-KD" in cli.FLAGS[name].help or "--iekd" in cli.FLAGS[name].help


@pytest.mark.parametrize("argv, message", [
    (["--iekd_inheritance_weight=2"],
     "--iekd_inheritance_weight applies with --iekd only (found "
     "--iekd_inheritance_weight=2.0 without --iekd)"),
    (["--iekd_exploration_weight=0"], "--iekd_exploration_weight applies with --iekd only"),
    (["--iekd", "--update_rule=n_distill"],
     "--iekd adds its terms to --loss's policy term, not to --update_rule=n_distill"),
    (["--iekd", "--feature_beta=0.01"], "--iekd and --feature_beta both train the student"),
    (["--iekd", "--iekd_inheritance_weight=-1"],
     "--iekd_inheritance_weight must be >= 0, found -1.0"),
    (["--iekd", "--iekd_exploration_weight=-2"],
     "--iekd_exploration_weight must be >= 0, found -2.0"),
    (["--iekd_autoencoder_steps=5"], "--iekd_autoencoder_steps applies with --iekd only"),
    (["--iekd", "--iekd_autoencoder_steps=0"], "--iekd_autoencoder_steps must be >= 1, found 0"),
])
def test_flag_errors(parse, argv, message):
    cli = parse(*argv)
    with pytest.raises(cli.UsageError) as e:
        cli.distill_config_from_flags(["pong"], ["q_values"])
    assert message in str(e.value)


# The JAX backend: tests/test_backends.py runs this file's fast tests under it.
