"""Builds distillation datasets: a behaviour policy plays, the teacher labels.

    python -m multidistill.build_datasets --games=pong,qbert,freeway \
        --num_agent_steps=50000
    python -m multidistill.build_datasets --games=pong --num_agent_steps=150000 \
        --behaviour=mixture --beta=0.5 --student=runs/RUN/student.keras

By default each game's teacher acts epsilon-greedily by its own rule and
labels what it sees; `--behaviour` lets a student, a mixture of the two or
a random policy act instead, the teacher still labelling every step. Each
run of this command that adds steps is one session of the file
(`datasets.Session`: who acted, beta, epsilon, seed, checksums). Completed
episodes are appended to `<datasets_dir>/<game>.h5` until it holds at least
`--num_agent_steps` steps; a larger number tops the file up.

This module only maps flags; the work is `multidistill.collect`.
"""

from __future__ import annotations

import sys

from multidistill import cli, collect, datasets
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib


def main(argv):
    del argv
    flags_ = cli.FLAGS
    game_names = games_lib.parse_games(flags_.games)
    preprocessing = cli.preprocessing_from_flags()
    config = cli.collect_config_from_flags()
    teachers = {g: teachers_lib.load_teacher(g, flags_.teachers_dir, preprocessing,
                                             allow_unsafe=flags_.allow_unsafe_teacher)
                for g in game_names}
    collect.check_existing(teachers, flags_.datasets_dir, preprocessing,
                           flags_.rebuild_datasets)
    behaviours = cli.behaviours_from_flags(teachers, config)
    for g in game_names:
        s = collect.build_dataset(teachers[g], datasets.dataset_path(flags_.datasets_dir, g),
                                  config, preprocessing, behaviour=behaviours[g],
                                  rebuild=flags_.rebuild_datasets)
        print(f"{s['game']}: {s['path']} holds {s['num_agent_steps']} steps in "
              f"{s['num_episodes']} episodes (+{s['added_agent_steps']} now, "
              f"{s['agent_steps_per_s']:.0f} steps/s)")
        if s.get("interrupted"):
            print(f"{s['interrupted']}: stopped after whole episodes; run the same command "
                  "to resume", file=sys.stderr)
            raise SystemExit(130)


if __name__ == "__main__":
    cli.define_collect_flags()
    cli.run(main)
