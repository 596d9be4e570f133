"""Trains a single-game teacher and writes it where the distiller loads it.

    python -m multidistill.train_teacher --game=pong --algo=ppo \
        --num_env_frames=10000000

Writes `<teachers_dir>/<game>.keras` and its card `<game>.json` each time the
periodic evaluation improves on the best so far, so the teacher on disk is
always the best one measured. Training state (weights, optimizer, counters)
is checkpointed in `--checkpoint_dir`, outside the work tree by default;
rerunning the same command continues from it. `--init_from_teacher` starts a
new run from the weights of the teacher already in `teachers_dir` (e.g. the
committed one, on a fresh machine).

`--mode=evaluate` only evaluates the teacher in `teachers_dir` under the
project's protocol and writes the score into its card.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags

from multidistill import checkpoints, cli, environments, evaluation, summaries
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

FLAGS = flags.FLAGS

ALGOS = ("ppo", "dqn")


def define_flags():
    flags.DEFINE_string("game", None, "Game to train on (ALE ROM id, e.g. pong).")
    flags.DEFINE_enum("algo", "ppo", ALGOS,
                      "ppo: policy-gradient, gives a `logits` teacher (cheaper on CPU); "
                      "dqn: Double DQN, gives a `q_values` teacher.")
    flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                      "train, or evaluate the teacher in --teachers_dir and update its card.")
    flags.DEFINE_integer("num_env_frames", 10_000_000,
                         "Training length in emulator frames (1 agent step = 4 frames).")
    flags.DEFINE_string("teachers_dir", str(teachers_lib.DEFAULT_TEACHERS_DIR),
                        "Where the teacher (<game>.keras + <game>.json card) is written.")
    flags.DEFINE_string("checkpoint_dir", None,
                        "Training state folder (default: "
                        "~/.cache/multidistill/teacher_runs/<game>_<algo>).")
    flags.DEFINE_integer("eval_every_frames", 1_000_000,
                         "Evaluate (and export if better) every this many emulator frames.")
    flags.DEFINE_integer("eval_episodes", 8, "Episodes per periodic evaluation.")
    flags.DEFINE_integer("final_eval_episodes", 30,
                         "Episodes of the final evaluation written into the card.")
    flags.DEFINE_integer("checkpoint_every_s", 300, "Checkpoint interval, wall-clock seconds.")
    flags.DEFINE_integer("num_envs", 8, "Environments stepped together.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_float("behaviour_epsilon", evaluation.EvalProtocol.epsilon,
                       "PPO only: probability of a uniformly random action mixed into the "
                       "policy that acts and is optimised (a probability in [0, 1); default "
                       "the evaluation protocol's epsilon, so the policy trained is the one "
                       "scored).")
    flags.DEFINE_float("ez_mu", 0.0,
                       "DQN only: epsilon-z-greedy exploration (Dabney et al. 2021): an "
                       "exploratory action is held for n ~ zeta(ez_mu) agent steps (at most "
                       "100); 2 is the paper's value, 0 gives plain epsilon-greedy (1 step). "
                       "Use it where a reward needs one action held for long (Freeway).")
    flags.DEFINE_float("epsilon_end", evaluation.EvalProtocol.epsilon,
                       "DQN only: final exploration rate, the probability of a random action "
                       "once the decay is over (in [0, 1]; default the evaluation protocol's "
                       "epsilon, so the uncorrected n-step returns value the policy that is "
                       "scored; Dopamine uses 0.01, Nature DQN 0.1).")
    flags.DEFINE_bool("init_from_teacher", False,
                      "Without a checkpoint, start from the weights of the teacher in "
                      "--teachers_dir instead of random weights.")
    cli.define_preprocessing_flags()
    cli.define_verbose_flag()
    flags.adopt_module_key_flags(cli)  # List them in --help too.


def _hardware() -> str:
    import keras

    return (f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, "
            f"keras backend {keras.backend.backend()}")


def _make_algo(algo, game, spec, total_agent_steps):
    if algo == "ppo":
        from multidistill import ppo

        return ppo.PPO(game.name, game.num_actions, spec,
                       ppo.PPOConfig(num_envs=FLAGS.num_envs,
                                     behaviour_epsilon=FLAGS.behaviour_epsilon),
                       total_agent_steps=total_agent_steps, seed=FLAGS.seed)
    from multidistill import dqn

    return dqn.DQN(game.name, game.num_actions, spec,
                   dqn.DQNConfig(num_envs=FLAGS.num_envs, ez_mu=FLAGS.ez_mu,
                                 epsilon_end=FLAGS.epsilon_end),
                   total_agent_steps=total_agent_steps, seed=FLAGS.seed)


def _copy_weights_by_name(src, dst):
    copied = 0
    for layer in dst.layers:
        try:
            other = src.get_layer(layer.name)
        except ValueError:
            continue
        if other.get_weights() and len(other.get_weights()) == len(layer.get_weights()):
            layer.set_weights(other.get_weights())
            copied += 1
    return copied


def evaluate_teacher(game: str, teachers_dir, spec, episodes: int, seed: int) -> dict:
    teacher = teachers_lib.load_teacher(game, teachers_dir, spec)
    protocol = evaluation.EvalProtocol(num_episodes=episodes, seed=1_000_000 + seed)
    scores = evaluation.evaluate(game, evaluation.predict_fn(teacher.model), teacher.kind,
                                 spec, protocol, label=f"{game} teacher")
    result = dict(scores.to_dict(), protocol=protocol.to_dict())
    card = dict(teacher.card, evaluation=result)
    teachers_lib.write_card(teachers_lib.teacher_paths(game, teachers_dir)[1], card)
    return result


def main(argv):
    del argv
    cli.require(FLAGS.game is not None, "--game is required, e.g. --game=pong")
    game = games_lib.get_game(games_lib.parse_games(FLAGS.game, "--game")[0])
    spec = cli.preprocessing_from_flags()
    teachers_dir = Path(FLAGS.teachers_dir)
    if FLAGS.mode == "evaluate":
        r = evaluate_teacher(game.name, teachers_dir, spec, FLAGS.final_eval_episodes, FLAGS.seed)
        print(f"{game.name}: {r['mean']:.1f} ± {r['std']:.1f} over {r['episodes']} episodes")
        return
    cli.require(FLAGS.num_env_frames >= 1, "--num_env_frames must be >= 1")
    cli.require(0.0 <= FLAGS.behaviour_epsilon < 1.0,
                f"--behaviour_epsilon must be in [0, 1), found {FLAGS.behaviour_epsilon}")
    cli.require(0.0 <= FLAGS.epsilon_end <= 1.0,
                f"--epsilon_end must be in [0, 1], found {FLAGS.epsilon_end}")
    cli.require(FLAGS.ez_mu == 0.0 or FLAGS.ez_mu > 1.0,
                f"--ez_mu must be 0 (plain epsilon-greedy) or > 1, found {FLAGS.ez_mu}")
    try:
        teachers_dir.mkdir(parents=True, exist_ok=True)
        probe = teachers_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise cli.UsageError(
            f"--teachers_dir={teachers_dir} is not writable: {e.strerror}") from None
    ckpt_dir = Path(FLAGS.checkpoint_dir or Path.home() / ".cache" / "multidistill"
                    / "teacher_runs" / f"{game.name}_{FLAGS.algo}")
    ckpt_path = ckpt_dir / "checkpoint.npz"
    run_key = {"game": game.name, "algo": FLAGS.algo, "preprocessing": spec.to_dict()}

    total_agent_steps = FLAGS.num_env_frames // spec.frame_skip
    algo = _make_algo(FLAGS.algo, game, spec, total_agent_steps)
    state = {"wall_clock_s": 0.0, "best_eval": None, "last_eval_frames": 0}
    if ckpt_path.exists():
        saved = checkpoints.read_state(ckpt_path)
        if isinstance(saved.get("algo"), dict):  # Checkpoints of 0.1.0 dev runs.
            saved["algo_state"] = saved.pop("algo")
            saved["algo"] = run_key["algo"]
        for k in ("game", "algo"):
            if saved.get(k) != run_key[k]:
                raise checkpoints.CheckpointError(
                    f"checkpoint {ckpt_path} is for {k}={saved.get(k)!r}, this run asks "
                    f"for {run_key[k]!r}: use another --checkpoint_dir")
        if saved.get("preprocessing") != run_key["preprocessing"]:
            theirs = environments.Preprocessing.from_dict(saved["preprocessing"])
            raise checkpoints.CheckpointError(
                f"checkpoint {ckpt_path} was trained with another preprocessing: "
                + "; ".join(theirs.differences(spec)).replace("here vs", "checkpoint vs asked")
                + ": use another --checkpoint_dir")
        saved = checkpoints.restore(ckpt_path, algo.learner, algo.optimizer)
        algo.load_state(saved.get("algo_state") or saved["algo"])
        state.update(saved["run"])
        print(f"resuming {ckpt_path} at {algo.agent_steps * spec.frame_skip:,} frames")
    elif FLAGS.init_from_teacher:
        teacher = teachers_lib.load_teacher(game.name, teachers_dir, spec)
        n = _copy_weights_by_name(teacher.model, algo.net)
        print(f"initialised {n} layers from {teacher.path}")
        state["best_eval"] = teacher.card.get("evaluation", {}).get("mean")

    writer = summaries.ScalarWriter(ckpt_dir)
    from tqdm import tqdm

    frames = algo.agent_steps * spec.frame_skip
    bar = tqdm(total=FLAGS.num_env_frames, initial=frames, unit="frame", unit_scale=True,
               desc=f"train {game.name} {FLAGS.algo}", dynamic_ncols=True, smoothing=0.1)
    t_start = time.perf_counter() - state["wall_clock_s"]
    last_ckpt = time.perf_counter()
    recent = []
    command = " ".join(["python -m multidistill.train_teacher"] + sys.argv[1:])

    def save_checkpoint():
        state["wall_clock_s"] = time.perf_counter() - t_start
        checkpoints.save(ckpt_path, algo.learner, algo.optimizer,
                         dict(run_key, algo_state=algo.state(), run=state))
        summaries.plot_curves(
            ckpt_dir / "metrics.jsonl", ckpt_dir / "learning_curve.png",
            [("episode return", ["charts/episodic_return", "eval/mean_return"]),
             ("loss", ["losses/loss"])],
            "emulator frames",
            labels={"charts/episodic_return": "training episodes",
                    "eval/mean_return": f"evaluation ({FLAGS.eval_episodes} episodes, protocol)"})

    def evaluate_and_export():
        protocol = evaluation.EvalProtocol(num_episodes=FLAGS.eval_episodes,
                                           seed=1_000_000 + FLAGS.seed)
        model = algo.teacher_model
        scores = evaluation.evaluate(game.name, evaluation.predict_fn(model), algo.kind, spec,
                                     protocol, progress=False)
        writer.scalars(frames, {"eval/mean_return": scores.mean, "eval/std_return": scores.std})
        state["last_eval_frames"] = frames
        improved = state["best_eval"] is None or scores.mean > state["best_eval"]
        if improved:
            state["best_eval"] = scores.mean
            teachers_lib.save_teacher(
                model, game.name, algo.kind, spec, teachers_dir,
                evaluation=dict(scores.to_dict(), protocol=protocol.to_dict()),
                training={
                    "algorithm": FLAGS.algo,
                    "config": {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in vars(algo.config).items()},
                    "num_env_frames": frames,
                    "wall_clock_s": round(time.perf_counter() - t_start, 1),
                    "hardware": _hardware(),
                    "command": command,
                },
            )
        return scores.mean, improved

    try:
        while frames < FLAGS.num_env_frames:
            m = algo.iterate()
            frames = algo.agent_steps * spec.frame_skip
            bar.update(frames - bar.n)
            for ret, _ in m["episodes"]:
                recent = (recent + [ret])[-20:]
            logs = {"losses/loss": m["loss"] if np.isfinite(m["loss"]) else None,
                    "charts/SPS": (algo.config.num_envs * getattr(
                        algo.config, "rollout_length", 1))
                    / max(m["act_seconds"] + m["learn_seconds"], 1e-9)}
            if m["episodes"]:
                logs["charts/episodic_return"] = float(np.mean([r for r, _ in m["episodes"]]))
            writer.scalars(frames, logs)
            if frames - state["last_eval_frames"] >= FLAGS.eval_every_frames:
                score, improved = evaluate_and_export()
                bar.write(f"{frames:,} frames: eval {score:.1f}"
                          + (" (new best, teacher written)" if improved else ""))
            bar.set_postfix(ret=f"{np.mean(recent):.1f}" if recent else "n/a",
                            eval=state["best_eval"])
            if time.perf_counter() - last_ckpt >= FLAGS.checkpoint_every_s:
                save_checkpoint()
                last_ckpt = time.perf_counter()
    except KeyboardInterrupt:
        bar.write("interrupted: saving a checkpoint")
        save_checkpoint()
        raise SystemExit(130) from None
    finally:
        bar.close()
    if state["last_eval_frames"] < frames:
        evaluate_and_export()
    save_checkpoint()
    algo.close()
    writer.close()
    if FLAGS.final_eval_episodes > 0:
        r = evaluate_teacher(game.name, teachers_dir, spec, FLAGS.final_eval_episodes,
                             FLAGS.seed)
        print(f"{game.name}: teacher {r['mean']:.1f} ± {r['std']:.1f} over "
              f"{r['episodes']} episodes")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
