"""PPO with and without RND on a hard-exploration game: the table and curves
of benchmarks/rnd.sh.

    python -m benchmarks.rnd_compare --game=montezuma_revenge \
        --runs=ppo:CK_PPO,ppo_rnd:CK_RND --output_dir=benchmarks/rnd

Reads each teacher run's folder (`metrics.jsonl`: the periodic evaluations,
the training episodes, the rooms probe `rooms/*`, RND's bonus `rnd/*`;
`checkpoint.npz`: frames and wall-clock; `rooms.json`: the rooms found) and
writes comparison.md, comparison.json and curves.png (evaluation return,
training-episode return, rooms found and rooms per probe episode against
emulator frames, every run on each panel) into --output_dir.

Definitions (stated in the table too):
  * evaluation: the runner's periodic evaluation, 8 episodes under the
    protocol (the policy's softmax sampled, a random action with
    probability 0.05);
  * training episodes: the mean return of the episodes that ended within a
    PPO iteration (8 environments x 128 steps), the best such mean of the run;
  * rooms: at each evaluation, 4 more episodes of the same policy in
    emulators whose RAM gives the room (`agents.rooms`); "found" counts the
    distinct rooms of every probe so far. Where the game has no room
    address, the columns say so and the scores stand alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from multidistill import checkpoints, files, games, summaries

FLAGS = flags.FLAGS


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        label, _, path = item.partition(":")
        if not path:
            raise app.UsageError(f"expected label:folder pairs, found {item!r}")
        out[label] = path
    return out


def summarise(folder: Path) -> dict:
    """One run's figures (see the module docstring)."""
    series = summaries.read_metrics(folder / "metrics.jsonl")
    if not series:
        raise app.UsageError(f"no metrics in {folder}: has the run started?")
    state = checkpoints.read_state(folder / "checkpoint.npz")
    frames = 4 * int(state["algo_state"]["agent_steps"])
    evals = sorted(series.get("eval/mean_return", []))
    train = sorted(series.get("charts/episodic_return", []))
    rooms_path = folder / "rooms.json"
    rooms = json.loads(rooms_path.read_text()) if rooms_path.exists() else None
    per_episode = sorted(series.get("rooms/max_per_episode", []))
    bonus = sorted(series.get("rnd/intrinsic_reward", []))
    return {
        "folder": str(folder), "frames": frames,
        "wall_clock_s": float(state["run"]["wall_clock_s"]),
        "final_eval": evals[-1][1] if evals else None,
        "final_eval_std": (sorted(series.get("eval/std_return", [(0, None)]))[-1][1]
                           if evals else None),
        "best_eval": max(v for _, v in evals) if evals else None,
        "best_training_mean": max(v for _, v in train) if train else None,
        "rooms_found": sorted(rooms["found"]) if rooms else None,
        "max_rooms_in_an_episode": max(v for _, v in per_episode) if per_episode else None,
        "probe_max_return": (max((e["return"] for p in rooms["probes"] for e in p["episodes"]),
                                 default=None) if rooms else None),
        "rnd": bool(bonus), "last_intrinsic_reward": bonus[-1][1] if bonus else None,
    }


def _fmt(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(game: str, rows: dict[str, dict], command: str) -> str:
    g = games.get_game(game)
    lines = [
        f"# PPO with and without RND on {game}", "",
        f"Human-normalised reference: random {_fmt(g.random_score)}, human "
        f"{_fmt(g.human_score)} (the DQN papers' scores). Evaluation: 8 episodes under the "
        "protocol at each periodic evaluation; rooms: 4 more episodes of the same policy "
        "read from the emulator's RAM (`agents.rooms`); episodes capped at 18,000 frames.", "",
        "| run | frames | wall-clock (h) | final evaluation (mean ± std) | best evaluation | "
        "best training mean | rooms found | most rooms in a probe episode | "
        "best probe return |",
        "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        found = ("n/a" if r["rooms_found"] is None
                 else f"{len(r['rooms_found'])} ({', '.join(map(str, r['rooms_found']))})")
        lines.append("| " + " | ".join([
            label, f"{r['frames']:,}", f"{r['wall_clock_s'] / 3600:.2f}",
            f"{_fmt(r['final_eval'])} ± {_fmt(r['final_eval_std'])}",
            _fmt(r["best_eval"]), _fmt(r["best_training_mean"]), found,
            _fmt(r["max_rooms_in_an_episode"], "{:.0f}"), _fmt(r["probe_max_return"])]) + " |")
    lines += ["", "A wall-clock includes the evaluations and the room probes; with RND, "
              "also its 40,960 frames of random play, which count among its frames.",
              "", f"Command: `{command}`", ""]
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("evaluation return (8 episodes)", "eval/mean_return", False),
              ("training episodes (mean per iteration)", "charts/episodic_return", True),
              ("rooms found so far", "rooms/found", False),
              ("rooms per probe episode (mean)", "rooms/mean_per_episode", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), sharex=True)
    for ax, (title, tag, smooth) in zip(axes, panels):
        for label, r in rows.items():
            points = sorted(summaries.read_metrics(Path(r["folder"]) / "metrics.jsonl")
                            .get(tag, []))
            if not points:
                continue
            xs, ys = zip(*points)
            if smooth and len(xs) > 10:
                (line,) = ax.plot(xs, ys, alpha=0.2)
                ax.plot(xs, summaries.smooth(ys, 0.9), color=line.get_color(), label=label)
            else:
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("emulator frames")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return summaries.save_figure(fig, path)


def main(argv):
    del argv
    import sys

    runs = _pairs(FLAGS.runs)
    if not runs:
        raise app.UsageError("--runs is empty: expected label:folder pairs")
    rows = {label: summarise(Path(folder).expanduser()) for label, folder in runs.items()}
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "bash benchmarks/rnd.sh" if FLAGS.from_script else " ".join(
        ["python -m benchmarks.rnd_compare"] + sys.argv[1:])
    files.atomic_write_text(out / "comparison.md", markdown(FLAGS.game, rows, command))
    files.atomic_write_text(out / "comparison.json",
                            json.dumps({"game": FLAGS.game, "runs": rows}, indent=2) + "\n")
    plot(rows, out / "curves.png")
    print((out / "comparison.md").read_text())


if __name__ == "__main__":
    flags.DEFINE_string("game", "montezuma_revenge", "The game (ROM id).")
    flags.DEFINE_string("runs", "", "label:checkpoint_dir pairs of the teacher runs.")
    flags.DEFINE_string("output_dir", "benchmarks/rnd", "Where the comparison goes.")
    flags.DEFINE_bool("from_script", False, "Record the script as the command.")
    app.run(main)
