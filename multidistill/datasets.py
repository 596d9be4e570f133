"""The distillation dataset format: one HDF5 file per game.

This module is the only one that reads or writes these files. Schema
(version 1); N agent steps, E episodes, A actions, F teacher features:

    /frames            (N, H, W)  uint8    newest preprocessed frame of each step
    /teacher_outputs   (N, A)     float32  teacher Q-values or logits, all actions
    /teacher_features  (N, F)     float16  teacher's last hidden layer
    /actions           (N,)       uint8    action taken (teacher, epsilon-greedy)
    /rewards           (N,)       float32  raw reward that followed the action
    /terminated        (N,)       bool     the episode ended after this step
    /truncated         (N,)       bool     the episode was cut after this step
    /episodes/start    (E,)       int64    index of each episode's first step
    /episodes/length   (E,)       int64    agent steps in each episode
    /episodes/return   (E,)       float64  undiscounted return of each episode
/committed         (2,)       int64    [E, N]: the episodes and steps that are data
/build_seeds       (S,)       int64    environment seed of each build session

Observations are rebuilt on read: the observation at step i stacks frames
i-S+1 .. i of the same episode (S = frame_stack), with zeros for frames
before the episode's first step, exactly as the environment showed them.

File attributes: schema_version, game, rom_md5, num_actions, feature_dim,
preprocessing (JSON), teacher_sha256, teacher_kind, teacher_path, epsilon,
seed, num_episodes,
num_agent_steps, mean_teacher_episode_return, versions (JSON: ale-py,
gymnasium, h5py, multidistill), created_utc.

Only whole episodes are stored. The writer appends an episode's rows first,
then its line of the episode table, then `committed` (the commit point), so
`committed` always describes whole episodes; rows past it (an append cut
short) are not data: readers ignore them and the next writer overwrites
them. The attributes num_episodes, num_agent_steps and
mean_teacher_episode_return mirror `committed` (after a crash they may lag
it by one episode until the next writer opens the file). Appends run in
HDF5's SWMR mode (files use the HDF5 1.10+ format, libver="latest"), which
keeps the file readable if the writer is killed at any moment; open such a
file with `h5py.File(path, "r", swmr=True)`. Every array is stored
with gzip (lossless) and fletcher32 checksums, so a flipped byte fails the
read that touches it instead of returning wrong data. Frames are chunked
by `FRAME_CHUNK_ROWS` consecutive steps: readers read contiguous blocks.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from multidistill import environments

SCHEMA_VERSION = 1
FRAME_CHUNK_ROWS = 64
_SMALL_CHUNK_ROWS = 4096
_COMPRESSION = dict(compression="gzip", compression_opts=1, shuffle=False, fletcher32=True)
# Byte shuffling groups the bytes of floats by significance: about a quarter
# smaller teacher features (mostly ReLU zeros) at no read cost.
_FLOAT_COMPRESSION = dict(_COMPRESSION, shuffle=True)

_STEP_ARRAYS = (
    "frames",
    "teacher_outputs",
    "teacher_features",
    "actions",
    "rewards",
    "terminated",
    "truncated",
)
_EPISODE_ARRAYS = ("start", "length", "return")


class DatasetError(ValueError):
    """A dataset file is unreadable, damaged, or does not fit the run."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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

    HDF5 refuses to open such a file for writing again (`h5clear` is the C
    tool for this; it is not shipped with h5py). The flags live in the
    version 2/3 superblock at offset 0, guarded by a lookup3 checksum. Only
    call this while holding the dataset's lock (no writer is running).

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
    teacher must be those given here (else `DatasetError`, unless the caller
    deletes the file and rebuilds). Only one writer may hold a file: callers
    serialise writers with a lock (see `build_datasets.file_lock`).

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
        epsilon: float,
        seed: int,
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
            epsilon=float(epsilon),
        )
        self._f = None
        if self.path.exists():
            clear_status_flags(self.path)
        else:
            self._create(expected, rom_md5, teacher_kind, teacher_path, epsilon, seed)
        with Dataset(self.path) as ds:  # Full validation before writing.
            self._return_sum = float(np.sum(ds.episode_returns, dtype=np.float64))
        self._f = _open_h5(self.path, "a")
        try:
            self._f.swmr_mode = True
            self._check_matches(expected)
            self._e, self._n = (int(x) for x in self._f["committed"][:])
            self._sync_attrs()
            self._f.flush()
        except Exception:
            self._f.close()
            self._f = None
            raise

    def _create(self, expected, rom_md5, teacher_kind, teacher_path, epsilon, seed):
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with h5py.File(tmp, "w", libver="latest") as f:
            self._create_layout(f, expected, rom_md5, teacher_kind, teacher_path,
                                epsilon, seed)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _create_layout(self, f, expected, rom_md5, teacher_kind, teacher_path, epsilon, seed):
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
        for name, dtype in (("actions", np.uint8), ("rewards", np.float32),
                            ("terminated", bool), ("truncated", bool)):
            f.create_dataset(name, (0,), maxshape=(None,), dtype=dtype,
                             chunks=(_SMALL_CHUNK_ROWS,), **_COMPRESSION)
        ep = f.create_group("episodes")
        for name, dtype in (("start", np.int64), ("length", np.int64), ("return", np.float64)):
            ep.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(1024,),
                              **_COMPRESSION)
        f.create_dataset("committed", data=np.zeros(2, np.int64))
        f.create_dataset("build_seeds", (0,), maxshape=(None,), dtype=np.int64, chunks=(64,))
        a = f.attrs
        a["schema_version"] = SCHEMA_VERSION
        for k, v in expected.items():
            a[k] = v
        a["rom_md5"] = rom_md5
        a["teacher_kind"] = teacher_kind
        a["teacher_path"] = str(teacher_path)
        a["seed"] = int(seed)
        a["versions"] = json.dumps(_versions(), sort_keys=True)
        a["created_utc"] = _now()
        a["num_agent_steps"] = 0
        a["num_episodes"] = 0
        a["mean_teacher_episode_return"] = float("nan")

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

    def _sync_attrs(self):
        """Mirrors `committed` into the summary attributes.

        Only fixed-size attributes change after creation: HDF5's SWMR mode
        does not support rewriting variable-length ones (strings), which a
        kill can leave unreadable.
        """
        a = self._f.attrs
        a["num_agent_steps"] = self._n
        a["num_episodes"] = self._e
        a["mean_teacher_episode_return"] = (
            self._return_sum / self._e if self._e else float("nan"))

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
    def build_seeds(self) -> list[int]:
        return [int(x) for x in self._f["build_seeds"][:]]

    def start_session(self, seed: int) -> None:
        """Records the environment seed of one build session."""
        _write_rows(self._f["build_seeds"], len(self.build_seeds), np.asarray([int(seed)]))
        self._f.flush()

    def append_episode(self, episode: dict[str, np.ndarray]) -> None:
        """Appends one whole episode.

        Args:
          episode: arrays keyed like the step arrays of the schema, all of the
            same length T (>= 1); `frames` (T, H, W) uint8.

        Raises:
          DatasetError: shapes do not match the file, or teacher outputs hold
            NaN or infinite values.
        """
        t = int(episode["frames"].shape[0])
        if t < 1:
            raise DatasetError(f"{self.path}: refusing to append an empty episode")
        for name in _STEP_ARRAYS:
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
            # committed counts), then the episode table, then the commit.
            for name in _STEP_ARRAYS:
                _write_rows(f[name], n0, values[name])
            for name, value in (("start", n0), ("length", t), ("return", ep_return)):
                _write_rows(f["episodes"][name], e0, np.asarray([value]))
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



def _write_rows(ds, start: int, values: np.ndarray) -> None:
    stop = start + len(values)
    if ds.shape[0] < stop:
        ds.resize(stop, axis=0)
    ds[start:stop] = values


class Dataset(_H5File):
    """Read access to one game's dataset file, validated on open."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = _open_h5(self.path, "r")
        try:
            self._validate()
        except Exception:
            self._f.close()
            raise
        a = self._f.attrs
        self.game = str(a["game"])
        self.num_episodes, self.num_agent_steps = (int(x) for x in self._f["committed"][:])
        self.num_actions = int(a["num_actions"])
        self.feature_dim = int(a["feature_dim"])
        self.teacher_sha256 = str(a["teacher_sha256"])
        self.teacher_kind = str(a["teacher_kind"])
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
        if version != SCHEMA_VERSION:
            raise DatasetError(
                f"dataset {self.path} has schema version {version}, this multidistill "
                f"reads version {SCHEMA_VERSION}: rebuild it (--rebuild_datasets)"
            )
        missing = [n for n in _STEP_ARRAYS + ("committed", "build_seeds") if n not in f] + [
            "episodes/" + n for n in _EPISODE_ARRAYS if "episodes/" + n not in f
        ]
        if missing:
            raise DatasetError(f"dataset {self.path} lacks the arrays {missing}")
        try:
            e, n = (int(x) for x in f["committed"][:])
        except OSError as err:
            raise DatasetError(f"dataset {self.path}: its counts are unreadable: {err}") from None
        short = [x for x in _STEP_ARRAYS if f[x].shape[0] < n]
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
        out = {}
        for k, v in self._f.attrs.items():
            out[k] = v.item() if isinstance(v, np.generic) else v
        # The committed counts are the truth (the attributes can lag them by
        # one episode after a crash, until the next writer opens the file).
        out["num_agent_steps"], out["num_episodes"] = self.num_agent_steps, self.num_episodes
        out["mean_teacher_episode_return"] = (
            float(np.mean(self.episode_returns)) if self.num_episodes else float("nan"))
        return out

    @property
    def build_seeds(self) -> list[int]:
        return [int(x) for x in self._f["build_seeds"][:]]

    def check_compatible(self, game: str, preprocessing: environments.Preprocessing,
                         teacher_sha256: str | None = None,
                         epsilon: float | None = None) -> None:
        """Raises DatasetError unless built for this game, spec, teacher and epsilon."""
        problems = []
        file_eps = float(self._f.attrs["epsilon"])
        if epsilon is not None and file_eps != float(epsilon):
            problems.append(f"it was recorded with epsilon {file_eps}, the run asks for "
                            f"{float(epsilon)}")
        if self.game != game:
            problems.append(f"game is {self.game!r}, expected {game!r}")
        if self.preprocessing != preprocessing:
            problems.append("preprocessing differs (" + "; ".join(
                self.preprocessing.differences(preprocessing)).replace(
                    "here vs", "in file vs asked") + ")")
        if teacher_sha256 is not None and self.teacher_sha256 != teacher_sha256:
            problems.append(
                f"it was recorded from another teacher (sha256 {self.teacher_sha256[:12]}… "
                f"in the file, {teacher_sha256[:12]}… now)"
            )
        if problems:
            raise DatasetError(
                f"dataset {self.path} does not fit this run: " + "; ".join(problems)
                + ". Delete it or pass --rebuild_datasets to build it anew"
            )

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._f[name][start:stop]
        except OSError as e:
            raise DatasetError(
                f"dataset {self.path}: reading {name}[{start}:{stop}] failed, the file "
                f"is damaged (checksum or decompression error): {e}"
            ) from None

    def episode_offsets(self, start: int, stop: int) -> np.ndarray:
        """Steps since each row's episode start, for rows start..stop-1."""
        rows = np.arange(start, stop)
        ep = np.searchsorted(self.episode_starts, rows, side="right") - 1
        return rows - self.episode_starts[ep]

    def read_block(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Reads rows start..stop-1 with their observations rebuilt.

        Returns:
          A dict with `observations` (n, S, H, W) uint8 and every step array
          of the schema for those rows (`teacher_features` as float32).
        """
        if not 0 <= start <= stop <= self.num_agent_steps:
            raise IndexError(
                f"rows {start}:{stop} outside dataset {self.path} of "
                f"{self.num_agent_steps} steps"
            )
        s = self.preprocessing.frame_stack
        lo = max(0, start - (s - 1))
        frames = self._read("frames", lo, stop)
        offsets = self.episode_offsets(lo, stop)
        obs = environments.stack_frames(frames, offsets, s)[start - lo:]
        out = {"observations": obs}
        for name in _STEP_ARRAYS[1:]:
            out[name] = self._read(name, start, stop)
        out["teacher_features"] = out["teacher_features"].astype(np.float32)
        return out

