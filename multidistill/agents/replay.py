"""The replay memory of value-based agents, and the n-step returns it serves.

`ReplayMemory` stores one 84x84 frame per environment step and stream (the
newest frame of the observation the step started from) and rebuilds frame
stacks when sampling, through `environments.stack_frames`, the project's one
frame-stack rebuild: zeros for frames before an episode's first (what the
environment shows after a reset), never frames of another episode.

Conventions:
  * A stream is one environment; entry t of every stream is written by the
    same vector step (`add`), so the memory is a (capacity, streams) grid
    and `t` counts vector steps.
  * The environment's reset step (the step after an episode ends, whose
    action is ignored) is stored (its frame is the episode's last
    observation, from which a truncated episode bootstraps) but is not a
    transition: `valid` is False there and it is never sampled.
  * Rewards are stored as given (the agent clips them before `add`).
"""

from __future__ import annotations

import numpy as np

from multidistill import environments


def n_step_returns(rewards: np.ndarray, cuts: np.ndarray, ends: np.ndarray,
                   gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step returns of transitions from their next n rewards.

        G_t = sum_{k<m} gamma^k r_{t+k},   discount = gamma^m, or 0 after a cut,

    where m is n, or 1 + the first k at which step t+k cuts bootstrapping
    or ends the episode.

    Args:
      rewards: (B, n) rewards of steps t..t+n-1 (already clipped).
      cuts: (B, n) bool, step t+k ends bootstrapping (termination or lost life).
      ends: (B, n) bool, step t+k ends the episode (termination or truncation).
      gamma: discount per agent step.

    Returns:
      returns: (B,) float32 G_t.
      steps: (B,) int64 m, the rewards used. The bootstrap observation is
        that of step t+m.
      discounts: (B,) float32 gamma^m, or 0 when the last step used is a cut.
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

    Every vector step adds one entry per stream: the newest frame of the
    observation the step started from, the action, the (clipped) reward, and
    whether the step is a transition at all (`valid`: False for a reset
    step), ends bootstrapping (`cut`) or ends the episode (`end`). Entry t+1
    of a stream holds the observation after step t; after an episode ends,
    the next entry is the episode's last observation (a reset step, not
    valid) and the one after it the new episode's first.

    Args:
      capacity: entries per stream (vector steps held).
      num_streams: environments.
      frame_shape: (height, width).
      frame_stack: frames per observation.
      n_step: rewards per n-step return.
      gamma: discount per agent step.
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
        # Agent steps since the episode's first observation, per entry.
        self.offsets = np.zeros(shape, np.int64)
        self.t = 0  # Entries added per stream so far (the next logical index).
        self._next_offset = np.zeros(self.num_streams, np.int64)

    def __len__(self) -> int:
        """Entries held, over all streams."""
        return min(self.t, self.capacity) * self.num_streams

    def add(self, frames, actions, rewards, valid, cuts, ends) -> None:
        """Adds one vector step of every stream (arrays of length num_streams)."""
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
        """Observations (B, frame_stack, H, W) of logical entries `t` of `streams`.

        The (capacity, streams, H, W) frames are seen as one interleaved
        sequence of capacity * streams frames, in which consecutive agent
        steps of a stream lie `num_streams` apart.
        """
        t = np.asarray(t, np.int64)
        streams = np.asarray(streams, np.int64)
        i = t % self.capacity
        flat = self.frames.reshape((-1,) + self.frames.shape[2:])  # A view.
        return environments.stack_frames(flat, i * self.num_streams + streams,
                                         self.offsets[i, streams], self.frame_stack,
                                         stride=self.num_streams)

    def sampleable_range(self) -> tuple[int, int]:
        """Logical entries [lo, hi] whose stack and n next entries are held."""
        oldest = max(0, self.t - self.capacity)
        lo = oldest + self.frame_stack - 1 if oldest > 0 else 0
        hi = self.t - 1 - self.n_step
        return lo, hi

    def sample_indices(self, batch_size: int, rng: np.random.Generator, recent: int = 0):
        """Uniformly random valid transitions: (t, streams), each (batch_size,).

        Args:
          recent: > 0: only among the latest `recent` sampleable entries
            (vector steps); 0: among all.

        Raises:
          ValueError: the memory holds no (or too few) transitions.
        """
        lo, hi = self.sampleable_range()
        if hi < lo:
            raise ValueError("the replay memory holds no transition to sample yet")
        if recent > 0:
            lo = max(lo, hi - int(recent) + 1)
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
