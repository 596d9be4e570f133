"""Real-time distillation against train-then-distill: the table of
benchmarks/realtime_pong.sh.

    python -m benchmarks.realtime_compare --checkpoint_dir=CK --teachers_dir=T \
        --ttd_runs=tiny:runs/realtime_ttd_tiny,net3:runs/realtime_ttd_net3 \
        --rt_reports=tiny:runs/realtime_rt_tiny,net3:runs/realtime_rt_net3 \
        --output_dir=benchmarks/realtime

Reads the teacher run with real-time students (`CK/realtime/evaluations.jsonl`,
the counters of its students), the teacher's card (its final evaluation is
the reference score), the train-then-distill runs of the same sizes (the
main job for the game, on the final teacher) and the final evaluations of
the real-time students; writes comparison.md, comparison.json and
comparison.png into --output_dir.

Definitions (stated in the table too):
  * a student is "at 90 %" at the first periodic evaluation where its mean
    return is >= random + 0.9 x (teacher - random): 90 % of the way from a
    random policy's score (`games`) to the final teacher's (30 episodes);
  * real-time: wall-clock and teacher frames of the run at that evaluation
    (students' training and evaluation included);
  * train-then-distill: the teacher's own training time (the run's
    wall-clock less the students' training and evaluation seconds, which
    it would not have spent) plus the main job's dataset building and
    distillation (the sizes share one dataset; each is charged the time of
    the run that recorded it); its frames are the teacher's plus those the dataset
    collection played; its student is counted once the distillation ends.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from multidistill import checkpoints, files, games, realtime, summaries

FLAGS = flags.FLAGS


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        size, _, path = item.partition(":")
        if not path:
            raise app.UsageError(f"expected size:path pairs, found {item!r}")
        out[size] = path
    return out


def compare(checkpoint_dir: Path, teachers_dir: Path, game: str, ttd_runs: dict[str, str],
            rt_reports: dict[str, str], fraction: float = 0.9) -> dict:
    card = json.loads((teachers_dir / f"{game}.json").read_text())
    teacher = card["evaluation"]
    entries = realtime.read_evaluations(checkpoint_dir / "realtime" / "evaluations.jsonl")
    if not entries:
        raise app.UsageError(f"no real-time evaluations in {checkpoint_dir / 'realtime'}")
    last = entries[-1]
    student_seconds = last["distill_seconds"] + last["student_eval_seconds"]
    state = checkpoints.read_state(checkpoint_dir / "checkpoint.npz")
    run_seconds = float(state["run"]["wall_clock_s"])
    teacher_seconds = run_seconds - student_seconds
    teacher_frames = 4 * int(state["algo_state"]["agent_steps"])
    # 90 % of the way from a random policy to the teacher: a plain 90 % of a
    # negative score (a Pong teacher below 0) would ask for less than the teacher.
    random = games.get_game(game).random_score or 0.0
    target = random + fraction * (teacher["mean"] - random)
    ttd_reports = {size: json.loads((Path(path) / "report.json").read_text())
                   for size, path in ttd_runs.items()}
    # The sizes' runs share one dataset: the run that recorded it has its
    # build time, the others reused it (about 0 s), but train-then-distill
    # for any one size has to record it.
    build = {}
    for rep in ttd_reports.values():
        path = rep["datasets"][game].get("path", "")
        build[path] = max(build.get(path, 0.0), rep["timing"]["build_seconds"])
    rows = {}
    for size in sorted(set(ttd_runs) | set(rt_reports)):
        row: dict = {"size": size}
        hit = realtime.first_reaching(entries, size, target)
        row["realtime"] = None if hit is None else {
            "frames": hit["frames"], "wall_clock_s": hit["wall_clock_s"],
            "mean_return": hit["students"][size]["mean"]}
        if size in rt_reports:
            r = json.loads((Path(rt_reports[size]) / "report.json").read_text())["games"][game]
            row["realtime_final"] = _final(r, random, teacher["mean"])
        if size in ttd_runs:
            rep = ttd_reports[size]
            r = rep["games"][game]
            timing = rep["timing"]
            distill = max(timing["distill_seconds"], timing.get("run_distill_seconds", 0.0))
            built = build[rep["datasets"][game].get("path", "")]
            built_frames = 4 * int(rep["datasets"][game]["num_agent_steps"])
            row["train_then_distill"] = {
                "wall_clock_s": teacher_seconds + built + distill,
                "build_seconds": built, "distill_seconds": distill,
                "frames": teacher_frames + built_frames,
                **_final(r, random, teacher["mean"]),
                "reached": r["student"]["mean"] >= target}
            if row["realtime"] is not None:
                ttd = row["train_then_distill"]
                row["ratio_wall_clock"] = row["realtime"]["wall_clock_s"] / ttd["wall_clock_s"]
                row["ratio_frames"] = row["realtime"]["frames"] / ttd["frames"]
        rows[size] = row
    return {"game": game, "fraction": fraction, "random_score": random,
            "settings": settings(checkpoint_dir), "teacher": {
        "mean": teacher["mean"], "ci": teacher.get("ci"), "episodes": teacher["episodes"],
        "frames": teacher_frames, "run_wall_clock_s": run_seconds,
        "teacher_only_seconds": teacher_seconds, "students_seconds": student_seconds,
        "student_grad_steps": last["student_grad_steps"]},
        "target": target, "sizes": rows, "evaluations": entries}


def settings(checkpoint_dir: Path) -> dict | None:
    """The real-time students' settings (`RealtimeConfig.identity`) from a
    student checkpoint of the run, or None if it has none."""
    for ckpt in sorted((checkpoint_dir / "realtime").glob("*/checkpoint.npz")):
        saved = checkpoints.read_state(ckpt).get("realtime")
        if saved is not None:
            return realtime.RealtimeConfig.saved_identity(saved)
    return None


def settings_text(s: dict | None) -> str:
    """The students' settings in words ("" if unknown)."""
    if not s:
        return ""
    start = (f"from the teacher's {s['start_frames']:,}th frame" if s["start_frames"]
             else "from the teacher's first update")
    states = (f"the latest {s['recent_steps']:,} agent steps of its replay"
              if s["recent_steps"] else "its whole replay memory")
    labels = (f"a moving average of the teacher's weights over {s['label_horizon']:,.0f} of "
              "its gradient steps" if s.get("label_horizon") else "the live teacher")
    return (f"Students: Adam at {s['learning_rate']:g}, {s['steps_per_update']:g} step(s) "
            f"of {s['batch_size']} states per teacher step {start}, the states drawn from "
            f"{states}, labelled by {labels}.")


def _final(r: dict, random: float, teacher: float) -> dict:
    """A report's student score; "above_random" is its share of the way
    from a random policy to the teacher (%), the measure of the 90 % target,
    defined where the plain % is not (a teacher below 0)."""
    span = teacher - random
    return {"mean": r["student"]["mean"], "ci": r["student"]["ci"],
            "percent_of_teacher": r.get("student_percent_of_teacher"),
            "percent_ci": r.get("student_percent_of_teacher_ci"),
            "above_random": 100 * (r["student"]["mean"] - random) / span if span > 0 else None}


def _ci(v, ci) -> str:
    return f"{v:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def _score(r: dict | None) -> str:
    """mean [ci] (% of teacher [ci]; % of the way from random), or "-"."""
    if not r:
        return "-"
    parts = []
    if r.get("percent_of_teacher") is not None:
        parts.append(f"{_ci(r['percent_of_teacher'], r['percent_ci'])} % of teacher")
    if r.get("above_random") is not None:
        parts.append(f"{r['above_random']:.0f} % from random")
    return _ci(r["mean"], r["ci"]) + (f" ({'; '.join(parts)})" if parts else "")


def markdown(result: dict, command: str) -> str:
    t = result["teacher"]
    lines = [
        f"# Real-time distillation vs train-then-distill ({result['game']})", "",
        f"Teacher: Double DQN trained {t['frames']:,} frames with the students alongside; "
        f"the teacher it shipped (its best periodic evaluation) scores "
        f"{_ci(t['mean'], t['ci'])} over {t['episodes']} episodes. "
        f"Run wall-clock {t['run_wall_clock_s'] / 60:.1f} min, of which the students' "
        f"training and evaluation {t['students_seconds'] / 60:.1f} min "
        f"({t['student_grad_steps']:,} student steps each). "
        + settings_text(result.get("settings")), "",
        f"A student is at {100 * result['fraction']:.0f} % at the first periodic evaluation "
        f"(8 episodes) where its mean is >= {result['target']:.1f}, that is "
        f"{100 * result['fraction']:.0f} % of the way from a random policy "
        f"({result['random_score']:.1f}) to the teacher. Train-then-distill: the "
        "teacher's own training time (the run less the students' seconds), then the "
        "main job for this game alone on the final teacher (dataset build and "
        "distillation); its student counts once distillation ends.", "",
        "| student | real-time: frames to 90 % | real-time: wall-clock to 90 % (min) | "
        "train-then-distill: frames | train-then-distill: wall-clock (min) | "
        "ratio, wall-clock | ratio, frames | real-time student at the end (30 ep.) | "
        "train-then-distill student (30 ep.) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for size, row in result["sizes"].items():
        rt, ttd = row.get("realtime"), row.get("train_then_distill")
        fin = row.get("realtime_final")
        cells = [size,
                 f"{rt['frames']:,}" if rt else "not reached",
                 f"{rt['wall_clock_s'] / 60:.1f}" if rt else "-",
                 f"{ttd['frames']:,}" if ttd else "-",
                 f"{ttd['wall_clock_s'] / 60:.1f}" if ttd else "-",
                 f"{row['ratio_wall_clock']:.2f}" if "ratio_wall_clock" in row else "-",
                 f"{row['ratio_frames']:.2f}" if "ratio_frames" in row else "-",
                 _score(fin), _score(ttd)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Periodic evaluations of the run:", "",
              realtime.report_markdown(result["evaluations"], list(result["sizes"]),
                                       result["game"]).split("\n", 2)[2].strip(), "",
              f"Command: `{command}`", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["evaluations"]
    fig, ax = plt.subplots(figsize=(7, 4))
    minutes = [e["wall_clock_s"] / 60 for e in entries]
    ax.plot(minutes, [e["teacher"]["mean"] for e in entries], "k-o", label="teacher")
    for size, row in result["sizes"].items():
        (line,) = ax.plot(minutes, [e["students"][size]["mean"] for e in entries], "-o",
                          label=f"real-time {size}")
        ttd = row.get("train_then_distill")
        if ttd:
            ax.errorbar([ttd["wall_clock_s"] / 60], [ttd["mean"]],
                        yerr=[[ttd["mean"] - ttd["ci"][0]], [ttd["ci"][1] - ttd["mean"]]]
                        if ttd["ci"] else None, fmt="s", color=line.get_color(), capsize=4,
                        label=f"train-then-distill {size}")
    ax.axhline(result["target"], color="grey", linestyle=":",
               label=f"{100 * result['fraction']:.0f} % of the way from random to the teacher")
    ax.set_xlabel("wall-clock (minutes, 2 CPU cores)")
    ax.set_ylabel("evaluation mean return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return summaries.save_figure(fig, path)


def main(argv):
    del argv
    import sys

    result = compare(Path(FLAGS.checkpoint_dir).expanduser(),
                     Path(FLAGS.teachers_dir).expanduser(), FLAGS.game,
                     _pairs(FLAGS.ttd_runs), _pairs(FLAGS.rt_reports), FLAGS.fraction)
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = FLAGS.command or ("bash benchmarks/realtime_pong.sh" if FLAGS.from_script
                                else " ".join(["python -m benchmarks.realtime_compare"]
                                              + sys.argv[1:]))
    files.atomic_write_text(out / "comparison.md", markdown(result, command))
    files.atomic_write_text(out / "comparison.json", json.dumps(result, indent=2) + "\n")
    plot(result, out / "comparison.png")
    print((out / "comparison.md").read_text())


if __name__ == "__main__":
    flags.DEFINE_string("checkpoint_dir", None, "The teacher run with real-time students.")
    flags.DEFINE_string("teachers_dir", None, "Where that run wrote its teacher and card.")
    flags.DEFINE_string("game", "pong", "The game (ROM id).")
    flags.DEFINE_string("ttd_runs", "", "size:run_dir pairs of the train-then-distill runs.")
    flags.DEFINE_string("rt_reports", "",
                        "size:folder pairs of the real-time students' final evaluations.")
    flags.DEFINE_float("fraction", 0.9,
                       "Share of the way from a random policy's score to the final "
                       "teacher's to reach (0-1).")
    flags.DEFINE_string("output_dir", "benchmarks/realtime", "Where the comparison goes.")
    flags.DEFINE_bool("from_script", False, "Record the script as the command.")
    flags.DEFINE_string("command", None, "The command to record in the report (default: "
                        "this one, or the script with --from_script).")
    flags.mark_flags_as_required(["checkpoint_dir", "teachers_dir"])
    app.run(main)
