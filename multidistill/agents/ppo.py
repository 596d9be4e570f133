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

Exploration by Random Network Distillation (`config.rnd`, `agents.rnd`):
the network gains a second value head (intrinsic; the teacher exported
keeps the extrinsic one as its critic), each rollout's transitions get the
bonus of their next frame, and the advantages are those of `agents.rnd`
(two GAEs, the intrinsic one non-episodic, combined 2:1); the predictor's
loss joins PPO's. Before PPO learns, `obs_norm_init_agent_steps` agent
steps of uniformly random play initialise the bonus's pixel statistics
(those iterations make no gradient step). Without `config.rnd` nothing of
this exists (the network, the checkpoint and the losses are PPO's).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from multidistill import acting, environments, evaluation, networks
from multidistill.agents import base
from multidistill.agents import rnd as rnd_lib


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
      rnd: Random Network Distillation's exploration bonus and its
        settings (`agents.rnd.RNDConfig`); None: plain PPO. Under RND the
        extrinsic stream is discounted by `rnd.extrinsic_gamma`, not `gamma`.
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
    rnd: rnd_lib.RNDConfig | None = None

    def __post_init__(self):
        for name in ("num_envs", "rollout_length", "num_epochs", "num_minibatches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, found {getattr(self, name)}")
        if not self.learning_rate > 0.0:
            raise ValueError(f"PPOConfig.learning_rate must be > 0, found {self.learning_rate}")
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

    where V_{t+1} and A_{t+1} are those of the next valid step (reset
    steps, not transitions, are skipped and get A = 0) and, after the last
    step, `last_values` and 0. With dones all 0 (RND's intrinsic stream),
    the return runs on from an episode's last transition into the next
    episode's first, as if the reset were one more step of the game.

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
        a_t = delta + gamma * lam * not_done * last_gae
        adv[t] = np.where(valid[t], a_t, 0.0)
        last_gae = np.where(valid[t], a_t, last_gae)
        next_values = np.where(valid[t], values[t], next_values)
    return adv


def clipped_value_loss(value, returns, old_values, clip_eps: float):
    """PPO's clipped value loss, with `keras.ops`:

        0.5 E[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)].
    """
    v_clipped = old_values + ops.clip(value - old_values, -clip_eps, clip_eps)
    return 0.5 * ops.mean(ops.maximum(ops.square(value - returns),
                                      ops.square(v_clipped - returns)))


class PPONetwork(keras.Model):
    """Wraps the teacher network (frames -> logits, value) with the PPO loss.

    With `rnd` (an `agents.rnd.RND`), the network also outputs the
    intrinsic value, the inputs are {"frames", "next_frames"} (the next
    observations' last frames) and the loss adds the intrinsic value loss
    and the predictor's (`agents.rnd.predictor_loss`).
    """

    def __init__(self, net: keras.Model, config: PPOConfig, rnd=None, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.config = config
        self.rnd = rnd

    def call(self, frames):
        if self.rnd is None:
            logits, value = self.net(frames)
            return {"logits": logits, "value": value}
        logits, value, value_intrinsic = self.net(frames["frames"])
        return {"logits": logits, "value": value, "value_intrinsic": value_intrinsic,
                "prediction_error": self.rnd(frames["next_frames"])}

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
        v_loss = clipped_value_loss(value, y["returns"], y["old_values"], c.clip_eps)
        entropy = -ops.mean(ops.sum(ops.exp(log_probs) * log_probs, axis=-1))
        loss = pg_loss + c.value_coef * v_loss - c.entropy_coef * entropy
        if "value_intrinsic" in y_pred:
            v_int = ops.squeeze(y_pred["value_intrinsic"], -1)
            loss = (loss + c.value_coef * clipped_value_loss(
                v_int, y["returns_intrinsic"], y["old_values_intrinsic"], c.clip_eps)
                + rnd_lib.predictor_loss(y_pred["prediction_error"], y["predictor_mask"]))
        return loss


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
        included); under RND also [..., intrinsic value (B, 1)].
      rnd: the bonus (`agents.rnd.RND`) under RND, else None.
      learner: `PPONetwork` around `net` (and `rnd`); checkpoint it with
        `optimizer`.
      optimizer: Adam with a global gradient-norm clip.
      agent_steps: agent steps taken so far (over all environments).
      gradient_steps: minibatch gradient steps taken so far.
      metrics: scalars of the last iteration by TensorBoard tag, logged by
        the runner: `charts/learning_rate` (of the last update), under RND
        also `rnd/*`.
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
        self._teacher = self.net
        self.rnd = None
        if config.rnd is not None:
            self.net = rnd_lib.with_intrinsic_value(self._teacher, config.orthogonal_init)
            self.rnd = rnd_lib.RND(config.rnd, spec.observation_shape[1:], config.num_envs,
                                   name=f"rnd_{game}")
        self.learner = PPONetwork(self.net, config, rnd=self.rnd)
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
        if self.rnd is not None:
            self._buffers["values_intrinsic"] = np.zeros((t, n), np.float32)
        self._filled = 0  # Steps of the rollout under way held in the buffers.
        self.metrics: dict[str, float] = {}

    @property
    def teacher_model(self) -> keras.Model:
        """frames -> [logits, value]: the network, critic included (under RND
        the same layers without the intrinsic value head)."""
        return self._teacher

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

        While RND's pixel statistics warm up, actions are uniformly random
        (log_prob log 1/A, the probability they were acted with).

        Returns:
          (N,) int32 actions and extras {"log_prob": (N,) log mu(a|s) of the
          actions, "value": (N,) V(s)} (under RND also "value_intrinsic").
        """
        outputs = self.net.predict_on_batch(observations)
        logits = np.asarray(outputs[0], np.float32)
        log_mu = mixture_log_probs_np(logits, self.config.behaviour_epsilon)
        if self.rnd is not None and self.rnd.warming_up:
            log_mu = np.full_like(log_mu, -np.log(logits.shape[1]))
        cdf = np.cumsum(np.exp(log_mu), axis=1)
        u = self.rng.random(len(logits))[:, None] * cdf[:, -1:]
        actions = np.minimum((cdf < u).sum(axis=1), logits.shape[1] - 1).astype(np.int32)
        extras = {"log_prob": log_mu[np.arange(len(actions)), actions],
                  "value": np.asarray(outputs[1], np.float32)[:, 0]}
        if self.rnd is not None:
            extras["value_intrinsic"] = np.asarray(outputs[2], np.float32)[:, 0]
        return actions, extras

    def experience(self, batch_size: int, rng: np.random.Generator,
                   recent: int = 0) -> np.ndarray | None:
        """Observations (batch_size, stack, H, W) drawn uniformly (with
        replacement, with `rng`, not the agent's own) from the rollout
        buffers, which hold the latest rollout, so `recent` changes nothing;
        None before the first step: what real-time students distil on
        (`multidistill.realtime`)."""
        valid = np.flatnonzero(self._buffers["valid"].reshape(-1))
        if valid.size == 0:
            return None
        obs = self._buffers["observations"]
        return obs.reshape((-1,) + obs.shape[2:])[rng.choice(valid, size=batch_size)]

    def observe(self, step: acting.StepBatch) -> list[float] | None:
        """Records the step; once a rollout is full, this step's value closes it.

        Under RND, while its pixel statistics warm up, the step only adds
        its frames to them (an iteration is `rollout_length` such steps,
        with no gradient step).

        Returns:
          None within a rollout; when the step after a full rollout arrives,
          the losses of the update on that rollout.
        """
        if self.rnd is not None and self.rnd.warming_up:
            return self._observe_warmup(step)
        losses = None
        if self._filled == self.config.rollout_length:
            losses = self._update(step.extras["value"], step)
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
        if self.rnd is not None:
            b["values_intrinsic"][t] = step.extras["value_intrinsic"]
        self._filled += 1
        self.agent_steps += len(step.valid)
        return losses

    def _observe_warmup(self, step: acting.StepBatch) -> list[float] | None:
        """RND's warm-up: every frame (last of each stack) into the pixel statistics."""
        self.rnd.observe_frames(step.observations[:, -1])
        self.agent_steps += len(step.valid)
        vector_steps = self.rnd.frames_seen // len(step.valid)
        if vector_steps % self.config.rollout_length == 0 or not self.rnd.warming_up:
            self.metrics = {"rnd/warmup_frames_seen": float(self.rnd.frames_seen)}
            return []
        return None

    def _update(self, last_values: np.ndarray, step: acting.StepBatch) -> list[float]:
        """`num_epochs` passes of minibatches over the rollout in the buffers,
        closed by `step`, whose values `last_values` bootstrap the last."""
        c, b = self.config, self._buffers
        self.metrics = {}
        keep = b["valid"].reshape(-1)
        data_x = b["observations"].reshape((-1,) + b["observations"].shape[2:])[keep]
        if self.rnd is None:
            adv = gae(b["rewards"], b["values"], b["dones"], b["valid"], last_values,
                      c.gamma, c.gae_lambda)
            data_y = {}
        else:
            adv, data_y, next_frames = self._rnd_advantages(last_values, step)
            data_x = {"frames": data_x, "next_frames": next_frames[keep]}
        data_y.update({
            "actions": b["actions"].reshape(-1)[keep],
            "old_logp": b["log_probs"].reshape(-1)[keep],
            "advantages": adv.reshape(-1)[keep],
            "old_values": b["values"].reshape(-1)[keep],
        })
        if self.rnd is None:
            data_y["returns"] = (adv + b["values"]).reshape(-1)[keep]
        rollout_start = self.agent_steps - b["valid"].size
        learning_rate = self.learning_rate(rollout_start)
        self.optimizer.learning_rate.assign(learning_rate)
        self.metrics["charts/learning_rate"] = learning_rate
        size = len(data_y["actions"])
        mb = max(1, size // c.num_minibatches)
        losses = []
        for _ in range(c.num_epochs):
            perm = self.rng.permutation(size)
            for k in range(0, size - mb + 1, mb):
                idx = perm[k:k + mb]
                y = {key: v[idx] for key, v in data_y.items()}
                if self.rnd is not None:  # A fresh draw of the predictor's share.
                    y["predictor_mask"] = (self.rng.random(len(idx))
                                           < c.rnd.predictor_proportion).astype(np.float32)
                x = ({key: v[idx] for key, v in data_x.items()} if isinstance(data_x, dict)
                     else data_x[idx])
                loss = self.learner.train_on_batch(x, y)
                losses.append(float(np.asarray(loss).reshape(-1)[0]))
                self.gradient_steps += 1
        return losses

    def _rnd_advantages(self, last_values: np.ndarray, step: acting.StepBatch):
        """RND's rewards and advantages of the rollout in the buffers (`agents.rnd`).

        The bonus of transition t is that of the last frame of the next
        observation (step t+1's, or for the last step the closing `step`'s;
        after an episode's end, its final observation, which the reset step
        holds). The pixel statistics then take the rollout's frames, the
        return statistics its bonuses.

        Returns:
          (T, N) combined advantages; the intrinsic and extrinsic targets
          {"returns", "returns_intrinsic", "old_values_intrinsic"} flattened
          over (T, N); (T * N, H, W) next frames.
        """
        c, r, b = self.config, self.config.rnd, self._buffers
        valid = b["valid"]
        next_frames = np.concatenate([b["observations"][1:, :, -1],
                                      step.observations[None, :, -1]])
        flat_next = next_frames.reshape((-1,) + next_frames.shape[2:])
        first = self.rnd.frames_seen == 0  # No warm-up: this rollout starts the statistics.
        if first:
            self.rnd.observe_frames(flat_next[valid.reshape(-1)])
        raw = np.where(valid, self.rnd.errors(flat_next).reshape(valid.shape), 0.0)
        if not first:
            self.rnd.observe_frames(flat_next[valid.reshape(-1)])
        r_int = self.rnd.normalise_rewards(raw, valid)
        adv_ext = gae(b["rewards"], b["values"], b["dones"], valid, last_values,
                      r.extrinsic_gamma, c.gae_lambda)
        # Non-episodic: no episode end cuts the intrinsic return.
        adv_int = gae(r_int, b["values_intrinsic"], np.zeros_like(b["dones"]), valid,
                      step.extras["value_intrinsic"], r.intrinsic_gamma, c.gae_lambda)
        self.metrics.update({
            "rnd/intrinsic_reward": float(r_int[valid].mean()) if valid.any() else 0.0,
            "rnd/intrinsic_reward_raw": float(raw[valid].mean()) if valid.any() else 0.0,
            "rnd/intrinsic_return_std": self.rnd.intrinsic_return_std,
            "rnd/value_intrinsic": float(b["values_intrinsic"][valid].mean())
            if valid.any() else 0.0,
        })
        targets = {"returns": (adv_ext + b["values"]).reshape(-1),
                   "returns_intrinsic": (adv_int + b["values_intrinsic"]).reshape(-1),
                   "old_values_intrinsic": b["values_intrinsic"].reshape(-1)}
        return (rnd_lib.combined_advantages(adv_ext, adv_int, r),
                {k: v[valid.reshape(-1)] for k, v in targets.items()}, flat_next)

    def close(self) -> None:
        """Frees the rollout buffers."""
        self._buffers = None
