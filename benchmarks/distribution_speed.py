"""Data-parallel training speed: the main job's student on one device against
every logical CPU device, in one process.

    python -m benchmarks.distribution_speed                        # TensorFlow
    KERAS_BACKEND=jax python -m benchmarks.distribution_speed      # JAX
    python -m benchmarks.distribution_speed --num_grad_steps=4 --warmup_steps=1   # smoke

The host CPU is split into --devices logical devices
(`distribution.use_cpu_devices`) before the backend starts. The main job's
student (size dqn, a head per game, Pong, Q*bert and Freeway, in the
precision train.py picks here) is built twice with the same seed, on the
engine "none" (one device) and on "data_parallel" (every device), through
`distiller.build_student`, and trained through the engines'
`train_on_batch` on the same pre-built global batches of
--batch_size_per_game x 3 samples (random frames and labels: the speed does
not depend on them). The two are timed in alternation, --chunk_steps
gradient steps a turn, so that a drift in the machine's load hits both
alike (`benchmarks.run.alternating_samples_per_s`).

Prints samples/s of each and the ratio data_parallel / none: on a CPU the
devices share the same cores, so the ratio measures the engine's overhead
more than any speed-up; on a machine with several accelerators it is the
scaling.
"""

from __future__ import annotations

import itertools
import time

from absl import app, flags, logging

flags.DEFINE_integer("devices", 2, "Logical CPU devices the host CPU is split into.")
flags.DEFINE_integer("num_grad_steps", 200, "Timed gradient steps per engine.")
flags.DEFINE_integer("warmup_steps", 5, "Untimed gradient steps per engine first (compilation).")
flags.DEFINE_integer("chunk_steps", 20, "Gradient steps of each engine's turn in the alternation.")
flags.DEFINE_integer("batch_size_per_game", 32,
                     "Samples per game in each global batch (the main job's default).")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_bfloat16"],
                  "Student arithmetic; auto: what train.py picks on this machine.")
FLAGS = flags.FLAGS

GAMES = ("pong", "qbert", "freeway")
PREBUILT_BATCHES = 8


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-trace notes of its reductions.
    from multidistill import distribution

    distribution.use_cpu_devices(FLAGS.devices)  # Before the backend's first operation.

    import keras
    import numpy as np

    from benchmarks.run import alternating_samples_per_s
    from multidistill import distiller, environments, games, networks, objectives, pipeline

    spec = environments.Preprocessing()
    num_actions = [games.get_game(g).num_actions for g in GAMES]
    precision = networks.default_precision() if FLAGS.precision == "auto" else FLAGS.precision

    def config(engine: str) -> distiller.DistillConfig:
        return distiller.DistillConfig(
            games=GAMES, distribution=engine, precision=precision,
            objective=objectives.Distillation(temperatures=(0.01,) * len(GAMES)),
            pipeline=pipeline.PipelineConfig(batch_size_per_game=FLAGS.batch_size_per_game))

    engines = {name: distribution.get_engine(name) for name in ("none", "data_parallel")}
    global_batch = FLAGS.batch_size_per_game * len(GAMES)
    engines["data_parallel"].check_batch_size(global_batch)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(PREBUILT_BATCHES):
        x = {"frames": rng.integers(0, 256, (global_batch, *spec.observation_shape), np.uint8),
             "game_id": np.repeat(np.arange(len(GAMES), dtype=np.int32),
                                  FLAGS.batch_size_per_game)}
        y = {"teacher_outputs": rng.normal(size=(global_batch, max(num_actions))).astype(
            np.float32)}
        batches.append((x, y))

    runs = {}
    for name, engine in engines.items():
        student, _ = distiller.build_student(config(name), num_actions, [0] * len(GAMES), spec)

        def consume(x, y, engine=engine, student=student):
            engine.train_on_batch(student, x, y)

        runs[name] = (itertools.cycle(batches), consume)
    t0 = time.perf_counter()
    rates = alternating_samples_per_s(runs, FLAGS.warmup_steps, FLAGS.num_grad_steps,
                                      FLAGS.chunk_steps)
    seconds = time.perf_counter() - t0
    print(f"backend {keras.backend.backend()}, student dqn ({precision}), global batch "
          f"{global_batch} ({FLAGS.batch_size_per_game} x {len(GAMES)} games), "
          f"{FLAGS.num_grad_steps} timed gradient steps per engine ({seconds:.0f} s)")
    print("| engine | devices | samples/s |")
    print("|---|---|---|")
    for name, engine in engines.items():
        print(f"| {name} | {engine.num_replicas} | {rates[name]:,.0f} |")
    print(f"ratio data_parallel / none: {rates['data_parallel'] / rates['none']:.3f}")


if __name__ == "__main__":
    app.run(main)
