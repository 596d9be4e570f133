"""Builds distillation datasets: a behaviour policy plays, the teacher labels.

    python -m multidistill.build_datasets --games=pong,qbert,freeway \
        --num_agent_steps=50000
    python -m multidistill.build_datasets --games=pong --num_agent_steps=150000 \
        --behaviour=mixture --beta=0.5 --student=runs/RUN/student.keras
    python -m multidistill.build_datasets --games=pong,qbert --num_agent_steps=400000 \
        --num_shards=8 --shard_index=3            # one part, e.g. one array job
    python -m multidistill.build_datasets --games=pong,qbert --num_agent_steps=400000 \
        --num_shards=8 --executor=ray             # every part, as Ray tasks

By default each game's teacher acts epsilon-greedily by its own rule and
labels what it sees; `--behaviour` lets a student, a mixture of the two or
a random policy act instead, the teacher still labelling every step. Each
run of this command that adds steps is one session of the file
(`datasets.Session`: who acted, beta, epsilon, seed, checksums). Completed
episodes are appended to `<datasets_dir>/<game>.h5` until it holds at least
`--num_agent_steps` steps; a larger number tops the file up.

With `--num_shards=N` (N > 1) each game's dataset is instead the folder
`<datasets_dir>/<game>/` of N part files, part i recording its share of
`--num_agent_steps` with seeds derived from `--seed` and i
(`collect.build_shard`); readers open the folder as one dataset once all N
parts are complete. `--shard_index` records one part (any scheduler can run
the N commands), else all parts run on `--executor` (`executors`): here, one
after another, or as Ray tasks. Rerunning the same command resumes parts
cut short and keeps complete ones.

This module only maps flags; the work is `multidistill.collect` and
`multidistill.executors`.
"""

from __future__ import annotations

import sys

from absl import flags

from multidistill import cli, collect, executors
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib


def define_sharding_flags():
    """How each dataset is split into parts, and where the parts are recorded."""
    d = executors.ShardingConfig()
    flags.DEFINE_integer(
        "num_shards", d.num_shards,
        "Part files each game's dataset is split into. 1: the single file "
        "<datasets_dir>/<game>.h5; N > 1: the folder <datasets_dir>/<game>/ of files "
        "part-<i>-of-<N>.h5, part i recording its share (1/N) of --num_agent_steps with "
        "seeds derived from --seed and i.")
    flags.DEFINE_integer(
        "shard_index", d.shard_index,
        "The one part (0 .. num_shards-1) of each game to record, e.g. an array job's "
        "task index; unset: every part.")
    flags.DEFINE_enum(
        "executor", d.executor, list(executors.EXECUTORS),
        "Where the parts are recorded: local (in this process, one after another) or ray "
        "(one Ray task per game and part; needs pip install -e \".[ray]\").")
    flags.DEFINE_string(
        "ray_address", d.ray_address,
        "With --executor=ray: the Ray cluster to run on, as ray.init's address (auto, "
        "ray://HOST:10001, ...); empty: start a local Ray instance on this machine.")


def sharding_config_from_flags() -> executors.ShardingConfig:
    flags_ = cli.FLAGS
    return cli._config_from_flags(lambda: executors.ShardingConfig(
        num_shards=flags_.num_shards, shard_index=flags_.shard_index,
        executor=flags_.executor, ray_address=flags_.ray_address),
        ("num_shards", "shard_index", "executor", "ray_address"))


def main(argv):
    del argv
    flags_ = cli.FLAGS
    game_names = games_lib.parse_games(flags_.games)
    preprocessing = cli.preprocessing_from_flags()
    config = cli.collect_config_from_flags()
    sharding = sharding_config_from_flags()
    if sharding.executor == "ray":
        executors.require_ray()  # Before any slow work.
    tasks = cli._config_from_flags(lambda: executors.shard_tasks(
        game_names, flags_.teachers_dir, flags_.datasets_dir, preprocessing, config, sharding,
        rebuild=flags_.rebuild_datasets, allow_unsafe_teacher=flags_.allow_unsafe_teacher,
        student=flags_.student), ("num_agent_steps",))
    teachers = {g: teachers_lib.load_teacher(g, flags_.teachers_dir, preprocessing,
                                             allow_unsafe=flags_.allow_unsafe_teacher)
                for g in game_names}
    collect.check_existing(teachers, flags_.datasets_dir, preprocessing,
                           flags_.rebuild_datasets, num_shards=sharding.num_shards)
    behaviours = cli.behaviours_from_flags(teachers, config)  # Checks --student too.
    if sharding.executor == "ray":
        summaries = executors.run_ray(tasks, sharding.ray_address)
    else:
        summaries = executors.run_local(tasks, teachers, behaviours)
    try:
        for s in summaries:
            print(f"{s['label']}: {s['path']} holds {s['num_agent_steps']} steps in "
                  f"{s['num_episodes']} episodes (+{s['added_agent_steps']} now, "
                  f"{s['agent_steps_per_s']:.0f} steps/s)")
            if s.get("interrupted"):
                print(f"{s['interrupted']}: stopped after whole episodes; run the same "
                      "command to resume", file=sys.stderr)
                raise SystemExit(130)
    except KeyboardInterrupt:  # Outside recording (which defers it), e.g. a Ray driver.
        print("interrupted (Ray tasks not done are cancelled): run the same command to "
              "resume; complete parts are kept", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        summaries.close()


if __name__ == "__main__":
    cli.define_collect_flags()
    define_sharding_flags()
    cli.run(main)
