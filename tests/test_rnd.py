"""RND for PPO (`agents.rnd`), its wiring into PPO, the rooms probe (`agents.rooms`), the flags.

Tiny networks and fake environments (test_agents_loop's FakeAtari) for
everything that trains; real emulators only where the rooms probe is
checked against ALE's own vector environment (no network trains there).
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from conftest import run_cli_cases
from test_agents_loop import FakeAtari

from multidistill import acting, checkpoints, environments, teachers
from multidistill.agents import loop, ppo, rnd, rooms, runner

SPEC = environments.Preprocessing()
TINY_RND = dict(conv_filters=(2, 2, 2), feature_dim=4, predictor_units=8)


def _agent(seed=0, num_envs=2, warmup=16, total_agent_steps=1_000, **overrides):
    rnd_kw = dict(obs_norm_init_agent_steps=warmup, **TINY_RND)
    rnd_kw.update(overrides.pop("rnd", {}))
    cfg = dict(num_envs=num_envs, rollout_length=4, num_epochs=2, num_minibatches=2,
               lr_horizon_frames=0, conv_filters=(4, 8, 8), fc_units=16,
               rnd=rnd.RNDConfig(**rnd_kw))
    cfg.update(overrides)
    return ppo.PPO("pong", 6, SPEC, ppo.PPOConfig(**cfg), total_agent_steps=total_agent_steps,
                   seed=seed)


# -- the bonus on a tiny fixed network ------------------------------------------


def _conv(x, k, b, stride):
    """Valid 2-D convolution of one channel by hand: x (H, W), k (h, w)."""
    h, w = k.shape
    out_h, out_w = (x.shape[0] - h) // stride + 1, (x.shape[1] - w) // stride + 1
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[i, j] = np.sum(x[i * stride:i * stride + h, j * stride:j * stride + w] * k) + b
    return out


def test_bonus_on_a_tiny_fixed_network_matches_a_hand_computation():
    """36 x 36 frames, one filter per convolution (8/4, 4/2, 3/1: 8 x 8, 3 x 3,
    1 x 1), 2 features: every weight set, the bonus computed by hand."""
    config = rnd.RNDConfig(conv_filters=(1, 1, 1), feature_dim=2, predictor_units=3)
    model = rnd.RND(config, (36, 36), num_envs=1)
    rng = np.random.default_rng(0)
    weights = {}
    for net in (model.target, model.predictor):
        for layer in net.layers:
            if layer.get_weights():
                new = [rng.normal(scale=0.3, size=w.shape).astype(np.float32)
                       for w in layer.get_weights()]
                layer.set_weights(new)
                weights[layer.name] = new
    mean = rng.uniform(50, 150, (36, 36)).astype(np.float32)
    var = rng.uniform(100, 2000, (36, 36)).astype(np.float32)
    model.frame_mean.assign(mean)
    model.frame_var.assign(var)
    frames = rng.integers(0, 256, (3, 36, 36), dtype=np.uint8)

    def leaky(x):
        return np.where(x > 0, x, 0.2 * x)

    def features(x, prefix, hidden):
        for i, stride in enumerate((4, 2, 1)):
            k, b = weights[f"{prefix}_conv{i}"]
            x = leaky(_conv(x, k[:, :, 0, 0], b[0], stride))
        x = x.reshape(-1)  # 1 x 1 x 1.
        for name in hidden:
            k, b = weights[name]
            x = np.maximum(x @ k + b, 0.0)
        k, b = weights[f"{prefix}_features"]
        return x @ k + b

    want = []
    for f in frames:
        x = np.clip((f - mean) / np.sqrt(var + 1e-8), -5, 5)
        t = features(x, "target", [])
        p = features(x, "predictor", ["predictor_hidden0", "predictor_hidden1"])
        want.append(np.mean((p - t) ** 2))
    np.testing.assert_allclose(model.errors(frames), want, rtol=1e-4)
    # Out-of-range pixels are clipped at 5 standard deviations.
    x = model.normalise(np.full((1, 36, 36), 255, np.uint8))
    assert float(keras.ops.max(x)) <= 5.0 + 1e-6


def test_target_is_fixed_and_predictor_trains():
    agent = _agent()
    names = {v.path for v in agent.learner.trainable_variables}
    assert not any("target" in n for n in names)
    assert any("predictor" in n for n in names)
    assert "value_intrinsic/kernel" in names
    target_before = [w.copy() for w in agent.rnd.target.get_weights()]
    predictor_before = [w.copy() for w in agent.rnd.predictor.get_weights()]
    records = loop.iterations(agent, FakeAtari(lengths=(5, 7)), seed=0, frame_skip=4)
    for _ in range(4):  # Two warm-up iterations, then two updates.
        next(records)
    records.close()
    for a, b in zip(target_before, agent.rnd.target.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b)
               for a, b in zip(predictor_before, agent.rnd.predictor.get_weights()))


def test_predictor_loss_and_combined_advantage_by_hand():
    errors = keras.ops.convert_to_tensor(np.array([1.0, 2.0, 4.0, 8.0], np.float32))
    mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    got = float(keras.ops.convert_to_numpy(rnd.predictor_loss(errors, mask)))
    assert got == pytest.approx((1.0 + 4.0) / 2)
    assert float(keras.ops.convert_to_numpy(rnd.predictor_loss(errors, np.zeros(4)))) == 0.0
    err = rnd.prediction_error(keras.ops.convert_to_tensor([[1.0, 3.0]]),
                               keras.ops.convert_to_tensor([[0.0, 1.0]]))
    assert float(keras.ops.convert_to_numpy(err)[0]) == pytest.approx((1 + 4) / 2)
    config = rnd.RNDConfig()
    assert (config.extrinsic_coef, config.intrinsic_coef) == (2.0, 1.0)
    np.testing.assert_allclose(rnd.combined_advantages([1.0, -2.0], [0.5, 3.0], config),
                               [2.5, -1.0])
    np.testing.assert_allclose(
        rnd.combined_advantages([1.0], [0.5], rnd.RNDConfig(intrinsic_coef=4.0)), [4.0])


# -- the running statistics -------------------------------------------------------


def test_running_moments_match_numpy_over_every_batch():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, (n, 5, 4)) for n in (1, 7, 30, 2)]
    mean, var, count = np.zeros((5, 4)), np.ones((5, 4)), 0.0
    for k, batch in enumerate(batches):
        mean, var, count = rnd.update_moments(mean, var, count, batch)
        seen = np.concatenate(batches[:k + 1])
        np.testing.assert_allclose(mean, seen.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(var, seen.var(axis=0), rtol=1e-12)
        assert count == len(seen)
    # An empty batch changes nothing.
    assert rnd.update_moments(mean, var, count, np.zeros((0, 5, 4)))[2] == count

    # The model's pixel statistics (float32 variables) follow the same rule.
    model = rnd.RND(rnd.RNDConfig(**TINY_RND), (36, 36), num_envs=2)
    frames = [rng.integers(0, 256, (n, 36, 36), dtype=np.uint8) for n in (8, 3, 16)]
    for f in frames:
        model.observe_frames(f)
    seen = np.concatenate(frames).astype(np.float64)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.frame_mean), seen.mean(0),
                               rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.frame_var), seen.var(0),
                               rtol=1e-4)
    assert model.frames_seen == 27


def test_intrinsic_rewards_are_divided_by_the_std_of_discounted_intrinsic_returns():
    g = 0.5
    model = rnd.RND(rnd.RNDConfig(intrinsic_gamma=g, **TINY_RND), (36, 36), num_envs=2)
    raw = np.array([[1.0, 2.0], [0.0, 4.0], [3.0, 1.0]])
    valid = np.array([[True, True], [False, True], [True, True]])
    # Env 0: R = 1, (reset step: unchanged) 1, 0.5 * 1 + 3 = 3.5; env 1: 2, 5, 3.5.
    returns = [1.0, 3.5, 2.0, 5.0, 3.5]
    got = model.normalise_rewards(raw, valid)
    np.testing.assert_allclose(got, raw / np.std(returns), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.return_state), [3.5, 3.5])
    # Never reset: the next rollout goes on from 3.5, and its statistics
    # join the first rollout's.
    got = model.normalise_rewards(np.array([[2.0, 0.0]]), np.array([[True, True]]))
    returns += [0.5 * 3.5 + 2.0, 0.5 * 3.5]
    np.testing.assert_allclose(got, np.array([[2.0, 0.0]]) / np.std(returns), rtol=1e-5)


# -- RND in PPO -------------------------------------------------------------------


def test_intrinsic_gae_runs_through_episode_ends_the_extrinsic_is_cut():
    """One environment, 4 steps: the episode ends at step 1 (dones), step 2
    is the reset step, step 3 the next episode's first; the closing step's
    values are 8 (extrinsic) and 4 (intrinsic)."""
    agent = _agent(num_envs=1, gae_lambda=0.5,
                   rnd=dict(extrinsic_gamma=0.5, intrinsic_gamma=0.25))
    b = agent._buffers
    b["observations"][:] = np.arange(4)[:, None, None, None, None]  # Step t's frames hold t.
    b["rewards"][:, 0] = [1.0, 2.0, 0.0, 1.0]
    b["values"][:, 0] = [4.0, 2.0, 9.0, 6.0]
    b["values_intrinsic"][:, 0] = [1.0, 3.0, 5.0, 2.0]
    b["dones"][:, 0] = [0.0, 1.0, 0.0, 0.0]
    b["valid"][:, 0] = [True, True, False, True]
    seen = []

    def errors(frames):  # The bonus of a next frame holding k is bonus[k].
        seen.append(frames[:, 0, 0].copy())
        return np.array([0.0, 0.5, 1.0, 7.0, 2.0], np.float32)[frames[:, 0, 0]]

    agent.rnd.errors = errors
    agent.rnd.normalise_rewards = lambda raw, valid: np.asarray(raw, np.float32)
    closing = acting.StepBatch(
        observations=np.full((1, 4, 84, 84), 4, np.uint8), actions=np.zeros(1, np.int32),
        extras={"value": np.array([8.0]), "value_intrinsic": np.array([4.0])},
        rewards=np.zeros(1, np.float32), terminated=np.zeros(1, bool),
        truncated=np.zeros(1, bool), valid=np.ones(1, bool),
        episode_offsets=np.zeros(1, int), lives=np.zeros(1, int), life_lost=np.zeros(1, bool))
    adv, targets, next_frames = agent._rnd_advantages(np.array([8.0]), closing)
    # The bonus of step t is that of the next observation's frame: t + 1.
    np.testing.assert_array_equal(seen[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(next_frames[:, 0, 0], [1, 2, 3, 4])
    # Extrinsic, gamma 0.5, lambda 0.5, cut at the episode's end (step 1).
    e3 = 1.0 + 0.5 * 8.0 - 6.0  # -1
    e1 = 2.0 - 2.0  # 0: no bootstrap past the end (uncut it would be 2 + 0.5 * 6 - 2 = 3).
    e0 = (1.0 + 0.5 * 2.0 - 4.0) + 0.25 * e1  # -2
    # Intrinsic, gamma 0.25, lambda 0.5, bonuses 0.5, 1, (reset step) -, 2: not cut; the
    # reset step is skipped, so step 1 bootstraps from step 3's value and trace.
    i3 = 2.0 + 0.25 * 4.0 - 2.0  # 1
    i1 = (1.0 + 0.25 * 2.0 - 3.0) + 0.125 * i3  # -1.375
    i0 = (0.5 + 0.25 * 3.0 - 1.0) + 0.125 * i1  # 0.078125
    np.testing.assert_allclose(adv[:, 0], [2 * e0 + i0, 2 * e1 + i1, 0.0, 2 * e3 + i3])
    # Targets of the valid steps (0, 1, 3): advantage + value.
    np.testing.assert_allclose(targets["returns"], [e0 + 4.0, e1 + 2.0, e3 + 6.0])
    np.testing.assert_allclose(targets["returns_intrinsic"], [i0 + 1.0, i1 + 3.0, i3 + 2.0])
    np.testing.assert_allclose(targets["old_values_intrinsic"], [1.0, 3.0, 2.0])


def test_warmup_plays_at_random_and_learns_nothing_then_ppo_starts():
    keras.utils.set_random_seed(0)
    agent = _agent(warmup=16)  # 2 environments: 8 vector steps.
    seen = []
    observe = agent.observe

    def record(step):
        seen.append(step)
        return observe(step)

    agent.observe = record
    records = loop.iterations(agent, FakeAtari(lengths=(5, 7)), seed=0, frame_skip=4)
    r1, r2, r3 = next(records), next(records), next(records)
    records.close()
    # Two warm-up iterations of rollout_length (4) vector steps, no gradient step.
    assert (r1.agent_steps, r1.num_gradient_steps, math.isnan(r1.loss)) == (8, 0, True)
    assert (r2.agent_steps, r2.num_gradient_steps) == (16, 0)
    assert r2.metrics == {"rnd/warmup_frames_seen": 16.0}
    assert agent.rnd.frames_seen >= 16 and not agent.rnd.warming_up
    # Uniform random actions during the warm-up (the step after it too: acting
    # runs one step ahead), and their true probability 1/6.
    for s in seen[:9]:
        np.testing.assert_allclose(s.extras["log_prob"], np.log(1 / 6), rtol=1e-6)
    assert not np.allclose(seen[10].extras["log_prob"], np.log(1 / 6))
    # Then PPO with RND: 2 epochs x 2 minibatches, the bonus and the rate logged.
    assert r3.num_gradient_steps == 4 and np.isfinite(r3.loss)
    assert set(r3.metrics) == {"rnd/intrinsic_reward", "rnd/intrinsic_reward_raw",
                               "rnd/intrinsic_return_std", "rnd/value_intrinsic",
                               "charts/learning_rate"}
    assert r3.metrics["rnd/intrinsic_reward"] > 0


def test_checkpoint_round_trip_keeps_every_rnd_state(tmp_path):
    keras.utils.set_random_seed(3)
    agent = _agent(seed=1)
    records = loop.iterations(agent, FakeAtari(lengths=(5, 7)), seed=0, frame_skip=4)
    for _ in range(4):
        next(records)
    records.close()
    run = runner.Runner(agent, "ppo", "pong", SPEC, runner.RunConfig(), tmp_path / "t",
                        tmp_path / "ck")
    run.save_checkpoint()

    keras.utils.set_random_seed(4)
    fresh = _agent(seed=2)
    assert fresh.rnd.warming_up
    resumed = runner.Runner(fresh, "ppo", "pong", SPEC, runner.RunConfig(), tmp_path / "t",
                            tmp_path / "ck")
    assert resumed.restore()
    # Every variable: networks (target and predictor included), the pixel and
    # return statistics, each environment's discounted intrinsic return, Adam's.
    for a, b in zip(agent.learner.weights, fresh.learner.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), a.path)
    for a, b in zip(agent.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    assert fresh.state() == agent.state() and not fresh.rnd.warming_up
    assert fresh.rnd.frames_seen == agent.rnd.frames_seen > 16
    frames = np.random.default_rng(0).integers(0, 256, (5, 84, 84), dtype=np.uint8)
    np.testing.assert_array_equal(fresh.rnd.errors(frames), agent.rnd.errors(frames))
    raw, valid = np.ones((2, 2)), np.ones((2, 2), bool)
    np.testing.assert_array_equal(fresh.rnd.normalise_rewards(raw, valid),
                                  agent.rnd.normalise_rewards(raw, valid))

    # A plain PPO checkpoint does not load into an RND agent.
    plain = ppo.PPO("pong", 6, SPEC, ppo.PPOConfig(num_envs=2, conv_filters=(4, 8, 8),
                                                   fc_units=16), total_agent_steps=10, seed=0)
    runner.Runner(plain, "ppo", "pong", SPEC, runner.RunConfig(), tmp_path / "t",
                  tmp_path / "plain").save_checkpoint()
    with pytest.raises(checkpoints.CheckpointError, match="do not match"):
        runner.Runner(_agent(), "ppo", "pong", SPEC, runner.RunConfig(), tmp_path / "t",
                      tmp_path / "plain").restore()


def test_exported_teacher_is_a_logits_teacher_and_its_card_records_rnd(tmp_path):
    keras.utils.set_random_seed(5)
    agent = _agent()
    records = loop.iterations(agent, FakeAtari(lengths=(5, 7)), seed=0, frame_skip=4)
    for _ in range(3):
        next(records)
    records.close()
    run = runner.Runner(agent, "ppo", "pong", SPEC, runner.RunConfig(), tmp_path, tmp_path)
    card = run.training_card()
    json.dumps(card)  # JSON-able.
    assert card["config"]["rnd"]["intrinsic_coef"] == 1.0
    assert card["config"]["rnd"]["extrinsic_gamma"] == 0.999
    assert card["config"]["rnd"]["predictor_proportion"] == 1.0
    teachers.save_teacher(agent.teacher_model, "pong", "logits", SPEC, tmp_path,
                          evaluation={"mean": 0.0}, training=card)
    teacher = teachers.load_teacher("pong", tmp_path, SPEC)
    assert teacher.kind == "logits" and teacher.value_source == "output"
    assert len(teacher.model.outputs) == 2
    assert "value_intrinsic" not in [layer.name for layer in teacher.model.layers]
    obs = np.stack([FakeAtari().observation(i, 0, 3) for i in range(2)])
    logits, value, _ = agent.net.predict_on_batch(obs)
    labels = teacher.label(obs)
    np.testing.assert_allclose(labels["outputs"], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(labels["values"], np.asarray(value)[:, 0], rtol=1e-5, atol=1e-6)


def test_config_rejects_bad_values():
    for kw, message in [
            (dict(intrinsic_coef=-1.0), r"RNDConfig.intrinsic_coef must be >= 0, found -1.0"),
            (dict(predictor_proportion=0.0), r"predictor_proportion must be in \(0, 1\]"),
            (dict(intrinsic_gamma=1.0), r"intrinsic_gamma must be in \[0, 1\)"),
            (dict(intrinsic_coef=0.0, extrinsic_coef=0.0), "both 0")]:
        with pytest.raises(ValueError, match=message):
            rnd.RNDConfig(**kw)


# -- the rooms probe --------------------------------------------------------------


@pytest.mark.parametrize("game", ["montezuma_revenge", "venture"])
def test_ram_atari_steps_as_ales_vector_environment(game):
    """The same actions give the same observations, rewards, ends and lives;
    only an episode cut by the frame cap may end on another last frame."""
    spec = environments.Preprocessing(noop_max=0, max_episode_frames=800)
    vector = environments.make_vector_env(game, spec, 2)
    probe = rooms.RamAtari(game, spec, 2, rooms.ROOM_RAM_ADDRESS[game])
    try:
        a, info_a = vector.reset(seed=5)
        b, info_b = probe.reset(seed=5)
        np.testing.assert_array_equal(a, b)
        start = {"montezuma_revenge": 1, "venture": 8}[game]
        assert probe.rooms.tolist() == [start, start]
        rng = np.random.default_rng(0)
        ends = 0
        for _ in range(420):
            actions = rng.integers(0, 18, size=2)
            vector.send(actions)
            probe.send(actions)
            a, ra, ta, tra, ia = vector.recv()
            b, rb, tb, trb, ib = probe.recv()
            np.testing.assert_array_equal(ta, tb)
            np.testing.assert_array_equal(tra, trb)
            np.testing.assert_array_equal(ra, rb)
            np.testing.assert_array_equal(ia["lives"], ib["lives"])
            same = ~tra  # A capped episode's last frame may differ.
            np.testing.assert_array_equal(a[same], b[same])
            ends += int((ta | tra).sum())
        assert ends >= 2  # Each environment ended (the cap) and started again.
    finally:
        vector.close()
        probe.close()


def test_visited_rooms_and_the_probe_keep_what_they_found(tmp_path):
    spec = environments.Preprocessing(max_episode_frames=400)

    def predict(observations):  # A uniform policy.
        return np.zeros((len(observations), 18), np.float32)

    episodes = rooms.visited_rooms("montezuma_revenge", predict, "logits", spec, 3, seed=0,
                                   num_envs=2)
    assert len(episodes) == 3
    for e in episodes:
        assert e["rooms"] == [1] and e["length"] <= 100 and e["return"] >= 0
    with pytest.raises(ValueError, match="no room address for 'pong'"):
        rooms.visited_rooms("pong", predict, "logits", spec, 1, seed=0)

    probe = rooms.RoomProbe("montezuma_revenge", spec, 2, tmp_path)
    assert probe.on_evaluation(0, None, None, 0.0) == ""  # No agent yet.
    probe.found = {1, 2}
    probe.probes = [{"frames": 8, "episodes": []}]
    probe.save()
    again = rooms.RoomProbe("montezuma_revenge", spec, 2, tmp_path)
    assert again.restore() == [{"frames": 8, "episodes": []}] and again.found == {1, 2}


# -- the flags ----------------------------------------------------------------------


@pytest.mark.slow
def test_flags_are_checked(tmp_path):
    base = ["--game=pong",
            f"--teachers_dir={tmp_path / 'teachers'}", f"--checkpoint_dir={tmp_path / 'ck'}"]
    cases = [
            (["--algo=dqn", "--rnd"], "--rnd is an exploration bonus for PPO's two value "
                                      "heads: use it with --algo=ppo (found --algo=dqn)"),
            (["--rnd", "--rnd_intrinsic_coef=-1"], "--rnd_intrinsic_coef must be >= 0, "
                                                   "found -1.0"),
            (["--rnd", "--rnd_predictor_proportion=1.5"],
             "--rnd_predictor_proportion must be in (0, 1], found 1.5"),
            (["--rnd_intrinsic_coef=0.5"], "--rnd_intrinsic_coef applies with --rnd only"),
            (["--room_probe_episodes=-1"], "--room_probe_episodes must be >= 0, found -1")]
    runs = run_cli_cases("multidistill.train_teacher", "cli.define_teacher_training_flags",
                         [base + extra for extra, _ in cases])  # One interpreter.
    for (extra, message), (rc, out) in zip(cases, runs):
        assert rc == 2 and message in out and "Traceback" not in out, (extra, out)
    assert not (tmp_path / "ck").exists()


# -- the benchmark's table ------------------------------------------------------------


def test_rnd_compare_reads_the_runs_and_writes_table_and_curves(tmp_path, monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO))  # `benchmarks` is not an installed package.
    from benchmarks import rnd_compare

    def run(name, evals, rooms_found, bonus):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"step": 4096 * (k + 1), "charts/episodic_return": float(k)} for k in range(3)]
        for k, (mean, found) in enumerate(zip(evals, rooms_found)):
            step = 250_000 * (k + 1)
            rows += [{"step": step, "eval/mean_return": mean, "eval/std_return": 1.0},
                     {"step": step, "rooms/found": float(len(found)),
                      "rooms/mean_per_episode": 1.0, "rooms/max_per_episode": float(len(found))}]
            if bonus:
                rows.append({"step": step, "rnd/intrinsic_reward": 0.5 / (k + 1)})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        state = {"algo_state": {"agent_steps": 125_000}, "run": {"wall_clock_s": 7200.0}}
        np.savez(folder / "checkpoint.npz",
                 __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
        (folder / "rooms.json").write_text(json.dumps({"found": sorted(rooms_found[-1]), "probes": [
            {"frames": 500_000, "episodes": [{"return": 100.0, "length": 9, "rooms": [1]}]}]}))
        return folder

    rows = {"ppo": rnd_compare.summarise(run("a", [0.0, 0.0], [{1}, {1}], False)),
            "ppo_rnd": rnd_compare.summarise(run("b", [0.0, 50.0], [{1}, {0, 1}], True))}
    r = rows["ppo_rnd"]
    assert (r["frames"], r["final_eval"], r["best_eval"], r["best_training_mean"]) == (
        500_000, 50.0, 50.0, 2.0)
    assert (r["rooms_found"], r["max_rooms_in_an_episode"], r["probe_max_return"]) == (
        [0, 1], 2.0, 100.0)
    assert r["rnd"] and not rows["ppo"]["rnd"] and r["last_intrinsic_reward"] == 0.25
    text = rnd_compare.markdown("montezuma_revenge", rows, "cmd")
    assert "| ppo_rnd | 500,000 | 2.00 | 50.0 ± 1.0 | 50.0 | 2.0 | 2 (0, 1) | 2 | 100.0 |" in text
    assert rnd_compare.plot(rows, tmp_path / "curves.png").exists()
