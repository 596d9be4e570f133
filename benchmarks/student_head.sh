#!/usr/bin/env bash
# Per-game heads against Actor-Mimic's masked 18-way head shared by all games
# (README, "The masked 18-way head"): the main job twice, on the same datasets
# and settings, differing only in --student_head. Each run resumes its run
# directory; the last step writes benchmarks/student_head/comparison.md.
set -euo pipefail
cd "$(dirname "$0")/.."
GAMES=pong,qbert,freeway
BASE=runs/pong-qbert-freeway_kl_dqn_default_seed0
SHARED=runs/pong-qbert-freeway_kl_dqn_shared18_default_seed0
[ -f "$BASE/report.json" ] || python train.py --games=$GAMES --teacher_cache=runs/teacher_episodes.json
[ -f "$SHARED/report.json" ] || python train.py --games=$GAMES --student_head=shared18 --teacher_cache=runs/teacher_episodes.json
python -m multidistill.compare "$BASE" "$SHARED" \
    --labels="a head per game,one masked 18-way head" --output_dir=benchmarks/student_head
