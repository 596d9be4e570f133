"""The main job: teachers -> datasets -> one multi-task student -> report.

    multidistill train --games=pong,qbert,freeway
    multidistill train --games=pong,qbert,freeway --preset=smoke   # ~3 minutes
    python train.py ...                  # the same, from a checkout
    python -m multidistill.main_job ...  # the same

1. loads each game's teacher from --teachers_dir (checks game, action count,
   input shape, preprocessing);
2. builds each game's dataset in --datasets_dir, or tops it up to
   --num_agent_steps (an existing file must come from the same teacher and
   preprocessing), the teacher acting (or --behaviour: a student, a mixture,
   random) and labelling;
3. trains one student with a head per game by temperature-sharpened KL
   (or --loss), resuming --run_dir if it holds a checkpoint of this run;
   with --control=student|mixture|uniform (or --rounds > 0), then runs
   collection rounds: the control policy plays, the teacher labels, the
   student trains on the aggregate (`multidistill.rounds`); with
   --codistill=N, trains N students at once on disjoint shares of the data,
   each pulled toward the others' stale policies (`multidistill.codistill`),
   in <run_dir>/student_<i>;
4. computes the student's diagnostics on the held-out data
   (diagnostics.json, diagnostics.png: KL, agreement, entropies, the
   teachers' action gaps; `multidistill.diagnostics`), evaluates student
   and teachers under one protocol and writes report.json and report.md
   (with a Diagnostics section) into the run directory (with --codistill,
   student 0's, <run_dir>/student_0; the others' students are saved beside
   it, not evaluated).

This module maps flags to configs and calls the stages (`multidistill.stages`)
in order; the same calls work from Python (README, "Python API").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import flags

from multidistill import cli, collect, distribution, evaluation, rounds, stages
from multidistill import games as games_lib

FLAGS = flags.FLAGS

# Values of the presets (`stages.PRESETS`); a flag given on the command line wins.
PRESETS = stages.PRESETS


def define_flags():
    """The main job's flags: collection, distillation, rounds, evaluation, --preset."""
    cli.define_collect_flags()
    cli.define_distill_flags()
    cli.define_rounds_flags()
    cli.define_eval_flags()
    flags.adopt_module_key_flags(cli)  # Show them in --help.
    flags.DEFINE_enum("preset", "default", list(PRESETS),
                      "default: the full run (about 22 minutes on 2 CPU cores); smoke: every "
                      "stage on tiny sizes, a few minutes.")


def _apply_preset():
    for name, value in PRESETS[FLAGS.preset].items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def main(argv):
    del argv
    _apply_preset()
    t_start = time.perf_counter()
    # First, before any TensorFlow or JAX operation: a multi-worker engine
    # configures the runtime (collective ops, jax.distributed).
    engine = distribution.get_engine(FLAGS.distribution)
    # The code this run starts with (the tree may change while it runs); an
    # installed copy is no checkout, whatever folder it was installed into.
    checkout = Path(__file__).resolve().parent.parent
    commit = stages.git_commit(checkout) if (checkout / "pyproject.toml").is_file() else None
    game_names = games_lib.parse_games(FLAGS.games)
    spec = cli.preprocessing_from_flags()
    collect_config = cli.collect_config_from_flags()
    protocol = cli.eval_protocol_from_flags()
    eval_workers = cli.eval_workers_from_flags()
    teacher_cache = cli.teacher_cache_from_flags()

    # 1. Teachers (all checked before any long work starts).
    teachers = stages.load_teachers(game_names, FLAGS.teachers_dir, spec,
                                    allow_unsafe=FLAGS.allow_unsafe_teacher)
    kinds = [teachers[g].kind for g in game_names]
    config = cli.distill_config_from_flags(game_names, kinds)
    stages.check_objective(config, teachers)
    try:  # Before any long work: the global batch must split over the devices.
        engine.check_batch_size(config.global_batch_size)
    except ValueError as e:
        raise cli.UsageError(f"--{e}") from None
    rounds_config = cli.rounds_config_from_flags(_rounds())
    codistilling = FLAGS.codistill >= 2
    cli.require(not (codistilling and (rounds_config.rounds
                                       or rounds_config.control != "teacher")),
                f"--codistill trains on the offline datasets: it does not run collection "
                f"rounds (found --control={rounds_config.control}, --rounds="
                f"{rounds_config.rounds}); use --control=teacher --rounds=0")
    cli.require(not (rounds_config.rounds and engine.num_workers > 1),
                f"--distribution={engine.name}: collection rounds write datasets, which "
                f"{engine.num_workers} workers cannot share; use --rounds=0 (offline "
                "distillation) or data_parallel")
    try:  # Before any long work: the cap must hold the teacher's data and a round.
        rounds_config.check_cap(FLAGS.num_agent_steps)
    except ValueError as e:
        raise cli.UsageError(f"--{e}") from None
    cli.require(not (rounds_config.rounds and rounds_config.control in ("student", "mixture")
                     and config.num_grad_steps < 1),
                f"--control={rounds_config.control} needs a trained student to act in round "
                f"1: --num_grad_steps (round 0's training) must be >= 1, found "
                f"{config.num_grad_steps}")

    # 2. Datasets.
    print(f"[1/3] datasets in {FLAGS.datasets_dir}: {FLAGS.num_agent_steps:,} agent steps "
          "per game")
    collect.check_existing(teachers, FLAGS.datasets_dir, spec, FLAGS.rebuild_datasets)
    behaviours = cli.behaviours_from_flags(teachers, collect_config)
    try:
        paths, summaries = stages.build_datasets(teachers, FLAGS.datasets_dir, collect_config,
                                                 spec, behaviours,
                                                 rebuild=FLAGS.rebuild_datasets)
    except stages.Interrupted as e:
        _exit_interrupted(e)

    build_seconds = time.perf_counter() - t_start

    # 3. Distillation: the HDF5 source on the data the run started from.
    control = "" if rounds_config.control == "teacher" and not rounds_config.rounds else \
        f"_{rounds_config.control}"
    head = "" if config.student_head == "per_game" else f"_{config.student_head}"
    loss = FLAGS.loss + ("_iekd" if FLAGS.iekd else "")
    run_dir = Path(FLAGS.run_dir or Path("runs") / (
        f"{'-'.join(game_names)}_{loss}_{FLAGS.student_size}{head}_{FLAGS.preset}"
        f"{control}_seed{FLAGS.seed}" + (f"_codistill{FLAGS.codistill}" if codistilling
                                         else "")))
    print(f"[2/3] distilling into {run_dir} ({config.num_grad_steps:,} gradient steps of "
          f"{config.global_batch_size} samples, {config.precision}"
          + (f", {engine.num_replicas} devices ({engine.name})" if engine.num_replicas > 1
             else "") + ")" + (
              f", then {rounds_config.rounds} rounds: {rounds_config.agent_steps_per_round:,} "
              f"steps per game collected, {rounds_config.control} acting, and "
              f"{rounds_config.grad_steps_per_round:,} gradient steps each"
              if rounds_config.rounds else ""))
    rounds_summary = None
    if codistilling:
        from multidistill import codistill

        print(f"  codistillation: {FLAGS.codistill} students on disjoint shares of the "
              f"training episodes in {run_dir}/student_<i>; student 0 is evaluated")
        try:
            train_summary, student_paths = codistill.distil(run_dir, config, paths, spec, kinds)
        except KeyboardInterrupt:
            print(f"interrupted: every student's checkpoint is saved in {run_dir}; run the "
                  "same command to resume", file=sys.stderr)
            raise SystemExit(130) from None
        # Student 0's run directory takes the diagnostics, report and evaluation.
        run_dir, student_path = codistill.student_dir(run_dir, 0), student_paths[0]
    elif rounds_config.rounds:
        loop = rounds.RoundLoop(run_dir, rounds_config, config, teachers, paths, spec,
                                collect_config)
        try:
            rounds_summary = loop.run()
        except KeyboardInterrupt:
            print(f"interrupted: what was done is saved in {run_dir}; run the same command "
                  "to resume", file=sys.stderr)
            raise SystemExit(130) from None
        # The distillation stage includes the rounds' collection.
        train_summary = {"grad_steps": rounds_summary["grad_steps"],
                         "seconds": rounds_summary["seconds"],
                         "run_train_seconds": rounds_summary["run_seconds"]}
        student_path = Path(rounds_summary["student"])
    else:
        try:
            train_summary, student_path = stages.distil(run_dir, config, paths, spec, kinds)
        except stages.Interrupted as e:
            _exit_interrupted(e)

    if not engine.is_chief:  # The chief diagnoses, evaluates and writes the report.
        print(f"worker {engine.worker_index} of {engine.num_workers}: distillation done; "
              f"worker 0 evaluates into {run_dir}")
        return

    # 4. Diagnostics on the held-out data, then evaluation.
    t_diagnose = time.perf_counter()
    diagnostics = stages.diagnose(run_dir, student_path, config, paths, kinds)
    diagnose_seconds = time.perf_counter() - t_diagnose
    episodes = ", ".join(f"{g} {protocol.episodes(g)}" for g in game_names)
    print(f"[3/3] evaluating, episodes per game and policy: {episodes}")
    report = stages.evaluate_student(
        student_path, run_dir, config, game_names, FLAGS.teachers_dir, spec, protocol,
        grad_steps=train_summary["grad_steps"], t_start=t_start,
        evaluate_teachers=FLAGS.evaluate_teachers,
        allow_unsafe_teacher=FLAGS.allow_unsafe_teacher,
        video_seconds=FLAGS.video_seconds if FLAGS.videos else 0.0, workers=eval_workers,
        teacher_cache=teacher_cache,
        extra={"run_dir": str(run_dir), "preset": FLAGS.preset,
               "command": command_line(), "commit": commit,
               "training": train_summary, "datasets": summaries,
               "config": config.to_dict(),
               **({"rounds": rounds_summary} if rounds_summary else {}),
               "diagnostics": diagnostics,
               "timing": {"build_seconds": build_seconds,
                          "distill_seconds": train_summary["seconds"],
                          "run_distill_seconds": train_summary["run_train_seconds"],
                          "diagnose_seconds": diagnose_seconds}})
    print()
    print(evaluation.report_markdown(report))
    print(f"report: {run_dir / 'report.md'}, {run_dir / 'report.json'}; "
          f"student: {student_path}")


def _rounds() -> int:
    """--rounds, or its default for the control policy and preset."""
    if FLAGS.rounds is not None:
        return FLAGS.rounds
    if FLAGS.control == "teacher":
        return 0
    return 2 if FLAGS.preset == "smoke" else 4


def _exit_interrupted(e: stages.Interrupted):
    """A stage stopped on SIGINT or SIGTERM, its work saved: say so, exit 130."""
    print(e, file=sys.stderr)
    raise SystemExit(130) from None


def command_line() -> str:
    """The command that started this process, as it would be typed again.

    `multidistill train ...` for the console command, else `python` and the
    interpreter's arguments (`python train.py ...`, `python -m
    multidistill.main_job ...`)."""
    args = list(getattr(sys, "orig_argv", sys.argv))[1:]  # Less the interpreter.
    if args and Path(args[0]).name == "multidistill":
        return " ".join(["multidistill", *args[1:]])
    return " ".join(["python", *args])


if __name__ == "__main__":
    define_flags()
    cli.run(main)
