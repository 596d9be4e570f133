"""One evaluation split over workers, with the same episodes as on one machine.

Under the protocol (`multidistill.evaluation`) environment i is seeded with
`seed + i`, plays a fixed quota of episodes and draws its acting randomness
from a generator of its own; what it plays depends on nothing else. So the
protocol's environments can be split into contiguous shares, each played by
a worker (`evaluation.evaluate(..., env_range=)`), and the shares' episodes,
put back in environment order, are the single-machine evaluation's: the
same returns in the same order, so the same report (only the timings
differ).

A share is one `EvalTask`: plain data (where to load the policy from, the
protocol, the environments) that any worker turns into its episodes with
`run_task`, loading the network from a file. Executors (`EvalWorkers`):

  * "local": the shares one after another in this process (what a
    scheduler would run; and the check that splitting changes nothing);
  * "ray": one Ray task per share (`executors.run_ray`), on a Ray cluster
    at `ray_address` or a local one (the optional extra `ray`). Workers
    must see the student file and the teachers folder at the driver's
    paths (a shared file system) and have multidistill installed.

One proviso: a network's outputs for one observation are the same whatever
else is in its batch only up to floating-point rounding (the shares'
batches are narrower); an argmax or a sample that lands within rounding of
a tie could then differ. The tests check equality on a tiny network; the
README reports the main job's student and teachers compared both ways.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence

from multidistill import environments, evaluation, executors

EXECUTORS = executors.EXECUTORS


@dataclasses.dataclass(frozen=True)
class EvalWorkers:
    """How an evaluation's environments are split and where the shares run.

    Attributes:
      num_workers: shares of the protocol's environments (at most one per
        environment); 1 plays them all here, as `evaluation.evaluate`.
      executor: where the shares run, one of `EXECUTORS`.
      ray_address: with "ray", the cluster (`ray.init`'s address); "" starts
        a local one.
    """

    num_workers: int = 1
    executor: str = "local"
    ray_address: str = ""

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, found {self.num_workers}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {list(EXECUTORS)}, "
                             f"found {self.executor!r}")

    @property
    def split(self) -> bool:
        """Whether evaluations go through shares (else the plain evaluation)."""
        return self.num_workers > 1 or self.executor != "local"


@dataclasses.dataclass(frozen=True)
class PolicySource:
    """Where a worker loads the policy of one game from (plain data: it pickles).

    Attributes:
      role: "student" (`path` is a student file) or "teacher" (`path` is a
        teachers folder).
      path: the file or folder.
      game: the game whose head or teacher plays.
      preprocessing: the run's `environments.Preprocessing.to_dict()`.
      allow_unsafe: a teacher's file may need unsafe deserialisation.
    """

    role: str
    path: str
    game: str
    preprocessing: dict
    allow_unsafe: bool = False

    def __post_init__(self):
        if self.role not in ("student", "teacher"):
            raise ValueError(f"role must be 'student' or 'teacher', found {self.role!r}")

    @property
    def spec(self) -> environments.Preprocessing:
        return environments.Preprocessing.from_dict(self.preprocessing, self.path)

    def load(self):
        """(predict, acting kind) of the policy, loaded from its file."""
        from multidistill import students
        from multidistill import teachers as teachers_lib

        if self.role == "teacher":
            teacher = teachers_lib.load_teacher(self.game, self.path, self.spec,
                                                allow_unsafe=self.allow_unsafe)
            return evaluation.predict_fn(teacher.policy_model), teacher.kind
        student = students.load_student(self.path)
        kind = evaluation.teacher_kinds_of(student)[self.game]
        return evaluation.predict_fn(student.policy_network(self.game)), kind


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One share: the protocol's environments `env_range` of one policy."""

    source: PolicySource
    protocol: evaluation.EvalProtocol
    env_range: tuple[int, int]

    @property
    def label(self) -> str:
        a, b = self.env_range
        return f"{self.source.game} {self.source.role} environments {a}-{b - 1}"


def shares(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) ranges of `num_envs` environments over at most
    `num_workers` workers, as even as they go (the first ones one longer)."""
    n = max(1, min(num_workers, num_envs))
    sizes = [num_envs // n + (k < num_envs % n) for k in range(n)]
    starts = [sum(sizes[:k]) for k in range(n)]
    return [(s, s + size) for s, size in zip(starts, sizes)]


def tasks_for(source: PolicySource, protocol: evaluation.EvalProtocol,
              num_workers: int) -> list[EvalTask]:
    """The shares of one policy's evaluation on its game."""
    num_envs = len(protocol.environment_quotas(source.game))
    return [EvalTask(source, protocol, r) for r in shares(num_envs, num_workers)]


def run_task(task: EvalTask) -> dict:
    """Plays one share; its episodes (the Ray task's body)."""
    predict, kind = task.source.load()
    s = evaluation.evaluate(task.source.game, predict, kind, task.source.spec, task.protocol,
                            progress=False, env_range=task.env_range)
    return {"env_range": list(task.env_range), "returns": s.returns, "lengths": s.lengths,
            "seconds": s.seconds, "startup_seconds": s.startup_seconds,
            "label": task.label}


def merge(results: Sequence[dict], seconds: float) -> evaluation.Scores:
    """The shares' episodes in environment order, as one evaluation's `Scores`.

    Args:
      results: `run_task`'s dicts, in any order; together they must cover
        the environments once.
      seconds: the evaluation's wall-clock time; start-up is the slowest
        share's.
    """
    ordered = sorted(results, key=lambda r: r["env_range"][0])
    for a, b in zip(ordered, ordered[1:]):
        if a["env_range"][1] != b["env_range"][0]:
            raise ValueError(f"shares {a['env_range']} and {b['env_range']} do not meet")
    return evaluation.Scores(
        returns=[r for x in ordered for r in x["returns"]],
        lengths=[n for x in ordered for n in x["lengths"]],
        seconds=seconds,
        startup_seconds=max(x["startup_seconds"] for x in ordered))


def evaluate(source: PolicySource, protocol: evaluation.EvalProtocol, workers: EvalWorkers,
             progress: bool = True) -> evaluation.Scores:
    """`evaluation.evaluate` of the policy in `source`, split over `workers`.

    Raises:
      executors.ExecutorError: ray is not installed, or a share failed.
    """
    tasks = tasks_for(source, protocol, workers.num_workers)
    t0 = time.perf_counter()
    if workers.executor == "ray":
        results = executors.run_ray(
            tasks, workers.ray_address, fn=run_task,
            retry_hint="nothing of the evaluation is kept; run the same command again")
    else:
        results = (run_task(t) for t in tasks)
    bar = None
    if progress:
        from multidistill import progress as progress_lib

        bar = progress_lib.bar(len(tasks), f"eval {source.game} {source.role}", "share")
    done = []
    try:
        for r in results:
            done.append(r)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return merge(done, time.perf_counter() - t0)


@contextlib.contextmanager
def session(workers: EvalWorkers | None):
    """For the block, one connection to Ray shared by every evaluation of
    `workers` (Ray starts once, not per policy and game); nothing for the
    local executor."""
    if workers is not None and workers.executor == "ray":
        with executors.ray_session(workers.ray_address):
            yield
    else:
        yield


def student_source(student_path: str | os.PathLike, game: str,
                   preprocessing: environments.Preprocessing) -> PolicySource:
    return PolicySource("student", str(student_path), game, preprocessing.to_dict())


def teacher_source(teachers_dir: str | os.PathLike, game: str,
                   preprocessing: environments.Preprocessing,
                   allow_unsafe: bool = False) -> PolicySource:
    return PolicySource("teacher", str(teachers_dir), game, preprocessing.to_dict(),
                        allow_unsafe)
