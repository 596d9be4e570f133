"""Double DQN (van Hasselt et al. 2016) for one Atari game: produces a `q_values` teacher.

The agent is the Nature-DQN network (`networks.build_teacher_network`,
frames -> one Q-value per action) trained from a replay memory with the
usual Atari settings (Dopamine's DQN with n-step returns and Adam):

  * acting: `num_envs` environments stepped together, one batched network
    call per step, epsilon-greedy with epsilon 1 during the first
    `learning_starts` agent steps, then decaying linearly to `epsilon_end`
    over `epsilon_decay_steps` agent steps; optionally temporally extended
    (epsilon-z-greedy, Dabney et al. 2021, `ez_mu` > 1): an exploratory
    action is repeated for n ~ zeta(ez_mu) agent steps (at most
    `ez_max_repeat`), which reaches rewards that need one action held for
    many steps (Freeway: a uniformly random policy scores 0, one that picks
    UP half the time 2 to 6 per episode);
  * learning: one gradient step on a minibatch of `batch_size` transitions
    drawn uniformly from the memory every `agent_steps_per_update` agent
    steps, once the memory holds `learning_starts` agent steps. The loss of
    a transition (s_t, a_t) with n-step return

        G_t = sum_{k<m} gamma^k clip(r_{t+k}, -1, 1),
        y_t = G_t + gamma^m (1 - d) Q_target(s_{t+m}, argmax_a Q(s_{t+m}, a)),
        L   = E[huber(Q(s_t, a_t) - stop_gradient(y_t))],   huber delta 1,

    where m = n, or fewer when the episode ends or a life is lost within
    the n steps; d = 1 when it ends by termination or a lost life (no
    bootstrapping), 0 after n steps or a time-limit truncation (which
    bootstraps from the last observation of the episode). `Q` is the online
    network, `Q_target` a copy synced every `target_update_period` gradient
    steps. The loss is written in `DQNLearner.compute_loss` with `keras.ops`
    (any backend); targets are computed there too, so one `train_on_batch`
    call does a whole gradient step.

Conventions:
  * Agent steps count every environment step, including the reset steps of
    the NextStep autoreset (as `ppo.PPO` does): `agent_steps` grows by
    `num_envs * rollout_length` per `iterate()`.
  * The environment's reset step (the step after an episode ends, whose
    action is ignored) is not a transition: it is never learnt from.
  * Rewards are clipped to [-1, 1] for learning only; episode returns
    reported are raw. A lost life ends bootstrapping (`life_loss_terminal`)
    but the environment plays on.
  * The replay memory stores one 84x84 frame per environment step and
    stream, the newest frame of the observation, and rebuilds 4-frame
    stacks when sampling, with zeros for frames before an episode's first
    (what the environment shows after a reset), never across episodes.
    The reset step's entry holds the episode's last observation, from which
    a truncated episode bootstraps.
  * `iterate()` reports `loss` NaN when it made no gradient step (warm-up).
  * Checkpoints (`checkpoints.save(path, algo.learner, algo.optimizer, ..)`)
    hold the online and the target network (both are weights of `learner`)
    and the optimizer; `state()` holds the counters. The replay memory is
    not checkpointed: a resumed run acts (with the restored epsilon) until
    the memory again holds `learning_starts` agent steps, then learns.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
from keras import ops

from multidistill import environments, networks


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Double DQN settings (Dopamine's Atari DQN with n-step returns unless noted).

    Attributes:
      num_envs: environments stepped together.
      rollout_length: agent steps per environment per `iterate()` call.
      replay_capacity: agent steps the replay memory holds (over all
        environments); the oldest are overwritten. One agent step takes one
        84x84 frame (7 KB) and a few bytes.
      learning_starts: agent steps in the memory before learning starts
        (and during which actions are uniformly random).
      agent_steps_per_update: agent steps per gradient step (the replay
        ratio: 4 agent steps, i.e. 16 emulator frames, per minibatch).
      batch_size: transitions per gradient step.
      n_step: rewards summed before bootstrapping.
      gamma: discount per agent step.
      learning_rate: Adam step size (constant).
      adam_epsilon: Adam epsilon.
      target_update_period: gradient steps between copies of the online
        network into the target network.
      epsilon_start: exploration rate at the end of the warm-up.
      epsilon_end: final exploration rate.
      epsilon_decay_steps: agent steps (after `learning_starts`) over which
        epsilon goes linearly from `epsilon_start` to `epsilon_end`.
      conv_filters: network conv filters.
      fc_units: network hidden units.
      life_loss_terminal: treat a lost life as terminal for bootstrapping.
      ez_mu: exponent of the zeta distribution of exploratory action
        durations (epsilon-z-greedy; the paper's default is 2); 0 for plain
        epsilon-greedy (every exploratory action lasts one step).
      ez_max_repeat: longest exploratory run, agent steps.
    """

    num_envs: int = 8
    rollout_length: int = 128
    replay_capacity: int = 500_000
    learning_starts: int = 20_000
    agent_steps_per_update: int = 4
    batch_size: int = 32
    n_step: int = 3
    gamma: float = 0.99
    learning_rate: float = 1e-4
    adam_epsilon: float = 1.5e-4
    target_update_period: int = 2_000
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 250_000
    conv_filters: tuple[int, int, int] = (32, 64, 64)
    fc_units: int = 512
    life_loss_terminal: bool = True
    ez_mu: float = 0.0
    ez_max_repeat: int = 100

    def __post_init__(self):
        for name in ("num_envs", "rollout_length", "replay_capacity", "agent_steps_per_update",
                     "batch_size", "n_step", "target_update_period"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DQNConfig.{name} must be >= 1, found {getattr(self, name)}")
        for name in ("epsilon_start", "epsilon_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DQNConfig.{name} must be in [0, 1], "
                                 f"found {getattr(self, name)}")
        if not (self.ez_mu == 0.0 or self.ez_mu > 1.0):
            raise ValueError(f"DQNConfig.ez_mu must be 0 (plain epsilon-greedy) or > 1, "
                             f"found {self.ez_mu}")
        if self.ez_max_repeat < 1:
            raise ValueError(f"DQNConfig.ez_max_repeat must be >= 1, found {self.ez_max_repeat}")
        if self.replay_capacity // self.num_envs <= self.n_step + 4:
            raise ValueError(f"DQNConfig.replay_capacity={self.replay_capacity} is too small "
                             f"for {self.num_envs} environments")


def n_step_returns(rewards: np.ndarray, cuts: np.ndarray, ends: np.ndarray,
                   gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step returns of transitions from their next n rewards.

    Args:
      rewards: (B, n) rewards of steps t..t+n-1 (already clipped).
      cuts: (B, n) bool, step t+k ends bootstrapping (termination or lost life).
      ends: (B, n) bool, step t+k ends the episode (termination or truncation).
      gamma: discount per step.

    Returns:
      returns: (B,) sum_{k<m} gamma^k rewards[:, k].
      steps: (B,) int m, rewards used: 1 + the first k where cuts or ends,
        else n. The bootstrap observation is that of step t+m.
      discounts: (B,) gamma^m, or 0 when the last step used is a cut.
    """
    rewards = np.asarray(rewards, np.float32)
    b, n = rewards.shape
    stop = np.asarray(cuts, bool) | np.asarray(ends, bool)
    # alive[:, k]: no stop among steps 0..k-1, so reward k counts.
    alive = np.ones((b, n), bool)
    alive[:, 1:] = np.cumprod(~stop[:, :-1], axis=1).astype(bool)
    powers = gamma ** np.arange(n, dtype=np.float64)
    returns = (rewards * alive * powers).sum(axis=1).astype(np.float32)
    steps = alive.sum(axis=1)
    last_cut = np.asarray(cuts, bool)[np.arange(b), steps - 1]
    discounts = np.where(last_cut, 0.0, gamma ** steps.astype(np.float64)).astype(np.float32)
    return returns, steps.astype(np.int64), discounts


class ReplayMemory:
    """A circular memory of single frames, one stream per environment.

    Every environment step adds one entry per stream: the newest frame of the
    observation the step started from, the action, the clipped reward, and
    whether the step is a transition at all (`valid`: False for a reset step),
    ends bootstrapping (`cut`) or ends the episode (`end`). Entry t+1 of a
    stream holds the observation after step t; after an episode ends, the
    next entry is the episode's last observation (a reset step, not valid)
    and the one after it the new episode's first.

    Observations are rebuilt from `frame_stack` consecutive entries, with
    zeros for frames before the episode's first (tracked as the number of
    steps since the episode's first observation, `offsets`).

    Args:
      capacity: entries per stream.
      num_streams: environments.
      frame_shape: (height, width).
      frame_stack: frames per observation.
      n_step: rewards per n-step return.
      gamma: discount per step.
    """

    def __init__(self, capacity: int, num_streams: int, frame_shape, frame_stack: int = 4,
                 n_step: int = 3, gamma: float = 0.99):
        self.capacity = int(capacity)
        self.num_streams = int(num_streams)
        self.frame_stack = int(frame_stack)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        shape = (self.capacity, self.num_streams)
        # np.zeros maps pages lazily: memory is used as the memory fills.
        self.frames = np.zeros(shape + tuple(frame_shape), np.uint8)
        self.actions = np.zeros(shape, np.int32)
        self.rewards = np.zeros(shape, np.float32)
        self.valid = np.zeros(shape, bool)
        self.cut = np.zeros(shape, bool)
        self.end = np.zeros(shape, bool)
        self.offsets = np.zeros(shape, np.int64)
        self.t = 0  # Entries added per stream so far (the next logical index).
        self._next_offset = np.zeros(self.num_streams, np.int64)

    def __len__(self) -> int:
        """Entries held, over all streams."""
        return min(self.t, self.capacity) * self.num_streams

    def add(self, frames, actions, rewards, valid, cuts, ends) -> None:
        """Adds one environment step of every stream (arrays of length num_streams)."""
        i = self.t % self.capacity
        valid = np.asarray(valid, bool)
        self.frames[i] = frames
        self.actions[i] = actions
        self.rewards[i] = rewards
        self.valid[i] = valid
        self.cut[i] = np.asarray(cuts, bool) & valid
        self.end[i] = np.asarray(ends, bool) & valid
        self.offsets[i] = self._next_offset
        # After a reset step comes the first observation of a new episode.
        self._next_offset = np.where(valid, self._next_offset + 1, 0)
        self.t += 1

    def stacks(self, t: np.ndarray, streams: np.ndarray) -> np.ndarray:
        """Observations (B, frame_stack, H, W) of logical entries `t` of `streams`."""
        t = np.asarray(t, np.int64)
        streams = np.asarray(streams, np.int64)
        lags = np.arange(self.frame_stack - 1, -1, -1)  # Oldest frame first.
        idx = (t[:, None] - lags[None, :]) % self.capacity
        out = self.frames[idx, streams[:, None]]
        offsets = self.offsets[t % self.capacity, streams]
        out[offsets[:, None] < lags[None, :]] = 0
        return out

    def sampleable_range(self) -> tuple[int, int]:
        """Logical entries [lo, hi] whose stack and n next entries are held."""
        oldest = max(0, self.t - self.capacity)
        lo = oldest + self.frame_stack - 1 if oldest > 0 else 0
        hi = self.t - 1 - self.n_step
        return lo, hi

    def sample_indices(self, batch_size: int, rng: np.random.Generator):
        """Uniformly random valid transitions: (t, streams), each (batch_size,)."""
        lo, hi = self.sampleable_range()
        if hi < lo:
            raise ValueError("the replay memory holds no transition to sample yet")
        ts, ss = [], []
        got, tries = 0, 0
        while got < batch_size:
            tries += 1
            if tries > 1000:
                raise ValueError("the replay memory holds too few transitions to sample")
            k = 2 * (batch_size - got) + 8
            t = rng.integers(lo, hi + 1, size=k)
            s = rng.integers(0, self.num_streams, size=k)
            keep = self.valid[t % self.capacity, s]
            ts.append(t[keep])
            ss.append(s[keep])
            got += int(keep.sum())
        return np.concatenate(ts)[:batch_size], np.concatenate(ss)[:batch_size]

    def batch(self, t: np.ndarray, streams: np.ndarray) -> tuple[dict, dict]:
        """The learner's (x, y) for transitions at logical entries `t` of `streams`.

        Returns:
          x: {"obs", "next_obs"}: (B, stack, H, W) uint8, observations at t and
            at t+m (the bootstrap observation).
          y: {"actions" (B,) int32, "returns" (B,) float32 n-step returns,
            "discounts" (B,) float32 gamma^m or 0}.
        """
        t = np.asarray(t, np.int64)
        streams = np.asarray(streams, np.int64)
        window = (t[:, None] + np.arange(self.n_step)[None, :]) % self.capacity
        s = streams[:, None]
        returns, steps, discounts = n_step_returns(
            self.rewards[window, s], self.cut[window, s], self.end[window, s], self.gamma)
        x = {"obs": self.stacks(t, streams), "next_obs": self.stacks(t + steps, streams)}
        y = {"actions": self.actions[t % self.capacity, streams],
             "returns": returns, "discounts": discounts}
        return x, y

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[dict, dict]:
        """A uniformly random minibatch of transitions: see `batch`."""
        return self.batch(*self.sample_indices(batch_size, rng))


def huber(x, delta: float = 1.0):
    """Elementwise Huber loss: x^2/2 within [-delta, delta], linear beyond."""
    a = ops.abs(x)
    quad = ops.minimum(a, delta)
    return 0.5 * ops.square(quad) + delta * (a - quad)


class DQNLearner(keras.Model):
    """The online network, its target copy, and the Double DQN loss.

    Inputs: {"obs", "next_obs"} uint8 frame stacks. Targets (`y`):
    {"actions", "returns", "discounts"} (see `ReplayMemory.batch`). The target
    network's weights are non-trainable weights of this model, so
    checkpoints of it hold them.
    """

    def __init__(self, net: keras.Model, target_net: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.target_net = target_net
        self.target_net.trainable = False

    def call(self, inputs):
        # Separate calls: no gradient flows into (or is computed for) next_obs.
        return {
            "q": self.net(inputs["obs"]),
            "next_q_online": ops.stop_gradient(self.net(inputs["next_obs"])),
            "next_q_target": ops.stop_gradient(self.target_net(inputs["next_obs"])),
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        q = y_pred["q"]
        num_actions = ops.shape(q)[-1]
        actions = ops.cast(y["actions"], "int32")
        q_taken = ops.sum(q * ops.one_hot(actions, num_actions), axis=-1)
        best = ops.argmax(y_pred["next_q_online"], axis=-1)
        next_value = ops.sum(y_pred["next_q_target"] * ops.one_hot(best, num_actions), axis=-1)
        target = ops.stop_gradient(ops.cast(y["returns"], "float32")
                                   + ops.cast(y["discounts"], "float32") * next_value)
        return ops.mean(huber(q_taken - target))

    def sync_target(self) -> None:
        """Copies the online network's weights into the target network."""
        # Through numpy, so the two never share a buffer (JAX donates buffers).
        for dst, src in zip(self.target_net.weights, self.net.weights):
            dst.assign(np.asarray(src.value).copy())


class DQN:
    """The learner, its replay memory and its actors for one game.

    Args:
      game: ROM id.
      num_actions: actions of the game's (minimal) action set.
      spec: the preprocessing.
      config: the settings.
      total_agent_steps: length of the run; kept for the interface shared
        with `ppo.PPO` (no DQN schedule depends on it).
      seed: seeds the environments and the sampling (not Keras' weight
        initialisation).
      num_threads: emulator threads (0: one per core).

    Attributes:
      net: the online network, frames -> Q-values (the teacher).
      learner: `DQNLearner` holding `net`, the target network and the loss;
        checkpoint it with `optimizer`.
      optimizer: Adam, built on the learner's trainable variables.
      memory: the `ReplayMemory` (not checkpointed).
      agent_steps: agent steps taken so far (over all environments).
      gradient_steps: gradient steps taken so far.
    """

    kind = "q_values"

    def __init__(self, game: str, num_actions: int, spec: environments.Preprocessing,
                 config: DQNConfig, total_agent_steps: int, seed: int, num_threads: int = 0):
        self.config = config
        self.total_agent_steps = total_agent_steps
        self.num_actions = int(num_actions)
        self.net = networks.build_teacher_network(
            num_actions, spec.observation_shape, config.conv_filters, config.fc_units,
            name=f"dqn_{game}")
        target = networks.build_teacher_network(
            num_actions, spec.observation_shape, config.conv_filters, config.fc_units,
            name=f"dqn_{game}_target")
        self.learner = DQNLearner(self.net, target)
        self.learner.sync_target()
        # Named, so that variable paths (and checkpoints) do not depend on how
        # many optimizers the process made before (Keras numbers default names).
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate,
                                               epsilon=config.adam_epsilon, name="adam")
        self.learner.compile(optimizer=self.optimizer)
        self.optimizer.build(self.learner.trainable_variables)
        self.env = environments.make_vector_env(game, spec, config.num_envs,
                                                num_threads=num_threads)
        self.memory = ReplayMemory(
            max(config.replay_capacity // config.num_envs, config.n_step + 5), config.num_envs,
            (spec.frame_height, spec.frame_width), spec.frame_stack, config.n_step,
            config.gamma)
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.agent_steps = 0
        self.gradient_steps = 0
        self._update_credit = 0.0
        self.obs = None
        self._episode_return = np.zeros(config.num_envs)
        self._episode_length = np.zeros(config.num_envs, dtype=int)
        # Epsilon-z-greedy: steps left in each environment's exploratory run.
        self._explore_left = np.zeros(config.num_envs, dtype=np.int64)
        self._explore_action = np.zeros(config.num_envs, dtype=np.int32)

    @property
    def teacher_model(self) -> keras.Model:
        """frames -> Q-values: the online network itself."""
        return self.net

    def state(self) -> dict:
        """JSON-able counters to resume from (with a checkpoint of `learner`)."""
        return {"agent_steps": self.agent_steps, "gradient_steps": self.gradient_steps,
                "update_credit": self._update_credit}

    def load_state(self, state: dict) -> None:
        """Restores the counters of `state()`; weights come from the checkpoint."""
        self.agent_steps = int(state["agent_steps"])
        self.gradient_steps = int(state.get("gradient_steps", 0))
        self._update_credit = float(state.get("update_credit", 0.0))

    def epsilon(self) -> float:
        """Exploration rate at the current agent step."""
        c = self.config
        if self.agent_steps < c.learning_starts:
            return 1.0
        frac = min(1.0, (self.agent_steps - c.learning_starts) / max(c.epsilon_decay_steps, 1))
        return float(c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start))

    def _act(self, obs) -> np.ndarray:
        """Epsilon-(z-)greedy actions; the network runs only if some env is greedy.

        With `ez_mu` > 1 an environment not already in an exploratory run
        starts one with probability epsilon: a uniformly random action held
        for n ~ zeta(ez_mu) steps (capped at `ez_max_repeat`), this step
        included.
        """
        c = self.config
        n = obs.shape[0]
        actions = self.rng.integers(0, self.num_actions, size=n).astype(np.int32)
        explore = self.rng.random(n) < self.epsilon()
        if c.ez_mu > 0:
            running = self._explore_left > 0
            start = explore & ~running
            durations = np.minimum(self.rng.zipf(c.ez_mu, size=n), c.ez_max_repeat)
            self._explore_action = np.where(start, actions, self._explore_action)
            self._explore_left = np.where(start, durations, self._explore_left)
            explore = running | start
            actions = self._explore_action.copy()
            self._explore_left = np.where(explore, self._explore_left - 1, 0)
        greedy = ~explore
        if greedy.any():
            q = np.asarray(self.net.predict_on_batch(obs))
            actions = np.where(greedy, np.argmax(q, axis=1), actions).astype(np.int32)
        return actions

    def can_learn(self) -> bool:
        """Whether the memory holds enough agent steps to learn from."""
        lo, hi = self.memory.sampleable_range()
        return len(self.memory) >= self.config.learning_starts and hi >= lo

    def learn_step(self) -> float:
        """One gradient step on a sampled minibatch; returns its loss.

        The target network is synced first every `target_update_period`
        gradient steps, including the very first (so a run whose online
        network was set from elsewhere, e.g. `--init_from_teacher`, starts
        with a matching target).
        """
        if self.gradient_steps % self.config.target_update_period == 0:
            self.learner.sync_target()
        x, y = self.memory.sample(self.config.batch_size, self.rng)
        loss = self.learner.train_on_batch(x, y)
        self.gradient_steps += 1
        return float(np.asarray(loss).reshape(-1)[0])

    def iterate(self) -> dict:
        """`rollout_length` steps of every environment, learning as they go.

        Returns:
          {"episodes": [(raw return, length in agent steps)] of the episodes
          finished in this call, "loss": mean loss of its gradient steps (NaN
          when there were none, during the warm-up), "act_seconds",
          "learn_seconds"}.
        """
        c = self.config
        n = c.num_envs
        t_act = t_learn = 0.0
        t0 = time.perf_counter()
        if self.obs is None:
            self.obs, info = self.env.reset(seed=int(self.seed + self.agent_steps))
            self._lives = np.asarray(info["lives"])
            self._valid = np.ones(n, bool)
        finished, losses = [], []
        for _ in range(c.rollout_length):
            actions = self._act(self.obs)
            next_obs, rewards, term, trunc, info = self.env.step(actions)
            lives = np.asarray(info["lives"])
            valid = self._valid
            ended = (term | trunc) & valid
            life_lost = (lives < self._lives) & valid if c.life_loss_terminal else False
            self.memory.add(self.obs[:, -1], actions, np.clip(rewards, -1, 1), valid,
                            (term & valid) | life_lost, ended)
            self._episode_return[valid] += rewards[valid]
            self._episode_length[valid] += 1
            for i in np.flatnonzero(ended):
                finished.append((float(self._episode_return[i]), int(self._episode_length[i])))
                self._episode_return[i] = 0
                self._episode_length[i] = 0
            self._valid = ~ended
            self._explore_left[ended] = 0
            self._lives = lives
            self.obs = next_obs
            self.agent_steps += n
            t1 = time.perf_counter()
            t_act += t1 - t0
            if self.can_learn():
                self._update_credit += n / c.agent_steps_per_update
                while self._update_credit >= 1.0:
                    losses.append(self.learn_step())
                    self._update_credit -= 1.0
            t0 = time.perf_counter()
            t_learn += t0 - t1
        return {
            "episodes": finished,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "act_seconds": t_act,
            "learn_seconds": t_learn,
        }

    def close(self):
        self.env.close()
