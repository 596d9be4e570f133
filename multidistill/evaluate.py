"""Evaluates a trained student (and its teachers) under the project's protocol.

    python -m multidistill.evaluate --student=runs/RUN/student.keras \
        --games=pong,qbert,freeway

Writes report.json and report.md beside the student (or in --output_dir)
and prints the table. See `multidistill.evaluation` for the protocol.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from multidistill import cli, distiller, environments, evaluation
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("student", None, "The student file (RUN/student.keras).")
    flags.DEFINE_string("games", "",
                        "Comma-separated games to evaluate (default: all the student's heads).")
    flags.DEFINE_string("teachers_dir", str(teachers_lib.DEFAULT_TEACHERS_DIR),
                        "Folder holding the teachers (<game>.keras + <game>.json).")
    flags.DEFINE_string("output_dir", None,
                        "Where report.json/report.md go (default: the student's folder).")
    flags.DEFINE_integer("eval_episodes", 8, "Episodes per game and policy.")
    flags.DEFINE_float("eval_epsilon", 0.05, "Random-action probability.")
    flags.DEFINE_integer("eval_num_envs", 8, "Environments stepped together.")
    flags.DEFINE_integer("eval_seed", evaluation.EvalProtocol.seed,
                         "Environment i is seeded with eval_seed + i.")
    flags.DEFINE_bool("evaluate_teachers", True,
                      "Play the teachers too (else use their cards' scores).")
    cli.define_allow_unsafe_teacher_flag()
    cli.define_verbose_flag()
    flags.adopt_module_key_flags(cli)  # List them in --help too.


def main(argv):
    del argv
    cli.require(FLAGS.student is not None,
                "--student is required, e.g. --student=runs/RUN/student.keras")
    student = distiller.load_student(FLAGS.student)
    games = (games_lib.parse_games(FLAGS.games) if FLAGS.games.strip()
             else list(student.games))
    spec = environments.Preprocessing.from_dict(student.preprocessing, FLAGS.student)
    cli.require(FLAGS.eval_episodes >= 1,
                f"--eval_episodes must be >= 1, found {FLAGS.eval_episodes}")
    cli.require(FLAGS.eval_num_envs >= 1,
                f"--eval_num_envs must be >= 1, found {FLAGS.eval_num_envs}")
    try:
        protocol = evaluation.EvalProtocol(num_episodes=FLAGS.eval_episodes,
                                           epsilon=FLAGS.eval_epsilon,
                                           num_envs=FLAGS.eval_num_envs, seed=FLAGS.eval_seed)
    except ValueError as e:
        raise cli.UsageError(f"flags: {e}") from None
    out_dir = Path(FLAGS.output_dir or Path(FLAGS.student).parent)
    report = evaluation.evaluate_run(student, games, FLAGS.teachers_dir, spec, protocol,
                                     evaluate_teachers=FLAGS.evaluate_teachers,
                                     out_dir=out_dir, extra={"student": FLAGS.student},
                                     allow_unsafe_teacher=FLAGS.allow_unsafe_teacher)
    print(evaluation.report_markdown(report))
    print(f"report: {out_dir / 'report.md'}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
