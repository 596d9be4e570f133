"""Throughput and memory benchmarks of multidistill's product paths.

    python -m benchmarks.run            # default sizes: under 15 minutes on 2 cores
    python -m benchmarks.run --quick    # tiny sizes: a smoke test, numbers not meaningful

Setting: Pong; the teacher is a Nature-DQN network with random weights
(kind q_values), saved and loaded like any teacher; the student is the
default `dqn` student (the compressed `net1`..`net3` for one extra table).

Every headline figure is a ratio of two measurements taken in the same
repeat of the same process (so that the machine's load cancels out as far
as it can), and a figure is the median over repeats of its per-repeat
ratios. What each figure means is in benchmarks/README.md.

Isolation: every measurement runs in a fresh process (multiprocessing
"spawn") whose TensorFlow intra- and inter-op thread pools and ALE emulator
threads are set to one value of --threads before any op runs. Peak memory
is the fresh process's own ru_maxrss. The orchestrating process imports
neither TensorFlow nor multidistill.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import importlib.metadata
import itertools
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

GAME = "pong"
TEACHER_KIND = "q_values"
# Batches drawn from the pipeline once and replayed for "training from memory".
PREBUILT_BATCHES = 8
# Agent steps per synthetic episode of the memory datasets.
SYNTHETIC_EPISODE_STEPS = 2000


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (each field is the flag of that name)."""

    repeats: int = 3
    num_envs: int = 32  # collect.CollectConfig.num_envs (a test checks)
    eval_num_envs: int = 16  # evaluation.EvalProtocol.num_envs (a test checks)
    probe_steps: int = 4000
    build_steps: int = 20_000
    naive_steps: int = 2000
    train_steps: int = 300
    train_chunk_steps: int = 50
    warmup_steps: int = 10
    eval_episodes_per_env: int = 2
    memory_steps: tuple[int, int] = (1_000_000, 50_000)
    memory_train_steps: int = 100
    max_episode_frames: int = 108_000

    def __post_init__(self):
        too_small = [f.name for f in dataclasses.fields(self)
                     if f.name != "memory_steps" and getattr(self, f.name) < 1]
        if too_small:
            raise ValueError(f"sizes must be >= 1: {', '.join(too_small)}")
        big, small = self.memory_steps
        if not big > small >= 1:
            raise ValueError(f"memory_steps must be two counts, larger first, found "
                             f"{list(self.memory_steps)}")


# One repeat of everything on tiny sizes: checks that the benchmark runs. Both
# memory datasets hold >= 2 synthetic episodes, so both runs have held-out data.
QUICK = Sizes(repeats=1, num_envs=4, eval_num_envs=2, probe_steps=64, build_steps=200,
              naive_steps=32, train_steps=4, train_chunk_steps=2, warmup_steps=2,
              memory_steps=(16_000, 4000), memory_train_steps=3, max_episode_frames=400)

SIZE_HELP = {
    "repeats": "Repeats of every measurement; a figure is the median of its per-repeat "
               "ratios (use >= 3).",
    "num_envs": "Environments the dataset builder steps together, i.e. samples per "
                "teacher inference call (the product's default).",
    "eval_num_envs": "Environments the evaluator steps together, i.e. samples per student "
                     "inference call (the product's default).",
    "probe_steps": "Agent steps (summed over environments) of the environment-alone probe, "
                   "and samples of each inference-alone probe, per repeat.",
    "build_steps": "Agent steps each build repeat records with build_dataset (whole "
                   "episodes, so a little more).",
    "naive_steps": "Agent steps of the naive loop (one gymnasium env, batch-1 teacher "
                   "calls) per repeat.",
    "train_steps": "Gradient steps (or batches, for the loader alone) timed per training "
                   "measurement, after the warm-up.",
    "train_chunk_steps": "Gradient steps per turn when training fed by the pipeline and "
                         "fed from memory are timed in alternation (so that drifts in the "
                         "machine's speed hit both alike).",
    "warmup_steps": "Untimed gradient steps (or batches) before each training measurement "
                    "(graph tracing, filling the pipeline's window).",
    "eval_episodes_per_env": "Evaluation episodes per environment (eval_num_envs "
                             "environments).",
    "memory_steps": "Agent steps per game of the two synthetic datasets whose training runs' "
                    "peak RSS is compared: larger,smaller.",
    "memory_train_steps": "Gradient steps of each memory training run (a fresh process).",
    "max_episode_frames": "Episode cap in emulator frames of the benchmark's preprocessing "
                          "(108000 is the product default).",
}


# -- running in fresh processes ------------------------------------------------


def limit_threads(threads: int) -> None:
    """Process initializer: TF thread pools set to `threads` before any op runs."""
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import multidistill  # noqa: F401  (imports TensorFlow quietly)

    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def in_fresh_process(threads: int, fn: Callable, *args):
    """Runs fn(*args) in a new interpreter limited to `threads` TF threads."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=ctx, initializer=limit_threads, initargs=(threads,)) as pool:
        return pool.submit(fn, *args).result()


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far, bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# -- the product objects under test (built inside the fresh processes) ----------


def benchmark_spec(sizes: Sizes):
    """The preprocessing of every measurement: product defaults, episode cap aside."""
    from multidistill import environments

    return environments.Preprocessing(max_episode_frames=sizes.max_episode_frames)


def make_teacher(directory: Path, spec):
    """A Nature-DQN teacher with random weights, saved and loaded as a product teacher."""
    import keras

    from multidistill import games, networks, teachers

    keras.utils.set_random_seed(0)
    model = networks.build_teacher_network(games.get_game(GAME).num_actions,
                                           spec.observation_shape)
    teachers.save_teacher(model, GAME, TEACHER_KIND, spec, directory)
    return teachers.load_teacher(GAME, directory, spec)


def distill_config(student_size: str, seed: int = 0, **kwargs):
    """The product's default distillation settings for one game (the
    precision train.py picks on this machine unless `precision` is given)."""
    from multidistill import distiller, networks, objectives, pipeline

    kwargs.setdefault("precision", networks.default_precision())
    return distiller.DistillConfig(
        games=(GAME,), objective=objectives.Distillation(
            temperatures=(objectives.default_temperature(TEACHER_KIND),)),
        student_size=student_size, pipeline=pipeline.PipelineConfig(seed=seed), **kwargs)


@contextlib.contextmanager
def open_sampler(path: Path, config):
    """The product's input pipeline over one dataset, as the Distiller opens it."""
    from multidistill import pipeline

    sampler = pipeline.HDF5Source([str(path)], config.pipeline,
                                  fields=config.objective.fields)
    try:
        yield sampler
    finally:
        sampler.close()


@contextlib.contextmanager
def prefetched_batches(sampler, start_batch: int) -> Iterator[Iterator[tuple[dict, dict]]]:
    """(x, y) batches from `sampler.iterate` (its prefetch thread included)."""
    stream = sampler.iterate(start_batch)
    try:
        yield ((x, y) for _, x, y in stream)
    finally:
        stream.close()


# -- measurement primitives ------------------------------------------------------


def rate(units: float, seconds: float) -> float:
    return units / max(seconds, 1e-9)


def env_steps_per_s(spec, num_envs: int, threads: int, steps: int, seed: int) -> float:
    """Agent steps/s of the product's vector env alone, uniformly random actions."""
    import numpy as np

    from multidistill import environments, games

    num_actions = games.get_game(GAME).num_actions
    rng = np.random.default_rng(seed)
    env = environments.make_vector_env(GAME, spec, num_envs, num_threads=threads)
    try:
        env.reset(seed=seed)
        iterations = max(1, math.ceil(steps / num_envs))
        t0 = time.perf_counter()
        for _ in range(iterations):
            env.step(rng.integers(0, num_actions, num_envs, dtype=np.int32))
        return rate(iterations * num_envs, time.perf_counter() - t0)
    finally:
        env.close()


def inference_samples_per_s(infer: Callable, observations, samples: int) -> float:
    """Samples/s of `infer(observations)` alone (one untimed call first)."""
    infer(observations)
    calls = max(1, math.ceil(samples / len(observations)))
    t0 = time.perf_counter()
    for _ in range(calls):
        infer(observations)
    return rate(calls * len(observations), time.perf_counter() - t0)


def build_once(teacher, path: Path, spec, sizes: Sizes, threads: int,
               seed: int, groups: int = 0, overlap: bool | None = None
               ) -> tuple[float, float]:
    """The real `build_dataset` from scratch: (agent steps/s, bytes per 100,000 steps)."""
    from multidistill import collect

    config = collect.CollectConfig(num_agent_steps=sizes.build_steps,
                                   num_envs=sizes.num_envs, num_threads=threads,
                                   seed=seed, num_env_groups=groups,
                                   overlap_env_groups=overlap)
    summary = collect.build_dataset(teacher, path, config, spec, rebuild=True,
                                    progress=False)
    return (summary["agent_steps_per_s"],
            path.stat().st_size / summary["num_agent_steps"] * 1e5)


def naive_steps_per_s(teacher, spec, steps: int, seed: int) -> float:
    """Agent steps/s of one gymnasium env with one batch-1 teacher call per step."""
    import ale_py
    import gymnasium
    import numpy as np
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    from multidistill import collect

    gymnasium.register_envs(ale_py)
    env = gymnasium.make(f"ALE/{GAME.capitalize()}-v5", frameskip=1,
                         repeat_action_probability=spec.sticky_action_prob,
                         max_num_frames_per_episode=spec.max_episode_frames)
    env = AtariPreprocessing(env, noop_max=spec.noop_max, frame_skip=spec.frame_skip,
                             screen_size=spec.frame_height, grayscale_obs=True)
    env = FrameStackObservation(env, stack_size=spec.frame_stack)
    epsilon = collect.CollectConfig.epsilon
    rng = np.random.default_rng(seed)
    try:
        obs, _ = env.reset(seed=seed)
        teacher.label(obs[None])
        t0 = time.perf_counter()
        for _ in range(steps):
            outputs = teacher.label(obs[None])["outputs"]
            obs, _, terminated, truncated, _ = env.step(
                int(teacher.act(outputs, epsilon, rng)[0]))
            if terminated or truncated:
                obs, _ = env.reset()
        return rate(steps, time.perf_counter() - t0)
    finally:
        env.close()


def samples_per_s(batches: Iterator[tuple[dict, dict]], consume: Callable, warmup: int,
                  steps: int) -> float:
    """Samples/s of `consume(x, y)` over `steps` batches, after `warmup` untimed ones."""
    return alternating_samples_per_s({"run": (batches, consume)}, warmup, steps,
                                     chunk=steps)["run"]


def discard(x, y) -> None:
    """A consumer that does nothing (the input pipeline alone)."""


def alternating_samples_per_s(runs: dict[str, tuple[Iterator, Callable]], warmup: int,
                              steps: int, chunk: int) -> dict[str, float]:
    """Samples/s of each run `name: (batches, consume)`, timed in alternation.

    Each run gets `warmup` untimed batches, then turns of `chunk` timed
    batches in round-robin (the order reversed every round) until each has
    had `steps`: a drift in the machine's speed (another process, a
    frequency change) hits every run alike, instead of whichever ran last.
    """
    for batches, consume in runs.values():
        for _ in range(warmup):
            consume(*next(batches))
    samples = dict.fromkeys(runs, 0)
    seconds = dict.fromkeys(runs, 0.0)
    order, done = list(runs), 0
    while done < steps:
        n = min(chunk, steps - done)
        for name in order:
            batches, consume = runs[name]
            t0 = time.perf_counter()
            for _ in range(n):
                x, y = next(batches)
                consume(x, y)
                samples[name] += len(x["game_id"])
            seconds[name] += time.perf_counter() - t0
        order.reverse()
        done += n
    return {name: rate(samples[name], seconds[name]) for name in runs}


def measure_training(raw: dict, students: dict, path: Path, sizes: Sizes, seed: int,
                     dqn_float32=None) -> None:
    """Appends to `raw`: dqn training fed by the pipeline and fed from memory
    (pre-built batches replayed), and the dqn student in float32 fed from
    memory (`dqn_float32`, if given), timed in alternation; the other
    students fed from memory; the pipeline alone."""
    config = distill_config("dqn", seed)
    timed = sizes.warmup_steps + sizes.train_steps
    with open_sampler(path, config) as sampler:
        prebuilt = [sampler.batch(i) for i in range(PREBUILT_BATCHES)]
        with prefetched_batches(sampler, PREBUILT_BATCHES) as batches:
            dqn = students["dqn"].train_on_batch
            runs = {"train_pipeline": (batches, dqn),
                    "train_memory/dqn": (itertools.cycle(prebuilt), dqn)}
            if dqn_float32 is not None:
                runs["train_memory_float32/dqn"] = (itertools.cycle(prebuilt),
                                                    dqn_float32.train_on_batch)
            rates = alternating_samples_per_s(runs, sizes.warmup_steps, sizes.train_steps,
                                              sizes.train_chunk_steps)
        for name, value in rates.items():
            raw[name].append(value)
        # The loader alone continues where training stopped: same steady state.
        with prefetched_batches(sampler, PREBUILT_BATCHES + timed) as batches:
            raw["loader"].append(samples_per_s(batches, discard, sizes.warmup_steps,
                                               sizes.train_steps))
    for size, student in students.items():
        if size != "dqn":
            raw[f"train_memory/{size}"].append(samples_per_s(
                itertools.cycle(prebuilt), student.train_on_batch, sizes.warmup_steps,
                sizes.train_steps))


def eval_steps_per_s(predict: Callable, spec, sizes: Sizes, threads: int) -> float:
    """Agent steps/s of the real `evaluation.evaluate` (episodes' steps / its
    seconds after start-up: resets and first inference, excluded as from the
    probes)."""
    from multidistill import evaluation

    protocol = evaluation.EvalProtocol(
        num_episodes=sizes.eval_num_envs * sizes.eval_episodes_per_env,
        num_envs=sizes.eval_num_envs,
        num_threads=threads)
    scores = evaluation.evaluate(GAME, predict, TEACHER_KIND, spec, protocol, progress=False)
    return scores.agent_steps_per_s


def measure_throughputs(sizes: Sizes, threads: int, work_dir: str,
                        alternatives: bool = True) -> dict:
    """Every throughput at one thread count, each measured once per repeat;
    with `alternatives`, also the float32 student's training and evaluation
    without XLA (`SPEEDUPS`).

    Runs in a fresh process (`in_fresh_process`). Returns {"repeats": {name:
    [one value per repeat]}, "params": {student size: parameter count}}.
    """
    import numpy as np

    from multidistill import distiller, environments, evaluation, games, networks

    work = Path(work_dir) / f"threads{threads}"
    spec = benchmark_spec(sizes)
    teacher = make_teacher(work / "teachers", spec)
    num_actions = games.get_game(GAME).num_actions
    students = {size: distiller.build_student(distill_config(size), [num_actions],
                                              [teacher.feature_dim], spec)[0]
                for size in networks.STUDENT_SIZES}
    dqn_float32 = distiller.build_student(
        distill_config("dqn", precision="float32"), [num_actions], [teacher.feature_dim],
        spec)[0] if alternatives else None
    predicts = {size: evaluation.predict_fn(s.policy_network(GAME))
                for size, s in students.items()}
    # The evaluations to time: the product's, and its path without XLA.
    evals = {"eval": predicts["dqn"]}
    if alternatives:
        evals["eval_plain"] = evaluation.predict_fn(students["dqn"].policy_network(GAME),
                                                    jit_compile=False)
    observations, eval_observations = (np.random.default_rng(0).integers(
        0, 256, (n,) + spec.observation_shape, dtype=np.uint8)
        for n in (sizes.num_envs, sizes.eval_num_envs))
    dataset = work / "datasets" / f"{GAME}.h5"
    raw = collections.defaultdict(list)
    for r in range(sizes.repeats):
        t0 = time.perf_counter()
        raw["env"].append(env_steps_per_s(spec, sizes.num_envs, threads, sizes.probe_steps,
                                          seed=r))
        raw["env_eval"].append(env_steps_per_s(spec, sizes.eval_num_envs, threads,
                                               sizes.probe_steps, seed=r))
        raw["teacher_infer"].append(
            inference_samples_per_s(teacher.label, observations, sizes.probe_steps))
        # The product's default for this machine (environments.env_groups),
        # then plain lockstep (one group) and two overlapped groups.
        build, disk = build_once(teacher, dataset, spec, sizes, threads, seed=r)
        raw["build"].append(build)
        raw["bytes_per_100k_steps"].append(disk)
        for name, groups, overlap in (("build_lockstep1", 1, False),
                                      ("build_overlap2", 2, True)):
            if (groups, overlap) == environments.env_groups():
                raw[name].append(build)  # The default is this way: measured above.
                continue
            raw[name].append(build_once(teacher, dataset, spec, sizes, threads, seed=r,
                                        groups=groups, overlap=overlap)[0])
        raw["naive"].append(naive_steps_per_s(teacher, spec, sizes.naive_steps, seed=r))
        measure_training(raw, students, dataset, sizes, seed=r, dqn_float32=dqn_float32)
        for size, predict in predicts.items():
            raw[f"infer/{size}"].append(
                inference_samples_per_s(predict, eval_observations, sizes.probe_steps))
        if alternatives:
            raw["infer_plain/dqn"].append(inference_samples_per_s(
                evals["eval_plain"], eval_observations, sizes.probe_steps))
        # The order of the evaluations alternates between repeats.
        for name in list(evals)[::1 if r % 2 == 0 else -1]:
            raw[name].append(eval_steps_per_s(evals[name], spec, sizes, threads))
        print(f"  {threads} thread(s): repeat {r + 1}/{sizes.repeats} took "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return {"repeats": dict(raw),
            "params": {size: int(s.count_params()) for size, s in students.items()},
            "precision": students["dqn"].precision}


def synthetic_episode(steps: int, num_actions: int, feature_dim: int,
                      frame_shape: tuple[int, int], seed: int = 0) -> dict:
    """One episode with cheap frames (step i filled with a value from i), random labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = np.empty((steps, *frame_shape), np.uint8)
    frames[:] = (np.arange(steps) % 251 + 1).astype(np.uint8)[:, None, None]
    terminated = np.zeros(steps, bool)
    terminated[-1] = True
    return {
        "frames": frames,
        "teacher_outputs": rng.normal(size=(steps, num_actions)).astype(np.float32),
        "teacher_features": np.zeros((steps, feature_dim), np.float32),
        "teacher_values": np.zeros(steps, np.float32),
        "actions": rng.integers(0, num_actions, size=steps).astype(np.uint8),
        "behaviour_log_probs": np.zeros(steps, np.float32),
        "rewards": np.zeros(steps, np.float32),
        "terminated": terminated,
        "truncated": np.zeros(steps, bool),
    }


def write_synthetic_datasets(paths: dict[int, str], sizes: Sizes) -> dict[int, float]:
    """Writes each {steps: path} dataset (`write_synthetic_dataset`); returns seconds each."""
    seconds = {}
    for steps, path in paths.items():
        t0 = time.perf_counter()
        write_synthetic_dataset(path, steps, sizes)
        seconds[steps] = time.perf_counter() - t0
    return seconds


def write_synthetic_dataset(path: str, steps: int, sizes: Sizes) -> None:
    """Writes `steps` agent steps of synthetic Pong episodes with the product's
    DatasetWriter (same schema, compression and checksums as built datasets)."""
    from multidistill import collect, datasets, games

    game = games.get_game(GAME)
    spec = benchmark_spec(sizes)
    shape = (spec.frame_height, spec.frame_width)
    feature_dim = 512  # The Nature-DQN teacher's features.
    full = synthetic_episode(min(SYNTHETIC_EPISODE_STEPS, steps), game.num_actions,
                             feature_dim, shape)
    with datasets.DatasetWriter(
            path, game=GAME, rom_md5=game.rom_md5, num_actions=game.num_actions,
            feature_dim=feature_dim, preprocessing=spec,
            teacher_sha256="0" * 64, teacher_kind=TEACHER_KIND, teacher_path="synthetic",
            seed=0) as writer:
        writer.start_session(datasets.Session(
            seed=0, behaviour="teacher", beta=1.0, epsilon=collect.CollectConfig.epsilon,
            behaviour_sha256="0" * 64, labeller_sha256="0" * 64))
        while writer.num_agent_steps < steps:
            left = steps - writer.num_agent_steps
            writer.append_episode(full if left >= len(full["frames"]) else
                                  synthetic_episode(left, game.num_actions, feature_dim,
                                                    shape))


def peak_rss_of_training(dataset_path: str, sizes: Sizes, run_dir: str) -> dict:
    """A real Distiller run of the default student on one dataset, in this (fresh)
    process; returns its peak RSS and the RSS before the run started, bytes."""
    from multidistill import distiller, pipeline

    before = max_rss_bytes()
    config = distill_config("dqn", num_grad_steps=sizes.memory_train_steps)
    source = pipeline.HDF5Source([dataset_path], config.pipeline,
                                 fields=config.objective.fields)
    run = distiller.Distiller(run_dir, config, source, benchmark_spec(sizes),
                              [TEACHER_KIND])
    try:
        run.train(progress=False)
    finally:
        run.close()
    return {"peak": max_rss_bytes(), "before": before}


def measure_memory(sizes: Sizes, threads: int, work_dir: str) -> dict:
    """Peak RSS of training on the larger vs the smaller synthetic dataset.

    Each training run is a fresh process; the two sizes alternate over repeats.
    """
    work = Path(work_dir) / "memory"
    work.mkdir(parents=True, exist_ok=True)
    paths = {steps: str(work / f"{GAME}_{steps}.h5") for steps in sizes.memory_steps}
    print(f"writing synthetic datasets of {' and '.join(f'{n:,}' for n in paths)} steps...",
          flush=True)
    write_s = in_fresh_process(threads, write_synthetic_datasets, paths, sizes)
    runs = []
    for r in range(sizes.repeats):
        runs.append({steps: in_fresh_process(threads, peak_rss_of_training, paths[steps],
                                             sizes, str(work / f"run_{steps}_{r}"))
                     for steps in sizes.memory_steps})
        print(f"  memory: repeat {r + 1}/{sizes.repeats} done", flush=True)
    return {"runs": runs, "write_s": write_s, "threads": threads}


# -- figures ------------------------------------------------------------------------


def bound(env_rate: float, infer_rate: float) -> float:
    """Steps/s of env stepping and inference done one after the other, nothing else."""
    return 1.0 / (1.0 / env_rate + 1.0 / infer_rate)


@dataclasses.dataclass(frozen=True)
class Figure:
    """A headline figure: a ratio computed per repeat, its target."""

    name: str
    meaning: str
    at_least: bool
    target: float
    of_repeat: Callable[[dict], float]
    source: str = "throughputs"

    def met(self, value: float) -> bool:
        return value >= self.target if self.at_least else value <= self.target

    @property
    def target_text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.target:g}"


FIGURES = (
    Figure("build efficiency",
           "build_dataset steps/s / 1/(1/env steps/s + 1/teacher inference samples/s)",
           True, 0.90, lambda r: r["build"] / bound(r["env"], r["teacher_infer"])),
    Figure("build vs naive",
           "build_dataset steps/s / naive loop steps/s (one gymnasium env, batch-1 teacher)",
           True, 10.0, lambda r: r["build"] / r["naive"]),
    Figure("train efficiency",
           "training samples/s fed by the HDF5 pipeline / fed from batches in memory",
           True, 0.95, lambda r: r["train_pipeline"] / r["train_memory/dqn"]),
    Figure("loader headroom",
           "pipeline alone samples/s / training samples/s fed by the pipeline",
           True, 3.0, lambda r: r["loader"] / r["train_pipeline"]),
    Figure("memory bound",
           "peak RSS of a training run on the larger / on the smaller dataset",
           False, 1.3, lambda r: r["big"]["peak"] / r["small"]["peak"], source="memory"),
    Figure("eval efficiency",
           "evaluate steps/s / 1/(1/env steps/s + 1/student inference samples/s)",
           True, 0.85, lambda r: r["eval"] / bound(r["env_eval"], r["infer/dqn"])),
)

RAW_QUANTITIES = (
    ("env", "vector env alone, random actions (build's num_envs)", "agent steps/s"),
    ("env_eval", "vector env alone, random actions (evaluation's num_envs)",
     "agent steps/s"),
    ("teacher_infer", "teacher.label alone", "samples/s"),
    ("build", "build_dataset, default env groups (HDF5 writing included)",
     "agent steps/s"),
    ("build_lockstep1", "build_dataset, 1 env group (plain lockstep)", "agent steps/s"),
    ("build_overlap2", "build_dataset, 2 env groups overlapped with inference",
     "agent steps/s"),
    ("naive", "naive loop (1 env, batch-1 teacher)", "agent steps/s"),
    ("train_pipeline", "dqn training fed by the pipeline", "samples/s"),
    ("train_memory/dqn", "dqn training fed from memory", "samples/s"),
    ("train_memory_float32/dqn", "dqn training fed from memory, float32", "samples/s"),
    ("loader", "pipeline alone", "samples/s"),
    ("infer/dqn", "dqn student inference alone (XLA, float32)", "samples/s"),
    ("infer_plain/dqn", "dqn student inference alone, without XLA", "samples/s"),
    ("eval", "evaluate (dqn student)", "agent steps/s"),
    ("eval_plain", "evaluate (dqn student), inference without XLA", "agent steps/s"),
)

# Same-repeat ratios of the product's choices to the alternatives: (label,
# numerator, denominator).
SPEEDUPS = (
    ("dqn training from memory: the default precision / float32",
     "train_memory/dqn", "train_memory_float32/dqn"),
    ("dqn student inference alone: XLA / without", "infer/dqn", "infer_plain/dqn"),
    ("evaluate: XLA inference / without", "eval", "eval_plain"),
)


def _default_groups() -> str:
    from multidistill import environments

    groups, overlap = environments.env_groups()
    return f"{groups} {'overlapped' if overlap else 'lockstep'}"


def per_repeat(raw: dict[str, list[float]]) -> list[dict[str, float]]:
    """{name: [values]} -> [{name: value} for each repeat]."""
    n = min(len(v) for v in raw.values())
    return [{k: v[i] for k, v in raw.items()} for i in range(n)]


def median_of(repeats: list[dict], fn: Callable[[dict], float]) -> float:
    return float(statistics.median(fn(r) for r in repeats))


def memory_repeats(memory: dict) -> list[dict]:
    """The memory runs keyed "big" and "small"."""
    return [{"big": run[max(run)], "small": run[min(run)]} for run in memory["runs"]]


def summarize(results: dict) -> dict:
    """Medians of every figure and quantity, per thread count where it applies."""
    threads = results["threads"]
    repeats = {t: per_repeat(results["throughputs"][t]["repeats"]) for t in threads}
    mem = memory_repeats(results["memory"])
    figures = {}
    for fig in FIGURES:
        if fig.source == "memory":
            figures[fig.name] = {results["memory"]["threads"]: median_of(mem, fig.of_repeat)}
        else:
            figures[fig.name] = {t: median_of(repeats[t], fig.of_repeat) for t in threads}
    raw = {name: {t: median_of(repeats[t], lambda r, n=name: r[n]) for t in threads
                  if name in results["throughputs"][t]["repeats"]}
           for name in results["throughputs"][threads[-1]]["repeats"]}
    head = threads[-1]
    sizes = list(results["throughputs"][head]["params"])
    compressed = {size: {
        "params": results["throughputs"][head]["params"][size],
        "train": raw[f"train_memory/{size}"][head],
        "train_ratio": median_of(repeats[head],
                                 lambda r, s=size: r[f"train_memory/{s}"] / r["train_memory/dqn"]),
        "infer": raw[f"infer/{size}"][head],
        "infer_ratio": median_of(repeats[head],
                                 lambda r, s=size: r[f"infer/{s}"] / r["infer/dqn"]),
    } for size in sizes}
    speedups = {label: median_of(repeats[head], lambda r, a=a, b=b: r[a] / r[b])
                for label, a, b in SPEEDUPS}
    memory = {k: median_of(mem, lambda r, k=k: r[k]["peak"]) for k in ("big", "small")}
    memory["before"] = median_of(mem, lambda r: r["small"]["before"])
    return {"figures": figures, "raw": raw, "compressed": compressed, "memory": memory,
            "head": head, "speedups": speedups,
            "precision": results["throughputs"][head]["precision"]}


# -- report ------------------------------------------------------------------------


def describe_machine() -> dict[str, str]:
    """CPU model, cores, RAM, load, library versions and date."""
    cpu, ram = platform.processor() or "unknown", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    versions = []
    for pkg in ("tensorflow", "keras", "ale-py", "gymnasium", "h5py", "numpy"):
        try:
            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} logical ({usable} usable by this process)",
        "RAM": ram,
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "software": f"Python {platform.python_version()}, " + ", ".join(versions),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def fmt(x: float) -> str:
    """Three significant digits for ratios, thousands separators for big numbers."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _ratio(values: dict, a, b) -> float | None:
    """values[a] / values[b], None where one is missing."""
    return values[a] / values[b] if a in values and b in values else None


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows]


def render_markdown(results: dict, summary: dict, command: str) -> str:
    """The report: headline table, figures and throughputs per thread count,
    compressed students, memory, disk, machine and sizes."""
    threads, head = results["threads"], summary["head"]
    sizes = results["sizes"]
    big, small = sizes["memory_steps"]
    mem_threads = results["memory"]["threads"]
    scale = (f"scaling {threads[-1]}/{threads[0]}" if len(threads) > 1 else None)
    rows = []
    for fig in FIGURES:
        value = summary["figures"][fig.name].get(head if fig.source != "memory" else mem_threads)
        name = fig.name + (f" ({big:,} / {small:,} steps per game)" if fig.source == "memory"
                           else "")
        rows.append([name, fmt(value), fig.target_text, "yes" if fig.met(value) else "no"])
    lines = [
        "# multidistill benchmarks", "",
        f"Command: `{command}`. Total wall time: {results['wall_s']:.0f} s. Pong, Nature-DQN "
        f"teacher with random weights (q_values), default `dqn` student "
        f"({summary['precision']} here, as train.py picks it; evaluated in float32 "
        f"through XLA); batch "
        f"(num_envs) {sizes['num_envs']} in building, {sizes['eval_num_envs']} in "
        f"evaluation; building and evaluation in "
        f"{_default_groups()} env group(s) by default on this machine; each figure "
        f"is the median over "
        f"{sizes['repeats']} repeat(s) of a ratio measured within one repeat.", "",
        f"## Figures ({head} thread(s); memory with {mem_threads})", "",
        *table(["figure", "measured", "target", "met?"], rows), "",
    ]
    lines += [f"* **{f.name}**: {f.meaning}." for f in FIGURES] + [""]
    lines += ["## Figures by thread count", ""]
    lines += table(["figure"] + [f"{t} thread(s)" for t in threads] + ([scale] if scale else []),
                   [[f.name] + [fmt(summary["figures"][f.name][t]) for t in threads]
                    + ([fmt(summary["figures"][f.name][threads[-1]]
                            / summary["figures"][f.name][threads[0]])] if scale else [])
                    for f in FIGURES if f.source != "memory"])
    lines += ["", "## Raw throughputs (medians)", ""]
    raw = summary["raw"]
    lines += table(["quantity", "unit"] + [f"{t} thread(s)" for t in threads]
                   + ([scale] if scale else []),
                   [[text, unit] + [fmt(raw[key].get(t)) for t in threads]
                    + ([fmt(_ratio(raw[key], threads[-1], threads[0]))] if scale else [])
                    for key, text, unit in RAW_QUANTITIES])
    lines += ["", f"## Precision and XLA ({head} thread(s))", "",
              "The product's choices against the alternatives, medians of per-repeat "
              "ratios (measured at the last thread count only).", ""]
    lines += table(["comparison", "ratio"],
                   [[label, fmt(summary["speedups"][label])] for label, _, _ in SPEEDUPS])
    lines += ["", f"## Students ({head} thread(s))", "",
              "Training fed from batches in memory; inference at batch "
              f"{sizes['eval_num_envs']} (what evaluation calls); ratios are medians of per-repeat "
              "ratios to `dqn`.", ""]
    lines += table(["student", "parameters", "train samples/s", "ratio to dqn",
                    "inference samples/s", "ratio to dqn"],
                   [[size, f"{c['params']:,}", fmt(c["train"]), fmt(c["train_ratio"]),
                     fmt(c["infer"]), fmt(c["infer_ratio"])]
                    for size, c in summary["compressed"].items()])
    m, mib = summary["memory"], 2**20
    write = ", ".join(f"{s:,} steps in {t:.0f} s" for s, t in results["memory"]["write_s"].items())
    bytes_100k = raw["bytes_per_100k_steps"][head]
    lines += [
        "", "## Memory and disk", "",
        f"* Peak RSS of a {sizes['memory_train_steps']}-step training run (fresh process, "
        f"real `Distiller`, synthetic datasets): {m['big'] / mib:,.0f} MiB on {big:,} steps, "
        f"{m['small'] / mib:,.0f} MiB on {small:,} steps; {m['before'] / mib:,.0f} MiB before "
        "the run started (TensorFlow and imports).",
        f"* Synthetic datasets written with `DatasetWriter`: {write}.",
        f"* Bytes on disk per 100,000 steps per game (built Pong dataset, random teacher): "
        f"{bytes_100k / 1e6:,.1f} MB.",
        "", "## Machine", "",
    ]
    lines += [f"* {k}: {v}" for k, v in results["machine"].items()]
    lines += [f"* load average at end: {results['load_end']}", "", "## Sizes", ""]
    lines += [f"* {k}: {v}" for k, v in sizes.items()]
    return "\n".join(lines) + "\n"


def run_benchmark(sizes: Sizes, threads: list[int], output: Path, command: str) -> dict:
    """Measures everything, prints the report and writes it to `output`.

    Returns:
      The raw results and their summary (keys "results" and "summary").
    """
    t0 = time.perf_counter()
    results = {"sizes": dataclasses.asdict(sizes), "threads": list(threads),
               "machine": describe_machine(), "throughputs": {}}
    with tempfile.TemporaryDirectory(prefix="multidistill-bench-") as work_dir:
        for t in threads:
            print(f"throughputs with {t} thread(s)...", flush=True)
            results["throughputs"][t] = in_fresh_process(t, measure_throughputs, sizes, t,
                                                         work_dir, t == threads[-1])
        results["memory"] = measure_memory(sizes, threads[-1], work_dir)
    results["wall_s"] = time.perf_counter() - t0
    results["load_end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = summarize(results)
    text = render_markdown(results, summary, command)
    print(text)
    from multidistill import files

    files.atomic_write_text(output, text)
    print(f"written to {output}; total wall time {results['wall_s']:.0f} s")
    return {"results": results, "summary": summary}


# -- command line ----------------------------------------------------------------------


def define_flags(flag_values=None) -> None:
    """Defines the benchmark's flags (on absl's global FLAGS by default)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    default = Sizes()
    for field in dataclasses.fields(Sizes):
        value, quick = getattr(default, field.name), getattr(QUICK, field.name)
        quick_text = ",".join(map(str, quick)) if isinstance(quick, tuple) else quick
        help_text = f"{SIZE_HELP[field.name]} (--quick: {quick_text})"
        if isinstance(value, tuple):
            flags.DEFINE_list(field.name, [str(v) for v in value], help_text, flag_values=fv)
        else:
            flags.DEFINE_integer(field.name, value, help_text, flag_values=fv)
    flags.DEFINE_bool("quick", False, "Tiny sizes and one repeat (well under a minute): a "
                      "smoke test of the benchmark, its numbers mean little. Size flags given "
                      "explicitly still apply.", flag_values=fv)
    flags.DEFINE_list("threads", ["1", "2"],
                      "Thread counts to measure at, each in its own processes (TF intra/inter-op "
                      "threads and ALE emulator threads); headline figures use the last.",
                      flag_values=fv)
    flags.DEFINE_string("output", "benchmarks/results.md", "Markdown report to write.",
                        flag_values=fv)


def sizes_from_flags(flag_values) -> Sizes:
    """QUICK or default sizes, with the size flags given explicitly on top."""
    base = QUICK if flag_values.quick else Sizes()
    given = {}
    for field in dataclasses.fields(Sizes):
        if flag_values[field.name].present:
            value = flag_values[field.name].value
            given[field.name] = (tuple(int(v) for v in value) if isinstance(value, list)
                                 else value)
    return dataclasses.replace(base, **given)


def main(argv) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    try:
        sizes = sizes_from_flags(flags.FLAGS)
        threads = [int(t) for t in flags.FLAGS.threads]
        if not threads or min(threads) < 1:
            raise ValueError(f"--threads must list counts >= 1, found {threads}")
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    command = " ".join(["python -m benchmarks.run"] + sys.argv[1:])
    run_benchmark(sizes, threads, Path(flags.FLAGS.output), command)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
