"""The main job: teachers -> datasets -> one multi-task student -> report.

    python train.py --games=pong,qbert,freeway
    python train.py --games=pong,qbert,freeway --preset=smoke   # ~3 minutes

1. loads each game's teacher from --teachers_dir (checks game, action count,
   input shape, preprocessing);
2. builds each game's dataset in --datasets_dir, or tops it up to
   --num_agent_steps (an existing file must come from the same teacher and
   preprocessing);
3. trains one student with a head per game by temperature-sharpened KL
   (or --loss), resuming --run_dir if it holds a checkpoint of this run;
4. evaluates student and teachers under one protocol and writes
   report.json and report.md into the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from multidistill import build_datasets, cli, datasets, distiller, evaluation, networks, pipeline
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

FLAGS = flags.FLAGS

# Values of the presets; a flag given on the command line wins.
PRESETS = {
    "default": {},
    "smoke": {
        "num_agent_steps": 1500,
        "num_envs": 2,
        "num_grad_steps": 60,
        "batch_size_per_game": 8,
        "checkpoint_every_steps": 30,
        "eval_every_steps": 30,
        "eval_episodes": 1,
        "eval_num_envs": 1,
        "student_size": "net3",
        "datasets_dir": "datasets/smoke",
    },
}

build_datasets.define_flags()  # games, teachers_dir, datasets_dir, num_agent_steps, ...
# Show the flags defined in those modules in `python train.py --help` too.
flags.adopt_module_key_flags(build_datasets)
flags.adopt_module_key_flags(cli)
flags.DEFINE_enum("preset", "default", list(PRESETS),
                  "default: the full run (about 18 minutes on 2 CPU cores); smoke: every "
                  "stage on tiny sizes, a few minutes.")
flags.DEFINE_string("run_dir", None,
                    "Run directory (default "
                    "runs/<games>_<loss>_<student_size>_<preset>_seed<seed>); an existing "
                    "one is resumed.")
flags.DEFINE_enum("loss", "kl", ["kl", "nll", "mse"],
                  "Policy loss: kl (temperature-sharpened KL, Rusu et al.), nll (teacher's "
                  "argmax action) or mse (regress teacher outputs).")
flags.DEFINE_string("temperatures", "",
                    "Per-game KL temperature tau (dividing the teacher only), e.g. "
                    "pong:0.01,qbert:1; unlisted games get 0.01 for Q-value teachers and 1 "
                    "for logit teachers.")
flags.DEFINE_float("feature_beta", 0.0,
                   "Weight of Actor-Mimic feature regression (0.01 in the paper; 0 = off).")
flags.DEFINE_enum("student_size", "dqn", list(networks.STUDENT_SIZES),
                  "Student trunk: dqn (32/64/64 conv, 512 hidden) or Rusu's compressed "
                  "net1/net2/net3.")
flags.DEFINE_enum("precision", "auto", ["auto", *networks.PRECISIONS],
                  "Student arithmetic: float32, or mixed_bfloat16 (trunk computed in "
                  "bfloat16 on float32 weights; about 1.4x faster training on CPUs with "
                  "AVX512-BF16 or AMX); auto picks mixed_bfloat16 on such CPUs with "
                  "TensorFlow, float32 elsewhere.")
flags.DEFINE_integer("num_grad_steps", 25_000, "Gradient steps of the whole run.")
flags.DEFINE_integer("batch_size_per_game", 32,
                     "Samples per game in each minibatch (batch = this x number of games).")
flags.DEFINE_string("game_weights", "",
                    "Share of each game in a batch, e.g. pong:1,qbert:2 (default: equal).")
flags.DEFINE_float("learning_rate", 2.5e-4, "Adam step size.")
flags.DEFINE_integer("checkpoint_every_steps", 1000, "Gradient steps between checkpoints.")
flags.DEFINE_integer("eval_every_steps", 500,
                     "Gradient steps between held-out metrics (TensorBoard).")
flags.DEFINE_integer("eval_episodes", 8, "Evaluation episodes per game and policy.")
flags.DEFINE_float("eval_epsilon", 0.05, "Random-action probability during evaluation.")
flags.DEFINE_integer("eval_num_envs", 8, "Environments stepped together in evaluation.")
flags.DEFINE_bool("evaluate_teachers", True,
                  "Play the teachers under the student's protocol (else use their cards' "
                  "scores).")


def _apply_preset():
    for name, value in PRESETS[FLAGS.preset].items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def _parse_per_game(text: str, games: list[str], flag: str) -> dict[str, float]:
    out = {}
    for item in [t for t in text.split(",") if t.strip()]:
        name, sep, value = item.partition(":")
        cli.require(bool(sep), f"{flag}: expected game:value pairs, e.g. pong:0.01, found "
                               f"{item!r}")
        try:
            game = games_lib.get_game(name).name
        except ValueError as e:
            raise cli.UsageError(f"{flag}: {e}") from None
        cli.require(game in games, f"{flag}: {game!r} is not in --games ({','.join(games)})")
        try:
            out[game] = float(value)
        except ValueError:
            raise cli.UsageError(f"{flag}: {value!r} for {game} is not a number") from None
    return out


def main(argv):
    del argv
    _apply_preset()
    game_names = games_lib.parse_games(FLAGS.games)
    spec = cli.preprocessing_from_flags()
    cli.require(FLAGS.batch_size_per_game >= 1,
                f"--batch_size_per_game must be >= 1, found {FLAGS.batch_size_per_game}")
    cli.require(FLAGS.num_grad_steps >= 0,
                f"--num_grad_steps must be >= 0, found {FLAGS.num_grad_steps}")
    for name in ("eval_episodes", "eval_num_envs", "num_envs", "num_agent_steps"):
        cli.require(FLAGS[name].value >= 1, f"--{name} must be >= 1, found {FLAGS[name].value}")
    cli.require(0.0 <= FLAGS.epsilon <= 1.0, f"--epsilon must be in [0, 1], found {FLAGS.epsilon}")
    cli.require(0.0 <= FLAGS.eval_epsilon <= 1.0,
                f"--eval_epsilon must be in [0, 1], found {FLAGS.eval_epsilon}")

    # 1. Teachers (all checked before any long work starts).
    teachers = {g: teachers_lib.load_teacher(g, FLAGS.teachers_dir, spec,
                                             allow_unsafe=FLAGS.allow_unsafe_teacher)
                for g in game_names}
    temps = _parse_per_game(FLAGS.temperatures, game_names, "--temperatures")
    for g, t in temps.items():
        cli.require(t > 0, f"--temperatures: tau must be > 0, found {t} for {g}")
    weights = _parse_per_game(FLAGS.game_weights, game_names, "--game_weights")
    try:
        build_config = build_datasets.BuildConfig(
            num_agent_steps=FLAGS.num_agent_steps, epsilon=FLAGS.epsilon,
            num_envs=FLAGS.num_envs, num_threads=FLAGS.num_threads, seed=FLAGS.seed)
        config = distiller.DistillConfig(
            games=tuple(game_names), loss=FLAGS.loss,
            temperatures=tuple(temps.get(g, distiller.default_temperature(teachers[g].kind))
                               for g in game_names),
            feature_beta=FLAGS.feature_beta, student_size=FLAGS.student_size,
            learning_rate=FLAGS.learning_rate, num_grad_steps=FLAGS.num_grad_steps,
            checkpoint_every_steps=FLAGS.checkpoint_every_steps,
            eval_every_steps=FLAGS.eval_every_steps,
            precision=(networks.default_precision() if FLAGS.precision == "auto"
                       else FLAGS.precision),
            pipeline=pipeline.PipelineConfig(
                batch_size_per_game=FLAGS.batch_size_per_game, seed=FLAGS.seed,
                game_weights=(tuple(weights.get(g, 1.0) for g in game_names)
                               if weights else None)))
        protocol = evaluation.EvalProtocol(num_episodes=FLAGS.eval_episodes,
                                           epsilon=FLAGS.eval_epsilon,
                                           num_envs=FLAGS.eval_num_envs,
                                           num_threads=FLAGS.num_threads)
    except ValueError as e:
        raise cli.UsageError(f"flags: {e}") from None

    # 2. Datasets.
    print(f"[1/3] datasets in {FLAGS.datasets_dir}: {FLAGS.num_agent_steps:,} agent steps "
          "per game")
    summaries = {}
    for g in game_names:  # Refuse unfit files before any long work starts.
        path = build_datasets.dataset_path(FLAGS.datasets_dir, g)
        if path.exists() and not FLAGS.rebuild_datasets:
            with datasets.Dataset(path) as ds:
                ds.check_compatible(g, spec, teachers[g].sha256, FLAGS.epsilon)
    for g in game_names:
        path = build_datasets.dataset_path(FLAGS.datasets_dir, g)
        summaries[g] = build_datasets.build_dataset(
            teachers[g], path, build_config, spec, rebuild=FLAGS.rebuild_datasets)
        s = summaries[g]
        if s.get("interrupted"):
            print(f"{s['interrupted']}: stopped building {g} after whole episodes "
                  f"({s['num_agent_steps']:,} steps kept in {path}); run the same command "
                  "to resume", file=sys.stderr)
            raise SystemExit(130)
        print(f"  {g}: {s['num_agent_steps']:,} steps, {s['num_episodes']} episodes "
              f"(+{s['added_agent_steps']:,})")

    # 3. Distillation.
    run_dir = Path(FLAGS.run_dir or Path("runs") / (
        f"{'-'.join(game_names)}_{FLAGS.loss}_{FLAGS.student_size}_{FLAGS.preset}"
        f"_seed{FLAGS.seed}"))
    print(f"[2/3] distilling into {run_dir} ({config.num_grad_steps:,} gradient steps of "
          f"{config.pipeline.batch_size_per_game * len(game_names)} samples, "
          f"{config.precision})")
    paths = [str(build_datasets.dataset_path(FLAGS.datasets_dir, g)) for g in game_names]
    d = distiller.Distiller(run_dir, config, paths, spec,
                            teacher_kinds=[teachers[g].kind for g in game_names])
    try:
        train_summary = d.train()
    except KeyboardInterrupt:
        print(f"interrupted at gradient step {d.grad_step}: checkpoint saved in {run_dir}; "
              "run the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        d.close()

    # 4. Evaluation.
    print(f"[3/3] evaluating: {protocol.num_episodes} episodes per game and policy")
    student = distiller.load_student(d.student_path)
    report = evaluation.evaluate_run(
        student, game_names, FLAGS.teachers_dir, spec, protocol,
        evaluate_teachers=FLAGS.evaluate_teachers, out_dir=run_dir,
        allow_unsafe_teacher=FLAGS.allow_unsafe_teacher,
        extra={"run_dir": str(run_dir), "preset": FLAGS.preset,
               "training": train_summary, "datasets": summaries,
               "config": config.to_dict()})
    print()
    print(evaluation.report_markdown(report))
    print(f"report: {run_dir / 'report.md'}, {run_dir / 'report.json'}; "
          f"student: {d.student_path}")


if __name__ == "__main__":
    cli.run(main)
