"""The distillation dataset format: one HDF5 file per game.

This module is the only one that reads or writes these files (and owns
their names, `dataset_path`, and the writers' lock, `file_lock`). Schema
(version 2); N agent steps, E episodes, S recording sessions, A actions, F
teacher features:

    /frames              (N, H, W)  uint8    newest preprocessed frame of each step
    /teacher_outputs     (N, A)     float32  labeller's Q-values or logits, all actions
    /teacher_features    (N, F)     float16  labeller's last hidden layer
    /teacher_values      (N,)       float32  labeller's state value (NaN: it has none)
    /actions             (N,)       uint8    action taken by the behaviour policy
    /behaviour_log_probs (N,)       float32  log-probability of that action under the
                                             behaviour policy, exploration included
    /rewards             (N,)       float32  raw reward that followed the action
    /terminated          (N,)       bool     the episode ended after this step
    /truncated           (N,)       bool     the episode was cut after this step
    /episodes/start      (E,)       int64    index of each episode's first step
    /episodes/length     (E,)       int64    agent steps in each episode
    /episodes/return     (E,)       float64  undiscounted return of each episode
    /sessions            (S,)       compound one row per recording session: seed,
                                             behaviour, beta, epsilon,
                                             behaviour_sha256, labeller_sha256,
                                             step_start, step_stop
    /committed           (2,)       int64    [E, N]: the episodes and steps that are data

Who acts and who labels are separate: the *labeller* (the teacher) labels
every step of the file (its checksum is the file attribute
`teacher_sha256`); the *behaviour policy* that chose the actions can differ
from one session to the next (`SESSION_BEHAVIOURS`: the teacher, a student,
a mixture in which the teacher acts with probability beta, or uniform
random; each epsilon-greedy), and each session's row records it.

Observations are rebuilt on read: the observation at step i stacks frames
i-S+1 .. i of the same episode (S = frame_stack), with zeros for frames
before the episode's first step, exactly as the environment showed them.

File attributes: schema_version, game, rom_md5, num_actions, feature_dim,
preprocessing (JSON), teacher_sha256, teacher_kind, teacher_path,
teacher_value_source, seed, num_episodes, num_agent_steps,
mean_episode_return, versions (JSON: ale-py, gymnasium, h5py, keras,
multidistill), created_utc, created_host (absent in files written before
it); a part of a sharded dataset also has shard_index, num_shards and
shard_base_seed (`Shard`).

Sharded datasets. A game's dataset can instead be a folder of part files,
each written by one worker (`part_path`):

    <datasets_dir>/<game>/part-00000-of-00004.h5 ... part-00003-of-00004.h5

Each part is a file of this schema holding whole episodes of its own
sessions, seeded from (the dataset's base seed, its index) alone, so that
it is the same whoever writes it (`collect.shard_config`). A part is
written as `part-<i>-of-<N>.partial.h5` and renamed to its final name once
it holds its share of the steps: only final names are data, and a folder
opens (`Dataset(folder)`, a `ShardedDataset`) only when all N parts are
there and agree (game, labelling teacher, preprocessing, action and
feature counts, N, base seed). Rows and episodes are numbered across the
parts in part order, then in file order. A folder and a single file for
the same game are refused (`dataset_path`). A complete part is never
rewritten (only rebuilt on request) nor topped up.

Version 1 files (before sessions: one file-level `epsilon`, `build_seeds`,
no `teacher_values` or `behaviour_log_probs`) are read as they are, with
the missing columns derived from what they hold: every v1 step was acted by
the teacher's own rule, epsilon-greedy, so the behaviour log-probability
follows from the teacher outputs and epsilon, and a Q-value teacher's value
is max_a Q. Appending needs version 2: `python -m multidistill.datasets
upgrade FILE` rewrites a v1 file as v2 (or rebuild it).

Only whole episodes are stored. The writer appends an episode's rows first,
then its line of the episode table and its session's step range, then
`committed` (the commit point), so `committed` always describes whole
episodes; rows past it (an append cut short) are not data: readers ignore
them and the next writer overwrites them. The attributes num_episodes,
num_agent_steps and mean_episode_return mirror `committed` (after a crash
they may lag it by one episode until the next writer opens the file).
Appends run in HDF5's SWMR mode (files use the HDF5 1.10+ format,
libver="latest"), which keeps the file readable if the writer is killed at
any moment; open such a file with `h5py.File(path, "r", swmr=True)`. Every
array is stored with gzip (lossless) and fletcher32 checksums, so a flipped
byte fails the read that touches it instead of returning wrong data. Frames
are chunked by `FRAME_CHUNK_ROWS` consecutive steps: readers read
contiguous blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multidistill import environments, files

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
FRAME_CHUNK_ROWS = 64
_SMALL_CHUNK_ROWS = 4096
_COMPRESSION = dict(compression="gzip", compression_opts=1, shuffle=False, fletcher32=True)
# Byte shuffling groups the bytes of floats by significance: about a quarter
# smaller teacher features (mostly ReLU zeros) at no read cost.
_FLOAT_COMPRESSION = dict(_COMPRESSION, shuffle=True)

# Per-step arrays of the schema, in file order.
STEP_ARRAYS = (
    "frames",
    "teacher_outputs",
    "teacher_features",
    "teacher_values",
    "actions",
    "behaviour_log_probs",
    "rewards",
    "terminated",
    "truncated",
)
# The fields a reader returns beside the frames (`Dataset.read_rows`).
STEP_FIELDS = STEP_ARRAYS[1:]
_V1_STEP_ARRAYS = ("frames", "teacher_outputs", "teacher_features", "actions", "rewards",
                   "terminated", "truncated")
_DERIVED_IN_V1 = ("teacher_values", "behaviour_log_probs")
_EPISODE_ARRAYS = ("start", "length", "return")

# Who acted in a session (see the module docstring).
SESSION_BEHAVIOURS = ("teacher", "student", "mixture", "random")
_SESSION_DTYPE = np.dtype([
    ("seed", np.int64), ("behaviour", "S16"), ("beta", np.float64), ("epsilon", np.float64),
    ("behaviour_sha256", "S64"), ("labeller_sha256", "S64"),
    ("step_start", np.int64), ("step_stop", np.int64)])


@dataclasses.dataclass(frozen=True)
class Session:
    """One recording session: who acted, with which settings, over which steps.

    Attributes:
      seed: environment seed of the session (environment i: seed + i).
      behaviour: who acted, one of `SESSION_BEHAVIOURS`.
      beta: probability that the teacher acted at a step (1 for "teacher",
        0 for "student" and "random", the mixing weight for "mixture").
      epsilon: probability of a uniformly random action on top.
      behaviour_sha256: checksum of the acting network(s) ("" for random).
      labeller_sha256: checksum of the teacher that labelled the steps.
      step_start: first step of the session in the file.
      step_stop: one past its last committed step (-1, -1: unknown, in
        version 1 files of several sessions).
    """

    seed: int
    behaviour: str
    beta: float
    epsilon: float
    behaviour_sha256: str
    labeller_sha256: str
    step_start: int = -1
    step_stop: int = -1

    def __post_init__(self):
        if self.behaviour not in SESSION_BEHAVIOURS:
            raise ValueError(f"session behaviour must be one of {SESSION_BEHAVIOURS}, "
                             f"found {self.behaviour!r}")
        if not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"session beta and epsilon must be in [0, 1], found "
                             f"{self.beta} and {self.epsilon}")

    def to_row(self) -> np.ndarray:
        row = np.zeros((), _SESSION_DTYPE)
        for name in _SESSION_DTYPE.names:
            value = getattr(self, name)
            row[name] = value.encode() if isinstance(value, str) else value
        return row

    @classmethod
    def from_row(cls, row) -> Session:
        kw = {}
        for name in _SESSION_DTYPE.names:
            value = row[name]
            kw[name] = value.decode() if isinstance(value, bytes) else value.item()
        return cls(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def dataset_path(datasets_dir: str | os.PathLike, game: str) -> Path:
    """Where a game's dataset lives: its folder of part files
    `<datasets_dir>/<game>/` if there is one (a sharded dataset), else the
    single file `<datasets_dir>/<game>.h5` (which need not exist yet). Both
    open with `Dataset`.

    Raises:
      DatasetError: both the folder and the file exist.
    """
    file, folder = single_file_path(datasets_dir, game), shard_folder(datasets_dir, game)
    if folder.is_dir():
        if file.exists():
            raise DatasetError(
                f"game {game} has two datasets in {datasets_dir}: the single file {file} and "
                f"the folder of part files {folder}; expected one of them (a dataset is "
                "written either whole or in parts, --num_shards): move or delete one")
        return folder
    return file


def single_file_path(datasets_dir: str | os.PathLike, game: str) -> Path:
    """The single file of a game's dataset: `<datasets_dir>/<game>.h5`."""
    return Path(datasets_dir) / f"{game}.h5"


def shard_folder(datasets_dir: str | os.PathLike, game: str) -> Path:
    """The folder of a sharded dataset's part files: `<datasets_dir>/<game>/`."""
    return Path(datasets_dir) / game


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which part of a sharded dataset a file is (its attributes
    shard_index, num_shards, shard_base_seed).

    Attributes:
      index: the part's index, in [0, count).
      count: how many parts the dataset is split into.
      base_seed: the dataset's base seed; the part's own seeds derive from
        (base_seed, index) (`collect.shard_config`).
    """

    index: int
    count: int
    base_seed: int

    def __post_init__(self):
        if not 1 <= self.count <= 99_999:  # Five digits in the part names.
            raise ValueError(f"num_shards must be in [1, 99999], found {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard_index must be in [0, {self.count - 1}] for "
                             f"{self.count} shards, found {self.index}")

    @property
    def name(self) -> str:
        """The part's final file name, `part-<index>-of-<count>.h5` (5 digits each)."""
        return f"part-{self.index:05d}-of-{self.count:05d}.h5"


# Final and in-progress part names (`Shard.name`, `partial_path`).
_PART_NAME = re.compile(r"part-(\d{5})-of-(\d{5})(\.partial)?\.h5")


def part_path(datasets_dir: str | os.PathLike, game: str, shard: Shard) -> Path:
    """A part's final file: `<datasets_dir>/<game>/part-<i>-of-<N>.h5`."""
    return shard_folder(datasets_dir, game) / shard.name


def partial_path(part: str | os.PathLike) -> Path:
    """Where a part is written until complete: `part-<i>-of-<N>.partial.h5`."""
    part = Path(part)
    return part.with_name(part.stem + ".partial.h5")


def part_files(folder: str | os.PathLike) -> tuple[dict[int, Path], dict[int, Path], set[int]]:
    """The part files in a sharded dataset's folder.

    Returns:
      (complete parts by index, parts being written (`.partial.h5`) by
      index, the shard counts their names give). A temporary file of a
      write under way (`.tmp.h5`) and lock files are skipped.

    Raises:
      DatasetError: an HDF5 file in the folder is not named as a part.
    """
    folder = Path(folder)
    complete, partial, counts = {}, {}, set()
    for p in sorted(folder.glob("*.h5")):
        if p.name.endswith(".tmp.h5"):
            continue
        m = _PART_NAME.fullmatch(p.name)
        if m is None:
            raise DatasetError(
                f"dataset folder {folder} holds {p.name}, which is not a part file: expected "
                "only names part-<index>-of-<count>.h5 (or .partial.h5 while written); "
                "move it out of the folder")
        (partial if m.group(3) else complete)[int(m.group(1))] = p
        counts.add(int(m.group(2)))
    return complete, partial, counts


def check_layout(datasets_dir: str | os.PathLike, game: str, num_shards: int) -> None:
    """Refuses to write a game's dataset as `num_shards` parts (or, for 1, as
    a single file) where it already exists in another layout.

    Raises:
      DatasetError: the single file and the part folder would both exist, or
        the folder holds parts of another shard count.
    """
    file, folder = single_file_path(datasets_dir, game), shard_folder(datasets_dir, game)
    if num_shards == 1:
        dataset_path(datasets_dir, game)  # Both there: refused.
        return
    if file.exists():
        raise DatasetError(
            f"cannot write game {game} as {num_shards} parts in {folder}: its dataset is "
            f"the single file {file}; expected one of them (a dataset is written either "
            "whole or in parts, --num_shards): move or delete the file, or build with "
            "--num_shards=1")
    if folder.is_dir():
        complete, partial, counts = part_files(folder)
        other = sorted(counts - {num_shards})
        if other:
            names = sorted(p.name for p in [*complete.values(), *partial.values()])
            raise DatasetError(
                f"dataset folder {folder} holds parts of {other[0]} shards ({', '.join(names)}), "
                f"this run asks for {num_shards} (--num_shards): a dataset is split one way; "
                f"delete the folder or build into another --datasets_dir")


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of a dataset's writers (`file_lock`): `<path>.lock`."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """Holds an exclusive lock on `path`.lock for a writer, or refuses at once."""
    lock_path = lock_file(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError(
                f"dataset {path} is being written by another process (lock {lock_path} "
                "is held): wait for it to finish, or stop it first"
            ) from None
        yield
    finally:
        os.close(fd)


class DatasetError(ValueError):
    """A dataset file is unreadable, damaged, or does not fit the run."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import multidistill

    out = {"multidistill": multidistill.__version__}
    for pkg in ("ale-py", "gymnasium", "h5py", "keras"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum of HDF5 metadata."""
    m = 0xFFFFFFFF

    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & m

    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & m
    k = 0
    while length > 12:
        a = (a + int.from_bytes(data[k:k + 4], "little")) & m
        b = (b + int.from_bytes(data[k + 4:k + 8], "little")) & m
        c = (c + int.from_bytes(data[k + 8:k + 12], "little")) & m
        a = (a - c) & m; a ^= rot(c, 4); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 4); b = (b + a) & m  # noqa: E702
        length -= 12
        k += 12
    if length == 0:
        return c
    tail = data[k:k + length] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b; c = (c - rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & m  # noqa: E702
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def clear_status_flags(path: str | os.PathLike) -> bool:
    """Clears the "open for writing" flags that a killed SWMR writer leaves.

    HDF5 refuses to open such a file for writing again (`h5clear -s` is the
    C tool for this; it is not shipped with h5py). The flags live in the
    version 2/3 superblock at offset 0, guarded by a lookup3 checksum. Only
    call this while holding the dataset's lock (no writer is running).

    A killed SWMR writer can also leave the superblock's end-of-file address
    (the EOA) behind data it had already flushed: SWMR readers read past it,
    a plain reader fails there with "addr overflow". So the EOA is raised to
    the file's size too, as `h5clear --increment=0` does.

    Returns:
      True if flags were set and are now cleared.
    """
    with open(path, "r+b") as f:
        head = f.read(64)
        if head[:8] != _SIGNATURE or head[8] not in (2, 3):
            return False
        size_offsets = head[9]
        end = 12 + 4 * size_offsets
        if head[11] == 0 or len(head) < end + 4:
            return False
        stored = int.from_bytes(head[end:end + 4], "little")
        if _lookup3(head[:end]) != stored:
            return False  # Not the layout we know: leave the file alone.
        eoa_at = 12 + 2 * size_offsets  # After the base and extension addresses.
        eoa = int.from_bytes(head[eoa_at:eoa_at + size_offsets], "little")
        size = os.fstat(f.fileno()).st_size
        if size > eoa:
            head = (head[:eoa_at] + size.to_bytes(size_offsets, "little")
                    + head[eoa_at + size_offsets:])
        fixed = head[:11] + b"\x00" + head[12:end]
        f.seek(0)
        f.write(fixed + _lookup3(fixed).to_bytes(4, "little"))
        f.flush()
        os.fsync(f.fileno())
    return True


def _superblock_eof(path: Path) -> int | None:
    """The end-of-file address a version 2/3 superblock records, if any."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:8] != _SIGNATURE or len(head) < 12 or head[8] not in (2, 3):
        return None
    size = head[9]
    start = 12 + 2 * size
    return int.from_bytes(head[start:start + size], "little")


def _open_h5(path: Path, mode: str):
    """Opens a dataset file; read mode falls back to SWMR for a file whose
    writer was killed (its status flags still set), which stays readable."""
    import h5py

    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    if not h5py.is_hdf5(path):
        raise DatasetError(
            f"dataset {path} is not an HDF5 file (expected a multidistill "
            f"dataset; found {path.stat().st_size} bytes of something else)"
        )
    eof, size = _superblock_eof(path), path.stat().st_size
    if eof is not None and size < eof:
        # Checked here because an SWMR reader retries (for minutes) on the
        # reads that a truncated file fails.
        raise DatasetError(
            f"dataset {path} is truncated: the file holds {size} bytes, its header "
            f"says {eof}")
    try:
        if mode == "r":
            try:
                return h5py.File(path, "r", libver="latest")
            except OSError as e:
                if "already open for write" not in str(e):
                    raise
                return h5py.File(path, "r", libver="latest", swmr=True)
        return h5py.File(path, mode, libver="latest")
    except OSError as e:
        if "lock" in str(e).lower():
            raise DatasetError(
                f"dataset {path} is open in another process (a training run or a "
                f"reader): close it to append to the file ({e})") from None
        raise DatasetError(
            f"dataset {path} cannot be opened (truncated or damaged HDF5 file?): {e}"
        ) from None


class _H5File:
    """Closing and context-manager support for a class holding `self._f`."""

    _f = None

    def close(self):
        if self._f:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DatasetWriter(_H5File):
    """Appends whole episodes to one game's dataset file.

    Opening an existing file continues it; its game, preprocessing and
    labelling teacher must be those given here (else `DatasetError`, unless
    the caller deletes the file and rebuilds). Only one writer may hold a
    file: callers serialise writers with `file_lock`. Each recording session
    starts with `start_session`, which records who acts. A part of a sharded
    dataset is given its `shard`, written with the file and checked on
    reopening like the teacher.

    Crash safety: a new file is created under a temporary name and renamed
    into place; appends run in HDF5's single-writer/multiple-reader (SWMR)
    mode, whose ordered metadata flushes keep the file readable whenever the
    process dies; the `committed` array ([episodes, steps]) is written last
    and is what readers believe. Rows past it (an episode cut short) are
    overwritten by the next append.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        game: str,
        rom_md5: str,
        num_actions: int,
        feature_dim: int,
        preprocessing: environments.Preprocessing,
        teacher_sha256: str,
        teacher_kind: str,
        teacher_path: str,
        seed: int,
        teacher_value_source: str = "none",
        shard: Shard | None = None,
    ):
        self.path = Path(path)
        self.frame_shape = (preprocessing.frame_height, preprocessing.frame_width)
        self.num_actions = int(num_actions)
        self.feature_dim = int(feature_dim)
        expected = dict(
            game=game,
            preprocessing=preprocessing.to_json(),
            teacher_sha256=teacher_sha256,
            num_actions=self.num_actions,
            feature_dim=self.feature_dim,
        )
        if shard is not None:
            expected.update(shard_index=shard.index, num_shards=shard.count,
                            shard_base_seed=shard.base_seed)
        self._f = None
        if self.path.exists():
            clear_status_flags(self.path)
        else:
            files.atomic_write(self.path, lambda tmp: self._create(
                tmp, expected, rom_md5, teacher_kind, teacher_path, teacher_value_source,
                seed))
        with Dataset(self.path) as ds:  # Full validation before writing.
            if ds.schema_version != SCHEMA_VERSION:
                raise DatasetError(
                    f"dataset {self.path} has schema version {ds.schema_version}: it can be "
                    f"read, but appending needs version {SCHEMA_VERSION}. Upgrade it with "
                    f"`python -m multidistill.datasets upgrade {self.path}`, or rebuild it "
                    "(--rebuild_datasets)")
            self._return_sum = float(np.sum(ds.episode_returns, dtype=np.float64))
        self._f = _open_h5(self.path, "a")
        try:
            self._f.swmr_mode = True
            self._check_matches(expected)
            self._e, self._n = (int(x) for x in self._f["committed"][:])
            self._session = None
            self._clamp_sessions()
            self._sync_attrs()
            self._f.flush()
        except Exception:
            self._f.close()
            self._f = None
            raise

    def _create(self, tmp, expected, rom_md5, teacher_kind, teacher_path, value_source,
                seed):
        import h5py

        with h5py.File(tmp, "w", libver="latest") as f:
            h, w = self.frame_shape
            f.create_dataset(
                "frames", (0, h, w), maxshape=(None, h, w), dtype=np.uint8,
                chunks=(FRAME_CHUNK_ROWS, h, w), **_COMPRESSION,
            )
            for name, width, dtype in (
                ("teacher_outputs", self.num_actions, np.float32),
                ("teacher_features", max(self.feature_dim, 1), np.float16),
            ):
                f.create_dataset(
                    name, (0, width), maxshape=(None, width), dtype=dtype,
                    chunks=(max(1, min(_SMALL_CHUNK_ROWS, (1 << 18) // (width * 4))), width),
                    **_FLOAT_COMPRESSION,
                )
            for name, dtype in (("teacher_values", np.float32), ("actions", np.uint8),
                                ("behaviour_log_probs", np.float32), ("rewards", np.float32),
                                ("terminated", bool), ("truncated", bool)):
                f.create_dataset(name, (0,), maxshape=(None,), dtype=dtype,
                                 chunks=(_SMALL_CHUNK_ROWS,), **_COMPRESSION)
            ep = f.create_group("episodes")
            for name, dtype in (("start", np.int64), ("length", np.int64),
                                ("return", np.float64)):
                ep.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(1024,),
                                  **_COMPRESSION)
            f.create_dataset("sessions", (0,), maxshape=(None,), dtype=_SESSION_DTYPE,
                             chunks=(64,))
            f.create_dataset("committed", data=np.zeros(2, np.int64))
            a = f.attrs
            a["schema_version"] = SCHEMA_VERSION
            for k, v in expected.items():
                a[k] = v
            a["rom_md5"] = rom_md5
            a["teacher_kind"] = teacher_kind
            a["teacher_path"] = str(teacher_path)
            a["teacher_value_source"] = value_source
            a["seed"] = int(seed)
            a["versions"] = json.dumps(_versions(), sort_keys=True)
            a["created_utc"] = _now()
            a["created_host"] = socket.gethostname()
            a["num_agent_steps"] = 0
            a["num_episodes"] = 0
            a["mean_episode_return"] = float("nan")

    def _check_matches(self, expected):
        a = self._f.attrs
        problems = []
        for k, v in expected.items():
            found = a.get(k)
            if isinstance(found, bytes):
                found = found.decode()
            if isinstance(found, np.generic):
                found = found.item()
            if found != v:
                if k == "preprocessing":
                    spec = environments.Preprocessing.from_json(found)
                    want = environments.Preprocessing.from_json(v)
                    problems.append("preprocessing differs (" + "; ".join(
                        want.differences(spec)).replace("here vs", "asked vs") + " in file)")
                else:
                    problems.append(f"{k} is {found!r} in the file, the run asks for {v!r}")
        if problems:
            raise DatasetError(
                f"dataset {self.path} was built differently from what this run asks: "
                + "; ".join(problems)
                + ". Refusing to mix them: delete the file or pass --rebuild_datasets"
            )

    def _clamp_sessions(self):
        """Cuts session step ranges back to the committed steps (a killed
        writer may have extended one before committing its episode)."""
        table = self._f["sessions"]
        if len(table):
            rows = table[:]
            over = rows["step_stop"] > self._n
            if over.any():
                rows["step_stop"] = np.minimum(rows["step_stop"], self._n)
                rows["step_start"] = np.minimum(rows["step_start"], self._n)
                table[:] = rows

    def _sync_attrs(self):
        """Mirrors `committed` into the summary attributes.

        Only fixed-size attributes change after creation: HDF5's SWMR mode
        does not support rewriting variable-length ones (strings), which a
        kill can leave unreadable.
        """
        a = self._f.attrs
        a["num_agent_steps"] = self._n
        a["num_episodes"] = self._e
        a["mean_episode_return"] = self.mean_episode_return

    @property
    def num_agent_steps(self) -> int:
        return self._n

    @property
    def num_episodes(self) -> int:
        return self._e

    @property
    def mean_episode_return(self) -> float:
        return self._return_sum / self._e if self._e else float("nan")

    @property
    def sessions(self) -> list[Session]:
        return [Session.from_row(r) for r in _written_rows(self._f["sessions"][:])]

    def start_session(self, session: Session) -> int:
        """Records a new recording session; the episodes appended from now on
        belong to it. Its step range is set here. Returns its index.

        The row goes after the last written one: a row that a killed writer
        resized the table for but never wrote (all zeros) is overwritten."""
        index = len(_written_rows(self._f["sessions"][:]))
        row = dataclasses.replace(session, step_start=self._n, step_stop=self._n).to_row()
        _write_rows(self._f["sessions"], index, row[None])
        self._f.flush()
        self._session = index
        return index

    def append_episode(self, episode: dict[str, np.ndarray]) -> None:
        """Appends one whole episode to the current session.

        Args:
          episode: arrays keyed like the step arrays of the schema, all of the
            same length T (>= 1); `frames` (T, H, W) uint8.

        Raises:
          DatasetError: no session was started, shapes do not match the
            file, or teacher outputs hold NaN or infinite values.
        """
        if self._session is None:
            raise DatasetError(f"{self.path}: start_session before appending episodes")
        t = int(episode["frames"].shape[0])
        if t < 1:
            raise DatasetError(f"{self.path}: refusing to append an empty episode")
        for name in STEP_ARRAYS:
            if name not in episode:
                raise DatasetError(f"{self.path}: the episode lacks the array {name}")
            if episode[name].shape[0] != t:
                raise DatasetError(
                    f"{self.path}: episode array {name} has {episode[name].shape[0]} rows, "
                    f"expected {t}"
                )
        if episode["frames"].shape[1:] != self.frame_shape:
            raise DatasetError(
                f"{self.path}: frames of shape {episode['frames'].shape[1:]}, "
                f"expected {self.frame_shape}"
            )
        outputs = np.asarray(episode["teacher_outputs"], np.float32)
        if not np.isfinite(outputs).all():
            raise DatasetError(
                f"{self.path}: the teacher produced NaN or infinite outputs; "
                "refusing to record them (is the teacher file damaged?)"
            )
        features = np.asarray(episode["teacher_features"], np.float32)
        if features.shape[1] == 0:
            features = np.zeros((t, 1), np.float32)
        values = dict(episode, teacher_outputs=outputs,
                      teacher_features=features.astype(np.float16))
        ep_return = float(np.sum(episode["rewards"], dtype=np.float64))
        n0, e0 = self._n, self._e
        f = self._f
        try:
            # Rows first (over whatever an interrupted append left past the
            # committed counts), then the episode table and the session's
            # range, then the commit.
            for name in STEP_ARRAYS:
                _write_rows(f[name], n0, values[name])
            for name, value in (("start", n0), ("length", t), ("return", ep_return)):
                _write_rows(f["episodes"][name], e0, np.asarray([value]))
            row = f["sessions"][self._session]
            row["step_stop"] = n0 + t
            f["sessions"][self._session] = row
            f.flush()
            f["committed"][:] = [e0 + 1, n0 + t]
            f.flush()
        except OSError as e:
            raise DatasetError(
                f"{self.path}: writing an episode failed ({e}); the {e0} episodes "
                "written before are intact") from None
        self._n, self._e = n0 + t, e0 + 1
        self._return_sum += ep_return
        self._sync_attrs()
        f.flush()


def _written_rows(rows: np.ndarray) -> np.ndarray:
    """The session rows that were written: a writer killed between growing
    the table and writing its row leaves a trailing row of zeros (no
    behaviour), which is not a session."""
    written = rows["behaviour"] != b""
    return rows[: int(np.argmin(written)) if not written.all() else len(rows)]


def _write_rows(ds, start: int, values: np.ndarray) -> None:
    stop = start + len(values)
    if ds.shape[0] < stop:
        ds.resize(stop, axis=0)
    ds[start:stop] = values


def _attr(attrs, name, default=None):
    value = attrs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode()
    return value.item() if isinstance(value, np.generic) else value


class Dataset(_H5File):
    """Read access to one game's dataset, validated on open.

    `Dataset(file)` reads a single file; `Dataset(folder)` reads the folder
    of a sharded dataset's parts as one dataset (it returns a
    `ShardedDataset`, with the same interface).

    Args:
      path: the file, or the folder of part files.
      max_episodes: show only the first `max_episodes` committed episodes
        (a prefix of the file, e.g. the data a training run started from,
        while the file has grown since); None shows all. A file holding
        fewer episodes is refused.
    """

    def __new__(cls, path: str | os.PathLike, max_episodes: int | None = None):
        if cls is Dataset and Path(path).is_dir():
            cls = ShardedDataset
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike, max_episodes: int | None = None):
        self.path = Path(path)
        self._f = _open_h5(self.path, "r")
        try:
            self._validate()
            self._load(max_episodes)
        except Exception:
            self._f.close()
            raise

    def _load(self, max_episodes):
        a = self._f.attrs
        self._is_prefix = max_episodes is not None
        self.schema_version = int(a["schema_version"])
        self.game = str(_attr(a, "game"))
        e, n = (int(x) for x in self._f["committed"][:])
        if max_episodes is not None:
            if max_episodes > e:
                raise DatasetError(
                    f"dataset {self.path} holds {e} episodes, fewer than the {max_episodes} "
                    "asked for (was it rebuilt or replaced since?)")
            e = int(max_episodes)
            n = int(self._f["episodes/start"][e - 1] + self._f["episodes/length"][e - 1]) \
                if e else 0
        self.num_episodes, self.num_agent_steps = e, n
        self.num_actions = int(a["num_actions"])
        self.feature_dim = int(a["feature_dim"])
        self.stored_feature_dim = int(self._f["teacher_features"].shape[1])
        self.teacher_sha256 = str(_attr(a, "teacher_sha256"))
        self.teacher_kind = str(_attr(a, "teacher_kind"))
        self.teacher_value_source = str(_attr(
            a, "teacher_value_source", "max_q" if self.teacher_kind == "q_values" else "none"))
        self.preprocessing = environments.Preprocessing.from_json(
            a["preprocessing"], str(self.path))
        self.episode_starts = self._f["episodes/start"][: self.num_episodes]
        self.episode_lengths = self._f["episodes/length"][: self.num_episodes]
        self.episode_returns = self._f["episodes/return"][: self.num_episodes]

    def _validate(self):
        f, a = self._f, self._f.attrs
        if "schema_version" not in a:
            raise DatasetError(
                f"dataset {self.path} is an HDF5 file but not a multidistill dataset "
                "(no schema_version attribute)"
            )
        version = int(a["schema_version"])
        if version not in READABLE_VERSIONS:
            raise DatasetError(
                f"dataset {self.path} has schema version {version}, this multidistill "
                f"reads versions {list(READABLE_VERSIONS)}: rebuild it (--rebuild_datasets)"
            )
        arrays = STEP_ARRAYS + ("committed", "sessions") if version == 2 else \
            _V1_STEP_ARRAYS + ("committed", "build_seeds")
        missing = [x for x in arrays if x not in f] + [
            "episodes/" + x for x in _EPISODE_ARRAYS if "episodes/" + x not in f
        ]
        if missing:
            raise DatasetError(f"dataset {self.path} lacks the arrays {missing}")
        try:
            e, n = (int(x) for x in f["committed"][:])
        except OSError as err:
            raise DatasetError(f"dataset {self.path}: its counts are unreadable: {err}") from None
        steps = STEP_ARRAYS if version == 2 else _V1_STEP_ARRAYS
        short = [x for x in steps if f[x].shape[0] < n]
        short += ["episodes/" + x for x in _EPISODE_ARRAYS if f["episodes/" + x].shape[0] < e]
        if short:
            raise DatasetError(
                f"dataset {self.path} is inconsistent: it counts {n} steps and "
                f"{e} episodes but {short} hold fewer rows"
            )
        if e:
            try:
                starts = f["episodes/start"][:e]
                lengths = f["episodes/length"][:e]
            except OSError as err:
                raise DatasetError(
                    f"dataset {self.path}: its episode table is damaged: {err}") from None
            if starts[0] != 0 or (np.diff(starts) != lengths[:-1]).any() or (
                starts[-1] + lengths[-1] != n
            ):
                raise DatasetError(
                    f"dataset {self.path} is inconsistent: the episode table does not "
                    f"tile the {n} recorded steps"
                )

    @property
    def attrs(self) -> dict[str, Any]:
        out = {k: _attr(self._f.attrs, k) for k in self._f.attrs}
        # The committed counts are the truth (the attributes can lag them by
        # one episode after a crash, until the next writer opens the file).
        out["num_agent_steps"], out["num_episodes"] = self.num_agent_steps, self.num_episodes
        key = "mean_episode_return" if self.schema_version >= 2 else \
            "mean_teacher_episode_return"
        out[key] = (float(np.mean(self.episode_returns)) if self.num_episodes
                    else float("nan"))
        return out

    @property
    def shard(self) -> Shard | None:
        """Which part of a sharded dataset this file is (None: a whole dataset)."""
        a = self._f.attrs
        if "shard_index" not in a:
            return None
        return Shard(int(a["shard_index"]), int(a["num_shards"]), int(a["shard_base_seed"]))

    @property
    def sessions(self) -> list[Session]:
        """Who acted when: one `Session` per recording session, step ranges
        cut to the steps this reader shows."""
        if self.schema_version == 1:
            return self._v1_sessions()
        out = []
        for row in _written_rows(self._f["sessions"][:]):
            s = Session.from_row(row)
            out.append(dataclasses.replace(
                s, step_start=min(s.step_start, self.num_agent_steps),
                step_stop=min(s.step_stop, self.num_agent_steps)))
        if self._is_prefix:  # Sessions after the prefix are not part of it.
            out = [s for s in out if s.step_start < self.num_agent_steps]
        return out

    def _v1_sessions(self) -> list[Session]:
        a = self._f.attrs
        seeds = [int(x) for x in self._f["build_seeds"][:]]
        if not seeds:  # No build seed recorded: one session, seeded as the file says.
            seeds = [int(a.get("seed", 0))]
        known = len(seeds) == 1
        return [Session(seed=seed, behaviour="teacher", beta=1.0,
                        epsilon=float(a["epsilon"]), behaviour_sha256=self.teacher_sha256,
                        labeller_sha256=self.teacher_sha256,
                        step_start=0 if known else -1,
                        step_stop=self.num_agent_steps if known else -1)
                for seed in seeds]

    def check_compatible(self, game: str, preprocessing: environments.Preprocessing,
                         teacher_sha256: str | None = None) -> None:
        """Raises DatasetError unless built for this game, spec and labelling teacher."""
        problems = []
        if self.game != game:
            problems.append(f"game is {self.game!r}, expected {game!r}")
        if self.preprocessing != preprocessing:
            problems.append("preprocessing differs (" + "; ".join(
                self.preprocessing.differences(preprocessing)).replace(
                    "here vs", "in file vs asked") + ")")
        if teacher_sha256 is not None and self.teacher_sha256 != teacher_sha256:
            problems.append(
                f"it was labelled by another teacher (sha256 {self.teacher_sha256[:12]}… "
                f"in the file, {teacher_sha256[:12]}… now)"
            )
        if problems:
            raise DatasetError(
                f"dataset {self.path} does not fit this run: " + "; ".join(problems)
                + ". Delete it or pass --rebuild_datasets to build it anew"
            )

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        if self.schema_version == 1 and name in _DERIVED_IN_V1:
            return self._derive_v1(name, start, stop)
        try:
            return self._f[name][start:stop]
        except OSError as e:
            raise DatasetError(
                f"dataset {self.path}: reading {name}[{start}:{stop}] failed, the file "
                f"is damaged (checksum or decompression error): {e}"
            ) from None

    def _derive_v1(self, name: str, start: int, stop: int) -> np.ndarray:
        """The columns version 1 lacks, from what it holds (module docstring)."""
        from multidistill import teachers

        outputs = self._read("teacher_outputs", start, stop)
        if name == "teacher_values":
            if self.teacher_kind == "q_values":
                return outputs.max(axis=1).astype(np.float32)
            return np.full(stop - start, np.nan, np.float32)
        return teachers.action_log_probs(outputs, self.teacher_kind,
                                         float(self._f.attrs["epsilon"]),
                                         self._read("actions", start, stop))

    def episode_offsets(self, start: int, stop: int) -> np.ndarray:
        """Steps since each row's episode start, for rows start..stop-1."""
        rows = np.arange(start, stop)
        ep = np.searchsorted(self.episode_starts, rows, side="right") - 1
        return rows - self.episode_starts[ep]

    def _check_rows(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.num_agent_steps:
            raise IndexError(
                f"rows {start}:{stop} outside dataset {self.path} of "
                f"{self.num_agent_steps} steps"
            )

    def read_rows(self, start: int, stop: int, fields: Sequence[str] = STEP_FIELDS,
                  history: int = 0) -> dict[str, Any]:
        """Reads rows start..stop-1 as stored, with `history` earlier frames.

        The raw form for readers that rebuild observations themselves (the
        minibatch window keeps single frames and stacks per sample).

        Args:
          start, stop: the rows.
          fields: which of `STEP_FIELDS` to read (stored dtypes;
            `teacher_features` float16).
          history: frames before `start` to read too (frame_stack - 1 for
            exact stacks; fewer where the file starts).

        Returns:
          {"frames": (prefix + n, H, W) uint8, "prefix": frames before
          `start` included, "offsets": (n,) steps since each row's episode
          start, and each field (n, ...)}.
        """
        self._check_rows(start, stop)
        unknown = [x for x in fields if x not in STEP_FIELDS]
        if unknown:
            raise ValueError(f"unknown dataset fields {unknown}: expected some of "
                             f"{list(STEP_FIELDS)}")
        lo = max(0, start - int(history))
        out = {"frames": self._read("frames", lo, stop), "prefix": start - lo,
               "offsets": self.episode_offsets(start, stop)}
        for name in fields:
            out[name] = self._read(name, start, stop)
        return out

    def read_block(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Reads rows start..stop-1 with their observations rebuilt.

        Returns:
          A dict with `observations` (n, S, H, W) uint8 and every field of
          `STEP_FIELDS` for those rows (`teacher_features` as float32).
        """
        s = self.preprocessing.frame_stack
        raw = self.read_rows(start, stop, STEP_FIELDS, history=s - 1)
        out = {"observations": stack_rows(raw, np.arange(stop - start), s)}
        out.update({name: raw[name] for name in STEP_FIELDS})
        out["teacher_features"] = out["teacher_features"].astype(np.float32)
        return out


class DatasetSet:
    """Several files of one game read as one dataset, rows in file order.

    A game's data can be a set of files: the teacher-driven dataset and the
    files that later collection rounds wrote (one per round, so that a round
    leaving the sampler frees its disk by deleting its file; HDF5 does not
    give space back otherwise). The set offers the read interface of
    `Dataset` that batch sources use (counts, episode table, `read_rows`,
    `sessions`); rows are numbered across the files, and a read may span
    files (every file starts an episode, so no observation stacks frames of
    two files).

    Args:
      paths: the files, in row order.
      max_episodes: per file, the prefix of episodes to show (None: all).

    Raises:
      DatasetError: a file does not open, or the files differ in game,
        labelling teacher, action or feature count, or preprocessing.
    """

    def __init__(self, paths: Sequence[str | os.PathLike],
                 max_episodes: Sequence[int | None] | None = None):
        if not paths:
            raise ValueError("a dataset set needs at least one file")
        max_episodes = list(max_episodes) if max_episodes is not None else [None] * len(paths)
        if len(max_episodes) != len(paths):
            raise ValueError(f"max_episodes has {len(max_episodes)} entries for "
                             f"{len(paths)} files")
        self.parts: list[Dataset] = []
        try:
            for p, m in zip(paths, max_episodes):
                self.parts.append(Dataset(p, None if m is None else int(m)))
            _check_same_source(self.parts)
        except Exception:
            self.close()
            raise
        first = self.parts[0]
        self.path = first.path if len(self.parts) == 1 else Path(
            f"{first.path} (+{len(self.parts) - 1} more files)")
        for name in ("game", "num_actions", "feature_dim", "stored_feature_dim",
                     "teacher_sha256", "teacher_kind", "teacher_value_source",
                     "preprocessing"):
            setattr(self, name, getattr(first, name))
        self._index()

    def _index(self) -> None:
        """Row and episode numbers across the files, from each file's counts."""
        self.part_steps = np.array([ds.num_agent_steps for ds in self.parts], np.int64)
        self.part_starts = np.concatenate([[0], np.cumsum(self.part_steps)]).astype(np.int64)
        self.num_agent_steps = int(self.part_starts[-1])
        self.num_episodes = int(sum(ds.num_episodes for ds in self.parts))
        self.episode_starts = np.concatenate(
            [ds.episode_starts + s for ds, s in zip(self.parts, self.part_starts)])
        self.episode_lengths = np.concatenate([ds.episode_lengths for ds in self.parts])
        self.episode_returns = np.concatenate([ds.episode_returns for ds in self.parts])

    @property
    def sessions(self) -> list[Session]:
        """Every file's sessions, step ranges in the set's row numbers."""
        return [dataclasses.replace(s, step_start=s.step_start + int(start),
                                    step_stop=s.step_stop + int(start))
                for ds, start in zip(self.parts, self.part_starts) for s in ds.sessions]

    episode_offsets = Dataset.episode_offsets  # From the set's episode table.

    def read_rows(self, start: int, stop: int, fields: Sequence[str] = STEP_FIELDS,
                  history: int = 0) -> dict[str, Any]:
        """`Dataset.read_rows` over the set's rows (history from the first file read)."""
        if not 0 <= start <= stop <= self.num_agent_steps:
            raise IndexError(f"rows {start}:{stop} outside dataset {self.path} of "
                             f"{self.num_agent_steps} steps")
        if start == stop:  # No rows (and no history): any file's empty read.
            return self.parts[0].read_rows(0, 0, fields)
        first = int(np.searchsorted(self.part_starts, start, side="right") - 1)
        pieces, at = [], start
        for k in range(first, len(self.parts)):
            lo, hi = self.part_starts[k], self.part_starts[k + 1]
            if at >= stop:
                break
            if at >= hi:
                continue
            end = min(stop, hi)
            pieces.append(self.parts[k].read_rows(int(at - lo), int(end - lo), fields,
                                                  history=history if not pieces else 0))
            at = end
        if len(pieces) == 1:
            return pieces[0]
        out = {"prefix": pieces[0]["prefix"]}
        for name in ["frames", "offsets", *fields]:
            out[name] = np.concatenate([p[name] for p in pieces])
        return out

    read_block = Dataset.read_block  # Reads rows through `read_rows`, as for one file.

    def close(self):
        for ds in self.parts:
            ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# What the files read as one dataset must share (`DatasetSet`, `ShardedDataset`).
_SAME_SOURCE = (("game", ""), ("teacher_sha256", " (the labelling teacher)"),
                ("num_actions", ""), ("stored_feature_dim", " (teacher features stored)"),
                ("preprocessing", ""))


def _check_same_source(parts: Sequence[Dataset]) -> None:
    """Raises DatasetError unless every file matches the first in game,
    labelling teacher, action and feature counts, and preprocessing."""
    first = parts[0]
    for ds in parts[1:]:
        for name, note in _SAME_SOURCE:
            want, found = getattr(first, name), getattr(ds, name)
            if want == found:
                continue
            if name == "preprocessing":
                a, b = want.to_dict(), found.to_dict()
                want = ", ".join(f"{k}={a[k]!r}" for k in a if a[k] != b[k])
                found = ", ".join(f"{k}={b[k]!r}" for k in a if a[k] != b[k])
            raise DatasetError(
                f"dataset {ds.path} cannot be read with {first.path} as one dataset: its "
                f"{name} differs{note}: found {found!r}, expected {want!r} (that of "
                f"{first.path})")


class ShardedDataset(Dataset):
    """A sharded dataset: a folder of part files read as one dataset.

    `Dataset(folder)` returns one; it reads like a `Dataset` of one file
    (counts, episode table, sessions, `read_rows`, `read_block`, `attrs`,
    `check_compatible`). It opens only when all the parts
    `part-<i>-of-<N>.h5`, i = 0..N-1, are complete and agree (module
    docstring): a part still being written (`.partial.h5`) or missing
    makes the folder incomplete. Rows and episodes are numbered across the
    parts in part order, then in file order, and a prefix (`max_episodes`)
    is one of that order.

    Attributes:
      part_paths: the part files, in part order.
      num_shards: how many parts.
      base_seed: the base seed the parts' seeds derive from.

    Raises:
      DatasetError: the folder holds no parts, parts of several splits,
        not all N complete parts, or parts that disagree.
    """

    def __init__(self, path: str | os.PathLike, max_episodes: int | None = None):
        self.path = Path(path)
        self.part_paths = _complete_parts(self.path)
        self._set = DatasetSet(self.part_paths)
        try:
            self._check_shards()
            if max_episodes is not None:
                self._show_prefix(int(max_episodes))
        except Exception:
            self._set.close()
            raise
        parts = self._set.parts
        self._set.path = self.path  # Its messages name the folder.
        self.num_shards = len(parts)
        self.base_seed = parts[0].shard.base_seed
        self.schema_version = parts[0].schema_version
        for name in ("game", "num_actions", "feature_dim", "stored_feature_dim",
                     "teacher_sha256", "teacher_kind", "teacher_value_source",
                     "preprocessing", "num_agent_steps", "num_episodes", "episode_starts",
                     "episode_lengths", "episode_returns"):
            setattr(self, name, getattr(self._set, name))

    def _check_shards(self) -> None:
        parts, n = self._set.parts, len(self._set.parts)
        base = None
        for k, ds in enumerate(parts):
            shard = ds.shard
            if shard is None:
                raise DatasetError(
                    f"dataset part {ds.path} has no shard attributes (shard_index, "
                    "num_shards): expected a part written by build_datasets --num_shards, "
                    "found a whole dataset's file under a part's name")
            if (shard.index, shard.count) != (k, n):
                raise DatasetError(
                    f"dataset part {ds.path} is part {shard.index} of {shard.count} by its "
                    f"attributes, expected part {k} of {n} by its name (was it renamed?)")
            if base is None:
                base = shard.base_seed
            elif shard.base_seed != base:
                raise DatasetError(
                    f"dataset part {ds.path} derives its seeds from base seed "
                    f"{shard.base_seed}, expected {base} as in {parts[0].path}: the parts "
                    "were built with different --seed values; rebuild it with the others' "
                    "--seed (--shard_index={k} --rebuild_datasets)")

    def _show_prefix(self, max_episodes: int) -> None:
        parts = self._set.parts
        total = sum(ds.num_episodes for ds in parts)
        if max_episodes > total:
            raise DatasetError(
                f"dataset {self.path} holds {total} episodes, fewer than the {max_episodes} "
                "asked for (was it rebuilt or replaced since?)")
        left = max_episodes
        for ds in parts:  # Part order, then file order.
            take = min(left, ds.num_episodes)
            ds._load(take)
            left -= take
        self._set._index()

    @property
    def shard(self) -> Shard | None:
        return None  # The whole dataset, not a part of it.

    @property
    def attrs(self) -> dict[str, Any]:
        """Part 0's file attributes with the dataset's counts, its base seed
        (`seed`), `num_shards`, and per part (`parts`) its file name,
        counts, creation time and host."""
        parts = self._set.parts
        out = parts[0].attrs
        for name in ("shard_index", "shard_base_seed", "created_host"):
            out.pop(name, None)
        out.update(
            seed=self.base_seed, num_shards=self.num_shards,
            num_agent_steps=self.num_agent_steps, num_episodes=self.num_episodes,
            mean_episode_return=(float(np.mean(self.episode_returns)) if self.num_episodes
                                 else float("nan")),
            created_utc=min(str(ds.attrs.get("created_utc", "")) for ds in parts),
            parts=[{"file": ds.path.name, "num_agent_steps": ds.num_agent_steps,
                    "num_episodes": ds.num_episodes,
                    "created_utc": ds.attrs.get("created_utc"),
                    "created_host": ds.attrs.get("created_host")} for ds in parts])
        return out

    @property
    def sessions(self) -> list[Session]:
        """Every part's sessions in part order, step ranges in the dataset's rows."""
        return self._set.sessions

    def read_rows(self, start: int, stop: int, fields: Sequence[str] = STEP_FIELDS,
                  history: int = 0) -> dict[str, Any]:
        """`Dataset.read_rows` over the dataset's rows (see `DatasetSet.read_rows`)."""
        return self._set.read_rows(start, stop, fields, history)

    def close(self):
        self._set.close()


def _complete_parts(folder: Path) -> list[Path]:
    """A sharded dataset's part files in order, or DatasetError unless all
    N are complete."""
    complete, partial, counts = part_files(folder)
    if not counts:
        raise DatasetError(
            f"dataset folder {folder} holds no part files: expected part-00000-of-<N>.h5 "
            "... part-<N-1>-of-<N>.h5, written by build_datasets --num_shards=N")
    if len(counts) > 1:
        raise DatasetError(
            f"dataset folder {folder} holds parts of several splits ({sorted(counts)} "
            "shards): expected the parts of one split; delete the folder and build it anew")
    n = counts.pop()
    beyond = sorted(p.name for i, p in {**complete, **partial}.items() if i >= n)
    if beyond:
        raise DatasetError(
            f"dataset folder {folder} holds {beyond}: part indexes must be below the "
            f"{n} shards the names give")
    missing = [i for i in range(n) if i not in complete]
    if missing:
        writing = [partial[i].name for i in missing if i in partial]
        raise DatasetError(
            f"dataset {folder} is incomplete: expected {n} complete parts, found "
            f"{n - len(missing)}; missing part(s) {missing}"
            + (f" ({', '.join(writing)} being written, or interrupted)" if writing else "")
            + f". Build them (build_datasets --num_shards={n} --shard_index=I, with the "
            "other parts' flags), then read the dataset")
    return [complete[i] for i in range(n)]


def stack_rows(block: dict[str, Any], rows: np.ndarray, frame_stack: int) -> np.ndarray:
    """Observations of some rows (0-based in the block) of a `read_rows` block."""
    rows = np.asarray(rows, np.int64)
    return environments.stack_frames(block["frames"], block["prefix"] + rows,
                                     block["offsets"][rows], frame_stack)


def upgrade(path: str | os.PathLike, keep_backup: bool = True) -> Path | None:
    """Rewrites a version 1 dataset as version 2, in place.

    Every step is copied with its derived columns (the module docstring) and
    the v1 build seeds become session rows: one session covering the file
    when it had one, else sessions whose step ranges are unknown (-1, -1).
    The new file is written under a temporary name and renamed over the old
    one; the v1 file is kept as `<name>.v1.h5` unless `keep_backup` is False.

    Returns:
      The backup's path (None without backup, or if the file already was v2).

    Raises:
      DatasetError: the file is unreadable, damaged or being written.
    """
    import h5py

    path = Path(path)
    if path.is_dir():  # Parts are written by this version's writer only.
        with Dataset(path):
            return None
    backup = path.with_name(path.stem + ".v1" + path.suffix)
    with file_lock(path):
        with Dataset(path) as old:
            if old.schema_version == SCHEMA_VERSION:
                return None
            if keep_backup and backup.exists():
                raise DatasetError(
                    f"cannot upgrade {path}: its backup would go to {backup}, which exists "
                    "(an earlier upgrade's?); move it away first. Nothing was written")
            sessions = old.sessions
            a = old.attrs
            tmp = files.temporary_path(path)
            tmp.unlink(missing_ok=True)
            writer = DatasetWriter(
                tmp, game=old.game, rom_md5=str(a.get("rom_md5", "")),
                num_actions=old.num_actions, feature_dim=old.feature_dim,
                preprocessing=old.preprocessing, teacher_sha256=old.teacher_sha256,
                teacher_kind=old.teacher_kind, teacher_path=str(a.get("teacher_path", "")),
                seed=int(a.get("seed", 0)), teacher_value_source=old.teacher_value_source)
            try:
                with writer:
                    writer.start_session(sessions[0])
                    for start, length in zip(old.episode_starts, old.episode_lengths):
                        rows = old.read_rows(int(start), int(start + length))
                        del rows["prefix"], rows["offsets"]
                        writer.append_episode(rows)
                if len(sessions) > 1:  # Their step ranges were never recorded.
                    with h5py.File(tmp, "a", libver="latest") as f:
                        rows = np.stack([dataclasses.replace(
                            s, step_start=-1, step_stop=-1).to_row() for s in sessions])
                        f["sessions"].resize(len(rows), axis=0)
                        f["sessions"][:] = rows
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        if keep_backup:
            os.link(path, backup)
        os.replace(tmp, path)
    return backup if keep_backup else None


def describe(path: str | os.PathLike) -> str:
    """A file's summary: game, labelling teacher, counts, and one line per
    recording session (who acted, beta, epsilon, seed, steps)."""
    with Dataset(path) as ds:
        lines = [f"{ds.path}: {ds.game}, schema {ds.schema_version}, labelled by a "
                 f"{ds.teacher_kind} teacher (sha256 {ds.teacher_sha256[:12]}), "
                 f"{ds.num_agent_steps:,} agent steps in {ds.num_episodes} episodes, mean "
                 f"return {ds.attrs.get('mean_episode_return', float('nan')):.1f}",
                 "  session  behaviour  beta    epsilon  seed          steps"]
        if isinstance(ds, ShardedDataset):
            parts = [f"  {ds.num_shards} parts in {ds.path} (base seed {ds.base_seed}):"]
            parts += [f"    {p['file']}: {p['num_agent_steps']:,} agent steps in "
                      f"{p['num_episodes']} episodes" for p in ds.attrs["parts"]]
            lines[1:1] = parts
        for i, s in enumerate(ds.sessions):
            steps = (f"{s.step_start:,}-{s.step_stop:,}" if s.step_start >= 0 else "unknown")
            lines.append(f"  {i:<7}  {s.behaviour:<9}  {s.beta:<6.3g}  {s.epsilon:<7.3g}  "
                         f"{s.seed:<12}  {steps}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """`python -m multidistill.datasets info|upgrade FILE [FILE ...]`."""
    usage = ("usage: python -m multidistill.datasets info|upgrade FILE [FILE ...]\n"
             "  info     prints each file's counts and recording sessions (who acted); "
             "FILE may be a sharded dataset's folder of part files\n"
             "  upgrade  rewrites version 1 dataset files as version 2 (the v1 file is kept "
             "as <name>.v1.h5)")
    if len(argv) < 2 or argv[0] not in ("info", "upgrade"):
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "info":
        for name in argv[1:]:
            try:
                print(describe(name))
            except (DatasetError, OSError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        return 0
    for name in argv[1:]:
        try:
            backup = upgrade(name)
        except (DatasetError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{name}: already version {SCHEMA_VERSION}" if backup is None
              else f"{name}: upgraded to version {SCHEMA_VERSION} (version 1 kept as {backup})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
