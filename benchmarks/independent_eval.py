"""An evaluation of a student by code independent of `multidistill.evaluation`.

    python -m benchmarks.independent_eval --report=runs/RUN/report.json

Plays the run's student (`student.keras` beside the report) with gymnasium's
own Atari stack instead of the product's (`ale_py.AtariVectorEnv` in C++,
`multidistill.acting`, `multidistill.statistics`):

  * environments: `gym.make("ALE/<Game>-v5", frameskip=1,
    repeat_action_probability=<sticky>, full_action_space=False)` wrapped in
    gymnasium's `AtariPreprocessing` (up to 30 no-ops, frame skip 4 with a
    max over the last two frames, 84x84 grayscale by OpenCV's area resize)
    and `FrameStackObservation(4, padding_type="zero")`, stepped by
    `gymnasium.vector.SyncVectorEnv`, FIRE pressed after each reset where
    the game's action set has it, episodes capped at the report's
    `max_episode_frames`;
  * other seeds than the report's (`--seed`, default 7,000,000);
  * the acting rule re-implemented here: epsilon-greedy over argmax (the
    students of Q-value teachers) or over a sample of the softmax (of logit
    teachers);
  * intervals from `scipy.stats.bootstrap` (percentile method), not from
    `multidistill.statistics`.

Only the network file is shared: it is loaded with `keras.saving.load_model`.
Writes `independent_eval.json` and `independent_eval.md` beside the report:
per game the student's mean here with its interval, the report's mean with
its interval, and whether each mean falls inside the other's interval.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

flags.DEFINE_string("report", None, "The run's report.json (student.keras must lie beside "
                    "it, or give --student).")
flags.DEFINE_string("student", None, "The student file (default: student.keras beside the "
                    "report).")
flags.DEFINE_string("games", "", "Comma-separated games (default: the report's).")
flags.DEFINE_string("episodes", "", "Episodes per game, e.g. pong:32,qbert:128 (default: the "
                    "report's episodes per game).")
flags.DEFINE_integer("num_envs", 16, "Environments stepped together (gymnasium "
                     "SyncVectorEnv).")
flags.DEFINE_integer("seed", 7_000_000, "Environment i is seeded with seed + i at its first "
                     "reset.")
FLAGS = flags.FLAGS

ROM_IDS = {"pong": "Pong", "qbert": "Qbert", "freeway": "Freeway", "breakout": "Breakout",
           "ms_pacman": "MsPacman", "space_invaders": "SpaceInvaders", "seaquest": "Seaquest"}


def make_env(game: str, spec: dict, index: int):
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    rom = ROM_IDS.get(game) or "".join(p.capitalize() for p in game.split("_"))

    def thunk():
        env = gym.make(f"ALE/{rom}-v5", frameskip=1,
                       repeat_action_probability=spec["sticky_action_prob"],
                       full_action_space=spec["full_action_space"],
                       max_num_frames_per_episode=spec["max_episode_frames"])
        env = AtariPreprocessing(env, noop_max=spec["noop_max"], frame_skip=spec["frame_skip"],
                                 screen_size=spec["frame_height"],
                                 terminal_on_life_loss=spec["episodic_life"],
                                 grayscale_obs=True, scale_obs=False)
        return FrameStackObservation(env, spec["frame_stack"], padding_type="zero")

    return thunk


def play(game: str, network, kind: str, spec: dict, episodes: int, num_envs: int,
         seed: int, epsilon: float) -> list[float]:
    """Returns of `episodes` episodes (each environment plays a fixed quota)."""
    import gymnasium as gym

    n = min(num_envs, episodes)
    quota = [episodes // n + (i < episodes % n) for i in range(n)]
    envs = gym.vector.SyncVectorEnv([make_env(game, spec, i) for i in range(n)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    meanings = envs.envs[0].unwrapped.get_action_meanings()
    fire = meanings.index("FIRE") if spec.get("fire_reset") and "FIRE" in meanings else None
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=[seed + i for i in range(n)])
    returns = [[] for _ in range(n)]
    running = np.zeros(n)
    fresh = np.ones(n, bool)  # An episode has just begun: press FIRE once.
    try:
        while any(len(r) < q for r, q in zip(returns, quota)):
            out = np.asarray(network.predict_on_batch(obs.astype(np.uint8)))
            if kind == "q_values":
                actions = out.argmax(axis=1)
            else:
                p = np.exp(out - out.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                actions = np.array([rng.choice(len(row), p=row) for row in p])
            random = rng.random(n) < epsilon
            actions = np.where(random, rng.integers(0, out.shape[1], n), actions)
            if fire is not None:
                actions = np.where(fresh, fire, actions)
            obs, reward, terminated, truncated, _ = envs.step(actions)
            running += reward
            fresh[:] = False
            for i in np.flatnonzero(terminated | truncated):
                if len(returns[i]) < quota[i]:
                    returns[i].append(float(running[i]))
                running[i] = 0.0
                fresh[i] = True
    finally:
        envs.close()
    return [r for rs in returns for r in rs]


def interval(returns: list[float]) -> list[float]:
    from scipy import stats

    res = stats.bootstrap((np.asarray(returns),), np.mean, confidence_level=0.95,
                          n_resamples=10_000, method="percentile",
                          random_state=np.random.default_rng(123))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def main(argv):
    del argv
    import keras

    import multidistill.networks  # noqa: F401  (registers the student class)

    report_path = Path(FLAGS.report)
    report = json.loads(report_path.read_text())
    student_path = Path(FLAGS.student or report_path.parent / "student.keras")
    student = keras.saving.load_model(student_path)
    spec = report["preprocessing"]
    games = [g for g in FLAGS.games.split(",") if g] or list(report["games"])
    episodes = dict(report["protocol"].get("episodes_per_game") or {})
    for item in [t for t in FLAGS.episodes.split(",") if t]:
        g, _, v = item.partition(":")
        episodes[g] = int(v)
    kinds = dict(zip(student.games, student.training_config.get("teacher_kinds")
                     or ["q_values"] * len(student.games)))
    epsilon = report["protocol"]["epsilon"]
    rows = {}
    for game in games:
        t0 = time.perf_counter()
        returns = play(game, student.policy_network(game), kinds[game], spec,
                       episodes.get(game, 30), FLAGS.num_envs, FLAGS.seed, epsilon)
        mine, ci = float(np.mean(returns)), interval(returns)
        theirs = report["games"][game]["student"]
        rows[game] = {
            "independent": {"mean": mine, "ci": ci, "episodes": len(returns),
                            "returns": returns, "seconds": time.perf_counter() - t0},
            "report": {"mean": theirs["mean"], "ci": theirs.get("ci"),
                       "episodes": theirs["episodes"]},
            "report_mean_in_independent_ci": ci[0] <= theirs["mean"] <= ci[1],
            "independent_mean_in_report_ci": (theirs.get("ci") is not None
                                              and theirs["ci"][0] <= mine <= theirs["ci"][1]),
            "intervals_overlap": (theirs.get("ci") is not None
                                  and ci[0] <= theirs["ci"][1] and theirs["ci"][0] <= ci[1]),
        }
        print(f"{game}: independent {mine:.1f} [{ci[0]:.1f}, {ci[1]:.1f}] "
              f"({len(returns)} episodes, {rows[game]['independent']['seconds']:.0f} s); "
              f"report {theirs['mean']:.1f} {theirs.get('ci')}", flush=True)
    out = {"report": str(report_path), "student": str(student_path), "seed": FLAGS.seed,
           "command": " ".join(["python", "-m", "benchmarks.independent_eval", *sys.argv[1:]]),
           "games": rows}
    (report_path.parent / "independent_eval.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| game | independent evaluation | report | intervals overlap | each mean in "
             "the other's interval |", "|---|---|---|---|---|"]
    for g, r in rows.items():
        i, t = r["independent"], r["report"]
        both = r["report_mean_in_independent_ci"] and r["independent_mean_in_report_ci"]
        tci = f" [{t['ci'][0]:,.1f}, {t['ci'][1]:,.1f}]" if t.get("ci") else ""
        lines.append(f"| {g} | {i['mean']:,.1f} [{i['ci'][0]:,.1f}, {i['ci'][1]:,.1f}] "
                     f"({i['episodes']}) | {t['mean']:,.1f}{tci} ({t['episodes']}) | "
                     f"{'yes' if r['intervals_overlap'] else 'no'} | "
                     f"{'yes' if both else 'no'} |")
    md = "\n".join(lines) + "\n"
    (report_path.parent / "independent_eval.md").write_text(md)
    print(md)


if __name__ == "__main__":
    flags.mark_flag_as_required("report")
    app.run(main)
