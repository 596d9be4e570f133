"""The input pipeline: minibatches drawn across games from the HDF5 datasets.

Reading pattern. HDF5 is fast on contiguous slices and slow on scattered
ones, so each game keeps a window of `blocks_in_memory` blocks of
`block_rows` consecutive steps (frames only, stacks rebuilt per sample);
every minibatch draws its rows uniformly from the window, and one block is
swapped for a fresh random block every few batches, so that on average each
row read is used about once. Memory stays bounded by the window, whatever
the dataset size.

Determinism. Which blocks are in the window and which rows a batch takes are
pure functions of (seed, batch index): a resumed run reloads the window of
the batch it stops at and continues with exactly the batches it would have
seen. A background thread prepares the next batches while the network
trains on the current one.

Mixture. By default every batch holds `batch_size_per_game` samples of each
game; `game_weights` sets other shares of the same total.

Held-out data. The last `holdout_fraction` of each dataset's episodes (at
least one episode when there are two or more) are never trained on; they
give the held-out metrics.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Sequence

import numpy as np

from multidistill import datasets as datasets_lib


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How minibatches are drawn.

    Attributes:
      batch_size_per_game: samples of each game per batch (with equal shares).
      game_weights: relative share of each game in a batch (None: equal).
      block_rows: consecutive agent steps read at once.
      blocks_in_memory: blocks held per game (the shuffling window).
      holdout_fraction: share of each dataset's episodes kept for held-out
        metrics.
      seed: seed of block and row choices.
      prefetch_batches: batches prepared ahead by the background thread.
    """

    batch_size_per_game: int = 32
    game_weights: tuple[float, ...] | None = None
    block_rows: int = 256
    blocks_in_memory: int = 64
    holdout_fraction: float = 0.05
    seed: int = 0
    prefetch_batches: int = 4

    def __post_init__(self):
        if self.batch_size_per_game < 1:
            raise ValueError(
                f"batch_size_per_game must be >= 1, found {self.batch_size_per_game}")
        if self.block_rows < 1 or self.blocks_in_memory < 1:
            raise ValueError("block_rows and blocks_in_memory must be >= 1")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(
                f"holdout_fraction must be in [0, 1), found {self.holdout_fraction}")
        if self.game_weights is not None and (
                any(w < 0 for w in self.game_weights) or sum(self.game_weights) <= 0):
            raise ValueError(f"game_weights must be >= 0 with a positive sum, "
                             f"found {self.game_weights}")


def _split_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split of `total` samples by `weights`."""
    w = np.asarray(weights, float) / np.sum(weights)
    exact = w * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


class _GameWindow:
    """The block window of one game's dataset."""

    def __init__(self, ds: datasets_lib.Dataset, index: int, config: PipelineConfig,
                 per_batch: int, with_features: bool = True):
        self.ds = ds
        self.with_features = with_features
        self.index = index
        self.config = config
        self.stack = ds.preprocessing.frame_stack
        n_ep = ds.num_episodes
        n_hold = int(round(n_ep * config.holdout_fraction))
        if config.holdout_fraction > 0 and n_ep >= 2:
            n_hold = max(n_hold, 1)
        n_hold = min(n_hold, n_ep - 1) if n_ep >= 1 else 0
        self.train_rows = (int(ds.episode_starts[n_ep - n_hold]) if n_hold
                           else ds.num_agent_steps)
        self.holdout_range = (self.train_rows, ds.num_agent_steps)
        if self.train_rows < 1:
            raise datasets_lib.DatasetError(f"dataset {ds.path} holds no training steps")
        self.block_rows = min(config.block_rows, self.train_rows)
        self.slots = config.blocks_in_memory
        # Refresh one slot every `period` batches: about one use per row read.
        self.period = max(1, self.block_rows // max(per_batch, 1))
        # The window lives in preallocated arrays, one row of slots each, so
        # that a batch is gathered by a few fancy-indexing operations (no
        # Python loop per sample, little time holding the GIL). Slot s holds
        # its block's rows after `stack - 1` frames of history (zeros where
        # the block starts the dataset).
        r, pad = self.block_rows, self.stack - 1
        h, w = ds.preprocessing.frame_height, ds.preprocessing.frame_width
        feature_width = ds._f["teacher_features"].shape[1] if with_features else 1
        self._frames = np.zeros((self.slots, pad + r, h, w), np.uint8)
        self._offsets = np.zeros((self.slots, r), np.int64)
        self._outputs = np.zeros((self.slots, r, ds.num_actions), np.float32)
        self._features = np.zeros((self.slots, r, feature_width), np.float16)
        self._actions = np.zeros((self.slots, r), np.int32)
        self._generations = np.full(self.slots, -1, np.int64)

    def _generation(self, slot: int, batch: int) -> int:
        refreshes = batch // self.period
        return max(0, (refreshes - slot + self.slots - 1) // self.slots)

    def _block_start(self, slot: int, generation: int) -> int:
        rng = np.random.default_rng([self.config.seed, self.index, slot, generation])
        last = self.train_rows - self.block_rows
        align = datasets_lib.FRAME_CHUNK_ROWS
        if last <= 0:
            return 0
        # Chunk-aligned starts, plus `last` itself so the final rows are reachable.
        return int(min(rng.integers(0, last // align + 2) * align, last))

    def _load(self, slot: int, start: int) -> None:
        block = load_block(self.ds, start, start + self.block_rows, self.stack,
                           self.with_features)
        pad, prefix = self.stack - 1, block["prefix"]
        self._frames[slot, : pad - prefix] = 0
        self._frames[slot, pad - prefix:] = block["frames"]
        self._offsets[slot] = block["offsets"]
        self._outputs[slot] = block["teacher_outputs"]
        self._features[slot] = block["teacher_features"]
        self._actions[slot] = block["actions"]

    def refresh(self, batch: int) -> None:
        """Loads the blocks that batch number `batch` draws from."""
        for slot in range(self.slots):
            gen = self._generation(slot, batch)
            if self._generations[slot] != gen:
                self._load(slot, self._block_start(slot, gen))
                self._generations[slot] = gen

    def sample(self, batch: int, n: int) -> dict[str, np.ndarray]:
        self.refresh(batch)
        rng = np.random.default_rng([self.config.seed, self.index, batch, 1 << 20])
        slot_idx = rng.integers(0, self.slots, size=n)
        row_idx = rng.integers(0, self.block_rows, size=n)
        lags = np.arange(self.stack - 1, -1, -1)
        obs = self._frames[slot_idx[:, None], self.stack - 1 + row_idx[:, None] - lags]
        # Frames from before the episode's start are zeros.
        obs[self._offsets[slot_idx, row_idx][:, None] < lags] = 0
        return {
            "observations": obs,
            "teacher_outputs": self._outputs[slot_idx, row_idx],
            "teacher_features": self._features[slot_idx, row_idx].astype(np.float32),
            "actions": self._actions[slot_idx, row_idx],
        }


def load_block(ds: datasets_lib.Dataset, start: int, stop: int, stack: int,
               with_features: bool = True) -> dict:
    """Rows start..stop-1 of a dataset, with the frames their stacks need."""
    lo = max(0, start - (stack - 1))
    n = stop - start
    return {
        "frames": ds._read("frames", lo, stop),
        "prefix": start - lo,
        "offsets": ds.episode_offsets(start, stop),
        "teacher_outputs": ds._read("teacher_outputs", start, stop),
        "teacher_features": (ds._read("teacher_features", start, stop) if with_features
                             else np.zeros((n, 1), np.float16)),
        "actions": ds._read("actions", start, stop),
    }


def gather(block: dict, rows: np.ndarray, stack: int) -> dict[str, np.ndarray]:
    """Observations and labels of some rows of one `load_block` block."""
    rows = np.asarray(rows, np.int64)
    lags = np.arange(stack - 1, -1, -1)
    obs = block["frames"][block["prefix"] + rows[:, None] - lags]
    obs[block["offsets"][rows][:, None] < lags] = 0  # Before the episode's start.
    return {
        "observations": obs,
        "teacher_outputs": np.asarray(block["teacher_outputs"][rows], np.float32),
        "teacher_features": np.asarray(block["teacher_features"][rows], np.float32),
        "actions": np.asarray(block["actions"][rows], np.int32),
    }


class MultiGameSampler:
    """Batches across games; `batch(i)` is a pure function of (seed, i)."""

    def __init__(self, paths: Sequence[str], config: PipelineConfig,
                 max_actions: int | None = None, max_feature_dim: int | None = None,
                 with_features: bool = True):
        """Opens the datasets.

        Args:
          paths: one dataset per game, in head order.
          config: sampling settings.
          max_actions: width of the padded teacher outputs (default: widest).
          max_feature_dim: width of the padded features (default: widest).
          with_features: read teacher features (off: zeros, less to read).
        """
        self.config = config
        self.datasets = [datasets_lib.Dataset(p) for p in paths]
        g = len(self.datasets)
        weights = config.game_weights or (1.0,) * g
        if len(weights) != g:
            raise ValueError(f"game_weights has {len(weights)} entries for {g} games")
        self.counts = _split_counts(config.batch_size_per_game * g, weights)
        self.windows = [_GameWindow(ds, i, config, c, with_features)
                        for i, (ds, c) in enumerate(zip(self.datasets, self.counts))]
        self.max_actions = max_actions or max(ds.num_actions for ds in self.datasets)
        self.max_feature_dim = max_feature_dim or max(
            max(ds.feature_dim for ds in self.datasets), 1)

    @property
    def batch_size(self) -> int:
        return int(sum(self.counts))

    def _assemble(self, parts: list[tuple[int, dict]]) -> tuple[dict, dict]:
        n = sum(len(p["actions"]) for _, p in parts)
        first = parts[0][1]["observations"]
        obs = np.empty((n,) + first.shape[1:], np.uint8)
        outs = np.zeros((n, self.max_actions), np.float32)
        feats = np.zeros((n, self.max_feature_dim), np.float32)
        acts = np.zeros(n, np.int32)
        gid = np.zeros(n, np.int32)
        k = 0
        for g, p in parts:
            m = len(p["actions"])
            obs[k:k + m] = p["observations"]
            outs[k:k + m, : p["teacher_outputs"].shape[1]] = p["teacher_outputs"]
            feats[k:k + m, : p["teacher_features"].shape[1]] = p["teacher_features"]
            acts[k:k + m] = p["actions"]
            gid[k:k + m] = g
            k += m
        x = {"frames": obs, "game_id": gid}
        y = {"teacher_outputs": outs, "teacher_features": feats, "actions": acts}
        return x, y

    def batch(self, index: int) -> tuple[dict, dict]:
        """The training batch number `index` (x, y) for the student."""
        parts = [(g, w.sample(index, c)) for g, (w, c) in
                 enumerate(zip(self.windows, self.counts)) if c > 0]
        return self._assemble(parts)

    def holdout(self, game_index: int, max_rows: int = 1024) -> tuple[dict, dict] | None:
        """A fixed held-out batch of one game (evenly spread rows), or None."""
        w = self.windows[game_index]
        lo, hi = w.holdout_range
        if hi <= lo:
            return None
        rows = np.unique(np.linspace(lo, hi - 1, num=min(max_rows, hi - lo)).astype(int))
        # Read in spans of at most 4096 rows; stack only the rows kept.
        parts = []
        for start in range(lo, hi, 4096):
            stop = min(start + 4096, hi)
            picked = rows[(rows >= start) & (rows < stop)]
            if len(picked):
                block = load_block(self.datasets[game_index], start, stop, w.stack,
                                   w.with_features)
                parts.append(gather(block, picked - start, w.stack))
        part = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._assemble([(game_index, part)])

    def iterate(self, start_batch: int):
        """Yields (index, x, y) from `start_batch` on, prepared in a background thread."""
        q: queue.Queue = queue.Queue(maxsize=max(1, self.config.prefetch_batches))
        stop = threading.Event()

        def produce():
            i = start_batch
            try:
                while not stop.is_set():
                    item = (i, *self.batch(i))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    i += 1
            except BaseException as e:  # Hand the error to the consumer.
                q.put(e)

        thread = threading.Thread(target=produce, name="multidistill-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    def close(self):
        for ds in self.datasets:
            ds.close()

