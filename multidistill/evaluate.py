"""Evaluates a trained student (and its teachers) under the project's protocol.

    python -m multidistill.evaluate --student=runs/RUN/student.keras \
        --games=pong,qbert,freeway

Writes report.json and report.md beside the student (or in --output_dir)
and prints the table. See `multidistill.evaluation` for the protocol.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from multidistill import cli, environments, evaluation, students
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
    cli.define_eval_flags()
    cli.define_allow_unsafe_teacher_flag()
    cli.define_verbose_flag()


def main(argv):
    del argv
    cli.require(FLAGS.student is not None,
                "--student is required, e.g. --student=runs/RUN/student.keras")
    student = students.load_student(FLAGS.student)
    games = (games_lib.parse_games(FLAGS.games) if FLAGS.games.strip()
             else list(student.games))
    spec = environments.Preprocessing.from_dict(student.preprocessing, FLAGS.student)
    protocol = cli.eval_protocol_from_flags()
    out_dir = Path(FLAGS.output_dir or Path(FLAGS.student).parent)
    report = evaluation.evaluate_run(student, games, FLAGS.teachers_dir, spec, protocol,
                                     evaluate_teachers=FLAGS.evaluate_teachers,
                                     out_dir=out_dir, extra={"student": FLAGS.student},
                                     allow_unsafe_teacher=FLAGS.allow_unsafe_teacher,
                                     video_seconds=FLAGS.video_seconds if FLAGS.videos
                                     else 0.0,
                                     workers=cli.eval_workers_from_flags(),
                                     teacher_cache=cli.teacher_cache_from_flags(),
                                     student_path=FLAGS.student)
    print(evaluation.report_markdown(report))
    print(f"report: {out_dir / 'report.md'}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
