"""How differently two students act: prediction disagreement on held-out states.

    python -m multidistill.disagreement --games=pong,qbert,freeway \\
        --datasets_dir=datasets runs/A runs/B [runs/C runs/D ...] \\
        [--labels="plain,codistill"] [--output=disagreement.md]

The arguments are pairs of run directories (each holding student.keras and
config.json); per pair and game, on the held-out states of the game's dataset
(the last episodes, as the run's held-out metrics take them, on the data
prefix the first run of the pair started from):

    disagreement = mean_s [argmax_a p_A(a|s) != argmax_a p_B(a|s)]
    TV           = mean_s 1/2 sum_a |p_A(a|s) - p_B(a|s)|

with p = softmax of the student's logits over the game's actions. This is
the reproducibility measure of Anil et al. (2018, Sec. 3.3: how often two
retrainings of a model predict differently), for two runs that differ only
in their seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags

from multidistill import cli, files

FLAGS = flags.FLAGS


def policy_disagreement(logits_a: np.ndarray, logits_b: np.ndarray) -> dict[str, float]:
    """Top-1 disagreement and mean total-variation distance of two policies.

    Args:
      logits_a, logits_b: (N, A) logits over the same actions (only the
        game's valid actions: slice padded columns off first).

    Returns:
      {"disagreement": share of states whose argmax differs, "tv": mean over
      states of 1/2 sum_a |softmax(a) - softmax(b)|, "num_states": N}.
    """
    a = np.asarray(logits_a, np.float64)
    b = np.asarray(logits_b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"logits must be two (N, A) arrays of one shape, found {a.shape} "
                         f"and {b.shape}")

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    return {"disagreement": float(np.mean(a.argmax(-1) != b.argmax(-1))),
            "tv": float(np.mean(0.5 * np.abs(softmax(a) - softmax(b)).sum(-1))),
            "num_states": int(a.shape[0])}


def _logits(student, x, num_actions: int) -> np.ndarray:
    out = []
    for k in range(0, len(x["game_id"]), 256):
        part = {name: v[k:k + 256] for name, v in x.items()}
        out.append(np.asarray(student.predict_on_batch(part)["logits"])[:, :num_actions])
    return np.concatenate(out)


def heldout_disagreement(run_a: str | os.PathLike, run_b: str | os.PathLike,
                         paths: Sequence, max_rows: int = 1024) -> dict[str, dict]:
    """Per game, `policy_disagreement` of the students of two runs on the
    held-out states of `paths` (one dataset per game, in the students' head
    order), on the data prefix `run_a` started from."""
    from multidistill import distiller, pipeline, students

    a = students.load_student(Path(run_a) / "student.keras")
    b = students.load_student(Path(run_b) / "student.keras")
    if list(a.games) != list(b.games):
        raise ValueError(f"{run_a} and {run_b} train other games: {a.games} and {b.games}")
    source = pipeline.HDF5Source(paths, pipeline.PipelineConfig(),
                                 max_episodes=distiller.data_prefix(run_a))
    try:
        if list(source.games) != list(a.games):
            raise ValueError(f"the datasets hold the games {list(source.games)}, the "
                             f"students play {list(a.games)}")
        out = {}
        for g, game in enumerate(a.games):
            batch = source.holdout(g, max_rows=max_rows)
            if batch is None:
                continue
            x, _ = batch
            n = a.num_actions[g]
            out[game] = policy_disagreement(_logits(a, x, n), _logits(b, x, n))
        return out
    finally:
        source.close()


def disagreement_markdown(results: dict[str, dict[str, dict]]) -> str:
    """A table: per labelled pair and game, disagreement and TV in %."""
    games = sorted({g for r in results.values() for g in r})
    lines = ["| pair | " + " | ".join(f"{g} top-1 disagreement % / TV %" for g in games)
             + " | mean top-1 disagreement % |",
             "|---|" + "---|" * (len(games) + 1)]
    for label, r in results.items():
        cells = [f"{100 * r[g]['disagreement']:.1f} / {100 * r[g]['tv']:.1f}" if g in r
                 else "-" for g in games]
        mean = np.mean([r[g]["disagreement"] for g in games if g in r]) if r else float("nan")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * mean:.1f} |")
    return "\n".join(lines) + "\n"


def define_flags():
    flags.DEFINE_string("games", None, "Comma-separated games, the students' head order.")
    flags.DEFINE_string("datasets_dir", "datasets", "Folder of the games' datasets.")
    flags.DEFINE_list("labels", [], "Names of the pairs, in argument order (default: the "
                                    "run directories' names).")
    flags.DEFINE_string("output", None, "Markdown file for the table (default: print only).")
    cli.define_verbose_flag()


def main(argv):
    from multidistill import datasets
    from multidistill import games as games_lib

    runs = argv[1:]
    cli.require(len(runs) >= 2 and len(runs) % 2 == 0,
                f"give pairs of run directories (runs/A runs/B ...), found {len(runs)}")
    cli.require(bool(FLAGS.games), "--games is required (the students' head order)")
    names = games_lib.parse_games(FLAGS.games)
    paths = [str(datasets.dataset_path(FLAGS.datasets_dir, g)) for g in names]
    pairs = list(zip(runs[::2], runs[1::2]))
    labels = FLAGS.labels or [f"{Path(a).name} vs {Path(b).name}" for a, b in pairs]
    cli.require(len(labels) == len(pairs),
                f"--labels names {len(labels)} pairs, found {len(pairs)}")
    results = {label: heldout_disagreement(a, b, paths) for label, (a, b) in zip(labels, pairs)}
    table = disagreement_markdown(results)
    print(table)
    if FLAGS.output:
        Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(FLAGS.output, table)
        print(f"disagreement: {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, positional=True)
