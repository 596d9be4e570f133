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

Each figure comes with a 95 % percentile-bootstrap interval over the
held-out states, resampled in NUM_BLOCKS contiguous blocks per game
(`statistics.block_resampled_means`: neighbouring states are alike), and
the mean over games with a stratified one (each game's blocks resampled
within the game). The interval says how much the figure depends on which
states were held out, not how much it moves between seeds: a pair of runs
is one draw of that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags

from multidistill import cli, files, statistics

FLAGS = flags.FLAGS
NUM_BLOCKS = 16  # Contiguous blocks of held-out states a game's interval resamples.
MAX_STATES = 1024  # Held-out states per game, evenly spread over its held-out episodes.


def state_measures(logits_a: np.ndarray, logits_b: np.ndarray) -> dict[str, np.ndarray]:
    """Per state, whether the two policies' argmax differ (0/1) and their
    total-variation distance 1/2 sum_a |softmax(a) - softmax(b)|.

    Args:
      logits_a, logits_b: (N, A) logits over the same actions (only the
        game's valid actions: slice padded columns off first).
    """
    a = np.asarray(logits_a, np.float64)
    b = np.asarray(logits_b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"logits must be two (N, A) arrays of one shape, found {a.shape} "
                         f"and {b.shape}")

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    return {"disagreement": (a.argmax(-1) != b.argmax(-1)).astype(np.float64),
            "tv": 0.5 * np.abs(softmax(a) - softmax(b)).sum(-1)}


def summarise(per_game: dict[str, dict[str, np.ndarray]],
              boot: statistics.Bootstrap = statistics.Bootstrap(),
              num_blocks: int = NUM_BLOCKS) -> dict:
    """Means and intervals of `state_measures` per game and over games.

    Returns:
      {"games": {game: {"disagreement", "disagreement_ci", "tv", "tv_ci",
      "num_states"}}, "mean": {"disagreement", "disagreement_ci", "tv",
      "tv_ci"}}: the mean over games of each game's mean, its interval
      stratified (one resample of every game's blocks per bootstrap draw).
      An interval is None for a game of fewer than 2 states.
    """
    games, mean = {}, {}
    for measure in ("disagreement", "tv"):
        draws = []
        for k, (game, m) in enumerate(per_game.items()):
            values = m[measure]
            g = games.setdefault(game, {"num_states": int(len(values))})
            g[measure] = float(np.mean(values))
            g[f"{measure}_ci"] = None
            if len(values) >= statistics.MIN_EPISODES:
                d = statistics.block_resampled_means(values, num_blocks, boot.resamples,
                                                     boot.rng(1, k))
                g[f"{measure}_ci"] = list(statistics.percentile_interval(d, boot.confidence))
                draws.append(d)
        if per_game:
            mean[measure] = float(np.mean([g[measure] for g in games.values()]))
            mean[f"{measure}_ci"] = (
                list(statistics.percentile_interval(np.mean(draws, axis=0), boot.confidence))
                if len(draws) == len(per_game) else None)
    return {"games": games, "mean": mean}


def policy_disagreement(logits_a: np.ndarray, logits_b: np.ndarray) -> dict[str, float]:
    """Top-1 disagreement and mean total-variation distance of two policies
    on one set of states: {"disagreement", "tv", "num_states"}."""
    m = state_measures(logits_a, logits_b)
    return {"disagreement": float(np.mean(m["disagreement"])), "tv": float(np.mean(m["tv"])),
            "num_states": int(len(m["tv"]))}


def _logits(student, x, num_actions: int) -> np.ndarray:
    out = []
    for k in range(0, len(x["game_id"]), 256):
        part = {name: v[k:k + 256] for name, v in x.items()}
        out.append(np.asarray(student.predict_on_batch(part)["logits"])[:, :num_actions])
    return np.concatenate(out)


def heldout_disagreement(run_a: str | os.PathLike, run_b: str | os.PathLike,
                         paths: Sequence, max_rows: int = MAX_STATES,
                         boot: statistics.Bootstrap = statistics.Bootstrap()) -> dict:
    """`summarise` of the students of two runs on the held-out states of
    `paths` (one dataset per game, in the students' head order, the states
    in time order), on the data prefix `run_a` started from."""
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
            out[game] = state_measures(_logits(a, x, n), _logits(b, x, n))
        return summarise(out, boot)
    finally:
        source.close()


def _pct(d: dict, measure: str) -> str:
    ci = d.get(f"{measure}_ci")
    point = f"{100 * d[measure]:.1f}"
    return point if ci is None else f"{point} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def disagreement_markdown(results: dict[str, dict]) -> str:
    """A table: per labelled pair (a `summarise` result each), per game the
    top-1 disagreement and the TV distance in % with their intervals, and
    their means over games."""
    games = sorted({g for r in results.values() for g in r["games"]})
    lines = ["| pair | " + " | ".join(f"{g} top-1 disagreement % / TV %" for g in games)
             + " | mean top-1 disagreement % | mean TV % |",
             "|---|" + "---|" * (len(games) + 2)]
    for label, r in results.items():
        cells = [f"{_pct(r['games'][g], 'disagreement')} / {_pct(r['games'][g], 'tv')}"
                 if g in r["games"] else "-" for g in games]
        mean = ([_pct(r["mean"], "disagreement"), _pct(r["mean"], "tv")] if r["mean"]
                else ["-", "-"])
        lines.append(f"| {label} | " + " | ".join(cells + mean) + " |")
    return "\n".join(lines) + "\n"


def define_flags():
    flags.DEFINE_string("games", None, "Comma-separated games, the students' head order.")
    flags.DEFINE_string("datasets_dir", "datasets", "Folder of the games' datasets.")
    flags.DEFINE_list("labels", [], "Names of the pairs, in argument order (default: the "
                                    "run directories' names).")
    flags.DEFINE_string("output", None, "Markdown file for the table, with the figures as JSON "
                                        "beside it (same name, .json; default: print only).")
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
        json_path = Path(FLAGS.output).with_suffix(".json")
        files.atomic_write_text(json_path, json.dumps(
            {"pairs": [{"label": label, "run_a": str(a), "run_b": str(b), **results[label]}
                       for label, (a, b) in zip(labels, pairs)],
             "max_held_out_states_per_game": MAX_STATES,
             "interval": dict(statistics.Bootstrap().to_dict(),
                              method=f"percentile bootstrap over {NUM_BLOCKS} contiguous blocks "
                                     "of each game's held-out states, stratified by game")},
            indent=1) + "\n")
        print(f"disagreement: {FLAGS.output}, {json_path}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, positional=True)
