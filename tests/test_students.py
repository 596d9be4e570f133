"""Student files: save and load, trunk transfer, a head exported as a teacher."""

import json
import zipfile

import h5py
import numpy as np
import pytest

from multidistill import networks, objectives, students, teachers


def _student(spec, games=("pong", "freeway"), num_actions=(6, 3), filters=(4, 4, 4), fc=16,
             **kw):
    s = networks.MultiTaskStudent(
        games=list(games), num_actions=list(num_actions), feature_dims=[5] * len(games),
        conv_filters=filters, fc_units=fc, head_units=8,
        observation_shape=spec.observation_shape, preprocessing=spec.to_dict(),
        training_config={"teacher_kinds": ["q_values", "logits"][:len(games)]}, **kw)
    return s.build_for_inputs()


def _frames(n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 84, 84), dtype=np.uint8)


def _x(n=4):
    return {"frames": _frames(n), "game_id": np.arange(n, dtype=np.int32) % 2}


def _trained(spec):
    """A student compiled and trained one step: its optimizer has state."""
    import keras

    s = _student(spec, objective=objectives.Distillation(temperatures=(1.0, 1.0)))
    s.compile(optimizer=keras.optimizers.Adam(1e-3))
    y = {"teacher_outputs": np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)}
    s.train_on_batch(_x(), y)
    assert s.optimizer.iterations.numpy() == 1
    return s


def _weight_groups(keras_path):
    """Top-level groups of the weights file inside a `.keras` zip."""
    with zipfile.ZipFile(keras_path) as z:
        assert "model.weights.h5" in z.namelist()
        with z.open("model.weights.h5") as fh, h5py.File(fh, "r") as f:
            return set(f.keys())


def test_save_and_load_round_trip_without_optimizer_state(tmp_path, spec):
    s = _trained(spec)
    path = students.save_student(s, tmp_path / "student.keras")
    assert path == tmp_path / "student.keras"
    assert not (tmp_path / "student.tmp.keras").exists()
    loaded = students.load_student(path)
    assert isinstance(loaded, networks.MultiTaskStudent)
    assert loaded.games == ["pong", "freeway"] and loaded.num_actions == [6, 3]
    assert loaded.preprocessing == spec.to_dict()
    assert loaded.training_config == {"teacher_kinds": ["q_values", "logits"]}
    assert loaded.objective is None and getattr(loaded, "optimizer", None) is None
    x = _x()
    np.testing.assert_allclose(np.asarray(loaded(x)["logits"]), np.asarray(s(x)["logits"]),
                               rtol=1e-6, atol=1e-6)
    # The file holds no optimizer variables (Keras saves them for a compiled
    # model: the same student saved plainly has them).
    assert "optimizer" not in _weight_groups(path)
    s.save(tmp_path / "plain.keras")
    assert "optimizer" in _weight_groups(tmp_path / "plain.keras")
    with zipfile.ZipFile(path) as z:
        assert not json.loads(z.read("config.json")).get("compile_config")  # No optimizer.
    # The student saved is untouched by saving.
    assert s.optimizer.iterations.numpy() == 1 and s.objective is not None


def test_load_student_errors(tmp_path, spec):
    with pytest.raises(FileNotFoundError, match="student file .*nope.keras does not exist"):
        students.load_student(tmp_path / "nope.keras")
    (tmp_path / "bad.keras").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.keras is not a loadable Keras model"):
        students.load_student(tmp_path / "bad.keras")
    teacher = networks.build_teacher_network(6, spec.observation_shape, (4, 4, 4), 8)
    teacher.save(tmp_path / "teacher.keras")
    with pytest.raises(ValueError, match="is a Keras model but not a multidistill student"):
        students.load_student(tmp_path / "teacher.keras")


def _hidden(model, frames):
    if isinstance(model, networks.MultiTaskStudent):
        return np.asarray(model.shared_hidden(frames))
    import keras

    return np.asarray(keras.Model(model.inputs, model.get_layer("features").output)(frames))


def test_copy_trunk_between_students(spec):
    import keras

    keras.utils.set_random_seed(0)
    source = _student(spec)
    keras.utils.set_random_seed(1)
    target = _student(spec, games=("qbert",), num_actions=(6,))
    frames = _frames()
    head_before = [np.asarray(w) for w in target.game_heads[0].weights]
    assert not np.allclose(_hidden(source, frames), _hidden(target, frames))
    assert students.copy_trunk(source, target) == 4
    np.testing.assert_allclose(_hidden(target, frames), _hidden(source, frames), rtol=1e-6)
    for a, b in zip(students.trunk_layers(source), students.trunk_layers(target)):
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    for w, before in zip(target.game_heads[0].weights, head_before):  # Heads stay.
        np.testing.assert_array_equal(np.asarray(w), before)


def test_copy_trunk_into_a_teacher_network_and_back(spec):
    import keras

    keras.utils.set_random_seed(0)
    student = _student(spec)
    teacher = networks.build_teacher_network(6, spec.observation_shape, (4, 4, 4), 16)
    assert [layer.name for layer in students.trunk_layers(teacher)] == [
        "conv0", "conv1", "conv2", "features"]
    frames = _frames()
    assert students.copy_trunk(student, teacher) == 4
    np.testing.assert_allclose(_hidden(teacher, frames), _hidden(student, frames), rtol=1e-5,
                               atol=1e-6)
    keras.utils.set_random_seed(5)
    other = _student(spec)
    students.copy_trunk(teacher, other)  # A teacher's trunk into a student.
    np.testing.assert_allclose(_hidden(other, frames), _hidden(student, frames), rtol=1e-5,
                               atol=1e-6)


def test_copy_trunk_refuses_other_sizes(spec):
    student = _student(spec)
    bigger = networks.build_teacher_network(6, spec.observation_shape, (8, 4, 4), 16)
    before = [np.asarray(w) for w in bigger.weights]
    with pytest.raises(ValueError, match="cannot copy the trunk: .*another network size"):
        students.copy_trunk(student, bigger)
    with pytest.raises(ValueError, match="cannot copy the trunk"):
        students.copy_trunk(student, _student(spec, fc=32))
    for w, b in zip(bigger.weights, before):  # Nothing half-copied.
        np.testing.assert_array_equal(np.asarray(w), b)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_export_head_writes_a_teacher_that_loads_and_acts_as_the_head(tmp_path, spec,
                                                                      precision):
    student = _student(spec, precision=precision)
    model_path, card_path = students.export_head(student, "freeway", tmp_path,
                                                 evaluation={"mean": 3.0},
                                                 source="runs/x/student.keras")
    assert model_path == tmp_path / "freeway.keras" and card_path == tmp_path / "freeway.json"
    t = teachers.load_teacher("freeway", tmp_path, spec)
    # Its kind is that of the teacher the head learnt from (the card of the run).
    assert t.kind == "logits" and t.num_actions == 3 and t.feature_dim == 8
    card = t.card
    assert card["evaluation"] == {"mean": 3.0}
    assert card["training"]["exported_from"] == "runs/x/student.keras"
    assert card["training"]["games"] == ["pong", "freeway"]
    assert card["keras_sha256"] == t.sha256 and card["value"] == "none"
    frames = _frames(6)
    head = np.asarray(student.policy_network("freeway")(frames))
    labels = t.label(frames)
    tol = 1e-5 if precision == "float32" else 0.05
    np.testing.assert_allclose(labels["outputs"], head, rtol=tol, atol=tol)
    # Its features are the head's hidden layer.
    hidden = student.game_hidden[1](student.shared_hidden(frames))
    np.testing.assert_allclose(labels["features"], np.asarray(hidden), rtol=tol, atol=tol)
    # And the head predictor used for acting gives the same outputs.
    np.testing.assert_allclose(students.head_predictor(student, "freeway")(frames), head,
                               rtol=tol, atol=tol)
    students.export_head(student, "pong", tmp_path, kind="logits")
    assert teachers.load_teacher("pong", tmp_path, spec).kind == "logits"
    with pytest.raises(ValueError, match="no head for 'qbert'"):
        students.export_head(student, "qbert", tmp_path)


def test_export_head_of_a_student_without_head_layer(tmp_path, spec):
    from multidistill import networks

    student = networks.MultiTaskStudent(["pong"], [6], conv_filters=(4, 4, 4), fc_units=16,
                                        head_units=0, observation_shape=spec.observation_shape,
                                        preprocessing=spec.to_dict()).build_for_inputs()
    students.export_head(student, "pong", tmp_path, kind="q_values")
    t = teachers.load_teacher("pong", tmp_path, spec)
    frames = _frames(3)
    np.testing.assert_allclose(t.label(frames)["outputs"],
                               np.asarray(student.policy_network("pong")(frames)), rtol=1e-5,
                               atol=1e-5)
    # Its features are the trunk's hidden layer.
    assert t.feature_dim == 16


def _shared18_student(spec, head_units=8):
    from multidistill import games

    s = networks.MultiTaskStudent(
        games=["pong", "freeway"], num_actions=[6, 3], feature_dims=[5, 5],
        conv_filters=(4, 4, 4), fc_units=16, head_units=head_units, head="shared18",
        ale_action_indices=[games.get_game(g).ale_action_indices for g in ("pong", "freeway")],
        observation_shape=spec.observation_shape, preprocessing=spec.to_dict(),
        training_config={"teacher_kinds": ["q_values", "logits"]}, feature_projections=True)
    return s.build_for_inputs()


def test_shared18_student_saves_loads_and_exports_each_games_rows(tmp_path, spec):
    student = _shared18_student(spec)
    path = students.save_student(student, tmp_path / "student.keras")
    loaded = students.load_student(path)
    assert loaded.head == "shared18" and loaded.ale_action_indices == [[0, 1, 3, 4, 11, 12],
                                                                      [0, 2, 5]]
    x = _x()
    np.testing.assert_array_equal(np.asarray(loaded(x)["logits"]),
                                  np.asarray(student(x)["logits"]))
    frames = _frames(6)
    for game, kind, num_actions in (("pong", "q_values", 6), ("freeway", "logits", 3)):
        students.export_head(loaded, game, tmp_path / "teachers")
        t = teachers.load_teacher(game, tmp_path / "teachers", spec)
        assert t.kind == kind and t.num_actions == num_actions and t.feature_dim == 8
        labels = t.label(frames)
        np.testing.assert_allclose(labels["outputs"],
                                   np.asarray(student.policy_network(game)(frames)),
                                   rtol=1e-5, atol=1e-5)
        # Its features are the shared head layer.
        hidden = student.shared_head_hidden(student.shared_hidden(frames))
        np.testing.assert_allclose(labels["features"], np.asarray(hidden), rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="no head for 'qbert'"):
        students.export_head(student, "qbert", tmp_path)


def test_export_head_of_a_shared18_student_without_head_layer(tmp_path, spec):
    student = _shared18_student(spec, head_units=0)
    model = students.head_network(student, "pong")
    assert model.get_layer("features").units == 16  # The trunk's hidden layer.
    frames = _frames(3)
    np.testing.assert_allclose(np.asarray(model(frames)),
                               np.asarray(student.policy_network("pong")(frames)), rtol=1e-5,
                               atol=1e-5)
    kernel, bias = model.get_layer("outputs").get_weights()
    full_kernel, full_bias = student.shared_head.get_weights()
    np.testing.assert_array_equal(kernel, full_kernel[:, [0, 1, 3, 4, 11, 12]])
    np.testing.assert_array_equal(bias, full_bias[[0, 1, 3, 4, 11, 12]])


def test_acting_parameters_leave_out_what_only_training_uses(spec):
    """By hand: convolutions 8x8x4x4+4, 4x4x4x4+4, 3x3x4x4+4 (84 -> 20 -> 9
    -> 7 pixels), the shared hidden layer 7*7*4*16+16, per game a head
    16*8+8 and 8*A+A; the feature projections (the 16 shared units onto the
    teacher's 5 features, per game) serve training only."""
    plain = _student(spec)
    conv = (8 * 8 * 4 * 4 + 4) + (4 * 4 * 4 * 4 + 4) + (3 * 3 * 4 * 4 + 4)
    hidden = 7 * 7 * 4 * 16 + 16
    heads = sum(16 * 8 + 8 + 8 * a + a for a in (6, 3))
    assert students.acting_parameters(plain) == conv + hidden + heads
    assert students.acting_parameters(plain) == plain.count_params()
    projected = _student(spec, feature_projections=True)
    assert students.acting_parameters(projected) == conv + hidden + heads
    assert projected.count_params() - students.acting_parameters(projected) == 2 * (16 * 5 + 5)
