"""Student size sweep: one student per named size, on the same datasets, in
one table and one plot.

    python -m multidistill.sweep --sizes=dqn,net1,net2,net3,tiny --games=pong,qbert,freeway
    python -m multidistill.sweep --games=pong,qbert,freeway --preset=smoke

The main job (`train.py`) once per size of `networks.STUDENT_SIZES`, through
the same stages (`multidistill.stages`): the teachers are loaded and the
datasets built (or topped up) once, then each size is distilled offline into
its own run directory and evaluated under the protocol, its report written
as the main job writes it. The collection, distillation and evaluation
flags are the main job's (`--student_size` and `--run_dir` excepted: the
sweep names the sizes and the run directories); there are no collection
rounds.

    <output_dir>/<size>/                a run directory per size (config.json,
                                        checkpoint, student.keras, report.json,
                                        report.md, curves.png, ...)
    <output_dir>/<size>/sweep_row.json  the size's row, written once evaluated
    <output_dir>/sweep.md               the table and the command that made it
    <output_dir>/sweep.json             the same, for programs
    <output_dir>/sweep.png              % of teacher against parameters

Per size the table gives the parameters of the trained student and their
share of the teachers it replaces (each the Nature DQN of its game,
`networks.parameter_count("dqn", A)`), the same for a one-game student of
the size (a 6-action game, no head layer: the papers' layout), the bytes of
its student.keras, the median CPU inference latency of one game's policy
network at batch 1 and 32, the training throughput, and per game the
student's % of its teacher with its 95 % interval and their geometric mean.

Resuming. Every size trains on the episodes the sweep started from (the
data prefix its first run recorded), so a sweep rerun after its datasets
grew still compares sizes on the same data. A killed sweep resumes: a size
whose row is cached is not trained or evaluated again (unless its settings
changed: the row records them), and one that was training resumes from its
checkpoint (`distiller.Distiller`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from absl import flags

from multidistill import (
    cli,
    collect,
    datasets,
    distiller,
    environments,
    evaluation,
    files,
    networks,
    stages,
    students,
    summaries,
)
from multidistill import games as games_lib

FLAGS = flags.FLAGS

FORMAT = "multidistill-sweep/1"
ROW_FILE = "sweep_row.json"
# The teachers' evaluation episodes, played once for every size (evaluation.TeacherScoreCache).
TEACHER_CACHE_FILE = "teacher_scores.json"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What the sweep trains and how it times inference.

    Attributes:
      sizes: the student sizes, one student each, in table order (names of
        `networks.STUDENT_SIZES`, each once).
      latency_calls: timed inference calls per batch size; the table gives
        their median.
      latency_warmup_calls: untimed calls before them (the first compiles).
      latency_batch_sizes: frames per call at which latency is timed.
      reference_actions: action count of the one-game student the table
        also counts (6: Pong's and Q*bert's minimal action sets).
    """

    sizes: tuple[str, ...] = tuple(networks.STUDENT_SIZES)
    latency_calls: int = 50
    latency_warmup_calls: int = 5
    latency_batch_sizes: tuple[int, ...] = (1, 32)
    reference_actions: int = 6

    def __post_init__(self):
        # One message per field, starting with its name (the flag's).
        known = ", ".join(networks.STUDENT_SIZES)
        if not self.sizes:
            raise ValueError(f"sizes is empty: expected a comma-separated list of student "
                             f"sizes among {known}, e.g. net3,tiny")
        for size in self.sizes:
            if size not in networks.STUDENT_SIZES:
                raise ValueError(f"sizes: unknown student size {size!r}: expected one of "
                                 f"{known}")
            if self.sizes.count(size) > 1:
                raise ValueError(f"sizes names the size {size!r} twice (found "
                                 f"{','.join(self.sizes)}): expected each size once")
        if self.latency_calls < 1:
            raise ValueError(f"latency_calls must be >= 1, found {self.latency_calls}")
        if self.latency_warmup_calls < 0:
            raise ValueError(f"latency_warmup_calls must be >= 0, found "
                             f"{self.latency_warmup_calls}")
        batches = self.latency_batch_sizes
        if not batches or any(b < 1 for b in batches) or len(set(batches)) != len(batches):
            raise ValueError(f"latency_batch_sizes must be distinct whole numbers >= 1, found "
                             f"{','.join(str(b) for b in batches) or 'none'}")
        if self.reference_actions < 1:
            raise ValueError(f"reference_actions must be >= 1, found {self.reference_actions}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def split_sizes(text: str) -> tuple[str, ...]:
    """"dqn, Tiny" -> ("dqn", "tiny") (checked by `SweepConfig`)."""
    return tuple(s.strip().lower() for s in text.split(",") if s.strip())


# -- measurements -----------------------------------------------------------------


@functools.cache
def parameters_of(size: str, num_actions: int) -> int:
    """`networks.parameter_count` of a one-game network, no head layer (memoised:
    each count builds the network). `parameters_of("dqn", A)` is the teacher of an
    A-action game (`networks.build_teacher_network(A)`)."""
    return networks.parameter_count(size, num_actions)


def time_calls(fn: Callable[[], object], calls: int, warmup_calls: int,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Calls `fn` `warmup_calls` times untimed, then `calls` times timed.

    Returns:
      The seconds of each timed call, in order.
    """
    for _ in range(warmup_calls):
        fn()
    seconds = []
    for _ in range(calls):
        t0 = clock()
        fn()
        seconds.append(clock() - t0)
    return seconds


def inference_latency(student: networks.MultiTaskStudent, game: str, batch_size: int,
                      calls: int, warmup_calls: int,
                      clock: Callable[[], float] = time.perf_counter) -> dict:
    """CPU inference latency of `game`'s policy network (frames -> logits) at
    `batch_size`, through evaluation's predict path (`evaluation.predict_fn`:
    XLA-compiled, float32), on random uint8 frames.

    Returns:
      {"batch_size", "median_ms" (of the timed calls, milliseconds), "calls",
      "warmup_calls"}.
    """
    predict = evaluation.predict_fn(student.policy_network(game))
    frames = np.random.default_rng(0).integers(
        0, 256, (batch_size, *student.observation_shape), dtype=np.uint8)
    seconds = time_calls(lambda: predict(frames), calls, warmup_calls, clock)
    return {"batch_size": int(batch_size), "median_ms": 1000.0 * float(np.median(seconds)),
            "calls": int(calls), "warmup_calls": int(warmup_calls)}


def size_row(size: str, student: networks.MultiTaskStudent, student_path: str | os.PathLike,
             report: dict, training: dict, config: distiller.DistillConfig,
             latency: Sequence[dict], reference_actions: int = 6) -> dict:
    """One size's row of the table.

    Args:
      size: the student size.
      student: the trained student (its parameters are counted).
      student_path: its saved file (its bytes are counted).
      report: its evaluation report (`evaluation.make_report`).
      training: the distiller's `train()` result for its run.
      config: the run's settings (batch size).
      latency: what `inference_latency` returned, per batch size.
      reference_actions: actions of the one-game student also counted.

    Returns:
      A JSON-ready dict; `samples_per_s` is the run's gradient steps x batch
      size over its training wall-clock summed over sessions
      (`run_train_seconds`; for a run trained in one call, the `samples_per_s`
      of `train()`), None for a run of no steps.
    """
    filters, fc_units = networks.STUDENT_SIZES[size]
    parameters = int(student.count_params())
    teachers = {g: parameters_of("dqn", a) for g, a in zip(student.games, student.num_actions)}
    one_game = parameters_of(size, reference_actions)
    one_teacher = parameters_of("dqn", reference_actions)
    batch_size = config.pipeline.batch_size_per_game * len(config.games)
    seconds = float(training["run_train_seconds"])
    grad_steps = int(training["grad_steps"])
    return {
        "size": size,
        "conv_filters": list(filters),
        "fc_units": int(fc_units),
        "head_units": int(student.head_units),
        "parameters": parameters,
        "teacher_parameters": teachers,
        "percent_of_teachers": 100.0 * parameters / sum(teachers.values()),
        "one_game_actions": int(reference_actions),
        "one_game_parameters": one_game,
        "one_game_teacher_parameters": one_teacher,
        "one_game_percent_of_teacher": 100.0 * one_game / one_teacher,
        "student_file": str(student_path),
        "student_file_bytes": os.path.getsize(student_path),
        "latency_ms": {str(x["batch_size"]): x for x in latency},
        "grad_steps": grad_steps,
        "batch_size": batch_size,
        "train_seconds": seconds,
        "samples_per_s": grad_steps * batch_size / seconds if seconds > 0 else None,
        "games": {g: {"percent_of_teacher": r["student_percent_of_teacher"],
                      "ci": r.get("student_percent_of_teacher_ci"),
                      "episodes": r["student"]["episodes"]}
                  for g, r in report["games"].items()},
        "geometric_mean_percent_of_teacher": report["geometric_mean_percent_of_teacher"],
        "geometric_mean_percent_of_teacher_ci": report.get(
            "geometric_mean_percent_of_teacher_ci"),
    }


# -- the sweep --------------------------------------------------------------------


def _normalised(value):
    """`value` as JSON gives it back (tuples as lists)."""
    return json.loads(json.dumps(value))


def row_key(config: distiller.DistillConfig, protocol: evaluation.EvalProtocol,
            sweep: SweepConfig, evaluate_teachers: bool) -> dict:
    """What a cached row must have been made with to be reused."""
    settings = config.to_dict()
    # Rows from before the engine was a setting were trained on one device.
    if settings.get("distribution") == "none":
        settings.pop("distribution")
    return _normalised({"config": settings,
                        "protocol": protocol.to_dict(list(config.games)),
                        "evaluate_teachers": bool(evaluate_teachers),
                        "latency": {k: v for k, v in sweep.to_dict().items()
                                    if k.startswith("latency_")},
                        "reference_actions": sweep.reference_actions})


def cached_row(run_dir: str | os.PathLike, key: dict) -> dict | None:
    """The row cached in `run_dir` if it was made with `key`, else None."""
    path = Path(run_dir) / ROW_FILE
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):  # None yet, or unreadable: made again.
        return None
    return row if isinstance(row, dict) and row.get("key") == key else None


def _run_data(run_dir: Path) -> list[dict]:
    """Per dataset, the data the run in `run_dir` trained on, as the distiller
    recorded it in its config.json (game, labelling teacher, episodes, steps,
    sessions)."""
    return json.loads((run_dir / "config.json").read_text())["identity"]["data"]["datasets"]


def _describe_data(data: list[dict]) -> str:
    return ", ".join(f"{d['game']} {d['num_agent_steps']:,} agent steps in "
                     f"{d['num_episodes']:,} episodes" for d in data)


def sweep_data_prefix(out_dir: str | os.PathLike, sizes: Sequence[str],
                      paths: Sequence[str]) -> list[int]:
    """Per dataset, the episodes every size trains on: those the sizes'
    existing runs started from, else all the datasets hold now.

    Raises:
      ValueError: the existing runs started from different data.
    """
    recorded = {}
    for size in sizes:
        prefix = distiller.data_prefix(Path(out_dir) / size)
        if prefix is not None:
            recorded[size] = prefix
    if len({tuple(p) for p in recorded.values()}) > 1:
        raise ValueError(f"the runs in {out_dir} started from different data (episodes per "
                         f"dataset: {recorded}): a sweep compares sizes on the same data; "
                         "give a new --output_dir")
    if recorded:
        return list(next(iter(recorded.values())))
    counts = []
    for p in paths:
        with datasets.Dataset(p) as ds:
            counts.append(ds.num_episodes)
    return counts


def run_sweep(out_dir: str | os.PathLike, sweep: SweepConfig, config: distiller.DistillConfig,
              paths: Sequence[str], spec: environments.Preprocessing,
              teacher_kinds: Sequence[str], protocol: evaluation.EvalProtocol,
              teachers_dir: str | os.PathLike, *, evaluate_teachers: bool = True,
              allow_unsafe_teacher: bool = False, video_seconds: float = 0.0,
              extra: dict | None = None, progress: bool = True,
              workers=None, teacher_cache: str | os.PathLike | None = None) -> list[dict]:
    """Trains and evaluates one student per size of `sweep`, or reads its
    cached row; returns the rows in `sweep.sizes` order.

    Size s runs in `<out_dir>/<s>` with `config` of that size, on the data
    prefix of `sweep_data_prefix`; its report is written there as the main
    job's, with `extra` (e.g. the command), and its row in `ROW_FILE`.

    Raises:
      stages.Interrupted: SIGINT or SIGTERM during a size's training (its
        checkpoint is saved; the rows written stay).
      ValueError: the sizes' runs trained on different data.
    """
    out_dir = Path(out_dir)
    games = list(config.games)
    prefix = sweep_data_prefix(out_dir, sweep.sizes, paths)
    with_more = []
    for p, n in zip(paths, prefix):
        with datasets.Dataset(p) as ds:
            if ds.num_episodes > n:
                with_more.append(f"{ds.game} {n} of {ds.num_episodes}")
    if with_more:
        print(f"  every size trains on the episodes the sweep started from "
              f"({', '.join(with_more)}); give a new --output_dir to train on all")
    rows = []
    for k, size in enumerate(sweep.sizes, 1):
        run_dir = out_dir / size
        size_config = dataclasses.replace(config, student_size=size)
        key = row_key(size_config, protocol, sweep, evaluate_teachers)
        row = cached_row(run_dir, key)
        tag = f"  [{k}/{len(sweep.sizes)}] {size}"
        if row is not None:
            print(f"{tag}: already evaluated ({run_dir / ROW_FILE})")
            rows.append(row)
            continue
        print(f"{tag}: distilling into {run_dir}")
        t_start = time.perf_counter()
        training, student_path = stages.distil(run_dir, size_config, paths, spec,
                                               teacher_kinds, max_episodes=prefix,
                                               progress=progress)
        diagnostics = stages.diagnose(run_dir, student_path, size_config, paths,
                                      teacher_kinds, max_episodes=prefix)
        print(f"{tag}: evaluating")
        report = stages.evaluate_student(
            student_path, run_dir, size_config, games, teachers_dir, spec, protocol,
            grad_steps=training["grad_steps"], t_start=t_start,
            evaluate_teachers=evaluate_teachers, allow_unsafe_teacher=allow_unsafe_teacher,
            video_seconds=video_seconds, progress=progress,
            teacher_cache=teacher_cache or out_dir / TEACHER_CACHE_FILE, workers=workers,
            extra={"run_dir": str(run_dir), **(extra or {}),
                   "sweep": {"output_dir": str(out_dir), "size": size},
                   "training": training, "config": size_config.to_dict(),
                   "diagnostics": diagnostics,
                   "timing": {"distill_seconds": training["seconds"],
                              "run_distill_seconds": training["run_train_seconds"]}})
        student = students.load_student(student_path)
        latency = [inference_latency(student, games[0], b, sweep.latency_calls,
                                     sweep.latency_warmup_calls)
                   for b in sweep.latency_batch_sizes]
        row = size_row(size, student, student_path, report, training, size_config, latency,
                       sweep.reference_actions)
        row.update(latency_game=games[0], precision=size_config.precision,
                   run_dir=str(run_dir), data=_run_data(run_dir), key=key)
        files.atomic_write_text(run_dir / ROW_FILE, json.dumps(row, indent=2) + "\n")
        rows.append(row)
    different = [r["size"] for r in rows if r["data"] != rows[0]["data"]]
    if different:
        raise ValueError(
            f"the sizes trained on different data: {rows[0]['size']} on "
            f"{_describe_data(rows[0]['data'])}, {different} on other data (other files or "
            "sessions): a sweep compares sizes on the same datasets; give a new --output_dir")
    return rows


# -- the table, the plot --------------------------------------------------------


def _number(x, digits=0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _percent(value, ci) -> str:
    if value is None:
        return "n/a"
    if not ci:
        return f"{value:,.1f}"
    return f"{value:,.1f} [{ci[0]:,.1f}, {ci[1]:,.1f}]"


def sweep_markdown(summary: dict) -> str:
    """The table of a sweep (`summary`: what `sweep_summary` returned) with
    notes on how each column was measured."""
    rows, games = summary["rows"], summary["games"]
    if not rows:
        return "No sizes.\n"
    first = rows[0]
    batches = list(first["latency_ms"])
    head = (["size", "trunk (conv filters, hidden units)", "parameters",
             f"% of its {len(games)} teachers",
             f"one-game parameters ({first['one_game_actions']} actions)", "% of one teacher",
             "student.keras (bytes)"]
            + [f"latency, batch {b} (ms)" for b in batches]
            + ["training samples/s"]
            + [f"{g} % of teacher" for g in games] + ["geometric mean % of teacher"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["size"], f"{'/'.join(str(f) for f in r['conv_filters'])}, {r['fc_units']}",
                 _number(r["parameters"]), _number(r["percent_of_teachers"], 2),
                 _number(r["one_game_parameters"]), _number(r["one_game_percent_of_teacher"], 2),
                 _number(r["student_file_bytes"])]
        cells += [_number(r["latency_ms"].get(b, {}).get("median_ms"), 2) for b in batches]
        cells.append(_number(r["samples_per_s"]))
        for g in games:
            x = r["games"].get(g) or {}
            cells.append(_percent(x.get("percent_of_teacher"), x.get("ci")))
        cells.append(_percent(r["geometric_mean_percent_of_teacher"],
                              r.get("geometric_mean_percent_of_teacher_ci")))
        lines.append("| " + " | ".join(cells) + " |")

    latency = first["latency_ms"][batches[0]]
    teachers = ", ".join(f"{g} {n:,}" for g, n in first["teacher_parameters"].items())
    episodes = ", ".join(f"{g} {x['episodes']}" for g, x in first["games"].items())
    machine = summary.get("machine") or {}
    notes = [
        f"Command: `{summary['command']}`" + (f" (commit `{summary['commit']}`)"
                                              if summary.get("commit") else "") + ".",
        f"Parameters: the trained student's (`count_params()`: the shared trunk and "
        f"{len(games)} heads of {first['head_units']} hidden units); % of its teachers: of "
        f"the {len(games)} teachers it replaces together, each the Nature DQN of its game "
        f"(`networks.parameter_count(\"dqn\", A)`: {teachers}). One-game: a student of the "
        f"size for one {first['one_game_actions']}-action game without a head layer "
        f"(`networks.parameter_count(size, {first['one_game_actions']})`), and its % of that "
        f"game's teacher ({first['one_game_teacher_parameters']:,}).",
        "student.keras: bytes on disk of the saved student (network and weights, no "
        "optimizer state).",
        f"Latency: median of {latency['calls']} timed calls, after {latency['warmup_calls']} "
        f"warm-up calls, of the {first['latency_game']} policy network (uint8 frames -> "
        "logits) at each batch size, through evaluation's predict path "
        "(`evaluation.predict_fn`: XLA-compiled, float32)"
        + (f", on {machine['cpu_count']} CPU cores ({machine['backend']} backend)"
           if machine else "") + ".",
        f"Training samples/s: gradient steps x batch ({first['batch_size']} samples) over the "
        f"run's training wall-clock (`run_train_seconds` of the distiller's `train()`, "
        f"held-out metrics and checkpoints included); {first['grad_steps']:,} gradient steps, "
        f"{first.get('precision', 'float32')} arithmetic.",
        f"% of teacher: mean [95 % bootstrap interval] of the student's score over its "
        f"teacher's, from each size's report.json (`multidistill.evaluation`); episodes per "
        f"game and policy: {episodes}.",
        f"Datasets, the same for every size: {_describe_data(first['data'])}.",
        f"Run directories: `{summary['output_dir']}/<size>` (each with its report.md).",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot_sweep(summary: dict, out_png: str | os.PathLike) -> Path | None:
    """% of teacher against the trained student's parameters (log axis), with
    intervals: a series per game and the geometric mean.

    Returns:
      The path, or None when no row has a ratio to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import transforms

    rows, games = summary["rows"], summary["games"]
    series = []
    for g in games:
        series.append((g, [(r["parameters"], (r["games"].get(g) or {}).get("percent_of_teacher"),
                            (r["games"].get(g) or {}).get("ci")) for r in rows]))
    series.append(("geometric mean", [(r["parameters"], r["geometric_mean_percent_of_teacher"],
                                       r.get("geometric_mean_percent_of_teacher_ci"))
                                      for r in rows]))
    series = [(label, [p for p in pts if p[1] is not None]) for label, pts in series]
    if not any(pts for _, pts in series):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    n = len(series)
    for k, (label, pts) in enumerate(series):
        if not pts:
            continue
        pts.sort()
        shift = 10 ** (0.012 * (k - (n - 1) / 2))  # Side by side on the log axis.
        ys = [v for _, v, _ in pts]
        err = [[v - (ci[0] if ci else v) for _, v, ci in pts],
               [(ci[1] if ci else v) - v for _, v, ci in pts]]
        mean = label == "geometric mean"
        ax.errorbar([x * shift for x, _, _ in pts], ys, yerr=err, label=label, marker="o",
                    capsize=3, linewidth=2.2 if mean else 1.0,
                    color="black" if mean else None, zorder=3 if mean else 2)
    ax.set_xscale("log")
    ax.axhline(100, color="gray", linestyle="--", linewidth=1)
    under = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for r in rows:
        ax.text(r["parameters"], 0.02, r["size"], transform=under, ha="center", fontsize=8,
                color="dimgray")
    ax.set_xlabel("trained student's parameters (log scale)")
    ax.set_ylabel("student score, % of teacher\n(95 % bootstrap interval)")
    ax.set_title(f"student size sweep: {', '.join(games)}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return summaries.save_figure(fig, out_png)


def sweep_summary(rows: list[dict], games: Sequence[str], out_dir: str | os.PathLike,
                  command: str, commit: str | None = None, **extra) -> dict:
    """What sweep.json holds: the rows and how they were made."""
    import keras

    return {"format": FORMAT, "command": command, "commit": commit, "games": list(games),
            "sizes": [r["size"] for r in rows], "output_dir": str(out_dir),
            "machine": {"cpu_count": os.cpu_count(), "backend": keras.backend.backend()},
            **extra, "rows": rows}


def write_sweep(summary: dict, out_dir: str | os.PathLike
                ) -> tuple[Path, Path, Path | None, str]:
    """Writes sweep.json, sweep.png and sweep.md into `out_dir`.

    Returns:
      (markdown path, JSON path, plot path or None, the table).
    """
    out_dir = Path(out_dir)
    json_path = files.atomic_write_text(out_dir / "sweep.json",
                                        json.dumps(summary, indent=2) + "\n")
    png = plot_sweep(summary, out_dir / "sweep.png")
    table = sweep_markdown(summary)
    md = f"# multidistill: student size sweep ({', '.join(summary['games'])})\n\n" + table
    if png is not None:
        md += "\n![student % of teacher against parameters](sweep.png)\n"
    md_path = files.atomic_write_text(out_dir / "sweep.md", md)
    return md_path, json_path, png, table


# -- the command line ---------------------------------------------------------------

# The sweep's presets: the main job's (`stages.PRESETS`, but for the student
# size), plus its own flags.
_PRESETS = {"default": {}, "smoke": {"latency_calls": 10, "latency_warmup_calls": 2}}


def define_flags():
    """The sweep's own flags (the main job's: `cli.define_collect_flags`,
    `define_distill_flags`, `define_eval_flags`)."""
    d = SweepConfig()
    flags.DEFINE_string("sizes", ",".join(d.sizes),
                        "Comma-separated student sizes, one student each, in table order: "
                        "names of networks.STUDENT_SIZES (conv filters/hidden units: " + ", ".join(
                            f"{k} {'/'.join(map(str, f))}/{u}"
                            for k, (f, u) in networks.STUDENT_SIZES.items()) + ").")
    flags.DEFINE_string("output_dir", None,
                        "Folder of the sweep: a run directory per size (<output_dir>/<size>) "
                        "and sweep.md, sweep.json, sweep.png (default runs/sweep_<games>, "
                        "with _<preset> for a preset other than default); an existing one "
                        "is resumed.")
    flags.DEFINE_integer("latency_calls", d.latency_calls,
                         "Timed inference calls per batch size (a count); the table gives "
                         "their median, in milliseconds.")
    flags.DEFINE_integer("latency_warmup_calls", d.latency_warmup_calls,
                         "Untimed inference calls before the timed ones, per batch size (a "
                         "count; the first call compiles the network).")
    flags.DEFINE_list("latency_batch_sizes", [str(b) for b in d.latency_batch_sizes],
                      "Batch sizes (frames per call) at which inference latency is timed.")
    flags.DEFINE_enum("preset", "default", list(stages.PRESETS),
                      "default: the main job's settings for every size; smoke: every stage "
                      "on tiny sizes (train.py's smoke preset, datasets in datasets/smoke), "
                      "a few minutes per size.")


def _apply_preset():
    values = {**stages.PRESETS[FLAGS.preset], **_PRESETS[FLAGS.preset]}
    for name, value in values.items():
        # The sweep names its sizes; the rounds flags are not defined here.
        if name in FLAGS and name != "student_size" and not FLAGS[name].present:
            FLAGS[name].value = value


def config_from_flags() -> SweepConfig:
    """The SweepConfig of the flags; refuses the main job's flags that the
    sweep sets itself.

    Raises:
      cli.UsageError: e.g. "--sizes: unknown student size 'huge': expected one
        of dqn, net1, net2, net3, tiny".
    """
    for name, instead in (("student_size", "give the sizes with --sizes"),
                          ("run_dir", "each size runs in <output_dir>/<size>; give "
                                      "--output_dir")):
        cli.require(not FLAGS[name].present,
                    f"--{name} does not apply to the sweep ({instead}), found "
                    f"--{name}={FLAGS[name].value}")
    cli.require(FLAGS.codistill < 2,
                f"--codistill does not apply to the sweep (one student per size; run the "
                f"main job with --codistill instead), found --codistill={FLAGS.codistill}")
    try:
        batch_sizes = tuple(int(b) for b in FLAGS.latency_batch_sizes)
    except ValueError:
        raise cli.UsageError(f"--latency_batch_sizes: expected whole numbers, e.g. 1,32, "
                             f"found {','.join(FLAGS.latency_batch_sizes)}") from None
    try:
        return SweepConfig(sizes=split_sizes(FLAGS.sizes), latency_calls=FLAGS.latency_calls,
                           latency_warmup_calls=FLAGS.latency_warmup_calls,
                           latency_batch_sizes=batch_sizes)
    except ValueError as e:
        raise cli.UsageError(f"--{e}") from None


def default_output_dir(games: Sequence[str], preset: str) -> Path:
    return Path("runs") / (f"sweep_{'-'.join(games)}" + ("" if preset == "default"
                                                         else f"_{preset}"))


def main(argv):
    del argv
    _apply_preset()
    t_start = time.perf_counter()
    commit = stages.git_commit(Path(__file__).resolve().parent)
    command = " ".join(["python", "-m", "multidistill.sweep", *sys.argv[1:]])
    sweep = config_from_flags()  # Before anything slow.
    game_names = games_lib.parse_games(FLAGS.games)
    spec = cli.preprocessing_from_flags()
    collect_config = cli.collect_config_from_flags()
    protocol = cli.eval_protocol_from_flags()
    workers = cli.eval_workers_from_flags()
    teacher_cache = cli.teacher_cache_from_flags()
    out_dir = Path(FLAGS.output_dir or default_output_dir(game_names, FLAGS.preset))

    # 1. Teachers (all checked before any long work starts).
    teachers = stages.load_teachers(game_names, FLAGS.teachers_dir, spec,
                                    allow_unsafe=FLAGS.allow_unsafe_teacher)
    kinds = [teachers[g].kind for g in game_names]
    config = cli.distill_config_from_flags(game_names, kinds)
    stages.check_objective(config, teachers)

    try:
        # 2. Datasets, once for every size.
        print(f"[1/2] datasets in {FLAGS.datasets_dir}: {FLAGS.num_agent_steps:,} agent steps "
              "per game")
        collect.check_existing(teachers, FLAGS.datasets_dir, spec, FLAGS.rebuild_datasets)
        behaviours = cli.behaviours_from_flags(teachers, collect_config)
        paths, built = stages.build_datasets(teachers, FLAGS.datasets_dir, collect_config,
                                             spec, behaviours, rebuild=FLAGS.rebuild_datasets)
        build_seconds = time.perf_counter() - t_start

        # 3. A student per size, distilled and evaluated.
        episodes = ", ".join(f"{g} {protocol.episodes(g)}" for g in game_names)
        print(f"[2/2] {len(sweep.sizes)} student sizes ({', '.join(sweep.sizes)}) into "
              f"{out_dir}/<size>: {config.num_grad_steps:,} gradient steps of "
              f"{config.pipeline.batch_size_per_game * len(game_names)} samples "
              f"({config.precision}) each, then evaluation (episodes per game and policy: "
              f"{episodes})")
        rows = run_sweep(out_dir, sweep, config, paths, spec, kinds, protocol,
                         FLAGS.teachers_dir, evaluate_teachers=FLAGS.evaluate_teachers,
                         allow_unsafe_teacher=FLAGS.allow_unsafe_teacher,
                         video_seconds=FLAGS.video_seconds if FLAGS.videos else 0.0,
                         extra={"preset": FLAGS.preset, "command": command, "commit": commit,
                                "datasets": built},
                         workers=workers, teacher_cache=teacher_cache)
    except stages.Interrupted as e:
        print(e, file=sys.stderr)
        raise SystemExit(130) from None

    summary = sweep_summary(rows, game_names, out_dir, command, commit,
                            preset=FLAGS.preset, sweep=sweep.to_dict(),
                            protocol=protocol.to_dict(game_names),
                            timing={"build_seconds": build_seconds,
                                    "total_seconds": time.perf_counter() - t_start})
    md_path, json_path, png, table = write_sweep(summary, out_dir)
    print()
    print(table)
    print(f"sweep: {md_path}, {json_path}" + (f", {png}" if png else ""))


if __name__ == "__main__":
    cli.define_collect_flags()
    cli.define_distill_flags()
    cli.define_eval_flags()
    flags.adopt_module_key_flags(cli)  # Show them in --help.
    define_flags()
    cli.run(main)
