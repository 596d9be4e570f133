"""Trains a single-game teacher and writes it where the distiller loads it.

    python -m multidistill.train_teacher --game=pong --algo=ppo \
        --num_env_frames=10000000

Writes `<teachers_dir>/<game>.keras` and its card `<game>.json` each time the
periodic evaluation improves on the best so far, so the teacher on disk is
always the best one measured. Training state (weights, optimizer, counters)
is checkpointed in `--checkpoint_dir`, outside the work tree by default;
rerunning the same command continues from it, also after SIGINT or SIGTERM
(which checkpoint at the end of the iteration under way and exit with 130).
`--init_from_teacher` starts a new run from the teacher already in
`teachers_dir` (e.g. the committed one, on a fresh machine): its weights and
the counters recorded in its card.

`--mode=evaluate` only evaluates the teacher in `teachers_dir` under the
project's protocol and writes the score into its card.

`--algo=ppo --rnd` adds Random Network Distillation's exploration bonus
(`agents.rnd`); on games whose room number the emulator's RAM holds
(Montezuma's Revenge, Venture, Pitfall!) a probe counts the rooms the
teacher visits at each evaluation (`agents.rooms`).

This module only wires parts together: flags (`cli`), the agent
(`agents.dqn`, `agents.ppo`), the runner (`agents.runner`) and what rides
along it (`realtime`, `agents.rooms`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from multidistill import cli, evaluation, files, realtime, students
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

FLAGS = flags.FLAGS


def evaluate_teacher(game: str, teachers_dir, spec, episodes: int, seed: int) -> dict:
    """Evaluates the teacher of `game` under the protocol; writes the score into its card.

    Returns:
      The card's new `evaluation` section.
    """
    teacher = teachers_lib.load_teacher(game, teachers_dir, spec)
    protocol = evaluation.EvalProtocol(num_episodes=episodes, seed=1_000_000 + seed)
    scores = evaluation.evaluate(game, evaluation.predict_fn(teacher.policy_model), teacher.kind,
                                 spec, protocol, label=f"{game} teacher")
    result = dict(scores.to_dict(), protocol=protocol.to_dict())
    card = dict(teacher.card, evaluation=result)
    teachers_lib.write_card(teachers_lib.teacher_paths(game, teachers_dir)[1], card)
    return result


def _score(r: dict) -> str:
    ci = r.get("ci")
    interval = f" [{ci[0]:.1f}, {ci[1]:.1f}] (95 % interval)" if ci else ""
    return f"{r['mean']:.1f}{interval} over {r['episodes']} episodes"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = files.atomic_write_text(folder / ".write_test", "")
        probe.unlink()
    except OSError as e:
        raise cli.UsageError(f"--teachers_dir={folder} is not writable: {e.strerror}") from None


def main(argv):
    del argv
    from multidistill.agents import rooms, runner

    if FLAGS.mode == "table":
        readme = teachers_lib.write_cards_table(FLAGS.teachers_dir,
                                                Path(FLAGS.teachers_dir) / "README.md")
        print(teachers_lib.cards_table(FLAGS.teachers_dir) + f"written into {readme}")
        return
    cli.require(FLAGS.game is not None, "--game is required, e.g. --game=pong")
    game = games_lib.get_game(games_lib.parse_games(FLAGS.game, "--game")[0])
    spec = cli.preprocessing_from_flags()
    teachers_dir = Path(FLAGS.teachers_dir)
    if FLAGS.mode == "evaluate":
        r = evaluate_teacher(game.name, teachers_dir, spec, FLAGS.final_eval_episodes, FLAGS.seed)
        print(f"{game.name}: {_score(r)}")
        return
    run_config = cli.teacher_run_config_from_flags()
    cli.require(not FLAGS.rnd or FLAGS.algo == "ppo",
                f"--rnd is an exploration bonus for PPO's two value heads: use it with "
                f"--algo=ppo (found --algo={FLAGS.algo})")
    cli.require(FLAGS.room_probe_episodes >= 0,
                f"--room_probe_episodes must be >= 0, found {FLAGS.room_probe_episodes}")
    # Both, so that a bad value of either algorithm's flags is refused.
    agent_configs = {"dqn": cli.dqn_config_from_flags(), "ppo": cli.ppo_config_from_flags()}
    _check_writable(teachers_dir)
    # A run with RND has other variables than one without: its own folder.
    checkpoint_dir = Path(FLAGS.checkpoint_dir or Path.home() / ".cache" / "multidistill"
                          / "teacher_runs"
                          / f"{game.name}_{FLAGS.algo}{'_rnd' if FLAGS.rnd else ''}")

    realtime_config = cli.realtime_config_from_flags(run_config.seed)
    cli.require(not (FLAGS.init_from_teacher and FLAGS.init_trunk_from),
                "--init_from_teacher and --init_trunk_from exclude each other: start from "
                "the whole teacher or from a student's trunk")
    trunk_source = None
    if FLAGS.init_trunk_from:
        try:
            trunk_source = students.load_student(FLAGS.init_trunk_from)
        except (FileNotFoundError, ValueError) as e:
            raise cli.UsageError(f"--init_trunk_from: {e}") from None

    agent = runner.make_agent(FLAGS.algo, game.name, game.num_actions, spec,
                              agent_configs[FLAGS.algo],
                              total_agent_steps=run_config.num_env_frames // spec.frame_skip,
                              seed=run_config.seed)
    companions = []
    if realtime_config is not None:
        students_run = realtime.RealtimeDistillation(
            realtime_config, game.name, game.num_actions, agent.kind, spec,
            checkpoint_dir / "realtime")
        students_run.build(agent.teacher_model)
        companions.append(students_run)
    if game.name in rooms.ROOM_RAM_ADDRESS and FLAGS.room_probe_episodes > 0:
        companions.append(rooms.RoomProbe(game.name, spec, FLAGS.room_probe_episodes,
                                          checkpoint_dir, seed=run_config.seed,
                                          kind=agent.kind))
    run = runner.Runner(agent, FLAGS.algo, game.name, spec, run_config, teachers_dir,
                        checkpoint_dir,
                        command=" ".join(["python -m multidistill.train_teacher"]
                                         + sys.argv[1:]),
                        companions=companions)
    if run.restore():
        print(f"resuming {run.checkpoint_path} at {run.num_env_frames:,} frames")
    elif FLAGS.init_from_teacher:
        teacher = teachers_lib.load_teacher(game.name, teachers_dir, spec)
        n = run.start_from_teacher(teacher)
        print(f"initialised {n} layers from {teacher.path}, at {run.num_env_frames:,} frames")
    elif trunk_source is not None:
        try:
            n = run.start_from_trunk(trunk_source, FLAGS.init_trunk_from)
        except ValueError as e:
            raise cli.UsageError(f"--init_trunk_from={FLAGS.init_trunk_from}: {e}") from None
        print(f"initialised the trunk ({n} layers) from {FLAGS.init_trunk_from}")
    if realtime_config is not None:
        print(f"real-time students {', '.join(realtime_config.sizes)} in "
              f"{checkpoint_dir / 'realtime'}")
    if any(isinstance(c, rooms.RoomProbe) for c in companions):
        print(f"rooms visited: {FLAGS.room_probe_episodes} probe episodes per evaluation "
              f"(RAM address {rooms.ROOM_RAM_ADDRESS[game.name]}), in "
              f"{checkpoint_dir / 'rooms.json'}")
    try:
        stopped = run.train()
    finally:
        agent.close()
    if stopped:
        print(f"{stopped}: checkpoint saved at {run.num_env_frames:,} frames in "
              f"{run.checkpoint_path}; run the same command to resume", file=sys.stderr)
        raise SystemExit(130)
    if run_config.final_eval_episodes > 0:
        r = evaluate_teacher(game.name, teachers_dir, spec, run_config.final_eval_episodes,
                             run_config.seed)
        print(f"{game.name}: teacher {_score(r)}")


if __name__ == "__main__":
    cli.define_teacher_training_flags()
    flags.adopt_module_key_flags(cli)  # List them in --help too.
    cli.run(main)
