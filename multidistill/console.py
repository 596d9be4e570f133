"""The `multidistill` command: one subcommand per entry point.

    multidistill train --games=pong,qbert,freeway --preset=smoke
    multidistill build-datasets --games=pong --num_agent_steps=50000
    multidistill SUBCOMMAND --help     # that entry point's flags

A subcommand runs its entry module exactly as `python -m multidistill.<module>`
does (`runpy`, the module as `__main__`), so its flags, help text, messages
and exit codes are that module's; this module adds nothing to them and
imports no deep-learning framework before one is needed.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence

import multidistill

# Subcommand -> (entry module, one line for `multidistill --help`).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("multidistill.main_job",
              "the main job: teachers -> datasets -> one student -> report (train.py)"),
    "build-datasets": ("multidistill.build_datasets",
                       "record or top up datasets: a behaviour policy plays, the teacher "
                       "labels"),
    "evaluate": ("multidistill.evaluate",
                 "evaluate a student and its teachers under the protocol; write a report"),
    "train-teacher": ("multidistill.train_teacher",
                      "train (or evaluate) a single-game DQN or PPO teacher"),
    "import-teacher": ("multidistill.import_teacher",
                       "convert an SB3 / RL Zoo or CleanRL Atari network into a teacher"),
    "compare": ("multidistill.compare", "one table and one plot from several runs' reports"),
    "disagreement": ("multidistill.disagreement",
                     "how differently pairs of students act on the held-out states"),
    "sweep": ("multidistill.sweep",
              "one student per size on the same data: size, speed and score table"),
    "datasets": ("multidistill.datasets",
                 "inspect (info) or upgrade (upgrade) dataset files"),
    "export-dataset": ("multidistill.export_dataset",
                       "write a dataset as a Minari dataset (pip install "
                       "\"multidistill[minari]\")"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: multidistill SUBCOMMAND [--flag=value ...]   (multidistill "
             f"{multidistill.__version__})",
             "",
             "Multi-task policy distillation for Atari.",
             "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "`multidistill SUBCOMMAND --help` lists a subcommand's flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `multidistill SUBCOMMAND ARGS...` (argv: the arguments after
    `multidistill`; default sys.argv[1:]).

    Returns:
      The exit code when no subcommand ran: 0 for --help, 2 for a missing or
      unknown subcommand. A subcommand exits by itself, with its own code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, args = argv[0], argv[1:]
    if name in ("-h", "--help", "help"):
        if name == "help" and args and args[0] in SUBCOMMANDS:  # `help train`
            name, args = args[0], ["--help"]
        else:
            try:
                print(usage(), flush=True)
            except BrokenPipeError:  # `multidistill --help | head -3`: not an error.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if name == "--version":
        print(f"multidistill {multidistill.__version__}")
        return 0
    if name not in SUBCOMMANDS:
        print(f"multidistill: unknown subcommand '{name}'; expected one of: "
              f"{', '.join(SUBCOMMANDS)} (multidistill --help says what each does)",
              file=sys.stderr)
        return 2
    module = SUBCOMMANDS[name][0]
    # runpy sets sys.argv[0] to the module's file while it runs, as `python -m` does.
    sys.argv = [f"multidistill {name}", *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
