"""Memory and disk of student-driven rounds: flat under a cap, growing without.

    python -m benchmarks.rounds_memory            # 20 rounds per variant, ~10 minutes
    python -m benchmarks.rounds_memory --quick    # 3 rounds, a smoke test

Runs the product's round loop (`multidistill.rounds.RoundLoop`: the student
collects, the teacher labels, the student trains on the aggregate) on Pong
and Freeway twice, each in a fresh process: with `--max_agent_steps_per_game`
(the cap) and without. After every round it records the process's resident
memory (RSS, from /proc/self/statm), the bytes of the run's round files on
disk, and the steps in each game's sampler. Teachers are Nature-DQN-shaped
networks with random weights (their labels do not change the memory
pattern); the student is `net3`.

Figures are ratios within one run: RSS at the last round / RSS after round
`--reference_round` (flat: close to 1), disk at the last round / disk after
the reference round. Writes `benchmarks/rounds_memory.md` and
`rounds_memory.png` (RSS and disk per round, both variants).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

flags.DEFINE_integer("rounds", 20, "Collection rounds per variant.")
flags.DEFINE_integer("base_steps", 1800, "Agent steps of each game's teacher-driven dataset.")
flags.DEFINE_integer("agent_steps_per_round", 600, "Agent steps collected per game and round.")
flags.DEFINE_integer("grad_steps_per_round", 25, "Gradient steps per round.")
flags.DEFINE_integer("episode_frames", 2400,
                     "Episode cap in emulator frames (600 agent steps: rounds of whole "
                     "episodes stay near --agent_steps_per_round).")
flags.DEFINE_integer("cap", 3600,
                     "--max_agent_steps_per_game of the capped variant, in agent steps.")
flags.DEFINE_integer("reference_round", 5, "Round whose RSS and disk the ratios divide by.")
flags.DEFINE_bool("quick", False, "3 rounds of 300 steps, cap 900: a smoke test (~2 minutes).")
flags.DEFINE_string("output", "benchmarks/rounds_memory.md",
                    "The Markdown report (the plot goes beside it, .png).")
FLAGS = flags.FLAGS
GAMES = ("pong", "freeway")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.h5")) if path.exists() else 0


def run_variant(work: str, sizes: dict, cap: int) -> list[dict]:
    """One round loop in this process; per round RSS, disk and sampler steps."""
    from multidistill import (
        collect,
        distiller,
        environments,
        games,
        networks,
        objectives,
        pipeline,
        rounds,
        teachers,
    )

    work = Path(work)
    spec = environments.Preprocessing(max_episode_frames=sizes["episode_frames"])
    tdir, ddir = work / "teachers", work / "datasets"
    if not tdir.exists():
        import keras

        for i, g in enumerate(GAMES):
            keras.utils.set_random_seed(i)
            model = networks.build_teacher_network(games.get_game(g).num_actions,
                                                   spec.observation_shape)
            teachers.save_teacher(model, g, "q_values", spec, tdir)
    loaded = {g: teachers.load_teacher(g, tdir, spec) for g in GAMES}
    # One environment: rounds end with whole episodes, so a round holds about
    # its steps plus what the environments under way still play.
    rec = collect.CollectConfig(num_agent_steps=sizes["base_steps"], num_envs=1, seed=1)
    paths = []
    for g in GAMES:
        path = ddir / f"{g}.h5"
        collect.build_dataset(loaded[g], path, rec, spec, progress=False)
        paths.append(str(path))
    config = distiller.DistillConfig(
        games=GAMES, objective=objectives.Distillation(temperatures=(0.01, 0.01)),
        student_size="net3", num_grad_steps=sizes["grad_steps_per_round"],
        checkpoint_every_steps=1000, eval_every_steps=1000,
        pipeline=pipeline.PipelineConfig(batch_size_per_game=32))
    rows = []
    run_dir = work / f"run_cap{cap}"

    def measure(r, info):
        sampler = info["state"]["active"].get(str(r), {"rounds": [], "teacher_data": True})
        rows.append({"round": r, "rss_bytes": _rss_bytes(),
                     "disk_bytes": _disk_bytes(run_dir / "rounds"),
                     "rounds_in_sampler": len(sampler["rounds"]),
                     "time": time.time()})

    loop = rounds.RoundLoop(
        run_dir, rounds.RoundsConfig(
            control="student", rounds=sizes["rounds"],
            agent_steps_per_round=sizes["agent_steps_per_round"],
            grad_steps_per_round=sizes["grad_steps_per_round"], max_agent_steps_per_game=cap),
        config, loaded, paths, spec, rec, progress=False, on_round=measure)
    loop.run()
    return rows


def _in_fresh_process(work, sizes, cap):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_variant, (work, sizes, cap))


def main(argv):
    del argv
    sizes = {"rounds": FLAGS.rounds, "base_steps": FLAGS.base_steps,
             "agent_steps_per_round": FLAGS.agent_steps_per_round,
             "grad_steps_per_round": FLAGS.grad_steps_per_round,
             "episode_frames": FLAGS.episode_frames}
    cap, ref = FLAGS.cap, FLAGS.reference_round
    if FLAGS.quick:
        sizes.update(rounds=3, base_steps=600, agent_steps_per_round=300,
                     grad_steps_per_round=5, episode_frames=1200)
        cap, ref = 900, 1
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rounds_memory_") as work:
        results = {"capped": _in_fresh_process(work, sizes, cap),
                   "uncapped": _in_fresh_process(work, sizes, 0)}
    seconds = time.time() - t0
    out = Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(results, sizes, cap, ref, seconds))
    out.with_suffix(".json").write_text(json.dumps(
        {"sizes": sizes, "cap": cap, "reference_round": ref, "seconds": seconds,
         "results": results}, indent=2))
    plot(results, out.with_suffix(".png"))
    print(out.read_text())


def _ratio(rows, key, ref):
    at = {r["round"]: r[key] for r in rows}
    return at[max(at)] / max(at.get(ref, at[min(at)]), 1)


def report(results, sizes, cap, ref, seconds) -> str:
    mib = 2 ** 20
    lines = [
        "# Student-driven rounds: memory and disk",
        "",
        f"`python -m benchmarks.rounds_memory{' --quick' if FLAGS.quick else ''}` "
        f"({time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min, "
        f"{os.cpu_count()} cores). Pong and Freeway, student control, "
        f"{sizes['rounds']} rounds of {sizes['agent_steps_per_round']:,} agent steps per game "
        f"and {sizes['grad_steps_per_round']} gradient steps, on "
        f"{sizes['base_steps']:,} teacher-driven steps per game, episodes capped at "
        f"{sizes['episode_frames']:,} frames; capped variant: "
        f"`max_agent_steps_per_game={cap:,}`. Each variant in a fresh process.",
        "",
        "| variant | RSS at last round / round " f"{ref} | disk at last round / round {ref} | "
        "RSS at last round | round files on disk at last round | rounds in the sampler |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        last = rows[-1]
        lines.append(
            f"| {name} | {_ratio(rows, 'rss_bytes', ref):.3f} | "
            f"{_ratio(rows, 'disk_bytes', ref):.2f} | {last['rss_bytes'] / mib:,.0f} MiB | "
            f"{last['disk_bytes'] / mib:,.1f} MiB | {last['rounds_in_sampler']} |")
    lines += ["", "Per round (RSS MiB capped / uncapped; disk MiB capped / uncapped):", "",
              "| round | " + " | ".join(str(r["round"]) for r in results["capped"]) + " |",
              "|---|" + "---|" * len(results["capped"])]
    for key, scale in (("rss_bytes", mib), ("disk_bytes", mib)):
        for name in results:
            lines.append(f"| {key[:-6]} {name} | " + " | ".join(
                f"{r[key] / scale:,.0f}" for r in results[name]) + " |")
    lines += ["", "![RSS and disk per round](" + Path(FLAGS.output).with_suffix(".png").name
              + ")", ""]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, rows in results.items():
        x = [r["round"] for r in rows]
        axes[0].plot(x, [r["rss_bytes"] / 2 ** 20 for r in rows], marker="o", label=name)
        axes[1].plot(x, [r["disk_bytes"] / 2 ** 20 for r in rows], marker="o", label=name)
    axes[0].set(xlabel="round", ylabel="RSS (MiB)", title="process memory")
    axes[1].set(xlabel="round", ylabel="round files (MiB)", title="disk")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    app.run(main)
