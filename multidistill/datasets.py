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

Observations are rebuilt on read: the observation at step i stacks frames
i-S+1 .. i of the same episode (S = frame_stack), with zeros for frames
before the episode's first step, exactly as the environment showed them.

File attributes: schema_version, game, rom_md5, num_actions, feature_dim,
preprocessing (JSON), teacher_sha256, teacher_kind, teacher_path, epsilon,
seed, build_seeds (JSON list, one per build session), num_episodes,
num_agent_steps, mean_teacher_episode_return, versions (JSON: ale-py,
gymnasium, h5py, multidistill), created_utc, updated_utc.

Only whole episodes are stored. The writer appends an episode's rows first
and updates the episode table and the counts last, so the counts always
describe whole episodes; rows past `num_agent_steps` (left by a crash) are
ignored by readers and cut off by the next writer. Every array is stored
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


def _open_h5(path: Path, mode: str):
    import h5py

    if mode == "r" or path.exists():
        if not path.exists():
            raise DatasetError(f"dataset {path} does not exist")
        if not h5py.is_hdf5(path):
            raise DatasetError(
                f"dataset {path} is not an HDF5 file (expected a multidistill "
                f"dataset; found {path.stat().st_size} bytes of something else)"
            )
    try:
        return h5py.File(path, mode)
    except OSError as e:
        raise DatasetError(
            f"dataset {path} cannot be opened (truncated or damaged HDF5 file?): {e}"
        ) from None


class DatasetWriter:
    """Appends whole episodes to one game's dataset file.

    Opening an existing file continues it; its game, preprocessing and
    teacher must be those given here (else `DatasetError`, unless the caller
    deletes the file and rebuilds).
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
        )
        exists = self.path.exists()
        if exists:
            Dataset(self.path).close()  # Full validation before writing.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = _open_h5(self.path, "a")
        try:
            if exists:
                self._check_matches(expected)
                self._cut_to_counts()
            else:
                self._create(expected, rom_md5, teacher_kind, teacher_path, epsilon, seed)
        except Exception:
            self._f.close()
            raise

    def _create(self, expected, rom_md5, teacher_kind, teacher_path, epsilon, seed):
        f = self._f
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
                **_COMPRESSION,
            )
        for name, dtype in (("actions", np.uint8), ("rewards", np.float32),
                            ("terminated", bool), ("truncated", bool)):
            f.create_dataset(name, (0,), maxshape=(None,), dtype=dtype,
                             chunks=(_SMALL_CHUNK_ROWS,), **_COMPRESSION)
        ep = f.create_group("episodes")
        for name, dtype in (("start", np.int64), ("length", np.int64), ("return", np.float64)):
            ep.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(1024,),
                              **_COMPRESSION)
        a = f.attrs
        a["schema_version"] = SCHEMA_VERSION
        for k, v in expected.items():
            a[k] = v
        a["rom_md5"] = rom_md5
        a["teacher_kind"] = teacher_kind
        a["teacher_path"] = str(teacher_path)
        a["epsilon"] = float(epsilon)
        a["seed"] = int(seed)
        a["build_seeds"] = "[]"
        a["versions"] = json.dumps(_versions(), sort_keys=True)
        a["created_utc"] = _now()
        self._set_counts(0, 0, float("nan"))
        f.flush()

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

    def _cut_to_counts(self):
        n = int(self._f.attrs["num_agent_steps"])
        e = int(self._f.attrs["num_episodes"])
        for name in _STEP_ARRAYS:
            if self._f[name].shape[0] != n:
                self._f[name].resize(n, axis=0)
        for name in _EPISODE_ARRAYS:
            if self._f["episodes"][name].shape[0] != e:
                self._f["episodes"][name].resize(e, axis=0)

    def _set_counts(self, num_steps: int, num_episodes: int, mean_return: float):
        a = self._f.attrs
        a["num_agent_steps"] = int(num_steps)
        a["num_episodes"] = int(num_episodes)
        a["mean_teacher_episode_return"] = float(mean_return)
        a["updated_utc"] = _now()

    @property
    def num_agent_steps(self) -> int:
        return int(self._f.attrs["num_agent_steps"])

    @property
    def num_episodes(self) -> int:
        return int(self._f.attrs["num_episodes"])

    @property
    def mean_episode_return(self) -> float:
        return float(self._f.attrs["mean_teacher_episode_return"])

    @property
    def build_seeds(self) -> list[int]:
        return json.loads(self._f.attrs["build_seeds"])

    def start_session(self, seed: int) -> None:
        """Records the environment seed of one build session."""
        self._f.attrs["build_seeds"] = json.dumps(self.build_seeds + [int(seed)])
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
        n0 = self.num_agent_steps
        e0 = self.num_episodes
        f = self._f
        values = dict(episode, teacher_outputs=outputs,
                      teacher_features=features.astype(np.float16))
        for name in _STEP_ARRAYS:
            ds = f[name]
            ds.resize(n0 + t, axis=0)
            ds[n0:n0 + t] = values[name]
        ep_return = float(np.sum(episode["rewards"], dtype=np.float64))
        for name, value in (("start", n0), ("length", t), ("return", ep_return)):
            ds = f["episodes"][name]
            ds.resize(e0 + 1, axis=0)
            ds[e0] = value
        returns_sum = 0.0 if e0 == 0 else float(f.attrs["mean_teacher_episode_return"]) * e0
        f.flush()  # Rows reach the file before the counts that cover them.
        self._set_counts(n0 + t, e0 + 1, (returns_sum + ep_return) / (e0 + 1))
        f.flush()

    def close(self):
        if self._f:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Dataset:
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
        self.num_agent_steps = int(a["num_agent_steps"])
        self.num_episodes = int(a["num_episodes"])
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
        missing = [n for n in _STEP_ARRAYS if n not in f] + [
            "episodes/" + n for n in _EPISODE_ARRAYS if "episodes/" + n not in f
        ]
        if missing:
            raise DatasetError(f"dataset {self.path} lacks the arrays {missing}")
        n, e = int(a["num_agent_steps"]), int(a["num_episodes"])
        short = [x for x in _STEP_ARRAYS if f[x].shape[0] < n]
        short += ["episodes/" + x for x in _EPISODE_ARRAYS if f["episodes/" + x].shape[0] < e]
        if short:
            raise DatasetError(
                f"dataset {self.path} is inconsistent: attributes count {n} steps and "
                f"{e} episodes but {short} hold fewer rows"
            )
        if e:
            starts = f["episodes/start"][:e]
            lengths = f["episodes/length"][:e]
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
        return out

    def check_compatible(self, game: str, preprocessing: environments.Preprocessing,
                         teacher_sha256: str | None = None) -> None:
        """Raises DatasetError unless built for this game, spec and teacher."""
        problems = []
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

    def close(self):
        if self._f:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
