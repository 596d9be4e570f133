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

    def close(self):
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


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


def plot_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike,
                panels: list[tuple[str, list[str]]], xlabel: str,
                labels: dict[str, str] | None = None) -> Path | None:
    """Plots tags from metrics.jsonl into one PNG, one panel per (title, tags).

    A tag's legend entry is `labels[tag]`, else the tag after its first "/".
    """
    labels = labels or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(metrics_path)
    panels = [(title, [t for t in tags if series.get(t)]) for title, tags in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, tags) in zip(axes[0], panels):
        for tag in tags:
            xs, ys = zip(*sorted(series[tag]))
            ax.plot(xs, ys, label=labels.get(tag, tag.split("/", 1)[-1]),
                    marker="." if len(xs) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return files.atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
