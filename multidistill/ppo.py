"""PPO (Schulman et al. 2017) for one Atari game: produces a `logits` teacher.

One iteration, as in the usual Atari PPO (CleanRL's `ppo_atari`):
  1. act `rollout_length` steps in `num_envs` environments (one batched
     network call per step), recording logits, values, rewards;
  2. advantages by GAE(gamma, lambda) over the rollout, bootstrapped from
     the value of the last observation; rewards clipped to [-1, 1] and a
     lost life treated as the end of the episode for bootstrapping
     (`life_loss_terminal`), while the environment plays on;
  3. `num_epochs` passes of `num_minibatches` minibatches of the clipped
     surrogate loss

        L = -E[min(r A, clip(r, 1-eps, 1+eps) A)] + c_v E[(V - R)^2 clipped]
            - c_H E[H(pi)],   r = pi(a|s) / pi_old(a|s)

     written in `PPONetwork.compute_loss` with `keras.ops` (any backend).

The policy trained is the one the evaluation protocol plays: with
`behaviour_epsilon` > 0 it is the mixture

    mu(a|s) = (1 - epsilon) softmax(z(s))_a + epsilon / A,

which is how a logits teacher acts under the protocol (a sample of the
softmax, replaced by a uniform action with probability epsilon). Actions are
sampled from mu and the ratio r above is mu_new / mu_old, so PPO maximises
the return of the policy that will be scored. Without this, a Pong policy at
+13 with epsilon 0 scored +6 under the protocol's epsilon 0.05 (8 episodes
each): it had never learnt to recover from a random action. The entropy
bonus is on softmax(z).
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
from keras import ops

from multidistill import environments, networks


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO settings (CleanRL's Atari defaults unless noted).

    Attributes:
      num_envs: environments stepped together.
      rollout_length: agent steps per environment per iteration.
      num_epochs: passes over each rollout.
      num_minibatches: minibatches per pass.
      learning_rate: Adam step size, annealed linearly to 0 over training.
      gamma: discount per agent step.
      gae_lambda: GAE lambda.
      clip_eps: surrogate clipping range.
      entropy_coef: entropy bonus weight.
      value_coef: value loss weight.
      max_grad_norm: global gradient norm clip.
      conv_filters: teacher network conv filters.
      fc_units: teacher network hidden units.
      life_loss_terminal: treat a lost life as terminal for bootstrapping.
      behaviour_epsilon: weight of the uniform policy in the mixture that
        acts and is optimised (the evaluation protocol's epsilon).
    """

    num_envs: int = 8
    rollout_length: int = 128
    num_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.1
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    conv_filters: tuple[int, int, int] = (32, 64, 64)
    fc_units: int = 512
    life_loss_terminal: bool = True
    behaviour_epsilon: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.behaviour_epsilon < 1.0:
            raise ValueError(
                f"behaviour_epsilon must be in [0, 1), found {self.behaviour_epsilon}")


def mixture_log_probs(logits, epsilon: float):
    """log((1 - epsilon) softmax(logits) + epsilon / A), with `keras.ops`."""
    log_pi = ops.log_softmax(logits, axis=-1)
    if epsilon == 0.0:
        return log_pi
    num_actions = ops.shape(logits)[-1]
    return ops.log((1.0 - epsilon) * ops.exp(log_pi) + epsilon / num_actions)


class PPONetwork(keras.Model):
    """Wraps the teacher network (frames -> logits, value) with the PPO loss."""

    def __init__(self, net: keras.Model, config: PPOConfig, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.config = config

    def call(self, frames):
        logits, value = self.net(frames)
        return {"logits": logits, "value": value}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        c = self.config
        logits = y_pred["logits"]
        value = ops.squeeze(y_pred["value"], -1)
        log_probs = ops.log_softmax(logits, axis=-1)
        log_mu = mixture_log_probs(logits, c.behaviour_epsilon)
        actions = ops.cast(y["actions"], "int32")
        logp = ops.sum(log_mu * ops.one_hot(actions, ops.shape(logits)[-1]), axis=-1)
        ratio = ops.exp(logp - y["old_logp"])
        adv = y["advantages"]
        adv = (adv - ops.mean(adv)) / (ops.std(adv) + 1e-8)
        pg_loss = ops.mean(ops.maximum(-adv * ratio,
                                       -adv * ops.clip(ratio, 1 - c.clip_eps, 1 + c.clip_eps)))
        returns, old_v = y["returns"], y["old_values"]
        v_clipped = old_v + ops.clip(value - old_v, -c.clip_eps, c.clip_eps)
        v_loss = 0.5 * ops.mean(ops.maximum(ops.square(value - returns),
                                            ops.square(v_clipped - returns)))
        entropy = -ops.mean(ops.sum(ops.exp(log_probs) * log_probs, axis=-1))
        return pg_loss + c.value_coef * v_loss - c.entropy_coef * entropy


def _mixture_log_probs_np(z, epsilon: float):
    """NumPy twin of `mixture_log_probs` for acting."""
    z = z - z.max(axis=1, keepdims=True)
    log_pi = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    if epsilon == 0.0:
        return log_pi
    return np.log((1.0 - epsilon) * np.exp(log_pi) + epsilon / z.shape[1])


class PPO:
    """The learner and its actors for one game."""

    kind = "logits"

    def __init__(self, game: str, num_actions: int, spec: environments.Preprocessing,
                 config: PPOConfig, total_agent_steps: int, seed: int, num_threads: int = 0):
        self.config = config
        self.total_agent_steps = total_agent_steps
        self.net = networks.build_teacher_network(
            num_actions, spec.observation_shape, config.conv_filters, config.fc_units,
            with_value=True, name=f"ppo_{game}")
        self.learner = PPONetwork(self.net, config)
        self.optimizer = keras.optimizers.Adam(
            learning_rate=config.learning_rate, epsilon=1e-5,
            global_clipnorm=config.max_grad_norm)
        self.learner.compile(optimizer=self.optimizer)
        self.optimizer.build(self.learner.trainable_variables)
        self.env = environments.make_vector_env(game, spec, config.num_envs,
                                                num_threads=num_threads)
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.agent_steps = 0
        self.obs = None
        self._episode_return = np.zeros(config.num_envs)
        self._episode_length = np.zeros(config.num_envs, dtype=int)

    @property
    def teacher_model(self) -> keras.Model:
        """frames -> logits, sharing weights with the learner."""
        return keras.Model(self.net.inputs, self.net.outputs[0], name=self.net.name)

    def state(self) -> dict:
        return {"agent_steps": self.agent_steps}

    def load_state(self, state: dict) -> None:
        self.agent_steps = int(state["agent_steps"])

    def _predict(self, obs):
        logits, value = self.net.predict_on_batch(obs)
        return np.asarray(logits, np.float32), np.asarray(value, np.float32)[:, 0]

    def iterate(self) -> dict:
        """One rollout and its update. Returns metrics and finished episodes."""
        c = self.config
        n, t_len = c.num_envs, c.rollout_length
        t0 = time.perf_counter()
        if self.obs is None:
            self.obs, info = self.env.reset(seed=int(self.seed + self.agent_steps))
            self._lives = np.asarray(info["lives"])
            self._valid = np.ones(n, bool)
        obs_buf = np.zeros((t_len, n) + self.obs.shape[1:], np.uint8)
        act_buf = np.zeros((t_len, n), np.int32)
        logp_buf = np.zeros((t_len, n), np.float32)
        val_buf = np.zeros((t_len, n), np.float32)
        rew_buf = np.zeros((t_len, n), np.float32)
        done_buf = np.zeros((t_len, n), np.float32)
        valid_buf = np.zeros((t_len, n), bool)
        finished = []
        for t in range(t_len):
            logits, values = self._predict(self.obs)
            logp_all = _mixture_log_probs_np(logits, c.behaviour_epsilon)
            cdf = np.cumsum(np.exp(logp_all), axis=1)
            u = self.rng.random(n)[:, None] * cdf[:, -1:]
            actions = np.minimum((cdf < u).sum(axis=1), logits.shape[1] - 1).astype(np.int32)
            next_obs, rewards, term, trunc, info = self.env.step(actions)
            lives = np.asarray(info["lives"])
            ended = (term | trunc) & self._valid
            life_lost = (lives < self._lives) & self._valid if c.life_loss_terminal else 0
            obs_buf[t], act_buf[t], val_buf[t] = self.obs, actions, values
            logp_buf[t] = logp_all[np.arange(n), actions]
            rew_buf[t] = np.clip(rewards, -1, 1)
            done_buf[t] = (ended | life_lost).astype(np.float32)
            valid_buf[t] = self._valid
            self._episode_return[self._valid] += rewards[self._valid]
            self._episode_length[self._valid] += 1
            for i in np.flatnonzero(ended):
                finished.append((float(self._episode_return[i]), int(self._episode_length[i])))
                self._episode_return[i] = 0
                self._episode_length[i] = 0
            self._valid = ~ended
            self._lives = lives
            self.obs = next_obs
        _, last_values = self._predict(self.obs)
        # GAE. A reset step (not valid) carries no transition: it gets zero
        # advantage and is left out of the update.
        adv = np.zeros((t_len, n), np.float32)
        last_gae = np.zeros(n, np.float32)
        next_values = last_values
        for t in reversed(range(t_len)):
            not_done = 1.0 - done_buf[t]
            delta = rew_buf[t] + c.gamma * next_values * not_done - val_buf[t]
            last_gae = delta + c.gamma * c.gae_lambda * not_done * last_gae
            last_gae = np.where(valid_buf[t], last_gae, 0.0)
            adv[t] = last_gae
            next_values = np.where(valid_buf[t], val_buf[t], next_values)
        returns = adv + val_buf
        keep = valid_buf.reshape(-1)
        data_x = obs_buf.reshape((-1,) + obs_buf.shape[2:])[keep]
        data_y = {
            "actions": act_buf.reshape(-1)[keep],
            "old_logp": logp_buf.reshape(-1)[keep],
            "advantages": adv.reshape(-1)[keep],
            "returns": returns.reshape(-1)[keep],
            "old_values": val_buf.reshape(-1)[keep],
        }
        t_act = time.perf_counter() - t0
        frac = 1.0 - self.agent_steps / max(self.total_agent_steps, 1)
        self.optimizer.learning_rate.assign(max(frac, 0.0) * c.learning_rate)
        size = data_x.shape[0]
        mb = max(1, size // c.num_minibatches)
        losses = []
        for _ in range(c.num_epochs):
            perm = self.rng.permutation(size)
            for k in range(0, size - mb + 1, mb):
                idx = perm[k:k + mb]
                loss = self.learner.train_on_batch(
                    data_x[idx], {k2: v[idx] for k2, v in data_y.items()})
                losses.append(float(np.asarray(loss).reshape(-1)[0]))
        self.agent_steps += n * t_len
        return {
            "episodes": finished,
            "loss": float(np.mean(losses)),
            "act_seconds": t_act,
            "learn_seconds": time.perf_counter() - t0 - t_act,
        }

    def close(self):
        self.env.close()
