"""Knowledge-distillation diagnostics: how closely the student follows each
teacher on held-out states, and where it does not.

Per game, on the run's held-out data (the distiller's split, never trained
on; `pipeline.HDF5Source.holdout`):

  * held-out KL(p_T || p_S), p_T = softmax(q_T / tau), p_S = softmax(z_S):
    the distiller's `heldout/kl/<game>` (`losses.kl`), in nats;
  * top-1 agreement: the share of states where argmax z_S = argmax q_T
    (`losses.top1_agreement`);
  * the mean policy entropy, in nats, of the student's softmax(z_S) and of
    the teacher's target softmax(q_T / tau), beside its maximum ln A;
  * the teacher's action gap, its best output minus its second best, in the
    teacher's own units (Q-values: return; logits: logit units), as
    quantiles and a histogram;
  * agreement as a function of the teacher's confidence: the states ranked
    by action gap and cut into fifths (quintiles), with per fifth its gap
    range, its number of states and the student's agreement there. A
    student that only copies where the teacher is sure agrees in the top
    fifth and not in the bottom one.

Conventions: teacher outputs are Q-values (kind "q_values", tau 0.01 by
default) or policy logits (kind "logits", tau 1), as
`objectives.default_temperature`; the student's logits are those of the
game's head, in the game's action order. `game_diagnostics` is the pure
core (arrays in, numbers out); `heldout_diagnostics` runs a student on a
run's held-out states; `diagnose_run` writes `diagnostics.json` and the
plot `diagnostics.png` into the run directory, and reuses them when they are
of the same student file and held-out data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from multidistill import acting, files, losses, objectives, pipeline, summaries
from multidistill import teachers as teachers_lib

FORMAT = "multidistill-diagnostics/1"
KINDS = ("q_values", "logits")
QUANTILES = (10, 25, 50, 75, 90)  # Percent, of the action gap.
NUM_CONFIDENCE_BINS = 5  # Quintiles of the action gap.
NUM_HISTOGRAM_BINS = 20
# The held-out states run per game: evenly spread over the held-out
# episodes, a few seconds of inference per game on 2 CPU cores (the
# distiller's curves take 1,024).
DEFAULT_MAX_STATES_PER_GAME = 4096
GAP_UNITS = {"q_values": "Q-value (return) units", "logits": "logit units"}
JSON_NAME, PLOT_NAME = "diagnostics.json", "diagnostics.png"


def entropy(logits: np.ndarray) -> np.ndarray:
    """Per row, the entropy in nats of softmax(logits).

        log p(a) = z(a) - logsumexp(z),  H = -sum_a p(a) log p(a)

    Computed in float64, so that a sharpened teacher (q / 0.01) gives a
    finite value however peaked it is.

    Args:
      logits: (N, A).

    Returns:
      (N,) float64, each in [0, ln A].
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p = np.exp(log_p)
    return -(p * log_p).sum(axis=-1)


def action_gap(outputs: np.ndarray) -> np.ndarray:
    """Per row, the best output minus the second best (>= 0; 0 on a tie).

    Args:
      outputs: (N, A), A >= 2.

    Returns:
      (N,) float64.
    """
    top2 = np.sort(np.asarray(outputs, np.float64), axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def confidence_bins(teacher_outputs: np.ndarray, student_logits: np.ndarray,
                    num_bins: int = NUM_CONFIDENCE_BINS) -> list[dict]:
    """Top-1 agreement per confidence bin: the states ranked by the teacher's
    action gap (ties in state order) and cut into `num_bins` bins of equal
    size (give or take one), least confident first.

    Confidence is the action gap and not the top probability of
    softmax(q / tau): at tau = 0.01 nearly every state's top probability is
    about 1, so bins of it would leave all states in one. Bins of equal
    counts (by rank) rather than edges at the quantile values keep every bin
    filled when gaps tie (e.g. many exact zeros).

    Args:
      teacher_outputs: (N, A).
      student_logits: (N, A).
      num_bins: bins (5: quintiles).

    Returns:
      Per bin, {"bin" (1 = least confident), "gap_low", "gap_high" (the
      smallest and largest gap in it), "num_states", "agreement"}; a bin
      with no state (N < num_bins) has None for the numbers.
    """
    gap = action_gap(teacher_outputs)
    order = np.argsort(gap, kind="stable")
    out = []
    for k, idx in enumerate(np.array_split(order, num_bins), 1):
        if len(idx) == 0:
            out.append({"bin": k, "gap_low": None, "gap_high": None, "num_states": 0,
                        "agreement": None})
            continue
        idx = np.sort(idx)
        out.append({"bin": k, "gap_low": float(gap[idx].min()),
                    "gap_high": float(gap[idx].max()), "num_states": int(len(idx)),
                    "agreement": _number(losses.top1_agreement(
                        teacher_outputs[idx], student_logits[idx]))})
    return out


def _number(tensor) -> float:
    from keras import ops

    return float(ops.convert_to_numpy(tensor))


def _check_arrays(teacher_outputs, student_logits, temperature, teacher_kind) -> None:
    if teacher_kind not in KINDS:
        raise ValueError(f"teacher kind must be one of {list(KINDS)}, found {teacher_kind!r}")
    t, s = np.shape(teacher_outputs), np.shape(student_logits)
    if len(t) != 2 or t != s:
        raise ValueError(f"teacher outputs and student logits must both be (states, actions) "
                         f"of one shape, found {t} and {s}")
    if t[0] < 1 or t[1] < 2:
        raise ValueError(f"diagnostics need at least 1 state and 2 actions, found {t[0]} "
                         f"states of {t[1]} actions")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, found {temperature}")
    for name, a in (("teacher outputs", teacher_outputs), ("student logits", student_logits)):
        if not np.isfinite(a).all():
            raise ValueError(f"the {name} hold {int((~np.isfinite(a)).sum())} non-finite "
                             "values")


def game_diagnostics(teacher_outputs: np.ndarray, student_logits: np.ndarray,
                     teacher_kind: str, temperature: float | None = None) -> dict:
    """The diagnostics of one game from its teacher's outputs and the student's
    logits on the same states.

    Args:
      teacher_outputs: (N, A) Q-values or logits, the game's actions only.
      student_logits: (N, A) the student's head for the game.
      teacher_kind: "q_values" or "logits".
      temperature: tau of the game's target softmax(teacher / tau) (None:
        `objectives.default_temperature` of the kind).

    Returns:
      A JSON-able dict: "teacher_kind", "temperature", "num_states",
      "num_actions", "heldout_kl" (nats), "agreement" (0-1),
      "student_entropy", "teacher_entropy" (mean, nats), "max_entropy"
      (ln A), "action_gap" ({"units", "mean", "quantiles": {"10": ...},
      "histogram": {"edges", "counts"}}), "agreement_by_confidence"
      (`confidence_bins`).

    Raises:
      ValueError: shapes, kind or temperature do not fit, or a value is
        not finite.
    """
    tau = objectives.default_temperature(teacher_kind) if temperature is None else temperature
    _check_arrays(teacher_outputs, student_logits, tau, teacher_kind)
    t_out = np.asarray(teacher_outputs, np.float32)
    s_out = np.asarray(student_logits, np.float32)
    n, a = t_out.shape
    gap = action_gap(t_out)
    hi = float(gap.max())
    counts, edges = np.histogram(gap, bins=NUM_HISTOGRAM_BINS, range=(0.0, hi if hi > 0 else 1.0))
    return {
        "teacher_kind": teacher_kind,
        "temperature": float(tau),
        "num_states": int(n),
        "num_actions": int(a),
        "heldout_kl": _number(losses.kl(t_out, s_out, temperature=tau)),
        "agreement": _number(losses.top1_agreement(t_out, s_out)),
        "student_entropy": float(entropy(s_out).mean()),
        "teacher_entropy": float(entropy(t_out.astype(np.float64) / tau).mean()),
        "max_entropy": math.log(a),
        "action_gap": {
            "units": GAP_UNITS[teacher_kind],
            "mean": float(gap.mean()),
            "quantiles": {str(q): float(v)
                          for q, v in zip(QUANTILES, np.percentile(gap, QUANTILES))},
            "histogram": {"edges": [float(e) for e in edges],
                          "counts": [int(c) for c in counts]},
        },
        "agreement_by_confidence": confidence_bins(t_out, s_out),
    }


# -- on a run's held-out data ----------------------------------------------


def student_logits(student, x: dict, chunk_rows: int = 256) -> np.ndarray:
    """The student's logits of a batch {"frames", "game_id"}, run in chunks of
    `chunk_rows` (the last padded, one compiled shape, as the distiller's
    held-out metrics do)."""
    n = len(x["game_id"])
    preds = []
    for k in range(0, n, chunk_rows):
        xs = {name: acting.pad_rows(v[k:k + chunk_rows], chunk_rows) for name, v in x.items()}
        preds.append(np.asarray(student.predict_on_batch(xs)["logits"]))
    return np.concatenate(preds)[:n]


def _open_source(paths: Sequence, pipeline_config: pipeline.PipelineConfig,
                 max_episodes: Sequence[int] | None) -> pipeline.HDF5Source:
    # The held-out split depends on the episodes and `holdout_fraction` only;
    # one block in memory keeps the training window's buffers small.
    config = dataclasses.replace(pipeline_config, blocks_in_memory=1, prefetch_batches=1)
    return pipeline.HDF5Source(paths, config, fields=("teacher_outputs",),
                               max_episodes=max_episodes)


def _identity(source: pipeline.HDF5Source, student_sha256: str | None,
              temperatures: Sequence[float], teacher_kinds: Sequence[str],
              max_states_per_game: int) -> dict:
    """What the numbers are of: the student file, the held-out data, tau; JSON-normalised."""
    return json.loads(json.dumps({
        "student_sha256": student_sha256, "data": source.identity(),
        "holdout_fraction": source.config.holdout_fraction,
        "temperatures": [float(t) for t in temperatures],
        "teacher_kinds": list(teacher_kinds), "max_states_per_game": int(max_states_per_game)}))


def _diagnose_source(student, source: pipeline.HDF5Source, temperatures: Sequence[float],
                     teacher_kinds: Sequence[str], max_states_per_game: int) -> dict:
    games = list(source.games)
    if list(student.games) != games or list(student.num_actions) != list(source.num_actions):
        raise ValueError(
            f"the student's heads are {list(student.games)} of {list(student.num_actions)} "
            f"actions, the held-out data are of {games} with {list(source.num_actions)}: "
            "diagnose a student on the datasets it was trained on")
    for name, values in (("temperatures", temperatures), ("teacher kinds", teacher_kinds)):
        if len(values) != len(games):
            raise ValueError(f"{len(values)} {name} given for the {len(games)} games {games}")
    out = {}
    for g, game in enumerate(games):
        lo, hi = source.windows[g].holdout_range
        batch = source.holdout(g, max_rows=max_states_per_game)
        if batch is None:
            out[game] = {"teacher_kind": teacher_kinds[g], "temperature": float(temperatures[g]),
                         "num_states": 0, "note": (
                             f"no held-out episodes: the dataset has "
                             f"{source.datasets[g].num_episodes} episode(s) and the holdout "
                             f"fraction is {source.config.holdout_fraction} (held-out data "
                             "need 2 or more episodes and a fraction > 0)")}
            continue
        x, y = batch
        a = source.num_actions[g]
        logits = student_logits(student, x)[:, :a]
        out[game] = game_diagnostics(y["teacher_outputs"][:, :a], logits, teacher_kinds[g],
                                     temperatures[g])
        out[game]["heldout_agent_steps"] = int(hi - lo)
    return out


def heldout_diagnostics(student, paths: Sequence, pipeline_config: pipeline.PipelineConfig,
                        temperatures: Sequence[float], teacher_kinds: Sequence[str],
                        max_episodes: Sequence[int] | None = None,
                        max_states_per_game: int = DEFAULT_MAX_STATES_PER_GAME) -> dict:
    """Runs `student` on each game's held-out states and computes the diagnostics.

    The held-out states are the distiller's: the last
    `pipeline_config.holdout_fraction` of each dataset's episodes
    (`pipeline.HDF5Source.holdout`), of which up to `max_states_per_game`
    evenly spread states are used.

    Args:
      student: a `networks.MultiTaskStudent` with a head per game of `paths`,
        in the same order.
      paths: per game, its dataset (or list of files), in head order.
      pipeline_config: the run's sampling settings (its holdout fraction).
      temperatures: per game, tau.
      teacher_kinds: per game, "q_values" or "logits".
      max_episodes: per dataset, the episodes the run trained from
        (`distiller.data_prefix`; None: all).
      max_states_per_game: cap on held-out states per game.

    Returns:
      {"format", "max_states_per_game", "games": {game: `game_diagnostics`
      plus "heldout_agent_steps", or a "note" when it has no held-out data}}.

    Raises:
      ValueError: the student's heads do not match the datasets' games and
        action counts, or the per-game lists do not match the games.
      DatasetError: a dataset cannot be read (`multidistill.datasets`).
    """
    source = _open_source(paths, pipeline_config, max_episodes)
    try:
        games = _diagnose_source(student, source, temperatures, teacher_kinds,
                                 max_states_per_game)
    finally:
        source.close()
    return {"format": FORMAT, "max_states_per_game": int(max_states_per_game), "games": games}


def diagnose_run(run_dir: str | os.PathLike, student_path: str | os.PathLike, paths: Sequence,
                 pipeline_config: pipeline.PipelineConfig, temperatures: Sequence[float],
                 teacher_kinds: Sequence[str], max_episodes: Sequence[int] | None = None,
                 max_states_per_game: int = DEFAULT_MAX_STATES_PER_GAME) -> dict:
    """A run's diagnostics: computed and written to `run_dir` (diagnostics.json,
    diagnostics.png), or read back when `diagnostics.json` is of this student
    file (its sha256), held-out data, temperatures and cap, so that a
    finished run resumed does not recompute them and a changed student never
    shows another's.

    Args:
      run_dir: where diagnostics.json and diagnostics.png go.
      student_path: the run's student file (`students.load_student`).
      paths, pipeline_config, temperatures, teacher_kinds, max_episodes,
        max_states_per_game: as `heldout_diagnostics`.

    Returns:
      The `heldout_diagnostics` dict plus "identity" (what it is of),
      "seconds" (to compute), "plot" (the PNG's name beside it, or None)
      and "reused" (True when read back from an earlier call).
    """
    run_dir = Path(run_dir)
    json_path = run_dir / JSON_NAME
    if not Path(student_path).is_file():
        raise FileNotFoundError(f"student file {student_path} does not exist: the run's "
                                "diagnostics need its student")
    source = _open_source(paths, pipeline_config, max_episodes)
    try:
        identity = _identity(source, teachers_lib.sha256_of(student_path), temperatures,
                             teacher_kinds, max_states_per_game)
        previous = read_diagnostics(json_path)
        if previous is not None and previous.get("identity") == identity:
            if previous.get("plot") and not (run_dir / previous["plot"]).exists():
                plot_diagnostics(previous, run_dir / PLOT_NAME)
            return dict(previous, reused=True)
        from multidistill import students

        t0 = time.perf_counter()
        student = students.load_student(student_path)
        games = _diagnose_source(student, source, temperatures, teacher_kinds,
                                 max_states_per_game)
    finally:
        source.close()
    out = {"format": FORMAT, "identity": identity,
           "max_states_per_game": int(max_states_per_game), "games": games,
           "seconds": time.perf_counter() - t0}
    png = plot_diagnostics(out, run_dir / PLOT_NAME)
    out["plot"] = None if png is None else png.name
    if png is None:  # An earlier plot would belong to another student.
        (run_dir / PLOT_NAME).unlink(missing_ok=True)
    files.atomic_write_text(json_path, json.dumps(out, indent=2) + "\n")
    return dict(out, reused=False)


def read_diagnostics(path: str | os.PathLike) -> dict | None:
    """A diagnostics.json, or None when there is none or it is not one
    (then it is computed anew)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


# -- the plot ---------------------------------------------------------------


def plot_diagnostics(diagnostics: dict, out_png: str | os.PathLike) -> Path | None:
    """`diagnostics.png`: per game (a column), the histogram of the teacher's
    action gap with its quintiles marked, and the student's top-1 agreement
    per confidence fifth with the game's overall agreement.

    Returns:
      The path, or None when no game has held-out states.
    """
    games = {g: d for g, d in diagnostics["games"].items() if d.get("num_states")}
    if not games:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(games), figsize=(4.4 * len(games), 6.6), squeeze=False)
    for col, (game, d) in enumerate(games.items()):
        gap, bins = d["action_gap"], d["agreement_by_confidence"]
        ax = axes[0, col]
        edges, counts = np.asarray(gap["histogram"]["edges"]), gap["histogram"]["counts"]
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", alpha=0.7)
        for b in bins[:-1]:  # The boundaries between fifths.
            if b["gap_high"] is not None:
                ax.axvline(b["gap_high"], color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(f"{game}: teacher's action gap ({d['num_states']:,} states)", fontsize=10)
        ax.set_xlabel(f"best - second best output ({gap['units']})", fontsize=9)
        ax.set_ylabel("states")
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        filled = [b for b in bins if b["num_states"]]
        ax.bar(range(len(filled)), [100 * b["agreement"] for b in filled], alpha=0.8)
        ax.axhline(100 * d["agreement"], color="black", linestyle=":", linewidth=1,
                   label=f"all states: {100 * d['agreement']:.1f} %")
        ax.set_xticks(range(len(filled)))
        ax.set_xticklabels([f"{b['gap_low']:.2g} to\n{b['gap_high']:.2g}\nn={b['num_states']:,}"
                            for b in filled], fontsize=7)
        ax.set_ylim(0, 115)
        ax.set_xlabel("fifths of the states by action gap (least to most confident)",
                      fontsize=9)
        ax.set_ylabel("top-1 agreement, %")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return summaries.save_figure(fig, out_png)
