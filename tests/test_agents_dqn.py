"""Double DQN (`agents.dqn`): memory contents, learning, checkpoints, exploration."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from test_agents_loop import FakeAtari

from multidistill import checkpoints, environments, teachers
from multidistill.agents import dqn, loop, runner

SPEC = environments.Preprocessing()
TINY = dict(conv_filters=(4, 8, 8), fc_units=16)


def _tiny_dqn(seed=0, **overrides):
    cfg = dict(num_envs=2, rollout_length=16, replay_capacity=4_000, learning_starts=40,
               target_update_period=5, epsilon_decay_steps=100, **TINY)
    cfg.update(overrides)
    return dqn.DQN("pong", 6, SPEC, dqn.DQNConfig(**cfg), total_agent_steps=10_000, seed=seed)


def _recording(agent):
    """Keeps every StepBatch the agent observes in `agent.seen`."""
    agent.seen = []
    observe = agent.observe

    def record(step):
        agent.seen.append(step)
        return observe(step)

    agent.observe = record
    return agent


def test_memory_holds_what_the_environments_showed():
    agent = _recording(_tiny_dqn(learning_starts=10**9))
    records = loop.iterations(agent, FakeAtari(lengths=(5, 7)), seed=0, frame_skip=4)
    r = next(records)
    records.close()
    assert r.agent_steps == agent.agent_steps == 32 and np.isnan(r.loss)
    assert agent.gradient_steps == 0 and agent.memory.t == 16
    mem, seen = agent.memory, agent.seen
    for t in range(16):
        for s in range(2):
            np.testing.assert_array_equal(mem.stacks(np.array([t]), np.array([s]))[0],
                                          seen[t].observations[s])
    # Env 0 plays 5 steps and a reset step, loses a life on its step 2 and
    # scores 1 on it; env 1's reward 2 is clipped to 1.
    np.testing.assert_array_equal(mem.valid[:7, 0], [1, 1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(mem.cut[:7, 0], [0, 0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(mem.end[:7, 0], [0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(mem.rewards[:6, 1], [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(mem.actions[:16], np.stack([s.actions for s in seen]))


def test_learning_checkpoint_resume_and_teacher_export(tmp_path):
    keras.utils.set_random_seed(0)
    agent = _tiny_dqn()
    records = loop.iterations(agent, FakeAtari(lengths=(30, 41)), seed=0, frame_skip=4)
    got = [next(records) for _ in range(3)]
    records.close()
    assert [r.agent_steps for r in got] == [32, 64, 96]
    # Learning starts with the vector step that brings the memory to 40
    # agent steps (the 20th of 48): from there, one gradient step per 4
    # agent steps, 29 vector steps * 2 / 4 = 14.5, so 14.
    assert np.isnan(got[0].loss) and np.isfinite(got[2].loss)
    assert agent.gradient_steps == sum(r.num_gradient_steps for r in got) == 14
    assert agent.state()["update_credit"] == 0.5
    assert 0.0 < agent.epsilon() < 1.0
    # Each record carries epsilon at its end: 1 during the warm-up (40 agent
    # steps), then 1 - 0.95 * (steps - 40) / 100 at 64 and 96 agent steps.
    assert [r.metrics for r in got] == [
        {"charts/epsilon": 1.0}, {"charts/epsilon": pytest.approx(1 - 0.95 * 24 / 100)},
        {"charts/epsilon": pytest.approx(1 - 0.95 * 56 / 100)}]
    # The target network moves only when synced.
    online, target = agent.learner.net, agent.learner.target_net
    steps = agent.gradient_steps
    agent.gradient_steps = 1  # Not a sync step.
    before = [np.asarray(w.value).copy() for w in target.weights]
    agent.learn_step()
    agent.gradient_steps = steps + 1
    for a, w in zip(before, target.weights):
        np.testing.assert_array_equal(a, np.asarray(w.value))
    assert any(not np.array_equal(a, np.asarray(w.value))
               for a, w in zip(before, online.weights))
    agent.learner.sync_target()
    for a, w in zip(online.weights, target.weights):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(w.value))
    state = agent.state()
    ckpt = tmp_path / "ck.npz"
    checkpoints.save(ckpt, agent.learner, agent.optimizer, {"algo_state": state})
    weights = [np.asarray(w.value).copy() for w in agent.learner.weights]
    assert len(weights) == 2 * len(agent.learner.target_net.weights)  # Online and target.
    run = runner.Runner(agent, "dqn", "pong", SPEC, runner.RunConfig(), tmp_path, tmp_path)
    teachers.save_teacher(agent.teacher_model, "pong", "q_values", SPEC, tmp_path,
                          training=run.training_card())
    obs = np.stack([FakeAtari().observation(i, 0, 5) for i in range(2)])
    q = np.asarray(agent.net.predict_on_batch(obs))

    agent2 = _tiny_dqn(seed=1)
    saved = checkpoints.restore(ckpt, agent2.learner, agent2.optimizer)
    agent2.load_state(saved["algo_state"])
    assert agent2.state() == state
    for a, b in zip(weights, agent2.learner.weights):
        np.testing.assert_array_equal(a, np.asarray(b.value))
    assert int(np.asarray(agent2.optimizer.iterations.value)) == state["gradient_steps"]
    assert float(np.asarray(agent2.optimizer.learning_rate)) == pytest.approx(1e-4)
    records = loop.iterations(agent2, FakeAtari(lengths=(30, 41)), seed=0, frame_skip=4)
    r = next(records)
    assert r.agent_steps == state["agent_steps"] + 32
    # The memory is refilled before learning resumes.
    assert agent2.gradient_steps == state["gradient_steps"] and np.isnan(r.loss)
    next(records)
    records.close()
    assert agent2.gradient_steps > state["gradient_steps"]

    teacher = teachers.load_teacher("pong", tmp_path, SPEC)
    assert teacher.kind == "q_values" and teacher.num_actions == 6
    assert teacher.card["value"] == "max_q" and len(teacher.model.outputs) == 1
    assert teacher.card["training"]["algo_state"] == state
    assert teacher.card["training"]["num_env_frames"] == state["agent_steps"] * 4
    labels = teacher.label(obs)
    np.testing.assert_allclose(labels["outputs"], q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(labels["values"], q.max(axis=1), rtol=1e-5, atol=1e-6)


def test_a_run_started_from_a_teacher_card_keeps_the_decayed_epsilon(tmp_path):
    exported = _tiny_dqn()
    exported.agent_steps, exported.gradient_steps = 500, 77  # Past the decay (40 + 100).
    for w in exported.net.weights:
        w.assign(np.full(w.shape, 0.01, np.float32))
    run = runner.Runner(exported, "dqn", "pong", SPEC, runner.RunConfig(), tmp_path, tmp_path)
    teachers.save_teacher(exported.teacher_model, "pong", "q_values", SPEC, tmp_path,
                          evaluation={"mean": 3.5}, training=run.training_card())

    agent = _tiny_dqn(seed=1)
    assert agent.epsilon() == 1.0
    run = runner.Runner(agent, "dqn", "pong", SPEC, runner.RunConfig(), tmp_path,
                        tmp_path / "ck")
    copied = run.start_from_teacher(teachers.load_teacher("pong", tmp_path, SPEC))
    assert copied == 5  # conv0-2, features, outputs.
    assert agent.state() == {"agent_steps": 500, "gradient_steps": 77, "update_credit": 0.0,
                             "epsilon_final": True}
    assert agent.epsilon() == pytest.approx(agent.config.epsilon_end) == 0.05
    assert run.run["best_eval"] == 3.5 and run.run["last_eval_frames"] == 2000
    for w, t in zip(agent.net.weights, agent.learner.target_net.weights):
        np.testing.assert_allclose(np.asarray(w.value), 0.01)
        np.testing.assert_allclose(np.asarray(t.value), 0.01)  # Target synced.

    # A card written before the counters were recorded: its frames give them.
    card_path = teachers.teacher_paths("pong", tmp_path)[1]
    card = teachers.read_card(card_path, "pong", tmp_path)
    del card["training"]["algo_state"]
    card["training"]["num_env_frames"] = 360
    teachers.write_card(card_path, card)
    agent = _tiny_dqn(teacher_start_epsilon="schedule")
    runner.Runner(agent, "dqn", "pong", SPEC, runner.RunConfig(), tmp_path, tmp_path / "ck2"
                  ).start_from_teacher(teachers.load_teacher("pong", tmp_path, SPEC))
    assert agent.agent_steps == 90 and agent.gradient_steps == 0
    assert agent.epsilon() == pytest.approx(1.0 + (90 - 40) / 100 * (0.05 - 1.0))  # 0.525
    # By default a teacher explores at the final epsilon from its first step,
    # warm-up included, and a checkpoint keeps it so.
    card["training"]["num_env_frames"] = 0
    teachers.write_card(card_path, card)
    agent = _tiny_dqn()
    runner.Runner(agent, "dqn", "pong", SPEC, runner.RunConfig(), tmp_path, tmp_path / "ck3"
                  ).start_from_teacher(teachers.load_teacher("pong", tmp_path, SPEC))
    assert agent.agent_steps == 0 and agent.epsilon() == pytest.approx(0.05)
    resumed = _tiny_dqn()
    resumed.load_state(json.loads(json.dumps(agent.state())))
    assert resumed.epsilon() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="teacher_start_epsilon must be 'final' or "
                                         "'schedule', found 'x'"):
        dqn.DQNConfig(teacher_start_epsilon="x")


# The learner's variables as the flat `multidistill/dqn.py` laid them out
# (online network, then target network): a checkpoint of that layout must
# still restore (checkpoints are positional).
OLD_LAYOUT = [("conv0/kernel", (8, 8, 4, 4)), ("conv0/bias", (4,)),
              ("conv1/kernel", (4, 4, 4, 8)), ("conv1/bias", (8,)),
              ("conv2/kernel", (3, 3, 8, 8)), ("conv2/bias", (8,)),
              ("features/kernel", (392, 16)), ("features/bias", (16,)),
              ("outputs/kernel", (16, 6)), ("outputs/bias", (6,))]


def test_checkpoint_layout_is_that_of_the_flat_module():
    agent = _tiny_dqn()
    assert [(w.path, tuple(w.shape)) for w in agent.learner.weights] == OLD_LAYOUT * 2
    # Adam: iterations, learning rate, then momentum and velocity per variable.
    names = [v.path for v in agent.optimizer.variables]
    assert len(names) == 2 + 2 * 10
    assert names[:4] == ["adam/iteration", "adam/learning_rate", "adam/conv0_kernel_momentum",
                         "adam/conv0_kernel_velocity"]


def test_a_resume_with_another_learning_rate_trains_at_it(tmp_path):
    """The checkpoint's Adam variables include the step size it was trained
    with; the resumed run's config replaces it and keeps the moments."""
    keras.utils.set_random_seed(0)
    agent = _tiny_dqn(learning_rate=1e-4)
    records = loop.iterations(agent, FakeAtari(lengths=(30, 41)), seed=0, frame_skip=4)
    for _ in range(3):
        next(records)
    records.close()
    ckpt = tmp_path / "ck.npz"
    checkpoints.save(ckpt, agent.learner, agent.optimizer, {"algo_state": agent.state()})
    moments = [np.asarray(v).copy() for v in agent.optimizer.variables[2:]]

    def resume(learning_rate):
        resumed = _tiny_dqn(seed=1, learning_rate=learning_rate)
        saved = checkpoints.restore(ckpt, resumed.learner, resumed.optimizer)
        assert float(np.asarray(resumed.optimizer.learning_rate)) == pytest.approx(1e-4)
        resumed.load_state(saved["algo_state"])
        for a, b in zip(moments, resumed.optimizer.variables[2:]):
            np.testing.assert_array_equal(a, np.asarray(b))
        resumed.memory = agent.memory  # The same minibatch for both (same seed).
        before = [np.asarray(w.value).copy() for w in resumed.net.weights]
        resumed.learn_step()
        return (float(np.asarray(resumed.optimizer.learning_rate)),
                np.concatenate([(np.asarray(w.value) - b).ravel()
                                for w, b in zip(resumed.net.weights, before)]))

    same_rate, same_step = resume(1e-4)
    new_rate, new_step = resume(2.5e-5)
    assert same_rate == pytest.approx(1e-4) and new_rate == pytest.approx(2.5e-5)
    # Same gradient and moments: Adam's step scales with the step size alone.
    assert np.abs(same_step).max() > 0
    # (Float32 weights of about 0.1 resolve a difference to about 1e-8.)
    np.testing.assert_allclose(new_step, same_step / 4, rtol=1e-3, atol=5e-8)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"DQNConfig.batch_size must be >= 1, found 0"):
        dqn.DQNConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"ez_mu must be 0 \(plain epsilon-greedy\) or > 1, "
                                         r"found 0.5"):
        dqn.DQNConfig(ez_mu=0.5)
    with pytest.raises(ValueError, match=r"DQNConfig.epsilon_end must be in \[0, 1\], found -0.1"):
        dqn.DQNConfig(epsilon_end=-0.1)
    with pytest.raises(ValueError, match=r"DQNConfig.learning_rate must be > 0, found 0.0"):
        dqn.DQNConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match=r"replay_capacity=14 is too small for 2 environments"):
        dqn.DQNConfig(replay_capacity=14, num_envs=2)


def _run_lengths(seq):
    lengths, k = [], 1
    for a, b in zip(seq[:-1], seq[1:]):
        if a == b:
            k += 1
        else:
            lengths.append(k)
            k = 1
    return lengths + [k]


def test_ez_greedy_holds_an_exploratory_action_then_turns_greedy():
    agent = _tiny_dqn(ez_mu=2.0, epsilon_end=0.0)
    obs = np.zeros((2,) + SPEC.observation_shape, np.uint8)
    greedy = int(np.argmax(np.asarray(agent.net.predict_on_batch(obs))[0]))
    held = (greedy + 1) % 6
    agent.agent_steps = 10**6  # epsilon 0: no new exploratory run starts.
    assert agent.epsilon() == 0.0
    agent._explore_left[:] = [3, 0]
    agent._explore_action[:] = [held, held]
    got = [agent.policy(obs)[0].tolist() for _ in range(5)]
    assert got == [[held, greedy]] * 3 + [[greedy, greedy]] * 2


@pytest.mark.parametrize("mu, lo, hi", [(0.0, 1.0, 1.4), (2.0, 2.5, 6.0)])
def test_exploratory_runs_last_as_the_zeta_law_says(mu, lo, hi):
    """epsilon 1: plain runs of equal actions average 1/(1 - 1/6) = 1.2 steps;
    zeta(2) durations capped at 100 average H_100 / zeta(2) = 3.2 (a bit more
    where consecutive runs draw the same action)."""
    agent = _tiny_dqn(ez_mu=mu)
    assert agent.epsilon() == 1.0  # Warm-up.
    obs = np.zeros((2,) + SPEC.observation_shape, np.uint8)
    seq = np.array([agent.policy(obs)[0] for _ in range(3000)])
    mean = np.mean(_run_lengths(seq[:, 0].tolist()))
    assert lo < mean < hi, mean


@pytest.mark.slow
def test_td_loss_falls_on_a_fixed_batch_from_pong():
    keras.utils.set_random_seed(0)
    agent = _tiny_dqn(rollout_length=200, learning_starts=10**9, learning_rate=2e-3)
    envs = environments.make_vector_envs("pong", SPEC, 2, num_groups=1)
    try:
        records = loop.iterations(agent, envs, seed=0, frame_skip=4)
        r = next(records)  # Random play fills the memory; no learning.
        records.close()
    finally:
        environments.close_all(envs)
    assert np.isnan(r.loss) and agent.gradient_steps == 0
    # A batch sampled from the memory, with at least two scoring
    # transitions (else a constant Q fits it and there is little to learn).
    rng = np.random.default_rng(0)
    for _ in range(100):
        x, y = agent.memory.sample(32, rng)
        if np.count_nonzero(y["returns"]) >= 2:
            break
    assert np.count_nonzero(y["returns"]) >= 2
    assert x["obs"].shape == x["next_obs"].shape == (32, 4, 84, 84)
    assert x["obs"].dtype == np.uint8
    losses = [float(np.asarray(agent.learner.train_on_batch(x, y)).reshape(-1)[0])
              for _ in range(250)]
    assert np.all(np.isfinite(losses))
    # Tiny networks first fit the mean target, then (after 100-200 steps,
    # depending on the initial weights) tell the scoring transitions apart.
    assert np.mean(losses[-5:]) < 0.6 * losses[0], (losses[0], losses[-5:])
