"""Double DQN (van Hasselt et al. 2016) for one Atari game: trains a `q_values` teacher.

The agent is the Nature-DQN network (`networks.build_teacher_network`,
frames -> one Q-value per action) trained from a replay memory with the
usual Atari settings (Dopamine's DQN with n-step returns and Adam):

  * acting (`policy`): epsilon-greedy with epsilon 1 during the first
    `learning_starts` agent steps, then decaying linearly to `epsilon_end`
    over `epsilon_decay_steps` agent steps; optionally temporally extended
    (epsilon-z-greedy, Dabney et al. 2021, `ez_mu` > 1): an exploratory
    action is repeated for n ~ zeta(ez_mu) agent steps (at most
    `ez_max_repeat`), which reaches rewards that need one action held for
    many steps (Freeway: a uniformly random policy scores 0, one that picks
    UP half the time 2 to 6 per episode);
  * learning (`observe`): every vector step goes into the replay memory;
    one gradient step on a minibatch of `batch_size` transitions drawn
    uniformly from it every `agent_steps_per_update` agent steps, once the
    memory holds `learning_starts` agent steps. The loss of a transition
    (s_t, a_t) with n-step return

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
    the NextStep autoreset (as `agents.ppo.PPO` does). An iteration (one
    record of `agents.loop`) is `rollout_length` vector steps.
  * Rewards are clipped to [-1, 1] for learning only; episode returns
    reported (by the loop) are raw. A lost life ends bootstrapping
    (`life_loss_terminal`) but the environment plays on.
  * Checkpoints (`checkpoints.save(path, agent.learner, agent.optimizer, ..)`)
    hold the online and the target network (both are weights of `learner`)
    and the optimizer; `state()` holds the counters. The replay memory is
    not checkpointed: a resumed run acts (with the restored epsilon) until
    the memory again holds `learning_starts` agent steps, then learns.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from multidistill import acting, environments, evaluation, networks
from multidistill.agents import base, replay


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Double DQN settings (Dopamine's Atari DQN with n-step returns unless noted).

    Attributes:
      num_envs: environments stepped together.
      rollout_length: vector steps (agent steps per environment) per
        iteration, the loop's unit of records and checkpoints.
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
      learning_rate: Adam step size (constant; a resumed run takes this one, not
        the checkpoint's).
      adam_epsilon: Adam epsilon.
      target_update_period: gradient steps between copies of the online
        network into the target network.
      epsilon_start: exploration rate at the end of the warm-up.
      epsilon_end: final exploration rate. Default: the evaluation
        protocol's epsilon, so that the uncorrected n-step returns value the
        policy that is scored (Dopamine uses 0.01, Nature DQN 0.1).
      epsilon_decay_steps: agent steps (after `learning_starts`) over which
        epsilon goes linearly from `epsilon_start` to `epsilon_end`.
      conv_filters: network conv filters.
      fc_units: network hidden units.
      life_loss_terminal: treat a lost life as terminal for bootstrapping.
      ez_mu: exponent of the zeta distribution of exploratory action
        durations (epsilon-z-greedy; the paper's default is 2); 0 for plain
        epsilon-greedy (every exploratory action lasts one step).
      teacher_start_epsilon: a run started from a teacher explores with
        `epsilon_end` from its first step ("final": a trained network has
        nothing to gain from epsilon 1, and the replay memory is refilled by
        its near-greedy play), or where its recorded counters put the
        schedule ("schedule"; a teacher of another algorithm or without
        counters then starts at epsilon 1).
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
    epsilon_end: float = evaluation.EvalProtocol.epsilon
    epsilon_decay_steps: int = 250_000
    conv_filters: tuple[int, int, int] = (32, 64, 64)
    fc_units: int = 512
    life_loss_terminal: bool = True
    ez_mu: float = 0.0
    ez_max_repeat: int = 100
    teacher_start_epsilon: str = "final"

    def __post_init__(self):
        if self.teacher_start_epsilon not in ("final", "schedule"):
            raise ValueError(f"DQNConfig.teacher_start_epsilon must be 'final' or "
                             f"'schedule', found {self.teacher_start_epsilon!r}")
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
        if not self.learning_rate > 0.0:
            raise ValueError(f"DQNConfig.learning_rate must be > 0, found {self.learning_rate}")
        if self.ez_max_repeat < 1:
            raise ValueError(f"DQNConfig.ez_max_repeat must be >= 1, found {self.ez_max_repeat}")
        if self.replay_capacity // self.num_envs <= self.n_step + 4:
            raise ValueError(f"DQNConfig.replay_capacity={self.replay_capacity} is too small "
                             f"for {self.num_envs} environments")


def huber(x, delta: float = 1.0):
    """Elementwise Huber loss: x^2/2 within [-delta, delta], linear beyond."""
    a = ops.abs(x)
    quad = ops.minimum(a, delta)
    return 0.5 * ops.square(quad) + delta * (a - quad)


class DQNLearner(keras.Model):
    """The online network, its target copy, and the Double DQN loss.

    Inputs: {"obs", "next_obs"} uint8 frame stacks. Targets (`y`):
    {"actions", "returns", "discounts"} (see `replay.ReplayMemory.batch`).
    The target network's weights are non-trainable weights of this model, so
    checkpoints of it hold them (online weights first, then the target's).
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
    """The Double DQN agent of one game (an `agents.base.Agent`).

    Args:
      game: ROM id.
      num_actions: actions of the game's (minimal) action set.
      spec: the preprocessing.
      config: the settings.
      total_agent_steps: length of the run, agent steps; kept for the
        interface shared with `agents.ppo.PPO` (no DQN schedule uses it).
      seed: seeds exploration and sampling (not Keras' weight
        initialisation).

    Attributes:
      net: the online network, frames -> Q-values (the teacher).
      learner: `DQNLearner` holding `net`, the target network and the loss;
        checkpoint it with `optimizer`.
      optimizer: Adam, built on the learner's trainable variables.
      memory: the `replay.ReplayMemory` (not checkpointed).
      agent_steps: agent steps taken so far (over all environments).
      gradient_steps: gradient steps taken so far.
      metrics: scalars of the last iteration by TensorBoard tag, logged by
        the runner: `charts/epsilon` (at its end).
    """

    kind = "q_values"

    def __init__(self, game: str, num_actions: int, spec: environments.Preprocessing,
                 config: DQNConfig, total_agent_steps: int, seed: int):
        self.config = config
        self.total_agent_steps = int(total_agent_steps)
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
        self.memory = replay.ReplayMemory(
            max(config.replay_capacity // config.num_envs, config.n_step + 5), config.num_envs,
            (spec.frame_height, spec.frame_width), spec.frame_stack, config.n_step,
            config.gamma)
        self.rng = np.random.default_rng(seed)
        self.agent_steps = 0
        self.gradient_steps = 0
        self._update_credit = 0.0
        self._epsilon_final = False  # Started from a teacher at the final epsilon.
        self._iteration_steps = 0
        self._iteration_losses: list[float] = []
        self.metrics: dict[str, float] = {}
        # Epsilon-z-greedy: steps left in each environment's exploratory run.
        self._explore_left = np.zeros(config.num_envs, dtype=np.int64)
        self._explore_action = np.zeros(config.num_envs, dtype=np.int32)

    @property
    def teacher_model(self) -> keras.Model:
        """frames -> Q-values: the online network itself (its value is max_a Q)."""
        return self.net

    def state(self) -> dict:
        """JSON-able counters to resume from (with a checkpoint of `learner`)."""
        return {"agent_steps": self.agent_steps, "gradient_steps": self.gradient_steps,
                "update_credit": self._update_credit, "epsilon_final": self._epsilon_final}

    def load_state(self, state: dict) -> None:
        """Restores the counters of `state()`; weights come from the checkpoint.

        The step size stays `config.learning_rate`: the checkpoint's optimizer
        variables hold the step size it was trained with, and a run resumed
        with another `--learning_rate` must train at the new one.
        """
        self.optimizer.learning_rate.assign(self.config.learning_rate)
        self.agent_steps = int(state["agent_steps"])
        self.gradient_steps = int(state.get("gradient_steps", 0))
        self._update_credit = float(state.get("update_credit", 0.0))
        self._epsilon_final = bool(state.get("epsilon_final", False))

    def start_from_teacher(self, model: keras.Model, state: dict) -> int:
        """Online and target networks from `model`, counters from `state`; epsilon at
        `epsilon_end` from here on, or as the counters put it
        (`config.teacher_start_epsilon`)."""
        copied = base.copy_weights_by_name(model, self.net)
        self.load_state(state)
        self._epsilon_final = self.config.teacher_start_epsilon == "final"
        self.learner.sync_target()
        return copied

    def load_trunk(self, model) -> int:
        """Transfer: the convolutions and hidden layer of `model` (a student's
        shared trunk, `students.copy_trunk`) into the network; the rest and
        the counters stay fresh. Returns the number of layers copied."""
        from multidistill import students

        copied = students.copy_trunk(model, self.net)
        self.learner.sync_target()
        return copied

    def epsilon(self) -> float:
        """Exploration rate at the current agent step."""
        c = self.config
        if self._epsilon_final:
            return float(c.epsilon_end)
        if self.agent_steps < c.learning_starts:
            return 1.0
        frac = min(1.0, (self.agent_steps - c.learning_starts) / max(c.epsilon_decay_steps, 1))
        return float(c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start))

    def policy(self, observations: np.ndarray) -> tuple[np.ndarray, dict]:
        """Epsilon-(z-)greedy actions; the network runs only if some env is greedy.

        With `ez_mu` > 1 an environment not already in an exploratory run
        starts one with probability epsilon: a uniformly random action held
        for n ~ zeta(ez_mu) steps (capped at `ez_max_repeat`), this step
        included.

        Returns:
          (N,) int32 actions and no extras.
        """
        c = self.config
        n = observations.shape[0]
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
            q = np.asarray(self.net.predict_on_batch(observations))
            actions = np.where(greedy, np.argmax(q, axis=1), actions).astype(np.int32)
        return actions, {}

    def experience(self, batch_size: int, rng: np.random.Generator,
                   recent: int = 0) -> np.ndarray | None:
        """Observations (batch_size, stack, H, W) drawn uniformly from the replay
        memory (with `recent` > 0: from its latest `recent` agent steps, at
        least one vector step) with `rng` (not the agent's own), or None while
        it holds too few: what real-time students distil on
        (`multidistill.realtime`)."""
        if not self.can_learn():
            return None
        entries = -(-int(recent) // self.memory.num_streams) if recent > 0 else 0
        return self.memory.stacks(*self.memory.sample_indices(batch_size, rng, entries))

    def can_learn(self) -> bool:
        """Whether the memory holds enough agent steps to learn from."""
        lo, hi = self.memory.sampleable_range()
        return len(self.memory) >= self.config.learning_starts and hi >= lo

    def learn_step(self) -> float:
        """One gradient step on a sampled minibatch; returns its loss.

        The target network is synced first every `target_update_period`
        gradient steps, including the very first.
        """
        if self.gradient_steps % self.config.target_update_period == 0:
            self.learner.sync_target()
        x, y = self.memory.sample(self.config.batch_size, self.rng)
        loss = self.learner.train_on_batch(x, y)
        self.gradient_steps += 1
        return float(np.asarray(loss).reshape(-1)[0])

    def observe(self, step: acting.StepBatch) -> list[float] | None:
        """Stores the step in the memory and makes the gradient steps it pays for.

        Returns:
          None within an iteration; after its `rollout_length`-th vector
          step, the losses of its gradient steps (none during the warm-up).
        """
        c = self.config
        valid = step.valid
        ended = (step.terminated | step.truncated) & valid
        cuts = step.terminated & valid
        if c.life_loss_terminal:
            cuts = cuts | step.life_lost
        self.memory.add(step.observations[:, -1], step.actions, np.clip(step.rewards, -1, 1),
                        valid, cuts, ended)
        # An exploratory run ends with its episode (the next action is ignored).
        self._explore_left[ended] = 0
        self.agent_steps += len(valid)
        if self.can_learn():
            self._update_credit += len(valid) / c.agent_steps_per_update
            while self._update_credit >= 1.0:
                self._iteration_losses.append(self.learn_step())
                self._update_credit -= 1.0
        self._iteration_steps += 1
        if self._iteration_steps < c.rollout_length:
            return None
        losses, self._iteration_losses, self._iteration_steps = self._iteration_losses, [], 0
        self.metrics = {"charts/epsilon": self.epsilon()}
        return losses

    def close(self) -> None:
        """Frees the replay memory."""
        self.memory = None
