"""Builds distillation datasets: each teacher plays its game, every step recorded.

    python -m multidistill.build_datasets --games=pong,qbert,freeway \
        --num_agent_steps=50000

The teacher acts epsilon-greedily (its own acting rule, see
`multidistill.teachers.act`) in `--num_envs` environments stepped together;
each vector step is one batched teacher call, whose outputs and last hidden
layer are recorded with the frame. Completed episodes are appended to
`<datasets_dir>/<game>.h5` until it holds at least `--num_agent_steps` steps;
running again with a larger number adds to the file, with fresh seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

from multidistill import acting, datasets, environments, interrupts
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """How one game's dataset is built.

    Attributes:
      num_agent_steps: the file holds at least this many agent steps when done
        (whole episodes only, so it may hold a little more).
      epsilon: probability of a uniformly random action instead of the
        teacher's.
      num_envs: environments stepped together (one teacher call per step).
      num_threads: emulator threads (0: one per core).
      num_env_groups: groups the environments are split into
        (`acting.play`); 0 picks by core count (`environments.env_groups`).
      overlap_env_groups: overlap the groups' emulation with teacher
        inference (True) or step them in lockstep, one teacher call for all
        (False); None picks by core count.
      seed: base seed for environments and exploration.
    """

    num_agent_steps: int = 100_000
    epsilon: float = 0.05
    num_envs: int = 32
    num_threads: int = 0
    num_env_groups: int = 0
    overlap_env_groups: bool | None = None
    seed: int = 0

    def __post_init__(self):
        if self.num_agent_steps < 1:
            raise ValueError(f"num_agent_steps must be >= 1, found {self.num_agent_steps}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], found {self.epsilon}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, found {self.num_envs}")


@contextlib.contextmanager
def file_lock(path: Path):
    """Holds an exclusive lock on `path`.lock, or refuses at once."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise datasets.DatasetError(
                f"dataset {path} is being written by another process (lock {lock_path} "
                "is held): wait for it to finish, or stop it first"
            ) from None
        yield
    finally:
        os.close(fd)


def dataset_path(datasets_dir: str | os.PathLike, game: str) -> Path:
    return Path(datasets_dir) / f"{game}.h5"


def _session_seed(seed: int, session: int) -> int:
    return int(np.random.SeedSequence([seed, session]).generate_state(1)[0] % (2**31 - 1))


def build_dataset(
    teacher: teachers_lib.Teacher,
    path: str | os.PathLike,
    config: BuildConfig,
    preprocessing: environments.Preprocessing,
    rebuild: bool = False,
    progress: bool = True,
) -> dict:
    """Records `teacher` playing its game into the dataset at `path`.

    Args:
      teacher: the loaded teacher.
      path: the HDF5 file; created, or continued if it exists and fits.
      config: sizes and seeds.
      preprocessing: the run's spec; must be the teacher's.
      rebuild: delete an existing file first.
      progress: show a progress bar.

    Returns:
      A summary: steps and episodes in the file, steps added, seconds,
      agent steps per second.

    Raises:
      DatasetError: the existing file does not fit (other teacher or spec),
        is damaged, or is locked by another builder.
    """
    path = Path(path)
    game = games_lib.get_game(teacher.game, preprocessing.full_action_space)
    if path.exists() and not rebuild:
        # Big enough already: read-only, so a training run may hold the file.
        with datasets.Dataset(path) as ds:
            ds.check_compatible(game.name, preprocessing, teacher.sha256, config.epsilon)
            if ds.num_agent_steps >= config.num_agent_steps:
                return dict(game=game.name, path=str(path), added_agent_steps=0,
                            num_agent_steps=ds.num_agent_steps,
                            num_episodes=ds.num_episodes, seconds=0.0,
                            agent_steps_per_s=0.0, interrupted="")
    with file_lock(path):
        if rebuild and path.exists():
            path.unlink()
        writer = datasets.DatasetWriter(
            path,
            game=game.name,
            rom_md5=game.rom_md5,
            num_actions=teacher.num_actions,
            feature_dim=teacher.feature_dim,
            preprocessing=preprocessing,
            teacher_sha256=teacher.sha256,
            teacher_kind=teacher.kind,
            teacher_path=str(teacher.path),
            epsilon=config.epsilon,
            seed=config.seed,
        )
        with writer:
            return _fill(writer, teacher, game, config, preprocessing, progress)


def _fill(writer, teacher, game, config, preprocessing, progress) -> dict:
    start_steps = writer.num_agent_steps
    summary = dict(game=game.name, path=str(writer.path), added_agent_steps=0)
    if start_steps >= config.num_agent_steps:
        return dict(summary, num_agent_steps=start_steps, num_episodes=writer.num_episodes,
                    seconds=0.0, agent_steps_per_s=0.0)
    seed = _session_seed(config.seed, len(writer.build_seeds))
    writer.start_session(seed)
    rng = np.random.default_rng(seed)
    num_groups, overlap = environments.env_groups(config.num_env_groups,
                                                  config.overlap_env_groups)
    env = environments.make_vector_envs(
        game.name, preprocessing, config.num_envs, num_threads=config.num_threads,
        num_groups=num_groups)

    def policy(observations):
        outputs, features = teacher.label(observations)
        return teacher.act(outputs, config.epsilon, rng), {
            "outputs": outputs, "features": features}

    buffers = [_EpisodeBuffer() for _ in range(config.num_envs)]
    # Whole episodes, and no recorded step thrown away: an environment that
    # finishes an episode starts another only while the target is not met by
    # the steps written plus those the other episodes under way are expected
    # to reach (see `_projected_steps`); the last one recording goes on until
    # the target is met. A top-up of a file that has episodes starts only as
    # many environments as its mean episode length says are needed.
    recording = np.ones(config.num_envs, dtype=bool)
    if writer.num_episodes:
        mean_length = writer.num_agent_steps / writer.num_episodes
        needed = math.ceil((config.num_agent_steps - start_steps) / mean_length)
        recording[max(1, needed):] = False
    bar = _progress_bar(progress, config.num_agent_steps - start_steps, game.name)
    t0 = time.perf_counter()
    startup = None
    interrupted = ""
    appender = _BackgroundAppender(writer)
    with interrupts.deferred_interrupts() as stop:
        try:
            for step in acting.play(env, policy, seed, active=recording, overlap=overlap):
                if startup is None:  # Resets and the first inference calls.
                    startup = time.perf_counter() - t0
                for i in np.flatnonzero(step.valid & recording):
                    buffers[i].add(step, i)
                    if not (step.terminated[i] or step.truncated[i]):
                        continue
                    episode = buffers[i].take()
                    appender.append(episode)
                    if bar is not None:
                        bar.update(min(len(episode["frames"]), bar.total - bar.n))
                        bar.set_postfix(episodes=appender.num_episodes,
                                        mean_return=f"{appender.mean_episode_return:.1f}")
                    if _projected_steps(appender, buffers, recording, i) >= \
                            config.num_agent_steps:
                        recording[i] = False
                if stop.requested:  # Whole episodes are written; the rest is dropped.
                    interrupted = stop.name
                    break
                if not recording.any():
                    break
        finally:
            environments.close_all(env)
            try:
                appender.close()  # Every episode handed over is written.
            finally:
                if bar is not None:
                    bar.close()
    seconds = time.perf_counter() - t0
    startup = seconds if startup is None else startup
    added = writer.num_agent_steps - start_steps
    # Steps/s in steady state: environment start-up (resets, first inference)
    # is a fixed cost, reported apart.
    return dict(summary, num_agent_steps=writer.num_agent_steps,
                num_episodes=writer.num_episodes, added_agent_steps=added,
                seconds=seconds, startup_seconds=startup,
                agent_steps_per_s=added / max(seconds - startup, 1e-9),
                interrupted=interrupted)


def _projected_steps(appender: _BackgroundAppender, buffers: list[_EpisodeBuffer],
                     recording: np.ndarray, but: int) -> float:
    """Steps the file is expected to hold once the episodes under way end.

    The steps handed to the writer, plus, for each environment recording
    except `but`, the length its episode has reached or the mean episode
    length so far, whichever is larger.
    """
    mean_length = appender.num_agent_steps / max(appender.num_episodes, 1)
    return appender.num_agent_steps + sum(
        max(len(buffers[j]), mean_length) for j in np.flatnonzero(recording) if j != but)


class _BackgroundAppender:
    """Appends whole episodes to a `DatasetWriter` from a background thread.

    Compressing and checksumming an episode takes tens of milliseconds;
    h5py releases the GIL while it writes, so the writing overlaps with
    emulation and inference instead of stalling the play loop. At most
    `max_pending` episodes wait (bounded memory). Counts (`num_agent_steps`,
    ...) include the episodes handed over, written or not. A write error is
    raised by the next `append` or by `close`; the episodes written before
    it are intact (the writer's commit protocol).
    """

    def __init__(self, writer: datasets.DatasetWriter, max_pending: int = 4):
        self.writer = writer
        self.num_agent_steps = writer.num_agent_steps
        self.num_episodes = writer.num_episodes
        self._return_sum = writer.mean_episode_return * writer.num_episodes \
            if writer.num_episodes else 0.0
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="multidistill-writer",
                                        daemon=True)
        self._thread.start()

    @property
    def mean_episode_return(self) -> float:
        return self._return_sum / self.num_episodes if self.num_episodes else float("nan")

    def _run(self) -> None:
        while True:
            episode = self._queue.get()
            if episode is None:
                return
            if self._error is None:  # After an error, the rest is dropped.
                try:
                    self.writer.append_episode(episode)
                except BaseException as e:  # Handed to the main thread.
                    self._error = e

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def append(self, episode: dict[str, np.ndarray]) -> None:
        self._raise_error()
        self._queue.put(episode)
        self.num_agent_steps += len(episode["frames"])
        self.num_episodes += 1
        self._return_sum += float(np.sum(episode["rewards"], dtype=np.float64))

    def close(self) -> None:
        """Waits until every episode handed over is written; raises a write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_error()


class _EpisodeBuffer:
    """The steps of one environment's current episode.

    Rows are copied into arrays owned by the buffer (grown by doubling), so
    the step's batch arrays (all environments' frame stacks, teacher outputs)
    are freed at once: holding views into them would keep every step's whole
    batch alive until the episode ends, hundreds of MB, and make each new
    batch land in fresh, cold memory.
    """

    def __init__(self):
        self._cols: dict[str, np.ndarray] | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, step: acting.StepBatch, i: int):
        row = {
            "frames": step.observations[i, -1],
            "teacher_outputs": step.extras["outputs"][i],
            "teacher_features": step.extras["features"][i],
            "actions": step.actions[i],
            "rewards": step.rewards[i],
            "terminated": step.terminated[i],
            "truncated": step.truncated[i],
        }
        if self._cols is None:
            self._cols = {k: np.empty((1024,) + np.shape(v), _BUFFER_DTYPES[k])
                          for k, v in row.items()}
        if self._n == len(self._cols["frames"]):
            self._cols = {k: np.concatenate([v, np.empty_like(v)])
                          for k, v in self._cols.items()}
        for k, v in row.items():
            self._cols[k][self._n] = v
        self._n += 1

    def take(self) -> dict[str, np.ndarray]:
        """The episode's arrays (copies); the buffer starts empty again."""
        n, self._n = self._n, 0
        return {k: v[:n].copy() for k, v in self._cols.items()}


_BUFFER_DTYPES = dict(frames=np.uint8, teacher_outputs=np.float32,
                      teacher_features=np.float32, actions=np.uint8, rewards=np.float32,
                      terminated=bool, truncated=bool)


def _progress_bar(enabled: bool, total: int, game: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"build {game}", unit="step", dynamic_ncols=True,
                smoothing=0.05)


def ensure_datasets(
    game_names, teachers_dir, datasets_dir, config: BuildConfig,
    preprocessing: environments.Preprocessing, rebuild: bool = False,
    allow_unsafe_teacher: bool = False, progress: bool = True,
) -> dict[str, dict]:
    """Loads each game's teacher and builds (or tops up) its dataset.

    Returns:
      Per game, the build summary.
    """
    summaries = {}
    for game in game_names:
        teacher = teachers_lib.load_teacher(
            game, teachers_dir, preprocessing, allow_unsafe=allow_unsafe_teacher)
        path = dataset_path(datasets_dir, game)
        if path.exists() and not rebuild:
            with datasets.Dataset(path) as ds:
                ds.check_compatible(game, preprocessing, teacher.sha256, config.epsilon)
        summaries[game] = build_dataset(teacher, path, config, preprocessing,
                                        rebuild=rebuild, progress=progress)
        if summaries[game].get("interrupted"):
            break
    return summaries


def main(argv):
    del argv
    from multidistill import cli

    flags_ = cli.FLAGS
    game_names = games_lib.parse_games(flags_.games)
    preprocessing = cli.preprocessing_from_flags()
    try:
        config = BuildConfig(
            num_agent_steps=flags_.num_agent_steps, epsilon=flags_.epsilon,
            num_envs=flags_.num_envs, num_threads=flags_.num_threads, seed=flags_.seed)
    except ValueError as e:
        raise cli.UsageError(f"flags: {e}") from None
    summaries = ensure_datasets(
        game_names, flags_.teachers_dir, flags_.datasets_dir, config, preprocessing,
        rebuild=flags_.rebuild_datasets, allow_unsafe_teacher=flags_.allow_unsafe_teacher)
    for s in summaries.values():
        print(f"{s['game']}: {s['path']} holds {s['num_agent_steps']} steps in "
              f"{s['num_episodes']} episodes (+{s['added_agent_steps']} now, "
              f"{s['agent_steps_per_s']:.0f} steps/s)")
        if s.get("interrupted"):
            print(f"{s['interrupted']}: stopped after whole episodes; run the same command "
                  "to resume", file=sys.stderr)
            raise SystemExit(130)


def define_flags():
    from absl import flags

    from multidistill import cli

    flags.DEFINE_string("games", "pong,qbert,freeway",
                        "Comma-separated games (ALE ROM ids, e.g. pong,qbert,freeway).")
    flags.DEFINE_string("teachers_dir", str(teachers_lib.DEFAULT_TEACHERS_DIR),
                        "Folder holding <game>.keras teachers and their <game>.json cards.")
    flags.DEFINE_string("datasets_dir", "datasets",
                        "Folder for the <game>.h5 dataset files.")
    flags.DEFINE_integer("num_agent_steps", BuildConfig.num_agent_steps,
                         "Agent steps (1 step = 4 emulator frames) each dataset holds "
                         "when done; a larger number tops up an existing file.")
    flags.DEFINE_float("epsilon", BuildConfig.epsilon,
                       "Probability of a uniformly random action while recording.")
    flags.DEFINE_integer("num_envs", BuildConfig.num_envs,
                         "Environments stepped together while recording (one batched "
                         "teacher call per step).")
    flags.DEFINE_integer("num_threads", BuildConfig.num_threads,
                         "Emulator threads (0: one per CPU core).")
    flags.DEFINE_integer("seed", BuildConfig.seed, "Base seed (environments, exploration).")
    flags.DEFINE_bool("rebuild_datasets", False,
                      "Delete existing dataset files and build them anew.")
    cli.define_allow_unsafe_teacher_flag()
    cli.define_preprocessing_flags()
    cli.define_verbose_flag()
    flags.adopt_module_key_flags(cli)  # List them in --help too.


if __name__ == "__main__":
    from multidistill import cli

    define_flags()
    cli.run(main)
