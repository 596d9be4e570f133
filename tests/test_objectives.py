"""Objectives: the fields they ask for, their loss by hand, and training a
student with Keras' own `fit` on a batch source."""

import numpy as np
import pytest

from multidistill import losses, networks, objectives, pipeline


def _student(objective=None, feature_projections=False):
    s = networks.MultiTaskStudent(
        games=["pong", "freeway"], num_actions=[6, 3], feature_dims=[5, 2],
        conv_filters=(4, 4, 4), fc_units=16, head_units=8,
        feature_projections=feature_projections, objective=objective)
    return s.build_for_inputs()


def _batch():
    rng = np.random.default_rng(0)
    game_id = np.array([0, 1, 1, 0, 1], np.int32)
    x = {"frames": rng.integers(0, 256, (5, 4, 84, 84), dtype=np.uint8), "game_id": game_id}
    outputs = rng.normal(size=(5, 6)).astype(np.float32)
    features = rng.normal(size=(5, 5)).astype(np.float32)
    outputs[game_id == 1, 3:] = 0.0  # Padding, as batch sources pad.
    features[game_id == 1, 2:] = 0.0
    return x, {"teacher_outputs": outputs, "teacher_features": features}


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def test_fields_and_settings():
    assert objectives.Distillation().fields == ("teacher_outputs",)
    assert not objectives.Distillation().needs_feature_projections
    d = objectives.Distillation(feature_beta=0.01, temperatures=(0.01, 1.0))
    assert d.fields == ("teacher_outputs", "teacher_features")
    assert d.needs_feature_projections
    assert d.to_dict() == {"name": "distillation", "policy_loss": "kl",
                           "temperatures": [0.01, 1.0], "feature_beta": 0.01,
                           "policy_weight": 1.0}
    assert objectives.default_temperature("q_values") == 0.01
    assert objectives.default_temperature("logits") == 1.0
    with pytest.raises(ValueError, match=r"^feature_beta must be >= 0, found -1.0$"):
        objectives.Distillation(feature_beta=-1.0)
    with pytest.raises(ValueError, match=r"^policy_weight must be >= 0, found -2.0$"):
        objectives.Distillation(policy_weight=-2.0)


def test_loss_is_the_kl_of_each_samples_game_by_hand():
    """Two games of 6 and 3 actions, temperatures 0.5 and 2, feature
    regression on: every term computed here with numpy."""
    objective = objectives.Distillation(temperatures=(0.5, 2.0), feature_beta=0.1,
                                        policy_weight=0.7)
    s = _student(objective, feature_projections=True)
    x, y = _batch()
    pred = s(x)
    logits = np.asarray(pred["logits"], np.float64)
    features = np.asarray(pred["features"], np.float64)
    kl_rows, kl_lib, feat_rows = [], [], []
    for i, g in enumerate(x["game_id"]):
        a, tau, f = (6, 0.5, 5) if g == 0 else (3, 2.0, 2)
        log_p = _log_softmax(y["teacher_outputs"][i, :a] / tau)
        log_q = _log_softmax(logits[i, :a])
        kl_rows.append(np.sum(np.exp(log_p) * (log_p - log_q)))
        kl_lib.append(float(np.asarray(losses.kl(y["teacher_outputs"][i:i + 1, :a],
                                                  logits[i:i + 1, :a], temperature=tau))))
        feat_rows.append(np.sum((features[i, :f] - y["teacher_features"][i, :f]) ** 2))
    np.testing.assert_allclose(kl_rows, kl_lib, rtol=1e-4)
    terms = {k: float(np.asarray(v)) for k, v in objective.terms(s, x, y, pred).items()}
    assert set(terms) == {"policy", "features"}
    assert terms["policy"] == pytest.approx(0.7 * np.mean(kl_rows), rel=1e-4)
    assert terms["features"] == pytest.approx(0.1 * np.mean(feat_rows), rel=1e-4)
    total = float(np.asarray(objective.loss(s, x, y, pred)))
    assert total == pytest.approx(0.7 * np.mean(kl_rows) + 0.1 * np.mean(feat_rows), rel=1e-4)
    # compute_loss, what fit() calls, is the objective's loss.
    assert float(np.asarray(s.compute_loss(x, y, pred))) == pytest.approx(total, rel=1e-6)


def test_nll_objective_uses_each_games_actions_only():
    objective = objectives.Distillation(policy_loss="nll", temperatures=(1.0, 1.0))
    s = _student(objective)
    x, y = _batch()
    y["teacher_outputs"][1] = [0.0, -1.0, -2.0, 0.0, 0.0, 0.0]  # Padding zeros beat it.
    pred = s(x)
    logits = np.asarray(pred["logits"], np.float64)
    rows = []
    for i, g in enumerate(x["game_id"]):
        a = 6 if g == 0 else 3
        best = int(np.argmax(y["teacher_outputs"][i, :a]))
        rows.append(-_log_softmax(logits[i, :a])[best])
    assert float(np.asarray(objective.loss(s, x, y, pred))) == pytest.approx(
        np.mean(rows), rel=1e-4)
    assert "features" not in objective.terms(s, x, y, pred)


def test_a_student_without_objective_says_so():
    import keras

    s = _student()
    x, y = _batch()
    with pytest.raises(ValueError, match="this student has no objective to train on: "
                                         "attach one first"):
        s.compute_loss(x, y, s(x))
    s.compile(optimizer=keras.optimizers.Adam())
    with pytest.raises(ValueError, match="this student has no objective"):
        s.train_on_batch(x, y)


@pytest.mark.slow
def test_keras_fit_on_a_batch_source_lowers_the_loss(datasets_dir):
    """The Keras convention: `fit` on `pipeline.fit_batches(source)`, nothing
    of the distiller's loop."""
    import keras

    objective = objectives.Distillation(temperatures=(0.01, 1.0), feature_beta=0.01)
    config = pipeline.PipelineConfig(batch_size_per_game=16, block_rows=64,
                                     blocks_in_memory=4)
    source = pipeline.HDF5Source([str(datasets_dir / "pong.h5"),
                                  str(datasets_dir / "freeway.h5")], config,
                                 fields=objective.fields)
    try:
        keras.utils.set_random_seed(0)
        s = networks.MultiTaskStudent(
            games=source.games, num_actions=source.num_actions,
            feature_dims=source.feature_dims, conv_filters=(8, 8, 8), fc_units=32,
            head_units=16, feature_projections=True, objective=objective)
        s.build_for_inputs()
        s.compile(optimizer=keras.optimizers.Adam(1e-3))
        held = [source.holdout(g) for g in range(2)]

        def heldout_loss():
            return np.mean([float(np.asarray(objective.loss(s, x, y, s(x)))) for x, y in held])

        before = heldout_loss()
        history = s.fit(pipeline.fit_batches(source), steps_per_epoch=60, epochs=1, shuffle=False,
                        verbose=0)
        after = heldout_loss()
    finally:
        source.close()
    assert np.isfinite(history.history["loss"][0])
    assert after < 0.8 * before, (before, after)
