"""Teacher files and cards: loading, checks, acting rule."""

import json

import keras
import numpy as np
import pytest
from conftest import make_teacher

from multidistill import environments, networks, teachers


def test_round_trip_and_labels(tmp_path, spec):
    model = make_teacher(tmp_path, "pong", "q_values", spec)
    t = teachers.load_teacher("pong", tmp_path, spec)
    assert t.kind == "q_values" and t.num_actions == 6 and t.feature_dim == 16
    assert t.value_source == "max_q" and t.policy_model is t.model
    obs = np.random.default_rng(0).integers(0, 255, (3,) + spec.observation_shape, np.uint8)
    labels = t.label(obs)
    assert set(labels) == {"outputs", "features", "values"}
    outputs, features = labels["outputs"], labels["features"]
    np.testing.assert_allclose(outputs, np.asarray(model(obs)), rtol=1e-5, atol=1e-5)
    assert features.shape == (3, 16) and (features >= 0).all()  # ReLU layer.
    # A Q-value teacher's state value is max_a Q.
    np.testing.assert_array_equal(labels["values"], outputs.max(1))
    assert all(v.dtype == np.float32 for v in labels.values())
    card = json.loads((tmp_path / "pong.json").read_text())
    assert t.sha256 == card["keras_sha256"] and card["value"] == "max_q"


def test_logits_teacher_has_no_value(tmp_path, spec):
    make_teacher(tmp_path, "freeway", "logits", spec)
    t = teachers.load_teacher("freeway", tmp_path, spec)
    assert t.value_source == "none" and t.card["value"] == "none"
    labels = t.label(np.zeros((2,) + spec.observation_shape, np.uint8))
    assert labels["values"].shape == (2,) and np.isnan(labels["values"]).all()


def test_missing_teacher_says_where_and_how(tmp_path, spec):
    with pytest.raises(teachers.TeacherError,
                       match=r"no teacher for 'qbert': looked for .*qbert.keras.*train_teacher"):
        teachers.load_teacher("qbert", tmp_path, spec)


def test_missing_card(tmp_path, spec):
    make_teacher(tmp_path, "pong", "q_values", spec)
    (tmp_path / "pong.json").unlink()
    with pytest.raises(teachers.TeacherError, match="card .*pong.json is missing"):
        teachers.load_teacher("pong", tmp_path, spec)


def test_wrong_action_count(tmp_path, spec):
    model = networks.build_teacher_network(4, spec.observation_shape, (4, 4, 4), 8)
    teachers.save_teacher(model, "pong", "q_values", spec, tmp_path)
    with pytest.raises(teachers.TeacherError,
                       match="has 4 outputs .*expected 6: the minimal action set of pong"):
        teachers.load_teacher("pong", tmp_path, spec)


def test_wrong_input_shape(tmp_path, spec):
    model = networks.build_teacher_network(6, (2, 84, 84), (4, 4, 4), 8)
    teachers.save_teacher(model, "pong", "q_values", spec, tmp_path)
    with pytest.raises(teachers.TeacherError,
                       match=r"inputs of shape \(2, 84, 84\), expected .*\(4, 84, 84\)"):
        teachers.load_teacher("pong", tmp_path, spec)


def test_other_preprocessing(tmp_path, spec):
    make_teacher(tmp_path, "pong", "q_values", spec)
    other = environments.Preprocessing(**dict(spec.to_dict(), noop_max=5))
    with pytest.raises(teachers.TeacherError, match="another preprocessing.*noop_max"):
        teachers.load_teacher("pong", tmp_path, other)


def test_not_a_keras_file(tmp_path, spec):
    make_teacher(tmp_path, "pong", "q_values", spec)
    (tmp_path / "pong.keras").write_bytes(b"garbage")
    with pytest.raises(teachers.TeacherError, match="pong.keras is not a loadable Keras model"):
        teachers.load_teacher("pong", tmp_path, spec)


def test_unsafe_lambda_refused_unless_allowed(tmp_path, spec):
    inp = keras.Input(spec.observation_shape, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    x = keras.layers.Dense(8, name="features")(x)
    model = keras.Model(inp, keras.layers.Dense(6)(x))
    teachers.save_teacher(model, "pong", "q_values", spec, tmp_path)
    with pytest.raises(teachers.TeacherError, match="unsafe deserialisation.*allow_unsafe"):
        teachers.load_teacher("pong", tmp_path, spec)
    assert teachers.load_teacher("pong", tmp_path, spec, allow_unsafe=True).num_actions == 6


def test_acting_rules():
    rng = np.random.default_rng(0)
    q = np.array([[0.0, 0.1, 0.05]] * 1000)
    assert (teachers.act(q, "q_values", 0.0, rng) == 1).all()
    # Logits: samples follow the softmax.
    logits = np.log(np.array([[0.7, 0.2, 0.1]] * 20000))
    a = teachers.act(logits, "logits", 0.0, rng)
    np.testing.assert_allclose(np.bincount(a, minlength=3) / len(a), [0.7, 0.2, 0.1],
                               atol=0.015)
    # Epsilon: random actions with probability epsilon (uniform over 3 actions).
    a = teachers.act(q, "q_values", 0.3, np.random.default_rng(1))
    assert 0.15 < np.mean(a != 1) < 0.25  # 0.3 * 2/3 = 0.2


def test_acting_rules_from_given_uniforms():
    """The evaluation's rule: (B, 3) uniforms, by hand."""
    q = np.array([[0.0, 0.1, 0.05], [0.3, 0.1, 0.2], [0.0, 0.1, 0.05]])
    u = np.array([[0.9, 0.5, 0.1],    # Greedy: argmax 1.
                  [0.9, 0.04, 0.1],   # Explores: floor(0.1 * 3) = 0.
                  [0.9, 0.04, 0.99]])  # Explores: floor(0.99 * 3) = 2.
    assert teachers.act_from_uniforms(q, "q_values", 0.05, u).tolist() == [1, 0, 2]
    # Logits: the inverse CDF of the softmax (0.7, 0.2, 0.1) at u[:, 0].
    logits = np.log(np.array([[0.7, 0.2, 0.1]] * 4))
    u = np.array([[0.69, 0.5, 0.0], [0.71, 0.5, 0.0], [0.89, 0.5, 0.0], [0.91, 0.5, 0.0]])
    assert teachers.act_from_uniforms(logits, "logits", 0.05, u).tolist() == [0, 1, 1, 2]
    # Over many draws: the softmax, with epsilon of the uniform mixed in.
    rng = np.random.default_rng(0)
    a = teachers.act_from_uniforms(logits[:1].repeat(40000, 0), "logits", 0.3,
                                   rng.random((40000, 3)))
    np.testing.assert_allclose(np.bincount(a, minlength=3) / len(a),
                               0.7 * np.array([0.7, 0.2, 0.1]) + 0.1, atol=0.01)
    with pytest.raises(ValueError, match=r"uniforms must have shape \(4, 3\), found \(4, 2\)"):
        teachers.act_from_uniforms(logits, "logits", 0.05, u[:, :2])
    with pytest.raises(ValueError, match="unknown teacher kind 'x'"):
        teachers.act_from_uniforms(logits, "x", 0.05, u)


def test_teacher_with_a_value_output(tmp_path, spec):
    model = networks.build_teacher_network(6, spec.observation_shape, (4, 4, 4), 8,
                                           with_value=True)
    teachers.save_teacher(model, "pong", "logits", spec, tmp_path)
    t = teachers.load_teacher("pong", tmp_path, spec)
    assert t.card["value"] == "output" and t.value_source == "output"
    assert t.num_actions == 6 and t.feature_dim == 8
    obs = np.random.default_rng(2).integers(0, 255, (3,) + spec.observation_shape, np.uint8)
    logits, value = (np.asarray(v) for v in model(obs))
    labels = t.label(obs)
    np.testing.assert_allclose(labels["outputs"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(labels["values"], value[:, 0], rtol=1e-5, atol=1e-5)
    assert labels["values"].shape == (3,)
    # The policy alone (evaluation, acting): one output, the same weights.
    policy = t.policy_model
    assert len(policy.outputs) == 1
    np.testing.assert_allclose(np.asarray(policy(obs)), logits, rtol=1e-5, atol=1e-5)


def test_teacher_with_other_outputs_refused(tmp_path, spec):
    inp = keras.Input(spec.observation_shape, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.Dense(8, name="features")(x)
    two = keras.Model(inp, [keras.layers.Dense(6)(x), keras.layers.Dense(3)(x)])
    with pytest.raises(teachers.TeacherError,
                       match=r"has 2 outputs of shapes \[\(6,\), \(3,\)\], expected one"):
        teachers.save_teacher(two, "pong", "logits", spec, tmp_path)
    assert not (tmp_path / "pong.keras").exists()
    two.save(tmp_path / "pong.keras")
    teachers.write_card(tmp_path / "pong.json", {
        "game": "pong", "kind": "logits", "preprocessing": spec.to_dict()})
    with pytest.raises(teachers.TeacherError, match="has 2 outputs of shapes"):
        teachers.load_teacher("pong", tmp_path, spec)


def test_teachers_table_is_generated_from_the_cards(tmp_path, spec):
    make_teacher(tmp_path, "pong", "q_values", spec)
    make_teacher(tmp_path, "qbert", "logits", spec)
    for game, ev, training in [
            ("pong", {"mean": 19.2, "ci": [18.6, 19.8], "episodes": 30},
             {"algorithm": "dqn", "num_env_frames": 5_250_000, "config": {"n_step": 3}}),
            ("qbert", {"mean": 3333.3, "episodes": 30},
             {"algorithm": "ppo", "num_env_frames": 10_067_968})]:
        path = tmp_path / f"{game}.json"
        card = json.loads(path.read_text())
        teachers.write_card(path, dict(card, evaluation=ev, training=training))
    (tmp_path / "notes.json").write_text("{}")  # Not a card: skipped.
    table = teachers.cards_table(tmp_path).splitlines()
    assert table[2] == ("| pong | q_values | Double DQN (3-step), Nature network | 5.25 M "
                        "| **19.2 [18.6, 19.8]** (30) | >= 18.5 | >= 20 |")
    assert table[3] == ("| qbert | logits | PPO, Nature network | 10.07 M | **3,333.3** (30) "
                        "| >= 10,000 | >= 15,000 |")
    assert len(table) == 4
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{teachers.TABLE_START}\nold table\n{teachers.TABLE_END}\nrest\n")
    teachers.write_cards_table(tmp_path, readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "| pong | q_values |" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no teachers table to replace"):
        teachers.write_cards_table(tmp_path, readme)
