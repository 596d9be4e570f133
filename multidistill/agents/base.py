"""What every teacher-training agent offers the loop, the runner and checkpoints.

An agent is an actor and a learner in one object (DQN Zoo's `agent.py`):
`policy` is the batched behaviour policy that `acting.play` calls, and
`observe` learns from each `acting.StepBatch` that play yields. The loop
(`agents.loop`) owns the environments and the episode bookkeeping; the agent
owns its network, optimizer, buffers and counters.

Because `acting.play` sends the actions of step t+1 before it yields step t,
the policy acting at step t+1 was computed before `observe` learnt from step
t: the acting weights lag one learning step behind the learner's (harmless
for DQN, whose replay is off-policy, and for PPO, whose ratio uses the
probabilities actually acted with).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from multidistill import acting


class Agent(Protocol):
    """The interface of `agents.dqn.DQN` and `agents.ppo.PPO`.

    Attributes:
      kind: the kind of teacher it trains: "q_values" or "logits".
      config: its frozen settings dataclass (recorded in the teacher's card).
      learner: the Keras model whose weights a checkpoint holds (the network
        plus whatever the loss needs, e.g. DQN's target network).
      optimizer: the optimizer a checkpoint holds, built on `learner`.
      net: the network being trained (frames -> outputs, and a value for
        actor-critics); its layers are named as in
        `networks.build_teacher_network`.
      agent_steps: agent steps taken so far, over all environments, reset
        steps included (one agent step is `frame_skip` emulator frames).

    An agent may also hold `metrics`, a dict of its own scalars of the last
    iteration by TensorBoard tag (PPO's RND bonus), which the loop passes
    on in its records and the runner logs.
    """

    kind: str
    config: Any
    learner: Any
    optimizer: Any
    net: Any
    agent_steps: int

    @property
    def teacher_model(self) -> Any:
        """The network to export as the teacher (see `teachers.save_teacher`)."""

    def policy(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The behaviour policy: (N, stack, H, W) uint8 -> (N,) actions, extras."""

    def observe(self, step: acting.StepBatch) -> list[float] | None:
        """Counts and learns from one vector step of every environment.

        Returns:
          None while an iteration is under way; at its last step, the losses
          of the iteration's gradient steps (empty when it made none).
        """

    def experience(self, batch_size: int, rng: np.random.Generator,
                   recent: int = 0) -> np.ndarray | None:
        """(batch_size, stack, H, W) uint8 observations of the agent's own
        experience (DQN: its replay memory, or with `recent` > 0 its latest
        `recent` agent steps; PPO: its latest rollout, whatever `recent`),
        drawn with `rng`; None while it has none to give."""

    def state(self) -> dict[str, Any]:
        """JSON-able counters to resume from (the weights are in `learner`)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Restores the counters of `state()`."""

    def start_from_teacher(self, model: Any, state: dict[str, Any]) -> int:
        """Starts from an exported teacher: its weights and its counters.

        Returns:
          The number of layers copied.
        """

    def load_trunk(self, model: Any) -> int:
        """Transfer: the trunk of `model` (a student) into the network.

        Returns:
          The number of layers copied.
        """

    def close(self) -> None:
        """Releases what the agent holds (buffers)."""


def copy_weights_by_name(src, dst) -> int:
    """Copies the weights of every layer of `dst` that `src` has by name.

    A teacher exported with its critic (`value` layer) gives it back; layers
    whose weight count differs are left alone.

    Returns:
      The number of layers copied.
    """
    copied = 0
    for layer in dst.layers:
        try:
            other = src.get_layer(layer.name)
        except ValueError:
            continue
        weights = other.get_weights()
        if weights and len(weights) == len(layer.get_weights()):
            layer.set_weights(weights)
            copied += 1
    return copied


def policy_network(model):
    """frames -> outputs (Q-values or logits) only, sharing weights: what the
    evaluation protocol plays, for a network that may also output a value."""
    if len(model.outputs) == 1:
        return model
    import keras

    return keras.Model(model.inputs, model.outputs[0], name=f"{model.name}_policy")
