"""Scalars for people: TensorBoard event files, a JSON-lines log, PNG curves.

`ScalarWriter` writes every scalar to `metrics.jsonl` (always) and to
TensorBoard event files under `tb/` when TensorFlow is importable (the JAX
backend's machines may lack it; the JSON log then stands alone). Tags are
namespaced CleanRL-style: `charts/episodic_return`, `losses/kl/pong`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from multidistill import files


class ScalarWriter:
    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.log_dir / "metrics.jsonl", "a")
        self._tb = None
        try:
            import tensorboard  # noqa: F401  (tf.summary needs it)
            import tensorflow as tf

            self._tf = tf
            self._tb = tf.summary.create_file_writer(str(self.log_dir / "tb"))
        except Exception:  # No TensorFlow (JAX-only machine): JSON log only.
            self._tb = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes `values` (tag -> number) at `step`."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            with self._tb.as_default():
                for k, v in values.items():
                    self._tf.summary.scalar(k, v, step=int(step))
            self._tb.flush()

    def hparams(self, params: dict, run_name: str = "") -> None:
        """Records the run's hyperparameters for TensorBoard's HParams dashboard.

        Nested dicts are flattened ("pipeline.batch_size_per_game"); lists
        and None become strings. The dashboard pairs them with the run's
        scalars (e.g. `eval/geometric_mean_percent_of_teacher`). Also kept
        in `hparams.json` (no TensorFlow needed).
        """
        flat = flatten_params(params)
        files.atomic_write_text(self.log_dir / "hparams.json", json.dumps(flat, indent=2) + "\n")
        if self._tb is None:
            return
        try:
            from tensorboard.plugins.hparams import api as hp
        except ImportError:  # An old TensorBoard: scalars only.
            return
        with self._tb.as_default():
            hp.hparams(flat, trial_id=run_name or str(self.log_dir.name))
        self._tb.flush()

    def close(self):
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def flatten_params(params: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": "[1, 2]"} (HParams' value types)."""
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v) if v is not None else "none"
    return out


def read_metrics(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from a metrics.jsonl file (bad lines skipped)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    p = Path(path)
    if not p.exists():
        return series
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # A line cut by a crash.
        step = row.pop("step", None)
        if step is None:
            continue
        for k, v in row.items():
            series[k].append((step, v))
    return series


def smooth(values, weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    out, avg = [], 0.0
    for k, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** k) if weight > 0 else v)
    return out


def save_figure(fig, out_png: str | os.PathLike) -> Path:
    """Writes a matplotlib figure as a PNG (atomically) and closes it."""
    import matplotlib.pyplot as plt

    try:
        return files.atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


def plot_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike,
                panels: list[tuple[str, list[str]]], xlabel: str,
                labels: dict[str, str] | None = None, smoothing: float = 0.0,
                intervals: dict[str, tuple[str, str]] | None = None) -> Path | None:
    """Plots tags from metrics.jsonl into one PNG, one panel per (title, tags).

    A tag's legend entry is `labels[tag]`, else the tag after its first "/".

    Args:
      smoothing: with > 0, a tag with more than 10 points is drawn smoothed
        (`smooth`, TensorBoard's weight) over its raw values drawn faint.
      intervals: tag -> (low tag, high tag): that tag's points get error bars
        (e.g. evaluation scores with their bootstrap interval).
    """
    labels = labels or {}
    intervals = intervals or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(metrics_path)
    panels = [(title, [t for t in tags if series.get(t)]) for title, tags in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False,
                             sharex=True)  # One time axis for every panel.
    for ax, (title, tags) in zip(axes[0], panels):
        for tag in tags:
            xs, ys = zip(*sorted(series[tag]))
            label = labels.get(tag, tag.split("/", 1)[-1])
            if tag in intervals and series.get(intervals[tag][0]):
                lo = dict(series[intervals[tag][0]])
                hi = dict(series[intervals[tag][1]])
                err = [[y - lo.get(x, y) for x, y in zip(xs, ys)],
                       [hi.get(x, y) - y for x, y in zip(xs, ys)]]
                ax.errorbar(xs, ys, yerr=err, label=label, marker="o", capsize=4,
                            linestyle="-" if len(xs) > 1 else "none")
            elif smoothing > 0 and len(xs) > 10:
                (line,) = ax.plot(xs, ys, alpha=0.25)
                ax.plot(xs, smooth(ys, smoothing), color=line.get_color(), label=label)
            else:
                ax.plot(xs, ys, label=label, marker="." if len(xs) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_percent_of_teacher(reports: dict[str, dict], out_png: str | os.PathLike
                            ) -> Path | None:
    """Dot plot of the student's % of teacher per game, with intervals, for one or more runs.

    Args:
      reports: label -> evaluation report (`evaluation.make_report`); one
        marker per run and game, offset within the game's row, plus a row for
        the geometric mean over games.
      out_png: the PNG to write.

    Returns:
      The path, or None when no report has a ratio to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = []
    for r in reports.values():
        games += [g for g in r.get("games", {}) if g not in games]
    rows = games + ["geometric mean"]
    points = []  # (row, run index, value, low, high)
    for k, r in enumerate(reports.values()):
        for i, g in enumerate(rows):
            if g == "geometric mean":
                v = r.get("geometric_mean_percent_of_teacher")
                ci = r.get("geometric_mean_percent_of_teacher_ci")
            elif g in r.get("games", {}):
                v = r["games"][g].get("student_percent_of_teacher")
                ci = r["games"][g].get("student_percent_of_teacher_ci")
            else:
                continue
            if v is not None:
                lo, hi = ci if ci else (v, v)
                points.append((i, k, v, lo, hi))
    if not points:
        return None
    n = len(reports)
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(rows) * max(1, n ** 0.5) + 1.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, label in enumerate(reports):
        pts = [p for p in points if p[1] == k]
        if not pts:
            continue
        offset = (k - (n - 1) / 2) * (0.6 / max(n, 1))
        ys = [len(rows) - 1 - p[0] + offset for p in pts]
        ax.errorbar([p[2] for p in pts], ys,
                    xerr=[[p[2] - p[3] for p in pts], [p[4] - p[2] for p in pts]],
                    fmt="o", capsize=3, color=colors[k % len(colors)],
                    label=label or None)
    ax.axvline(100, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(rows)))
    ax.set_xlabel("student score, % of teacher (95 % bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    if n > 1:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, out_png)
