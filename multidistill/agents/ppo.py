"""PPO (Schulman et al. 2017) for one Atari game: trains a `logits` teacher with its critic.

One iteration, as in the usual Atari PPO (CleanRL's `ppo_atari`):
  1. act `rollout_length` vector steps in `num_envs` environments (`policy`,
     one batched network call per step), recording log-probabilities,
     values and rewards (`observe`);
  2. advantages by GAE(gamma, lambda) over the rollout, bootstrapped from
     the value of the observation after its last step; rewards clipped to
     [-1, 1] and a lost life treated as the end of the episode for
     bootstrapping (`life_loss_terminal`), while the environment plays on;
  3. `num_epochs` passes of `num_minibatches` minibatches of the clipped
     surrogate loss

        L = -E[min(r A, clip(r, 1-eps, 1+eps) A)] + c_v E[(V - R)^2 clipped]
            - c_H E[H(pi)],   r = pi(a|s) / pi_old(a|s)

     written in `PPONetwork.compute_loss` with `keras.ops` (any backend),
     with the learning rate annealed linearly from `learning_rate` to 0
     over `lr_horizon_frames` (40M frames; 0: the run's length), and
     CleanRL's orthogonal initialisation.

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

Conventions:
  * The value of the observation after a rollout's last step comes from
    the policy's extras of the next vector step (`acting.play` computed it
    before yielding that step), so the update runs when that step arrives,
    which then opens the next rollout: the first iteration of a run is
    `rollout_length` + 1 vector steps, the others `rollout_length`. The
    first two steps of a rollout were acted by the policy before the update
    (see `agents.base`); their log-probabilities are those they were acted
    with, so the ratio stays right.
  * A reset step (`StepBatch.valid` False) is not a transition: it gets no
    advantage and is left out of the update.
  * The exported teacher (`teacher_model`) is the network itself, with both
    outputs [logits (B, A), value (B, 1)], so that a run started from it
    (`start_from_teacher`) gets the critic back.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from multidistill import acting, environments, evaluation, networks
from multidistill.agents import base


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO settings (CleanRL's Atari defaults unless noted).

    Attributes:
      num_envs: environments stepped together.
      rollout_length: vector steps (agent steps per environment) per
        rollout, i.e. per iteration.
      num_epochs: passes over each rollout.
      num_minibatches: minibatches per pass.
      learning_rate: Adam step size, annealed linearly to 0 over
        `lr_horizon_frames`.
      lr_horizon_frames: emulator frames over which the learning rate
        anneals to 0, whatever the run's length (so a run stopped early can
        be extended with the schedule it had; CleanRL's Atari runs: 10M
        agent steps = 40M frames); 0 anneals over the run's own length.
      orthogonal_init: CleanRL's initialisation (orthogonal kernels, gain
        sqrt(2) in the trunk, 0.01 for the policy head, 1 for the value
        head); False keeps Keras' default (the shipped teachers before
        2026-11-29).
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
        acts and is optimised, a probability in [0, 1). Default: the
        evaluation protocol's epsilon, so the policy trained is the one
        scored (CleanRL has none: 0).
    """

    num_envs: int = 8
    rollout_length: int = 128
    num_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 2.5e-4
    lr_horizon_frames: int = 40_000_000
    orthogonal_init: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.1
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    conv_filters: tuple[int, int, int] = (32, 64, 64)
    fc_units: int = 512
    life_loss_terminal: bool = True
    behaviour_epsilon: float = evaluation.EvalProtocol.epsilon

    def __post_init__(self):
        for name in ("num_envs", "rollout_length", "num_epochs", "num_minibatches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, found {getattr(self, name)}")
        if self.lr_horizon_frames < 0:
            raise ValueError(f"PPOConfig.lr_horizon_frames must be >= 0 (0: the run's "
                             f"length), found {self.lr_horizon_frames}")
        if not 0.0 <= self.behaviour_epsilon < 1.0:
            raise ValueError(f"PPOConfig.behaviour_epsilon must be in [0, 1), "
                             f"found {self.behaviour_epsilon}")


def mixture_log_probs(logits, epsilon: float):
    """log((1 - epsilon) softmax(logits) + epsilon / A), with `keras.ops`."""
    log_pi = ops.log_softmax(logits, axis=-1)
    if epsilon == 0.0:
        return log_pi
    num_actions = ops.shape(logits)[-1]
    return ops.log((1.0 - epsilon) * ops.exp(log_pi) + epsilon / num_actions)


def mixture_log_probs_np(logits: np.ndarray, epsilon: float) -> np.ndarray:
    """NumPy twin of `mixture_log_probs`, for acting."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_pi = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    if epsilon == 0.0:
        return log_pi
    return np.log((1.0 - epsilon) * np.exp(log_pi) + epsilon / z.shape[1])


def gae(rewards, values, dones, valid, last_values, gamma: float, lam: float):
    """Generalised advantage estimates of a rollout (Schulman et al. 2016).

        delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t,
        A_t     = delta_t + gamma lambda (1 - d_t) A_{t+1},

    where V_{t+1} is the value of the next valid step (reset steps, not
    transitions, are skipped and get A = 0) and, after the last step,
    `last_values`.

    Args:
      rewards: (T, N) clipped rewards.
      values: (T, N) values of the observations acted upon.
      dones: (T, N) 1 where step t ends bootstrapping (episode end or, with
        `life_loss_terminal`, a lost life).
      valid: (T, N) bool, step t is a transition.
      last_values: (N,) values of the observations after step T-1.
      gamma: discount per agent step.
      lam: GAE lambda.

    Returns:
      (T, N) float32 advantages; the value targets are advantages + values.
    """
    t_len = len(rewards)
    adv = np.zeros(np.shape(rewards), np.float32)
    last_gae = np.zeros(np.shape(last_values), np.float32)
    next_values = np.asarray(last_values, np.float32)
    for t in reversed(range(t_len)):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * not_done - values[t]
        last_gae = delta + gamma * lam * not_done * last_gae
        last_gae = np.where(valid[t], last_gae, 0.0)
        adv[t] = last_gae
        next_values = np.where(valid[t], values[t], next_values)
    return adv


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


class PPO:
    """The PPO agent of one game (an `agents.base.Agent`).

    Args:
      game: ROM id.
      num_actions: actions of the game's (minimal) action set.
      spec: the preprocessing.
      config: the settings.
      total_agent_steps: length of the run, agent steps (the learning rate
        reaches 0 there when `config.lr_horizon_frames` is 0).
      seed: seeds action sampling and minibatch order (not Keras' weight
        initialisation).

    Attributes:
      net: frames -> [logits (B, A), value (B, 1)] (the teacher, critic
        included).
      learner: `PPONetwork` around `net`; checkpoint it with `optimizer`.
      optimizer: Adam with a global gradient-norm clip.
      agent_steps: agent steps taken so far (over all environments).
      gradient_steps: minibatch gradient steps taken so far.
    """

    kind = "logits"

    def __init__(self, game: str, num_actions: int, spec: environments.Preprocessing,
                 config: PPOConfig, total_agent_steps: int, seed: int):
        self.config = config
        self.total_agent_steps = int(total_agent_steps)
        # Agent steps over which the learning rate anneals to 0.
        self.lr_horizon_agent_steps = (config.lr_horizon_frames // spec.frame_skip
                                       if config.lr_horizon_frames else self.total_agent_steps)
        self.net = networks.build_teacher_network(
            num_actions, spec.observation_shape, config.conv_filters, config.fc_units,
            with_value=True, name=f"ppo_{game}", orthogonal=config.orthogonal_init)
        self.learner = PPONetwork(self.net, config)
        self.optimizer = keras.optimizers.Adam(
            learning_rate=config.learning_rate, epsilon=1e-5,
            global_clipnorm=config.max_grad_norm)
        self.learner.compile(optimizer=self.optimizer)
        self.optimizer.build(self.learner.trainable_variables)
        self.rng = np.random.default_rng(seed)
        self.agent_steps = 0
        self.gradient_steps = 0
        t, n = config.rollout_length, config.num_envs
        self._buffers = {
            "observations": np.zeros((t, n) + spec.observation_shape, np.uint8),
            "actions": np.zeros((t, n), np.int32),
            "log_probs": np.zeros((t, n), np.float32),
            "values": np.zeros((t, n), np.float32),
            "rewards": np.zeros((t, n), np.float32),
            "dones": np.zeros((t, n), np.float32),
            "valid": np.zeros((t, n), bool),
        }
        self._filled = 0  # Steps of the rollout under way held in the buffers.

    @property
    def teacher_model(self) -> keras.Model:
        """frames -> [logits, value]: the network itself, critic included."""
        return self.net

    def state(self) -> dict:
        """JSON-able counters to resume from (with a checkpoint of `learner`)."""
        return {"agent_steps": self.agent_steps, "gradient_steps": self.gradient_steps}

    def load_state(self, state: dict) -> None:
        """Restores the counters of `state()` (so the learning-rate anneal)."""
        self.agent_steps = int(state["agent_steps"])
        self.gradient_steps = int(state.get("gradient_steps", 0))

    def start_from_teacher(self, model: keras.Model, state: dict) -> int:
        """Actor and critic from `model` (layers by name), counters from `state`."""
        copied = base.copy_weights_by_name(model, self.net)
        self.load_state(state)
        return copied

    def load_trunk(self, model) -> int:
        """Transfer: the convolutions and hidden layer of `model` (a student's
        shared trunk, `students.copy_trunk`) into the network; the rest and
        the counters stay fresh. Returns the number of layers copied."""
        from multidistill import students

        copied = students.copy_trunk(model, self.net)
        return copied

    def learning_rate(self, agent_steps: int) -> float:
        """Adam's step size for a rollout that started at `agent_steps`:
        `learning_rate` * (1 - agent_steps / horizon), at least 0, where the
        horizon is `lr_horizon_frames` in agent steps (or the run's length)."""
        frac = 1.0 - agent_steps / max(self.lr_horizon_agent_steps, 1)
        return max(frac, 0.0) * self.config.learning_rate

    def policy(self, observations: np.ndarray) -> tuple[np.ndarray, dict]:
        """Actions sampled from the mixture mu.

        Returns:
          (N,) int32 actions and extras {"log_prob": (N,) log mu(a|s) of the
          actions, "value": (N,) V(s)}.
        """
        logits, values = self.net.predict_on_batch(observations)
        logits = np.asarray(logits, np.float32)
        log_mu = mixture_log_probs_np(logits, self.config.behaviour_epsilon)
        cdf = np.cumsum(np.exp(log_mu), axis=1)
        u = self.rng.random(len(logits))[:, None] * cdf[:, -1:]
        actions = np.minimum((cdf < u).sum(axis=1), logits.shape[1] - 1).astype(np.int32)
        return actions, {"log_prob": log_mu[np.arange(len(actions)), actions],
                         "value": np.asarray(values, np.float32)[:, 0]}

    def experience(self, batch_size: int, rng: np.random.Generator) -> np.ndarray | None:
        """Observations (batch_size, stack, H, W) drawn uniformly (with
        replacement, with `rng`, not the agent's own) from the rollout
        buffers, which hold the latest rollout; None before the first step:
        what real-time students distil on (`multidistill.realtime`)."""
        valid = np.flatnonzero(self._buffers["valid"].reshape(-1))
        if valid.size == 0:
            return None
        obs = self._buffers["observations"]
        return obs.reshape((-1,) + obs.shape[2:])[rng.choice(valid, size=batch_size)]

    def observe(self, step: acting.StepBatch) -> list[float] | None:
        """Records the step; once a rollout is full, this step's value closes it.

        Returns:
          None within a rollout; when the step after a full rollout arrives,
          the losses of the update on that rollout.
        """
        losses = None
        if self._filled == self.config.rollout_length:
            losses = self._update(last_values=step.extras["value"])
            self._filled = 0
        c, b, t = self.config, self._buffers, self._filled
        ended = (step.terminated | step.truncated) & step.valid
        dones = (ended | step.life_lost) if c.life_loss_terminal else ended
        b["observations"][t] = step.observations
        b["actions"][t] = step.actions
        b["log_probs"][t] = step.extras["log_prob"]
        b["values"][t] = step.extras["value"]
        b["rewards"][t] = np.clip(step.rewards, -1, 1)
        b["dones"][t] = dones
        b["valid"][t] = step.valid
        self._filled += 1
        self.agent_steps += len(step.valid)
        return losses

    def _update(self, last_values: np.ndarray) -> list[float]:
        """`num_epochs` passes of minibatches over the rollout in the buffers."""
        c, b = self.config, self._buffers
        adv = gae(b["rewards"], b["values"], b["dones"], b["valid"], last_values, c.gamma,
                  c.gae_lambda)
        keep = b["valid"].reshape(-1)
        data_x = b["observations"].reshape((-1,) + b["observations"].shape[2:])[keep]
        data_y = {
            "actions": b["actions"].reshape(-1)[keep],
            "old_logp": b["log_probs"].reshape(-1)[keep],
            "advantages": adv.reshape(-1)[keep],
            "returns": (adv + b["values"]).reshape(-1)[keep],
            "old_values": b["values"].reshape(-1)[keep],
        }
        rollout_start = self.agent_steps - b["valid"].size
        self.optimizer.learning_rate.assign(self.learning_rate(rollout_start))
        size = data_x.shape[0]
        mb = max(1, size // c.num_minibatches)
        losses = []
        for _ in range(c.num_epochs):
            perm = self.rng.permutation(size)
            for k in range(0, size - mb + 1, mb):
                idx = perm[k:k + mb]
                loss = self.learner.train_on_batch(
                    data_x[idx], {key: v[idx] for key, v in data_y.items()})
                losses.append(float(np.asarray(loss).reshape(-1)[0]))
                self.gradient_steps += 1
        return losses

    def close(self) -> None:
        """Frees the rollout buffers."""
        self._buffers = None
