"""Random Network Distillation (Burda et al. 2018): PPO's exploration bonus.

The bonus of a transition s_t -> s_{t+1} is the error of a trained
predictor f^ against a fixed, randomly initialised target f, both on the
last frame x of the next observation, normalised:

    x' = clip((x - mu_x) / sigma_x, -5, 5)          (per pixel)
    i_t = mean_k (f^(x')_k - f(x')_k)^2             (k: 512 features)

It is large on frames unlike those the predictor was trained on. PPO then
optimises two reward streams with two value heads of one network:

  * intrinsic: r^I_t = i_t / sigma_R, where sigma_R is a running standard
    deviation of the intrinsic discounted returns R_t = gamma_I R_{t-1} +
    i_t (per environment, never reset); non-episodic: its GAE does not cut
    at episode ends (an episode's end leads to the next one's start), with
    gamma_I = 0.99;
  * extrinsic: PPO's clipped game rewards, episodic, gamma_E = 0.999;

and the policy follows A = c_E A^E + c_I A^I (c_E = 2, c_I = 1). The
predictor is trained with PPO's optimiser, its loss added to PPO's, on a
random `predictor_proportion` of each minibatch. The pixel statistics
mu_x, sigma_x start from a random agent's frames (`obs_norm_init_agent_steps`,
a warm-up in which PPO acts uniformly at random and learns nothing) and are
updated with every rollout's.

Settings and where they come from (the paper's Sec. 2 and its appendix
table of default hyper-parameters, checked against OpenAI's code,
`openai/random-network-distillation`, whose command-line defaults differ
in places, and CleanRL's `ppo_rnd_envpool.py`, which follows the table):
gamma_E 0.999, gamma_I 0.99, c_E 2, c_I 1, observation clip 5, target
and predictor on the last frame of the stack, a target of 3 convolutions
(32, 64, 64 filters, leaky ReLU of slope 0.2 as TensorFlow's) and a linear
layer of 512, a predictor of the same convolutions and 3 dense layers
(512, 512 ReLU, 512 linear), orthogonal initialisation of gain sqrt(2);
the normaliser initialised from 50 rollouts x 128 steps of a random agent
in every environment. The paper trains the predictor on 25 % of each batch
with 128 environments, i.e. on 32 environments' worth (1,024 states per
minibatch); this project's PPO runs 8 environments, whose minibatches hold
256 states, so the default is all of them (1.0): subsampling would leave
64. The warm-up here is shorter (10 rollouts of 8 environments, 40,960
frames) and counted in the run's frames; the paper's frame counts leave
its warm-up out.

Not the paper's here (the project's PPO is kept, so that a run with and
without RND differ by RND only): 8 environments, not 32 or 128; PPO's
learning rate, entropy bonus, value clipping and gradient clip.

Conventions: every stateful part lives in Keras variables of `RND`
(the networks; the pixel statistics; the return statistics and each
environment's discounted intrinsic return), so that a checkpoint of the
PPO learner, which holds `RND`, resumes it exactly.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import layers, ops


@dataclasses.dataclass(frozen=True)
class RNDConfig:
    """RND settings (the paper's unless noted, see the module docstring).

    Attributes:
      intrinsic_coef: c_I, weight of the intrinsic advantage.
      extrinsic_coef: c_E, weight of the extrinsic advantage.
      intrinsic_gamma: discount per agent step of the intrinsic stream
        (non-episodic).
      extrinsic_gamma: discount per agent step of the extrinsic stream
        (episodic); replaces `PPOConfig.gamma` under RND.
      predictor_proportion: fraction in (0, 1] of each minibatch, drawn at
        random per state, that the predictor is trained on (the paper: 0.25
        of 128 environments' minibatches; here 1.0 for 8 environments, so
        that a predictor step sees about the states the paper's did).
      obs_norm_init_agent_steps: agent steps (over all environments) of
        uniformly random play that initialise the pixel statistics before
        PPO learns; counted in the run's frames. 0: none (the statistics
        then start from the first rollout).
      obs_clip: normalised pixels are clipped to [-obs_clip, obs_clip].
      conv_filters: filters of the target's and predictor's convolutions.
      feature_dim: outputs of the target and the predictor.
      predictor_units: units of the predictor's two hidden dense layers.
    """

    intrinsic_coef: float = 1.0
    extrinsic_coef: float = 2.0
    intrinsic_gamma: float = 0.99
    extrinsic_gamma: float = 0.999
    predictor_proportion: float = 1.0
    obs_norm_init_agent_steps: int = 10_240
    obs_clip: float = 5.0
    conv_filters: tuple[int, int, int] = (32, 64, 64)
    feature_dim: int = 512
    predictor_units: int = 512

    def __post_init__(self):
        for name in ("intrinsic_coef", "extrinsic_coef", "obs_norm_init_agent_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"RNDConfig.{name} must be >= 0, found {getattr(self, name)}")
        for name in ("intrinsic_gamma", "extrinsic_gamma"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"RNDConfig.{name} must be in [0, 1), "
                                 f"found {getattr(self, name)}")
        if not 0.0 < self.predictor_proportion <= 1.0:
            raise ValueError(f"RNDConfig.predictor_proportion must be in (0, 1], "
                             f"found {self.predictor_proportion}")
        if self.obs_clip <= 0:
            raise ValueError(f"RNDConfig.obs_clip must be > 0, found {self.obs_clip}")
        if self.intrinsic_coef == 0 and self.extrinsic_coef == 0:
            raise ValueError("RNDConfig: intrinsic_coef and extrinsic_coef are both 0: "
                             "the policy would follow no advantage")


# -- pure functions -------------------------------------------------------------


def update_moments(mean: np.ndarray, var: np.ndarray, count: float, batch: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Running mean and (population) variance over axis 0 of every batch so far.

    Chan et al.'s parallel update: with n seen and m new samples of mean b
    and variance v_b, delta = b - mean,

        mean' = mean + delta m / (n + m)
        var'  = (var n + v_b m + delta^2 n m / (n + m)) / (n + m)

    so that after any sequence of batches, mean and var are those of all
    the samples together (count 0: the first batch's).

    Returns:
      (mean, var, count), float64.
    """
    batch = np.asarray(batch, np.float64)
    m = batch.shape[0]
    if m == 0:
        return np.asarray(mean, np.float64), np.asarray(var, np.float64), float(count)
    b_mean, b_var = batch.mean(axis=0), batch.var(axis=0)
    n = float(count)
    if n == 0:
        return b_mean, b_var, float(m)
    total = n + m
    delta = b_mean - np.asarray(mean, np.float64)
    new_mean = mean + delta * (m / total)
    m2 = np.asarray(var, np.float64) * n + b_var * m + np.square(delta) * (n * m / total)
    return new_mean, m2 / total, total


def discounted_intrinsic_returns(state: np.ndarray, rewards: np.ndarray, valid: np.ndarray,
                                 gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Each environment's running discounted sum of intrinsic rewards,

        R_t = gamma R_{t-1} + i_t,

    forward in time and never reset (the scale sigma_R of the rewards is
    that of these sums); a reset step (not a transition) leaves R as it is.

    Args:
      state: (N,) R before the rollout.
      rewards: (T, N) raw intrinsic rewards.
      valid: (T, N) bool, step t is a transition.
      gamma: intrinsic discount.

    Returns:
      (T, N) R_t of every step, and (N,) the state after the last.
    """
    out = np.zeros(np.shape(rewards), np.float64)
    r = np.asarray(state, np.float64).copy()
    for t in range(len(rewards)):
        r = np.where(valid[t], gamma * r + rewards[t], r)
        out[t] = r
    return out, r


def combined_advantages(adv_extrinsic, adv_intrinsic, config: RNDConfig) -> np.ndarray:
    """A = c_E A^E + c_I A^I (PPO then normalises it per minibatch)."""
    return (config.extrinsic_coef * np.asarray(adv_extrinsic, np.float32)
            + config.intrinsic_coef * np.asarray(adv_intrinsic, np.float32))


def prediction_error(predicted, target):
    """i = mean_k (predicted_k - target_k)^2 per sample, with `keras.ops`: (B, K) -> (B,)."""
    return ops.mean(ops.square(predicted - target), axis=-1)


def predictor_loss(errors, mask):
    """The predictor's loss on the states `mask` keeps,

        L = sum_b mask_b i_b / max(sum_b mask_b, 1),

    the mean prediction error over the kept states (0 when none is kept).

    Args:
      errors: (B,) prediction errors i_b (`prediction_error`).
      mask: (B,) 1 for the states the predictor is trained on, else 0.
    """
    mask = ops.cast(mask, errors.dtype)
    return ops.sum(mask * errors) / ops.maximum(ops.sum(mask), 1.0)


# -- networks --------------------------------------------------------------------

_CONV_SHAPES = ((8, 4), (4, 2), (3, 1))  # (kernel, stride), the Nature network's.
_LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu's, which OpenAI's code used.


def _orthogonal(gain: float):
    return keras.initializers.Orthogonal(gain=gain)


def build_networks(frame_shape: tuple[int, int], config: RNDConfig, name: str = "rnd"
                   ) -> tuple[keras.Model, keras.Model]:
    """The target and the predictor: normalised frames (B, H, W) float32 -> (B, K).

    The target is built non-trainable: it stays the random function it was
    initialised as.
    """
    gain = math.sqrt(2.0)

    def convolutions(prefix):
        out = [layers.Reshape(tuple(frame_shape) + (1,), name=f"{prefix}_channel")]
        for i, (filters, (size, stride)) in enumerate(zip(config.conv_filters, _CONV_SHAPES)):
            out += [layers.Conv2D(filters, size, strides=stride, name=f"{prefix}_conv{i}",
                                  kernel_initializer=_orthogonal(gain)),
                    layers.LeakyReLU(negative_slope=_LEAKY_SLOPE, name=f"{prefix}_leaky{i}")]
        return out + [layers.Flatten(name=f"{prefix}_flatten")]

    def model(prefix, body):
        x = inputs = keras.Input(shape=tuple(frame_shape), dtype="float32",
                                 name=f"{prefix}_frames")
        for layer in body:
            x = layer(x)
        return keras.Model(inputs, x, name=f"{name}_{prefix}")

    target = model("target", convolutions("target") + [
        layers.Dense(config.feature_dim, name="target_features",
                     kernel_initializer=_orthogonal(gain))])
    target.trainable = False
    predictor = model("predictor", convolutions("predictor") + [
        layers.Dense(config.predictor_units, activation="relu", name="predictor_hidden0",
                     kernel_initializer=_orthogonal(gain)),
        layers.Dense(config.predictor_units, activation="relu", name="predictor_hidden1",
                     kernel_initializer=_orthogonal(gain)),
        layers.Dense(config.feature_dim, name="predictor_features",
                     kernel_initializer=_orthogonal(gain))])
    return target, predictor


def with_intrinsic_value(net: keras.Model, orthogonal: bool = True) -> keras.Model:
    """`net` (frames -> [logits, value], `networks.build_teacher_network`) with
    a second value head on its `features`: frames -> [logits, value,
    value_intrinsic], sharing every layer (initialised as the first value head)."""
    features = net.get_layer("features").output
    head = layers.Dense(1, name="value_intrinsic",
                        kernel_initializer=_orthogonal(1.0) if orthogonal else "glorot_uniform")
    return keras.Model(net.inputs, list(net.outputs) + [head(features)], name=net.name)


class RND(keras.Model):
    """The bonus: target, predictor and the running statistics, in variables.

    `call(frames)`: (B, H, W) uint8 frames -> (B,) prediction errors i (the
    raw bonus), through the pixel normalisation. Host-side methods update
    the statistics (`observe_frames`, `normalise_rewards`).

    Args:
      config: the settings.
      frame_shape: (H, W) of one frame.
      num_envs: environments (one discounted intrinsic return each).

    Attributes:
      target, predictor: the networks (`build_networks`).
      frame_mean, frame_var, frame_count: the pixel statistics (frames seen).
      return_mean, return_var, return_count: the statistics of the
        discounted intrinsic returns.
      return_state: (num_envs,) each environment's discounted intrinsic return.
    """

    def __init__(self, config: RNDConfig, frame_shape: tuple[int, int], num_envs: int,
                 **kwargs):
        super().__init__(**kwargs)
        self.rnd_config = config
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.target, self.predictor = build_networks(self.frame_shape, config)

        def state(name, shape, init):
            return self.add_weight(shape=shape, initializer=init, trainable=False, name=name)

        self.frame_mean = state("frame_mean", self.frame_shape, "zeros")
        self.frame_var = state("frame_var", self.frame_shape, "ones")
        self.frame_count = state("frame_count", (), "zeros")
        self.return_mean = state("return_mean", (), "zeros")
        self.return_var = state("return_var", (), "ones")
        self.return_count = state("return_count", (), "zeros")
        self.return_state = state("return_state", (int(num_envs),), "zeros")
        self.build((None,) + self.frame_shape)

    def build(self, input_shape):
        self.built = True

    def normalise(self, frames):
        """x' = clip((x - mu_x) / sigma_x, -obs_clip, obs_clip), with `keras.ops`."""
        c = self.rnd_config.obs_clip
        x = ops.cast(frames, "float32")
        return ops.clip((x - self.frame_mean) / ops.sqrt(self.frame_var + 1e-8), -c, c)

    def call(self, frames):
        x = self.normalise(frames)
        return prediction_error(self.predictor(x), ops.stop_gradient(self.target(x)))

    def errors(self, frames: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(B,) float32 raw bonuses of (B, H, W) uint8 frames, in batches."""
        out = [np.asarray(self.predict_on_batch(frames[k:k + batch_size]), np.float32)
               for k in range(0, len(frames), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    # Host-side state updates (the variables are the state, read and written here).

    @staticmethod
    def _read(v) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(v), np.float64)

    @property
    def frames_seen(self) -> int:
        """Frames the pixel statistics hold."""
        return int(round(float(self._read(self.frame_count))))

    @property
    def intrinsic_return_std(self) -> float:
        """sigma_R, which divides the bonuses."""
        return float(np.sqrt(self._read(self.return_var)))

    @property
    def warming_up(self) -> bool:
        """Whether the statistics still want random play (see `RNDConfig`)."""
        return self.frames_seen < self.rnd_config.obs_norm_init_agent_steps

    def observe_frames(self, frames: np.ndarray) -> None:
        """Adds (B, H, W) frames to the pixel statistics."""
        mean, var, count = update_moments(self._read(self.frame_mean), self._read(self.frame_var),
                                          float(self._read(self.frame_count)),
                                          np.asarray(frames).reshape((-1,) + self.frame_shape))
        self.frame_mean.assign(mean.astype(np.float32))
        self.frame_var.assign(var.astype(np.float32))
        self.frame_count.assign(np.float32(count))

    def normalise_rewards(self, rewards: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """r^I = i / sigma_R after adding the rollout's discounted intrinsic
        returns to their statistics (`discounted_intrinsic_returns`).

        Args:
          rewards: (T, N) raw bonuses i (0 where not `valid`).
          valid: (T, N) bool.

        Returns:
          (T, N) float32 normalised intrinsic rewards.
        """
        returns, state = discounted_intrinsic_returns(
            self._read(self.return_state), rewards, valid, self.rnd_config.intrinsic_gamma)
        mean, var, count = update_moments(self._read(self.return_mean),
                                          self._read(self.return_var),
                                          float(self._read(self.return_count)),
                                          returns[np.asarray(valid, bool)])
        self.return_state.assign(state.astype(np.float32))
        self.return_mean.assign(np.float32(mean))
        self.return_var.assign(np.float32(var))
        self.return_count.assign(np.float32(count))
        return (np.asarray(rewards, np.float64)
                / np.sqrt(float(self._read(self.return_var)) + 1e-8)).astype(np.float32)
