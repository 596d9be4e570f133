"""Sharded recording: one worker against two, on this machine, in one run.

    python -m benchmarks.shard_speed                      # Pong, 60,000 agent steps, 2 repeats
    python -m benchmarks.shard_speed --num_agent_steps=4000 --repeats=1   # smoke

Records the same dataset (--game, --num_agent_steps, the shipped teacher)
three ways, each the real `build_datasets` command in a fresh process, into
its own temporary folder:

  one worker      --num_shards=1: one file, one process (all cores its own)
  two processes   --num_shards=2 --shard_index=0 and 1 started together
                  (what any scheduler's array job does)
  two Ray tasks   --num_shards=2 --executor=ray (a local Ray instance)

The three are timed in turn, --repeats times, so that a drift in the
machine's load hits them alike; a time is the command's wall clock, start-up
(imports, Ray's start) included, as a user sees it. Prints and writes
(--output) agent steps/s of each and the speed-ups over one worker, the
median over repeats of the ratio within a repeat.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The script's flags, defined when it runs (importing the module for its
    table, as the tests do, defines none)."""
    flags.DEFINE_string("game", "pong", "Game recorded (ALE ROM id).")
    flags.DEFINE_integer("num_agent_steps", 60_000, "Agent steps each recording holds.")
    flags.DEFINE_integer("repeats", 2, "Rounds of the three recordings, timed in turn.")
    flags.DEFINE_string("output", "benchmarks/scale/shard_speed.md",
                        "Markdown file the table is written to (empty: none).")

WAYS = ("one worker", "two processes", "two Ray tasks")


def _command(folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "multidistill.build_datasets", f"--games={FLAGS.game}",
            f"--num_agent_steps={FLAGS.num_agent_steps}", f"--datasets_dir={folder}", *extra]


def _run_together(commands: list[list[str]]) -> float:
    """Wall-clock seconds until every command has exited (each must exit 0)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
             for c in commands]
    errors = [(c, p.communicate()[1]) for c, p in zip(commands, procs)]
    seconds = time.perf_counter() - t0
    for (c, err), p in zip(errors, procs):
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(c)} exited {p.returncode}:\n"
                             f"{err.decode(errors='replace')[-2000:]}")
    return seconds


def _time_way(way: str, root: Path) -> float:
    folder = root / way.replace(" ", "_")
    shutil.rmtree(folder, ignore_errors=True)
    if way == "one worker":
        return _run_together([_command(folder)])
    if way == "two processes":
        return _run_together([_command(folder, "--num_shards=2", f"--shard_index={i}")
                              for i in range(2)])
    return _run_together([_command(folder, "--num_shards=2", "--executor=ray")])


def markdown(seconds: dict[str, list[float]], steps: int, game: str, command: str) -> str:
    lines = [f"Recording {steps:,} agent steps of {game} with the shipped teacher "
             f"(`{command}`, {os.cpu_count()} cores); wall clock per recording, "
             "start-up included, median over repeats; speed-up: the median over repeats "
             "of one worker's time / the way's time within the repeat.", "",
             "| way | seconds (median) | agent steps/s | speed-up over one worker |",
             "|---|---|---|---|"]
    base = seconds[WAYS[0]]
    for way in WAYS:
        med = statistics.median(seconds[way])
        ratio = statistics.median(b / s for b, s in zip(base, seconds[way]))
        lines.append(f"| {way} | {med:.1f} | {steps / med:,.0f} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    seconds = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory(prefix="shard_speed_") as tmp:
        for r in range(FLAGS.repeats):
            for way in WAYS:
                s = _time_way(way, Path(tmp))
                seconds[way].append(s)
                print(f"repeat {r + 1}/{FLAGS.repeats}, {way}: {s:.1f} s", flush=True)
    table = markdown(seconds, FLAGS.num_agent_steps, FLAGS.game,
                     "python -m benchmarks.shard_speed " + " ".join(sys.argv[1:]))
    print(table)
    if FLAGS.output:
        out = Path(FLAGS.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        print(f"written: {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
