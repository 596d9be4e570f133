"""Where the parts of sharded datasets are recorded: the executors.

`python -m multidistill.build_datasets --num_shards=N` splits each game's
dataset into N parts (`collect.build_shard`, layout in `datasets`). Each
part is one `ShardTask`: plain data (paths, settings, which part) that any
worker turns into the part's file with `run_task`. A part's content is a
function of its task alone (seeds from the base seed and the part's index,
a fixed environment grouping; see `collect.shard_config`), so the files are
the same whichever executor, or scheduler, runs the tasks:

  * `run_local`: in this process, one task after another;
  * `run_ray`: one Ray task per (game, part) on a Ray cluster, an existing
    one at `address` or else a local one on this machine's cores, as many
    at once as the cluster has CPUs (the optional extra:
    `pip install -e ".[ray]"`).

Both yield each task's summary as it finishes; the caller prints them. The
workers of a cluster must see the teachers and datasets folders at the
driver's paths (a shared file system) and have multidistill installed. A
part cut short (a worker killed, a task cancelled) resumes the next time
its task runs; a complete part is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from multidistill import collect, datasets, environments
from multidistill import teachers as teachers_lib

EXECUTORS = ("local", "ray")
RETRY_PARTS = "complete parts are kept; run the same command again to retry the rest"
RAY_INSTALL_HINT = 'pip install -e ".[ray]" in a checkout, or pip install "multidistill[ray]"'


class ExecutorError(ValueError):
    """The executor is unavailable, or some of its tasks failed."""


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """How each game's dataset is split, and where the parts are recorded.

    Attributes:
      num_shards: parts per game's dataset; 1 writes the single file
        `<game>.h5` (no parts).
      shard_index: the one part of each game to record, in
        [0, num_shards); None records them all.
      executor: where the tasks run, one of `EXECUTORS`.
      ray_address: with "ray", the cluster to run on (as `ray.init`'s
        address: "auto", "ray://host:10001", ...); "" starts a local one.
    """

    num_shards: int = 1
    shard_index: int | None = None
    executor: str = "local"
    ray_address: str = ""

    def __post_init__(self):
        datasets.Shard(0, self.num_shards, 0)  # Checks num_shards.
        if self.shard_index is not None:
            datasets.Shard(self.shard_index, self.num_shards, 0)
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {list(EXECUTORS)}, "
                             f"found {self.executor!r}")

    @property
    def shard_indices(self) -> list[int]:
        """The parts of each game to record."""
        if self.shard_index is not None:
            return [self.shard_index]
        return list(range(self.num_shards))


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to record one part (plain data: it pickles).

    Attributes:
      game: the game.
      teachers_dir: folder of the teachers (absolute, as workers see it).
      datasets_dir: folder of the datasets (absolute, as workers see it).
      preprocessing: the run's spec.
      config: the whole game's recording settings (`num_agent_steps` over
        all parts, `seed` the base seed).
      shard: which part (None: the game's single file, topped up or built
        as `collect.build_dataset` does).
      rebuild: delete the part (or the single file) first.
      allow_unsafe_teacher: let Keras deserialise code in the teacher file.
      student: for the "student" and "mixture" behaviours, the student file
        whose head for `game` acts.
    """

    game: str
    teachers_dir: str
    datasets_dir: str
    preprocessing: environments.Preprocessing
    config: collect.CollectConfig
    shard: datasets.Shard | None = None
    rebuild: bool = False
    allow_unsafe_teacher: bool = False
    student: str | None = None

    @property
    def label(self) -> str:
        """`pong part 1 of 4` (or `pong` for the single file)."""
        if self.shard is None:
            return self.game
        return f"{self.game} part {self.shard.index} of {self.shard.count}"


def shard_tasks(games: Sequence[str], teachers_dir: str | os.PathLike,
                datasets_dir: str | os.PathLike, preprocessing: environments.Preprocessing,
                config: collect.CollectConfig, sharding: ShardingConfig,
                rebuild: bool = False, allow_unsafe_teacher: bool = False,
                student: str | os.PathLike | None = None) -> list[ShardTask]:
    """The tasks of `sharding` for every game, game by game, part by part.

    Paths are made absolute here, so that every worker (and the file's
    recorded teacher path) sees the same ones whoever runs the task.

    Raises:
      ValueError: fewer `config.num_agent_steps` than parts.
    """
    teachers_dir, datasets_dir = (str(Path(d).absolute()) for d in (teachers_dir, datasets_dir))
    student = None if student is None else str(Path(student).absolute())
    tasks = []
    for game in games:
        for i in sharding.shard_indices:
            shard = None
            if sharding.num_shards > 1:
                shard = datasets.Shard(i, sharding.num_shards, config.seed)
                collect.shard_config(config, shard)  # Enough steps for every part.
            tasks.append(ShardTask(game, teachers_dir, datasets_dir, preprocessing, config,
                                   shard, rebuild, allow_unsafe_teacher, student))
    return tasks


def task_behaviour(task: ShardTask, teacher: teachers_lib.Teacher
                   ) -> collect.BehaviourPolicy:
    """The behaviour policy of a task, its student loaded if it needs one."""
    if task.config.behaviour not in ("student", "mixture"):
        return collect.make_behaviour(task.config, teacher)
    if task.student is None:
        raise ValueError(f"behaviour {task.config.behaviour!r} needs a student network to "
                         "act (--student)")
    from multidistill import students

    student = students.load_student(task.student)
    return collect.make_behaviour(task.config, teacher,
                                  students.head_predictor(student, task.game),
                                  teachers_lib.sha256_of(task.student))


def run_task(task: ShardTask, teacher: teachers_lib.Teacher | None = None,
             behaviour: collect.BehaviourPolicy | None = None, progress: bool = False
             ) -> dict:
    """Records one task's part (or single file); what a worker runs.

    Args:
      task: the part.
      teacher: the game's teacher, if already loaded (else loaded here).
      behaviour: who acts, if already made (else `task_behaviour`).
      progress: show a progress bar.

    Returns:
      The build summary (`collect.build_shard`), with the task's `label`.
    """
    if teacher is None:
        teacher = teachers_lib.load_teacher(task.game, task.teachers_dir, task.preprocessing,
                                            allow_unsafe=task.allow_unsafe_teacher)
    if behaviour is None:
        behaviour = task_behaviour(task, teacher)
    if task.shard is None:
        summary = collect.build_dataset(
            teacher, datasets.dataset_path(task.datasets_dir, task.game), task.config,
            task.preprocessing, behaviour=behaviour, rebuild=task.rebuild, progress=progress)
    else:
        summary = collect.build_shard(
            teacher, task.datasets_dir, task.config, task.preprocessing, task.shard,
            behaviour=behaviour, rebuild=task.rebuild, progress=progress)
    return dict(summary, label=task.label)


def run_local(tasks: Sequence[ShardTask],
              teachers: dict[str, teachers_lib.Teacher] | None = None,
              behaviours: dict[str, collect.BehaviourPolicy] | None = None,
              progress: bool = True) -> Iterator[dict]:
    """Runs the tasks in this process, one after another; yields each summary.

    Stops after a task that was interrupted (SIGINT or SIGTERM: its part
    keeps its whole episodes and resumes on the next run).

    Args:
      tasks: the parts to record.
      teachers: per game, its loaded teacher (default: loaded per task).
      behaviours: per game, who acts (default: per task, `task_behaviour`).
      progress: show progress bars.
    """
    teachers, behaviours = teachers or {}, behaviours or {}
    for task in tasks:
        summary = run_task(task, teachers.get(task.game), behaviours.get(task.game), progress)
        yield summary
        if summary.get("interrupted"):
            return


def require_ray():
    """The ray module, or ExecutorError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ExecutorError(
            f"the ray executor needs the ray package, which is not installed ({e}): "
            f"{RAY_INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str = ""):
    """Connected to Ray for the block: the instance this process is already
    connected to, if any (left connected), else the cluster at `address`
    ("": a new local one), disconnected at the end. `run_ray` calls within
    the block share it (one start-up for many task batches)."""
    ray = require_ray()
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address or None, include_dashboard=False)
    try:
        yield ray
    finally:
        if connected_here:
            ray.shutdown()


def run_ray(tasks: Sequence, address: str = "", cpus_per_task: float = 1.0,
            fn: Callable[..., dict] = run_task, retry_hint: str = RETRY_PARTS
            ) -> Iterator[dict]:
    """Runs `fn(task)` for each task as a Ray task; yields the results as
    tasks finish.

    Uses the Ray instance this process is connected to, if any; else
    connects to `address` ("": starts a local instance, as `ray.init()`),
    and disconnects at the end. A task that fails does not stop the
    others; once all are done, the first failure is raised. Stopping the
    generator early (e.g. Ctrl-C in the caller) cancels the tasks not done.

    Args:
      tasks: plain-data tasks with a `label`: by default the parts to record
        (`ShardTask`), or whatever `fn` takes (`parallel_eval.EvalTask`).
      address: the Ray cluster (`ray.init`'s address).
      cpus_per_task: CPUs Ray reserves for each task.
      fn: the task's body, run on a worker; returns a dict.
      retry_hint: what the failure message says about running again.

    Raises:
      ExecutorError: ray is not installed, or some tasks failed (the message
        names the first, with its error).
    """
    with ray_session(address) as ray:
        remote = ray.remote(num_cpus=cpus_per_task)(fn)
        pending = {remote.remote(task): task for task in tasks}
        failures = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(done[0])
                try:
                    summary = ray.get(done[0])
                except ray.exceptions.RayError as e:
                    failures.append((task, getattr(e, "cause", None) or e))
                    continue
                yield summary
        finally:
            for ref in pending:  # Stopped early: the tasks left are cancelled.
                ray.cancel(ref)
    if failures:
        task, error = failures[0]
        raise ExecutorError(
            f"{len(failures)} of {len(tasks)} Ray tasks failed, the others finished "
            f"({retry_hint}). {task.label}: {type(error).__name__}: {error}")
