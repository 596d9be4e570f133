"""The main job's stages as functions: teachers -> datasets -> student -> report.

`train.py` (one student) and `multidistill.sweep` (one student per size, on
the same datasets) wire these together (`diagnose`, the student's held-out
diagnostics, is the main job's), so that both load teachers, build
datasets, distil and evaluate through the same code. Like the main job, each
stage prints a line per game or step it finishes; a stage stopped by SIGINT
or SIGTERM raises `Interrupted` once what it did is saved, and the entry
point exits with status 130 (rerunning the same command resumes).

No stage reads flags: the entry points map them to configs (`cli`).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from multidistill import collect, datasets, distiller, environments, evaluation, pipeline
from multidistill import teachers as teachers_lib

# The main job's presets: values of its flags, applied by the entry points to
# the flags not given on the command line.
PRESETS = {
    "default": {},
    "smoke": {
        "num_agent_steps": 1500,
        "num_envs": 2,
        "num_grad_steps": 60,
        "batch_size_per_game": 8,
        "checkpoint_every_steps": 30,
        "eval_every_steps": 30,
        "eval_episodes": "1",
        "eval_num_envs": 1,
        "agent_steps_per_round": 300,
        "grad_steps_per_round": 30,
        "video_seconds": 2.0,
        "student_size": "net3",
        "datasets_dir": "datasets/smoke",
        "iekd_autoencoder_steps": 100,
        "codistill_refresh_steps": 10,
        "codistill_burn_in_steps": 20,
    },
}


class Interrupted(KeyboardInterrupt):
    """A stage stopped on SIGINT or SIGTERM after saving its work; the message
    says what was kept and how to resume."""


def git_commit(directory: str | os.PathLike) -> str | None:
    """The git commit of the code in `directory` (with "+changes" if the tree
    differs from it), or None outside a repository."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=directory, text=True,
                             capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=directory, text=True, capture_output=True,
                               timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+changes" if dirty.strip() else "")


def load_teachers(games: Sequence[str], teachers_dir: str | os.PathLike,
                  spec: environments.Preprocessing, allow_unsafe: bool = False
                  ) -> dict[str, teachers_lib.Teacher]:
    """Per game (in the order given), its teacher, checked against the game
    and `spec`, all before any long work starts.

    Raises:
      TeacherError: a teacher is missing or does not fit (`teachers.load_teacher`).
    """
    return {g: teachers_lib.load_teacher(g, teachers_dir, spec, allow_unsafe=allow_unsafe)
            for g in games}


def check_objective(config: distiller.DistillConfig,
                    teachers: dict[str, teachers_lib.Teacher]) -> None:
    """Refuses an objective that needs what a teacher cannot give.

    Raises:
      ValueError: the update rule needs the teachers' state values and a
        teacher has none.
    """
    if not getattr(config.objective, "needs_teacher_value", False):
        return
    none = [g for g in config.games if teachers[g].value_source == "none"]
    if none:
        raise ValueError(f"--update_rule={config.objective.rule} needs each teacher's state "
                         f"value; the teachers of {none} have none (a policy teacher "
                         "exported without its critic): pick another rule or teacher")


def build_datasets(teachers: dict[str, teachers_lib.Teacher], datasets_dir: str | os.PathLike,
                   config: collect.CollectConfig, spec: environments.Preprocessing,
                   behaviours: dict[str, collect.BehaviourPolicy], rebuild: bool = False,
                   progress: bool = True) -> tuple[list[str], dict[str, dict]]:
    """Builds, or tops up to `config.num_agent_steps`, each game's dataset in
    `datasets_dir`, `behaviours[game]` acting and the teacher labelling. A
    game whose dataset is sharded (a folder of parts that build_datasets
    --num_shards wrote) uses it as it is, if it holds enough steps
    (`collect.build_dataset`).

    Check the existing files first (`collect.check_existing`), before
    anything slow.

    Returns:
      (per game in the teachers' order, the dataset's path; per game, the
      build summary of `collect.build_dataset`).

    Raises:
      Interrupted: SIGINT or SIGTERM; the file keeps the whole episodes
        recorded so far.
    """
    summaries = {}
    paths = [str(datasets.dataset_path(datasets_dir, g)) for g in teachers]
    for g, path in zip(teachers, paths):
        s = summaries[g] = collect.build_dataset(
            teachers[g], path, config, spec, behaviour=behaviours[g], rebuild=rebuild,
            progress=progress)
        if s.get("interrupted"):
            raise Interrupted(
                f"{s['interrupted']}: stopped building {g} after whole episodes "
                f"({s['num_agent_steps']:,} steps kept in {path}); run the same command "
                "to resume")
        print(f"  {g}: {s['num_agent_steps']:,} steps, {s['num_episodes']} episodes "
              f"(+{s['added_agent_steps']:,})")
    return paths, summaries


def distil(run_dir: str | os.PathLike, config: distiller.DistillConfig, paths: Sequence[str],
           spec: environments.Preprocessing, teacher_kinds: Sequence[str],
           max_episodes: Sequence[int] | None = None, progress: bool = True
           ) -> tuple[dict, Path]:
    """Offline distillation on the datasets at `paths` (no collection rounds),
    resuming the run in `run_dir` if it holds one.

    Args:
      max_episodes: per dataset, the episodes to train on (default: those the
        run in `run_dir` started from, `distiller.data_prefix`, else all).

    Returns:
      (the distiller's `train()` summary, the student's path).

    Raises:
      Interrupted: SIGINT or SIGTERM; a checkpoint was saved.
    """
    if max_episodes is None:
        max_episodes = distiller.data_prefix(run_dir)
    source = pipeline.HDF5Source(paths, config.pipeline, fields=config.objective.fields,
                                 max_episodes=max_episodes)
    try:
        d = distiller.Distiller(run_dir, config, source, spec, teacher_kinds=teacher_kinds)
    except BaseException:
        source.close()
        raise
    try:
        return d.train(progress=progress), d.student_path
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at gradient step {d.grad_step}: checkpoint saved in "
                          f"{run_dir}; run the same command to resume") from None
    finally:
        d.close()


def diagnose(run_dir: str | os.PathLike, student_path: str | os.PathLike,
             config: distiller.DistillConfig, paths: Sequence, teacher_kinds: Sequence[str],
             max_episodes: Sequence[int] | None = None) -> dict:
    """The student's diagnostics on the run's held-out data
    (`multidistill.diagnostics`): diagnostics.json and diagnostics.png in
    `run_dir`, reused when they are of the same student file and data.

    Args:
      paths: per game, the teacher-driven dataset, whose last episodes are
        the held-out data (in collection rounds too, as long as the
        teacher-driven data stay in the sampler, `keep_teacher_data`).
      max_episodes: per dataset, the episodes the run started from (default:
        `distiller.data_prefix(run_dir)`).

    Returns:
      The diagnostics (`diagnostics.diagnose_run`), for the report's "diagnostics".
    """
    from multidistill import diagnostics

    if max_episodes is None:
        max_episodes = distiller.data_prefix(run_dir)
    d = diagnostics.diagnose_run(run_dir, student_path, paths, config.pipeline,
                                 config.objective.temperatures, teacher_kinds,
                                 max_episodes=max_episodes)
    for game, g in d["games"].items():
        print(f"  {game}: " + (
            f"held-out KL {g['heldout_kl']:.4f}, agreement {100 * g['agreement']:.1f} % "
            f"({g['num_states']:,} states)" if g.get("num_states") else g.get("note", "")))
    print(f"  diagnostics {'reused from' if d['reused'] else 'written to'} "
          f"{Path(run_dir) / diagnostics.JSON_NAME}")
    return d


def evaluate_student(student_path: str | os.PathLike, run_dir: str | os.PathLike,
                     config: distiller.DistillConfig, games: Sequence[str],
                     teachers_dir: str | os.PathLike, spec: environments.Preprocessing,
                     protocol: evaluation.EvalProtocol, *, grad_steps: int, extra: dict,
                     t_start: float, evaluate_teachers: bool = True,
                     allow_unsafe_teacher: bool = False, video_seconds: float = 0.0,
                     progress: bool = True,
                     teacher_cache: str | os.PathLike | None = None,
                     workers=None) -> dict:
    """Evaluates the run's student (and its teachers) and writes the run's
    report: report.json, report.md, the plots, and the evaluation's scalars
    in the run's logs at `grad_steps`.

    Args:
      extra: more fields for the report (`evaluation.evaluate_run`); its
        "timing" gains `eval_seconds` and `total_seconds` (since `t_start`,
        a `time.perf_counter()` value).
      teacher_cache: `evaluation.evaluate_run`'s: teachers' episodes kept
        across students (a sweep).
      workers: `evaluation.evaluate_run`'s: a `parallel_eval.EvalWorkers`.

    Returns:
      The report.
    """
    from multidistill import students

    t_eval = time.perf_counter()
    student = students.load_student(student_path)
    report = evaluation.evaluate_run(
        student, list(games), teachers_dir, spec, protocol,
        evaluate_teachers=evaluate_teachers, out_dir=run_dir, progress=progress,
        allow_unsafe_teacher=allow_unsafe_teacher, video_seconds=video_seconds, extra=extra,
        teacher_cache=teacher_cache, workers=workers, student_path=student_path)
    distiller.record_evaluation(run_dir, config, report, grad_steps)
    report.setdefault("timing", {}).update(eval_seconds=time.perf_counter() - t_eval,
                                           total_seconds=time.perf_counter() - t_start)
    evaluation.write_report(report, run_dir)  # Again, with the evaluation's time.
    return report
