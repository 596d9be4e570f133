"""Batch sources: where the student's minibatches come from.

A `BatchSource` hands the distiller numbered batches (`batch(i)`,
`iterate(start)`), a fixed held-out batch per game (`holdout`), and says
what data fixes its batches (`identity`), so that a run can check on resume
that it sees what it started from. The distiller knows nothing else about
it: offline datasets, a live queue from a teacher in training or a student's
own collection rounds are each a source. A batch is `(x, y)` with
x = {"frames": (B, S, H, W) uint8, "game_id": (B,) int32} and y holding the
fields the objective asks for (`objectives.Distillation.fields`, among
`datasets.STEP_FIELDS`), padded across games to the widest action and
feature counts.

`HDF5Source`, the offline source, draws minibatches across games from the
HDF5 datasets.

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

Shares. A source opened with `share=(i, n)` trains on share i of n of each
dataset's training episodes only: contiguous runs of episodes, disjoint,
together all of them (`share_episodes`; codistillation's students,
`multidistill.codistill`). The held-out episodes are the same for every
share, so that students trained on different shares are measured alike.

Growing datasets. A source may be opened on a prefix of each file (the
episodes a run started from, `max_episodes`): a file topped up or extended
by later collection rounds then does not change the batches of a run that
resumes. A game's data may also be several files (a list of paths, read as
one `datasets.DatasetSet`): the teacher-driven dataset and the files of
collection rounds (`multidistill.rounds`).

Next-step fields. Besides the stored fields, a source serves `NEXT_FIELDS`
for objectives that look one step ahead: the observation s_{t+1}
(`next_frames`), its teacher outputs and value, and `next_valid` (0 where
step t ended the episode, and then the other next fields are zeros). Each
window slot keeps the row after its block for them.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from multidistill import datasets as datasets_lib
from multidistill import environments


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


class BatchSource(Protocol):
    """Where a distillation run's batches come from (see the module docstring).

    Attributes:
      games: the games, in the student's head order.
      num_actions: per game, its action count.
      feature_dims: per game, its teacher's feature count.
      batch_size: samples per batch.
      fields: the per-sample arrays the batches carry in `y` (the
        objective's `fields`, e.g. "teacher_outputs"); the distiller
        refuses a source that lacks one its objective needs.
    """

    games: tuple[str, ...]
    num_actions: list[int]
    feature_dims: list[int]
    batch_size: int
    fields: tuple[str, ...]

    def batch(self, index: int) -> tuple[dict, dict]:
        """Batch number `index`: a pure function of the source's data and seed."""

    def iterate(self, start: int) -> Iterator[tuple[int, dict, dict]]:
        """(index, x, y) from batch `start` on."""

    def holdout(self, game_index: int) -> tuple[dict, dict] | None:
        """A fixed held-out batch of one game, or None if it has none."""

    def identity(self) -> dict:
        """What fixes the batches (data, prefix); JSON-able."""

    def close(self) -> None:
        """Releases files and threads."""


# How each field is kept in a window: (dtype, per-sample width or None).
_FIELD_DTYPES = {
    "teacher_outputs": np.float32, "teacher_features": np.float16,
    "teacher_values": np.float32, "actions": np.int32,
    "behaviour_log_probs": np.float32, "rewards": np.float32,
    "terminated": bool, "truncated": bool,
}

# Fields of the step after the sample's (s_{t+1}), for objectives with a
# one-step look-ahead: its observation, its teacher labels, and whether it
# exists (0 where step t ended the episode; the other next fields are zeros there).
NEXT_FIELDS = ("next_frames", "next_teacher_outputs", "next_teacher_values", "next_valid")
FIELDS = datasets_lib.STEP_FIELDS + NEXT_FIELDS
# The stored fields each next field is made from.
_NEXT_NEEDS = {"next_frames": (), "next_teacher_outputs": ("teacher_outputs",),
               "next_teacher_values": ("teacher_values",),
               "next_valid": ("terminated", "truncated")}
_NEXT_DTYPES = {"next_frames": np.uint8, "next_teacher_outputs": np.float32,
                "next_teacher_values": np.float32, "next_valid": np.float32}


def stored_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """The stored step fields that `fields` (some of `FIELDS`) are read from."""
    out = [f for f in fields if f in datasets_lib.STEP_FIELDS]
    for f in fields:
        if f in _NEXT_NEEDS:
            if "terminated" not in out:  # Every next field is zeroed past the episode.
                out += ["terminated", "truncated"]
            out += [x for x in _NEXT_NEEDS[f] if x not in out]
    return tuple(dict.fromkeys(out))


class _GameWindow:
    """The block window of one game's dataset."""

    def __init__(self, ds: datasets_lib.Dataset, index: int, config: PipelineConfig,
                 per_batch: int, fields: Sequence[str], share: tuple[int, int] | None = None):
        self.ds = ds
        self.outputs = tuple(fields)
        self.next_fields = tuple(f for f in fields if f in NEXT_FIELDS)
        self.fields = stored_fields(fields)
        self.index = index
        self.config = config
        self.stack = ds.preprocessing.frame_stack
        n_ep = ds.num_episodes
        n_hold = int(round(n_ep * config.holdout_fraction))
        if config.holdout_fraction > 0 and n_ep >= 2:
            n_hold = max(n_hold, 1)
        n_hold = min(n_hold, n_ep - 1) if n_ep >= 1 else 0
        train_stop = (int(ds.episode_starts[n_ep - n_hold]) if n_hold
                      else ds.num_agent_steps)
        self.holdout_range = (train_stop, ds.num_agent_steps)
        # The rows trained on: all training episodes, or one share of them.
        self.train_range = (0, train_stop)
        if share is not None:
            self.train_range = _share_rows(ds, n_ep - n_hold, share)
        self.train_rows = self.train_range[1] - self.train_range[0]
        if self.train_rows < 1:
            raise datasets_lib.DatasetError(
                f"dataset {ds.path} holds no training steps"
                + (f" in share {share[0]} of {share[1]}: its {n_ep - n_hold} training "
                   f"episodes cannot be split into {share[1]} disjoint sets; record more "
                   "episodes (--num_agent_steps) or train fewer students"
                   if share is not None else ""))
        self.block_rows = min(config.block_rows, self.train_rows)
        self.slots = config.blocks_in_memory
        # Refresh one slot every `period` batches: about one use per row read.
        self.period = max(1, self.block_rows // max(per_batch, 1))
        # The window lives in preallocated arrays, one row of slots each, so
        # that a batch is gathered by a few fancy-indexing operations (no
        # Python loop per sample, little time holding the GIL). Slot s holds
        # its block's rows after `stack - 1` frames of history (zeros where
        # the block starts the dataset).
        # With next fields, each slot also holds the row after its block.
        r, pad = self.block_rows + (1 if self.next_fields else 0), self.stack - 1
        h, w = ds.preprocessing.frame_height, ds.preprocessing.frame_width
        widths = {"teacher_outputs": ds.num_actions, "teacher_features": ds.stored_feature_dim}
        self._frames = np.zeros((self.slots, pad + r, h, w), np.uint8)
        self._offsets = np.zeros((self.slots, r), np.int64)
        self._fields = {
            name: np.zeros((self.slots, r) + ((widths[name],) if name in widths else ()),
                           _FIELD_DTYPES[name])
            for name in self.fields}
        self._generations = np.full(self.slots, -1, np.int64)

    def _generation(self, slot: int, batch: int) -> int:
        refreshes = batch // self.period
        return max(0, (refreshes - slot + self.slots - 1) // self.slots)

    def _block_start(self, slot: int, generation: int) -> int:
        rng = np.random.default_rng([self.config.seed, self.index, slot, generation])
        last = self.train_rows - self.block_rows
        align = datasets_lib.FRAME_CHUNK_ROWS
        lo = self.train_range[0]
        if last <= 0:
            return lo
        # Chunk-aligned starts, plus `last` itself so the final rows are reachable
        # (relative to the first training row: the same draws as ever at 0).
        return lo + int(min(rng.integers(0, last // align + 2) * align, last))

    def _load(self, slot: int, start: int) -> None:
        rows = self._offsets.shape[1]  # The block, and the row after it if kept.
        stop = min(start + rows, self.ds.num_agent_steps)
        block = self.ds.read_rows(start, stop, self.fields, history=self.stack - 1)
        pad, prefix, n = self.stack - 1, block["prefix"], stop - start
        self._frames[slot, : pad - prefix] = 0
        self._frames[slot, pad - prefix: pad + n] = block["frames"]
        self._frames[slot, pad + n:] = 0
        self._offsets[slot, :n] = block["offsets"]
        self._offsets[slot, n:] = 0
        for name in self.fields:
            self._fields[name][slot, :n] = block[name]
            self._fields[name][slot, n:] = 0

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
        # The slots as one run of frames: slot s, row r is frame
        # s * (pad + R) + pad + r; its history lies just before it.
        width = self._frames.shape[1]
        frames = self._frames.reshape((-1,) + self._frames.shape[2:])
        obs = environments.stack_frames(frames, slot_idx * width + self.stack - 1 + row_idx,
                                        self._offsets[slot_idx, row_idx], self.stack)
        out = {"observations": obs}
        for name in self.fields:
            out[name] = self._fields[name][slot_idx, row_idx]
        if self.next_fields:
            out.update(self._next(frames, width, slot_idx, row_idx))
        return out

    def _next(self, frames, width, slot_idx, row_idx) -> dict[str, np.ndarray]:
        """The next fields of the sampled rows (the row after each, same episode)."""
        ended = (self._fields["terminated"][slot_idx, row_idx]
                 | self._fields["truncated"][slot_idx, row_idx])
        valid = ~ended
        nxt = row_idx + 1
        out = {}
        for name in self.next_fields:
            if name == "next_valid":
                value = valid.astype(np.float32)
            elif name == "next_frames":
                value = environments.stack_frames(
                    frames, slot_idx * width + self.stack - 1 + nxt,
                    self._offsets[slot_idx, nxt], self.stack)
            else:
                value = self._fields[name[len("next_"):]][slot_idx, nxt].astype(np.float32)
            value[ended] = 0
            out[name] = value
        return out


def share_episodes(num_train_episodes: int, share: tuple[int, int]) -> tuple[int, int]:
    """The training episodes [first, stop) of share i of n: contiguous runs of
    (nearly) equal episode counts that cover every training episode once.

    Contiguous rather than every n-th episode: a share is then one range of
    rows, which the block window reads as it reads a whole dataset (long
    contiguous HDF5 reads); the episodes are recorded by one behaviour
    policy in order, so their position says nothing else about them.
    """
    i, n = share
    return num_train_episodes * i // n, num_train_episodes * (i + 1) // n


def _share_rows(ds: datasets_lib.Dataset, num_train_episodes: int,
                share: tuple[int, int]) -> tuple[int, int]:
    first, stop = share_episodes(num_train_episodes, share)
    starts = list(ds.episode_starts[:num_train_episodes]) + [
        ds.episode_starts[num_train_episodes] if num_train_episodes < ds.num_episodes
        else ds.num_agent_steps]
    return int(starts[first]), int(starts[stop])


def _gather(ds: datasets_lib.Dataset, rows: np.ndarray, fields: Sequence[str],
            span: int = 4096) -> dict[str, np.ndarray]:
    """Observations and fields of some sorted rows of a dataset, read in
    contiguous spans of at most `span` rows (only the rows kept are stacked)."""
    stack = ds.preprocessing.frame_stack
    parts = []
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    for start in range(lo, hi, span):
        stop = min(start + span, hi)
        picked = rows[(rows >= start) & (rows < stop)] - start
        if len(picked):
            block = ds.read_rows(start, stop, fields, history=stack - 1)
            part = {"observations": datasets_lib.stack_rows(block, picked, stack)}
            part.update({name: block[name][picked] for name in fields})
            parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class HDF5Source:
    """The offline batch source: batches across games from HDF5 datasets.

    `batch(i)` is a pure function of (the datasets' prefixes, seed, i).

    Args:
      paths: one dataset per game, in head order.
      config: sampling settings.
      fields: the `y` fields to load (`objectives.Distillation.fields`),
        among `datasets.STEP_FIELDS`.
      max_episodes: per dataset, the prefix of episodes to use (the data a
        run started from; None: all the file holds now).
      share: (i, n): train on share i of n of each dataset's training
        episodes only (`share_episodes`: disjoint, together all of them;
        codistillation's students, `multidistill.codistill`); the held-out
        episodes are the same for every share. None: all of them.
    """

    def __init__(self, paths: Sequence[str], config: PipelineConfig,
                 fields: Sequence[str] = ("teacher_outputs",),
                 max_episodes: Sequence[int] | None = None,
                 share: tuple[int, int] | None = None):
        if share is not None and not (share[1] >= 1 and 0 <= share[0] < share[1]):
            raise ValueError(f"share must be (i, n) with 0 <= i < n, found {share}")
        self.share = None if share is None else (int(share[0]), int(share[1]))
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"unknown batch fields {unknown}: expected some of {list(FIELDS)}")
        if max_episodes is not None and len(max_episodes) != len(paths):
            raise ValueError(f"max_episodes has {len(max_episodes)} entries for "
                             f"{len(paths)} datasets")
        self.config = config
        self.fields = tuple(fields)
        self.datasets = []
        try:
            for i, p in enumerate(paths):
                m = None if max_episodes is None else max_episodes[i]
                if isinstance(p, (list, tuple)):  # A game's data in several files.
                    self.datasets.append(datasets_lib.DatasetSet(p, m))
                else:
                    self.datasets.append(datasets_lib.Dataset(p, None if m is None else int(m)))
        except Exception:
            self.close()
            raise
        g = len(self.datasets)
        weights = config.game_weights or (1.0,) * g
        if len(weights) != g:
            self.close()
            raise ValueError(f"game_weights has {len(weights)} entries for {g} games")
        self.games = tuple(ds.game for ds in self.datasets)
        self.num_actions = [ds.num_actions for ds in self.datasets]
        self.feature_dims = [ds.feature_dim for ds in self.datasets]
        self.counts = _split_counts(config.batch_size_per_game * g, weights)
        try:
            self.windows = [_GameWindow(ds, i, config, c, self.fields, self.share)
                            for i, (ds, c) in enumerate(zip(self.datasets, self.counts))]
        except Exception:
            self.close()
            raise
        self.max_actions = max(self.num_actions)
        self.max_feature_dim = max(max(ds.stored_feature_dim for ds in self.datasets), 1)

    @property
    def batch_size(self) -> int:
        return int(sum(self.counts))

    def identity(self) -> dict:
        """Per dataset: game, labelling teacher, the prefix used (episodes,
        steps) and the sessions that recorded it."""
        out = {"datasets": [
            {"game": ds.game, "teacher_sha256": ds.teacher_sha256,
             "num_episodes": ds.num_episodes, "num_agent_steps": ds.num_agent_steps,
             "sessions": [s.to_dict() for s in ds.sessions]}
            for ds in self.datasets]}
        if self.share is not None:  # Absent otherwise: runs before shares resume.
            out["share"] = list(self.share)
        return out

    def _assemble(self, parts: list[tuple[int, dict]], fields: Sequence[str] | None = None
                  ) -> tuple[dict, dict]:
        fields = self.fields if fields is None else fields
        n = sum(len(p["observations"]) for _, p in parts)
        first = parts[0][1]["observations"]
        obs = np.empty((n,) + first.shape[1:], np.uint8)
        gid = np.zeros(n, np.int32)
        widths = {"teacher_outputs": (self.max_actions,),
                  "next_teacher_outputs": (self.max_actions,),
                  "teacher_features": (self.max_feature_dim,),
                  "next_frames": first.shape[1:]}
        y = {}
        for name in fields:
            dtype = (np.float32 if name == "teacher_features" else
                     _NEXT_DTYPES[name] if name in _NEXT_DTYPES else _FIELD_DTYPES[name])
            y[name] = np.zeros((n,) + widths.get(name, ()), dtype)
        k = 0
        for g, p in parts:
            m = len(p["observations"])
            obs[k:k + m] = p["observations"]
            gid[k:k + m] = g
            for name in fields:
                value = p[name]
                if value.ndim == 2:
                    y[name][k:k + m, : value.shape[1]] = value
                else:
                    y[name][k:k + m] = value
            k += m
        return {"frames": obs, "game_id": gid}, y

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
        stored = [f for f in self.fields if f in datasets_lib.STEP_FIELDS]
        part = _gather(self.datasets[game_index], rows, stored)
        return self._assemble([(game_index, part)], stored)

    def iterate(self, start_batch: int) -> Iterator[tuple[int, dict, dict]]:
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


def fit_batches(source: BatchSource, start: int = 0) -> Iterator[tuple[dict, dict]]:
    """(x, y) batches of `source` from `start` on, for `keras.Model.fit`."""
    for _, x, y in source.iterate(start):
        yield x, y
