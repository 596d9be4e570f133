"""Collection: behaviour policies against hand computations, and what a
recording session writes (fake environments, a real tiny teacher)."""

import hashlib
import math

import numpy as np
import pytest
from conftest import use_fake_atari

from multidistill import collect, datasets, teachers

Q = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, -1.0]])  # Row 1: a tie, argmax takes the first.
LOGITS = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])) + 7.0  # Shift: same softmax.


# -- the acting rule's probabilities ------------------------------------------


def test_policy_probabilities_by_hand():
    # mu = (1 - eps) pi + eps / A with eps 0.3, A 3: 0.7 pi + 0.1.
    np.testing.assert_allclose(teachers.policy_probabilities(Q, "q_values", 0.3),
                               [[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])
    np.testing.assert_allclose(teachers.policy_probabilities(LOGITS, "logits", 0.3),
                               [[0.45, 0.31, 0.24], [0.17, 0.17, 0.66]])
    np.testing.assert_allclose(teachers.policy_probabilities(LOGITS, "logits", 0.0),
                               [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(teachers.policy_probabilities(Q, "q_values", 1.0),
                               np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="unknown teacher kind 'probs'"):
        teachers.policy_probabilities(Q, "probs", 0.0)


def test_action_log_probs_by_hand():
    got = teachers.action_log_probs(Q, "q_values", 0.3, np.array([1, 2]))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.log([0.8, 0.1]), rtol=1e-6)
    got = teachers.action_log_probs(LOGITS, "logits", 0.3, np.array([2, 0]))
    np.testing.assert_allclose(got, np.log([0.24, 0.17]), rtol=1e-6)
    # Greedy and epsilon 0: the argmax is certain, the others impossible.
    got = teachers.action_log_probs(Q, "q_values", 0.0, np.array([1, 1]))
    assert got[0] == 0.0 and got[1] == -np.inf


def _frequencies(actions, num_actions=3):
    return np.bincount(actions, minlength=num_actions) / len(actions)


def test_act_draws_from_policy_probabilities():
    """`teachers.act` and `policy_probabilities` describe the same rule."""
    rng = np.random.default_rng(0)
    for outputs, kind in ((Q[:1], "q_values"), (LOGITS[:1], "logits")):
        many = np.repeat(outputs, 20000, axis=0)
        actions = teachers.act(many, kind, 0.3, rng)
        np.testing.assert_allclose(_frequencies(actions),
                                   teachers.policy_probabilities(outputs, kind, 0.3)[0],
                                   atol=0.015)


# -- behaviour policies -------------------------------------------------------------


def test_teacher_behaviour_acts_by_the_teachers_rule():
    b = collect.TeacherBehaviour("logits", 0.3, "t" * 64)
    assert (b.name, b.beta, b.epsilon, b.sha256) == ("teacher", 1.0, 0.3, "t" * 64)
    obs = np.zeros((20000, 1, 1, 1), np.uint8)
    labels = {"outputs": np.repeat(LOGITS[:1], 20000, axis=0)}
    np.testing.assert_allclose(b.probabilities(obs[:2], {"outputs": LOGITS}),
                               teachers.policy_probabilities(LOGITS, "logits", 0.3))
    actions, log_probs = b.act(obs, labels, np.random.default_rng(1))
    assert actions.dtype == np.int32 and log_probs.dtype == np.float32
    np.testing.assert_allclose(_frequencies(actions), [0.45, 0.31, 0.24], atol=0.015)
    np.testing.assert_allclose(log_probs, np.log(np.array([0.45, 0.31, 0.24])[actions]),
                               rtol=1e-6)
    greedy = collect.TeacherBehaviour("q_values", 0.0, "t" * 64)
    actions, log_probs = greedy.act(obs[:2], {"outputs": Q}, np.random.default_rng(1))
    np.testing.assert_array_equal(actions, [1, 0])
    np.testing.assert_array_equal(log_probs, [0.0, 0.0])


def test_random_behaviour_is_uniform():
    b = collect.RandomBehaviour(6)
    assert (b.name, b.beta, b.epsilon, b.sha256) == ("random", 0.0, 1.0, "")
    obs = np.zeros((30000, 1, 1, 1), np.uint8)
    np.testing.assert_allclose(b.probabilities(obs[:4], {}), np.full((4, 6), 1 / 6))
    actions, log_probs = b.act(obs, {}, np.random.default_rng(2))
    np.testing.assert_allclose(_frequencies(actions, 6), np.full(6, 1 / 6), atol=0.01)
    np.testing.assert_allclose(log_probs, -math.log(6), rtol=1e-6)


class _FakeHead:
    """A student head: outputs from the first pixel of each observation."""

    def __init__(self, table):
        self.table = np.asarray(table, np.float32)
        self.calls = 0

    def __call__(self, observations):
        self.calls += 1
        return self.table[observations[:, 0, 0, 0] % len(self.table)]


def test_network_behaviour_predicts_once_per_batch():
    head = _FakeHead(LOGITS)
    b = collect.NetworkBehaviour(head, "logits", 0.3, "s" * 64)
    assert (b.name, b.beta) == ("student", 0.0)
    obs = np.zeros((2, 4, 2, 2), np.uint8)
    obs[1, 0, 0, 0] = 1  # Row 1 gets the table's second row.
    np.testing.assert_allclose(b.probabilities(obs, {}),
                               [[0.45, 0.31, 0.24], [0.17, 0.17, 0.66]])
    actions, log_probs = b.act(obs, {}, np.random.default_rng(0))
    assert head.calls == 1  # `probabilities` and `act` of one batch: one pass.
    np.testing.assert_allclose(log_probs, np.log(b.probabilities(obs, {})[[0, 1], actions]),
                               rtol=1e-6)
    b.act(obs.copy(), {}, np.random.default_rng(0))  # Another batch: another pass.
    assert head.calls == 2
    greedy = collect.NetworkBehaviour(_FakeHead(Q), "q_values", 0.0, "s" * 64)
    actions, log_probs = greedy.act(obs, {"outputs": LOGITS}, np.random.default_rng(0))
    np.testing.assert_array_equal(actions, [1, 0])  # The head's argmax, not the labels'.
    np.testing.assert_array_equal(log_probs, [0.0, 0.0])


def _mixture(beta, teacher_eps=0.2, student_eps=0.2):
    teacher = collect.TeacherBehaviour("q_values", teacher_eps, "t" * 64)
    student = collect.NetworkBehaviour(_FakeHead(LOGITS), "logits", student_eps, "s" * 64)
    return collect.MixtureBehaviour(teacher, student, beta)


def test_mixture_probabilities_and_log_probs_by_hand():
    b = _mixture(0.25)
    assert (b.name, b.beta, b.epsilon) == ("mixture", 0.25, 0.2)
    assert b.sha256 == hashlib.sha256(("t" * 64 + "s" * 64).encode()).hexdigest()
    n = 40000
    obs = np.zeros((n, 4, 1, 1), np.uint8)  # Student outputs: LOGITS[0] everywhere.
    labels = {"outputs": np.repeat(Q[:1], n, axis=0)}  # Teacher: argmax 1.
    mu_t = np.array([0.2 / 3, 0.8 + 0.2 / 3, 0.2 / 3])
    mu_s = 0.8 * np.array([0.5, 0.3, 0.2]) + 0.2 / 3
    mu = 0.25 * mu_t + 0.75 * mu_s
    np.testing.assert_allclose(b.probabilities(obs[:3], {"outputs": labels["outputs"][:3]}),
                               np.tile(mu, (3, 1)), rtol=1e-6)
    actions, log_probs = b.act(obs, labels, np.random.default_rng(3))
    assert actions.dtype == np.int32 and log_probs.dtype == np.float32
    np.testing.assert_allclose(log_probs, np.log(mu[actions]), rtol=1e-5)
    np.testing.assert_allclose(_frequencies(actions), mu, atol=0.01)


def test_mixture_with_beta_one_takes_the_teachers_actions():
    b = _mixture(1.0, teacher_eps=0.0)
    obs = np.zeros((500, 4, 1, 1), np.uint8)
    obs[::2, 0, 0, 0] = 1
    outputs = np.tile(Q[:1], (500, 1))
    outputs[1::3] = [5.0, 0.0, 0.0]  # The teacher prefers action 0 there.
    actions, log_probs = b.act(obs, {"outputs": outputs}, np.random.default_rng(4))
    np.testing.assert_array_equal(actions, outputs.argmax(1))
    np.testing.assert_array_equal(log_probs, 0.0)
    # beta 0: the student's distribution alone (the teacher is never asked).
    b = _mixture(0.0)
    np.testing.assert_allclose(b.probabilities(obs[:2], {"outputs": outputs[:2]}),
                               b.other.probabilities(obs[:2], {}))


def test_make_behaviour():
    teacher = type("T", (), {"kind": "q_values", "sha256": "t" * 64, "num_actions": 6})()
    head = _FakeHead(Q)
    c = collect.CollectConfig(epsilon=0.1, beta=0.3)
    b = collect.make_behaviour(c, teacher)
    assert isinstance(b, collect.TeacherBehaviour)
    assert (b.kind, b.epsilon, b.sha256) == ("q_values", 0.1, "t" * 64)
    b = collect.make_behaviour(collect.CollectConfig(behaviour="random"), teacher)
    assert isinstance(b, collect.RandomBehaviour) and b.num_actions == 6
    b = collect.make_behaviour(collect.CollectConfig(behaviour="student", epsilon=0.1),
                               teacher, head, "s" * 64)
    assert isinstance(b, collect.NetworkBehaviour)
    assert (b.predict, b.kind, b.epsilon, b.sha256) == (head, "q_values", 0.1, "s" * 64)
    b = collect.make_behaviour(collect.CollectConfig(behaviour="mixture", beta=0.3,
                                                     epsilon=0.1), teacher, head, "s" * 64)
    assert isinstance(b, collect.MixtureBehaviour) and b.beta == 0.3
    assert (b.teacher.sha256, b.other.sha256, b.epsilon) == ("t" * 64, "s" * 64, 0.1)
    for name in ("student", "mixture"):
        with pytest.raises(ValueError, match=f"behaviour '{name}' needs a student network"):
            collect.make_behaviour(collect.CollectConfig(behaviour=name), teacher)


@pytest.mark.parametrize("kw, message", [
    (dict(behaviour="expert"), "behaviour must be one of"),
    (dict(beta=1.5), r"beta must be in \[0, 1\], found 1.5"),
    (dict(epsilon=-0.1), r"epsilon must be in \[0, 1\]"),
    (dict(num_agent_steps=0), "num_agent_steps must be >= 1"),
    (dict(num_envs=0), "num_envs must be >= 1"),
])
def test_collect_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        collect.CollectConfig(**kw)


# -- recording sessions ---------------------------------------------------------------


def _student_head(observations):
    """A deterministic 'student' (logits over pong's 6 actions) of the frames."""
    m = observations.reshape(len(observations), observations.shape[1], -1).mean(2)
    return np.concatenate([m, -m[:, :2]], axis=1).astype(np.float32) / 32.0


def test_recording_sessions_mixture_then_teacher(tmp_path, teachers_dir, spec, monkeypatch):
    use_fake_atari(monkeypatch, length=15)
    t = teachers.load_teacher("pong", teachers_dir, spec)
    path = tmp_path / "pong.h5"
    mix_config = collect.CollectConfig(num_agent_steps=40, behaviour="mixture", beta=0.25,
                                       epsilon=0.1, num_envs=2, seed=4)
    mixture = collect.make_behaviour(mix_config, t, _student_head, "s" * 64)
    s1 = collect.build_dataset(t, path, mix_config, spec, behaviour=mixture, progress=False)
    assert s1["num_agent_steps"] >= 40 and s1["num_agent_steps"] % 15 == 0
    # A top-up, the teacher acting (the default behaviour).
    teacher_config = collect.CollectConfig(num_agent_steps=s1["num_agent_steps"] + 20,
                                           epsilon=0.1, num_envs=2, seed=4)
    s2 = collect.build_dataset(t, path, teacher_config, spec, progress=False)
    n1, n2 = s1["num_agent_steps"], s2["num_agent_steps"]
    assert n2 >= n1 + 20 and s2["added_agent_steps"] == n2 - n1
    with datasets.Dataset(path) as ds:
        assert ds.schema_version == 2 and ds.num_agent_steps == n2
        sessions = ds.sessions
        assert sessions == [
            datasets.Session(seed=collect._session_seed(4, 0), behaviour="mixture", beta=0.25,
                             epsilon=0.1, behaviour_sha256=mixture.sha256,
                             labeller_sha256=t.sha256, step_start=0, step_stop=n1),
            datasets.Session(seed=collect._session_seed(4, 1), behaviour="teacher", beta=1.0,
                             epsilon=0.1, behaviour_sha256=t.sha256, labeller_sha256=t.sha256,
                             step_start=n1, step_stop=n2),
        ]
        assert sessions[0].seed != sessions[1].seed
        assert mixture.sha256 == hashlib.sha256((t.sha256 + "s" * 64).encode()).hexdigest()
        # The sessions tile the file, on episode boundaries.
        assert sessions[0].step_start == 0 and sessions[-1].step_stop == ds.num_agent_steps
        assert all(a.step_stop == b.step_start for a, b in zip(sessions, sessions[1:]))
        assert {s.step_start for s in sessions} <= set(ds.episode_starts.tolist())
        blk = ds.read_block(0, n2)
    # The teacher labelled every step (the stacks rebuilt from the file).
    labels = t.label(blk["observations"])
    np.testing.assert_allclose(blk["teacher_outputs"], labels["outputs"], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(blk["teacher_values"], blk["teacher_outputs"].max(1))
    # The teacher session's log-probabilities are its acting rule's.
    outputs, actions = blk["teacher_outputs"], blk["actions"]
    np.testing.assert_allclose(
        blk["behaviour_log_probs"][n1:],
        teachers.action_log_probs(outputs[n1:], "q_values", 0.1, actions[n1:]), rtol=1e-5)
    # The mixture session's: log(beta mu_T + (1 - beta) mu_S), by hand.
    mu_t = teachers.policy_probabilities(outputs[:n1], "q_values", 0.1)
    mu_s = teachers.policy_probabilities(_student_head(blk["observations"][:n1]), "q_values",
                                         0.1)
    mu = 0.25 * mu_t + 0.75 * mu_s
    np.testing.assert_allclose(blk["behaviour_log_probs"][:n1],
                               np.log(mu[np.arange(n1), actions[:n1]]), rtol=1e-5)
    # Rewards are the fake game's (the action taken), so they line up with actions.
    np.testing.assert_array_equal(blk["rewards"], actions)


def test_recording_with_a_student_behaviour(tmp_path, teachers_dir, spec, monkeypatch):
    use_fake_atari(monkeypatch, length=12)
    t = teachers.load_teacher("pong", teachers_dir, spec)
    config = collect.CollectConfig(num_agent_steps=30, behaviour="student", epsilon=0.2,
                                   num_envs=2, seed=1)
    student = collect.make_behaviour(config, t, _student_head, "s" * 64)
    collect.build_dataset(t, tmp_path / "pong.h5", config, spec, behaviour=student,
                          progress=False)
    with datasets.Dataset(tmp_path / "pong.h5") as ds:
        (s,) = ds.sessions
        assert (s.behaviour, s.beta, s.epsilon, s.behaviour_sha256, s.labeller_sha256) == (
            "student", 0.0, 0.2, "s" * 64, t.sha256)
        assert (s.step_start, s.step_stop) == (0, ds.num_agent_steps)
        blk = ds.read_block(0, ds.num_agent_steps)
    # The student acted (argmax of its head, as its q_values teacher would),
    # the teacher labelled.
    head = _student_head(blk["observations"])
    np.testing.assert_allclose(
        blk["behaviour_log_probs"],
        teachers.action_log_probs(head, "q_values", 0.2, blk["actions"]), rtol=1e-5)
    assert np.mean(blk["actions"] == head.argmax(1)) > 0.7
    np.testing.assert_allclose(blk["teacher_outputs"], t.label(blk["observations"])["outputs"],
                               rtol=1e-4, atol=1e-5)


def test_recording_with_a_random_behaviour(tmp_path, teachers_dir, spec, monkeypatch):
    use_fake_atari(monkeypatch, length=10)
    t = teachers.load_teacher("freeway", teachers_dir, spec)
    config = collect.CollectConfig(num_agent_steps=30, behaviour="random", num_envs=3)
    collect.build_dataset(t, tmp_path / "freeway.h5", config, spec, progress=False)
    with datasets.Dataset(tmp_path / "freeway.h5") as ds:
        (s,) = ds.sessions
        assert (s.behaviour, s.beta, s.epsilon, s.behaviour_sha256, s.labeller_sha256) == (
            "random", 0.0, 1.0, "", t.sha256)
        blk = ds.read_block(0, ds.num_agent_steps)
        np.testing.assert_allclose(blk["behaviour_log_probs"], -math.log(3), rtol=1e-6)
        # A logits teacher without a value output records no value.
        assert ds.teacher_value_source == "none" and np.isnan(blk["teacher_values"]).all()


def test_recording_refuses_a_file_labelled_by_another_teacher(tmp_path, teachers_dir, spec,
                                                              monkeypatch):
    from conftest import make_teacher

    use_fake_atari(monkeypatch, length=10)
    t = teachers.load_teacher("pong", teachers_dir, spec)
    path = tmp_path / "pong.h5"
    collect.build_dataset(t, path, collect.CollectConfig(num_agent_steps=10, num_envs=1),
                          spec, progress=False)
    make_teacher(tmp_path / "other", "pong", "q_values", spec, seed=42)
    other = teachers.load_teacher("pong", tmp_path / "other", spec)
    with pytest.raises(datasets.DatasetError, match="labelled by another teacher"):
        collect.build_dataset(other, path, collect.CollectConfig(num_agent_steps=30,
                                                                 num_envs=1),
                              spec, progress=False)
    with pytest.raises(datasets.DatasetError, match="labelled by another teacher"):
        collect.check_existing({"pong": other}, tmp_path, spec, rebuild=False)
    collect.check_existing({"pong": other}, tmp_path, spec, rebuild=True)
    # Rebuilding replaces the file with one session by the new teacher.
    collect.build_dataset(other, path, collect.CollectConfig(num_agent_steps=10, num_envs=1),
                          spec, rebuild=True, progress=False)
    with datasets.Dataset(path) as ds:
        assert ds.teacher_sha256 == other.sha256
        assert [s.labeller_sha256 for s in ds.sessions] == [other.sha256]
