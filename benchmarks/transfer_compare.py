"""Transfer from a distilled trunk against learning from scratch: the table
and plot of benchmarks/transfer.sh.

    python -m benchmarks.transfer_compare \
        --scratch=CK/boxing_scratch_s0,CK/boxing_scratch_s1 \
        --trunk=CK/boxing_trunk_s0,CK/boxing_trunk_s1 --game=boxing

Reads each teacher run's `metrics.jsonl` (its periodic evaluations,
`eval/mean_return`, and its training episodes) and writes transfer.md,
transfer.json and transfer.png into --output_dir: per run, the frames at
which the evaluation first reaches the threshold (default: half the best
evaluation any from-scratch run reached), the best evaluation, and the
mean of all its evaluations (the area under the curve, per evaluation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from multidistill import files, summaries

FLAGS = flags.FLAGS


def evaluations(run_dir: str | Path) -> list[tuple[int, float]]:
    """(frames, mean return) of a teacher run's periodic evaluations."""
    series = summaries.read_metrics(Path(run_dir) / "metrics.jsonl")
    return sorted(series.get("eval/mean_return", []))


def frames_to(evals: list[tuple[int, float]], threshold: float) -> int | None:
    """The frames of the first evaluation at or above `threshold`, or None."""
    for frames, value in evals:
        if value >= threshold:
            return int(frames)
    return None


def compare(scratch: list[str], trunk: list[str], threshold: float | None = None) -> dict:
    runs = {"scratch": {r: evaluations(r) for r in scratch},
            "trunk": {r: evaluations(r) for r in trunk}}
    for group, members in runs.items():
        for run, evals in members.items():
            if not evals:
                raise app.UsageError(f"{run}: no evaluations in its metrics.jsonl ({group})")
    if threshold is None:
        threshold = 0.5 * max(v for evals in runs["scratch"].values() for _, v in evals)
    out = {"threshold": threshold, "groups": {}}
    for group, members in runs.items():
        rows = []
        for run, evals in members.items():
            rows.append({"run": str(run), "frames_to_threshold": frames_to(evals, threshold),
                         "best": max(v for _, v in evals),
                         "mean_of_evaluations": float(np.mean([v for _, v in evals])),
                         "last_frames": evals[-1][0], "evaluations": evals})
        out["groups"][group] = rows
    return out


def markdown(result: dict, game: str, command: str) -> str:
    lines = [f"# Transfer from a distilled trunk ({game})", "",
             f"Threshold: {result['threshold']:.1f} (evaluation mean return).", "",
             "| start | run | frames to the threshold | best evaluation | mean of the "
             "evaluations | frames trained |", "|---|---|---|---|---|---|"]
    for group, rows in result["groups"].items():
        for r in rows:
            reached = r["frames_to_threshold"]
            lines.append(f"| {group} | `{Path(r['run']).name}` | "
                         f"{'not reached' if reached is None else f'{reached:,}'} | "
                         f"{r['best']:.1f} | {r['mean_of_evaluations']:.1f} | "
                         f"{r['last_frames']:,} |")
    return "\n".join(lines + ["", f"Command: `{command}`", ""])


def plot(result: dict, game: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"scratch": "tab:grey", "trunk": "tab:blue"}
    for group, rows in result["groups"].items():
        for i, r in enumerate(rows):
            xs, ys = zip(*r["evaluations"])
            ax.plot(xs, ys, "-o", color=colours.get(group), alpha=0.9 - 0.3 * i,
                    label=f"{group}: {Path(r['run']).name}")
    ax.axhline(result["threshold"], color="k", linestyle=":", label="threshold")
    ax.set_xlabel("emulator frames")
    ax.set_ylabel("evaluation mean return")
    ax.set_title(f"{game}: from a distilled trunk vs from scratch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return summaries.save_figure(fig, path)


def main(argv):
    del argv
    result = compare([p for p in FLAGS.scratch if p], [p for p in FLAGS.trunk if p],
                     FLAGS.threshold)
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "bash benchmarks/transfer.sh" if FLAGS.from_script else " ".join(
        ["python -m benchmarks.transfer_compare"] + sys.argv[1:])
    files.atomic_write_text(out / "transfer.md", markdown(result, FLAGS.game, command))
    files.atomic_write_text(out / "transfer.json", json.dumps(result, indent=2) + "\n")
    plot(result, FLAGS.game, out / "transfer.png")
    print((out / "transfer.md").read_text())


if __name__ == "__main__":
    flags.DEFINE_list("scratch", [], "Checkpoint folders of the runs from scratch.")
    flags.DEFINE_list("trunk", [], "Checkpoint folders of the runs from the student's trunk.")
    flags.DEFINE_float("threshold", None,
                       "Evaluation mean return to reach (default: half the best evaluation "
                       "of the runs from scratch).")
    flags.DEFINE_string("game", "boxing", "The game, for titles.")
    flags.DEFINE_string("output_dir", "benchmarks/transfer", "Where the comparison goes.")
    flags.DEFINE_bool("from_script", False, "Record the script as the command.")
    app.run(main)
