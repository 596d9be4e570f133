#!/usr/bin/env bash
# The plain student against IE-KD (multidistill/iekd.py): the main job twice,
# on the same datasets, seeds and settings, differing only in --iekd (the
# shared hidden layer split into an inheritance half pulled toward the
# teacher's auto-encoded factors and an exploration half pushed away from
# them, the policy KL term kept). Both runs start in their own directories
# under runs/iekd/ (a rerun resumes them; a finished run is not trained or
# evaluated again); the last step writes benchmarks/iekd/comparison.md and
# comparison.png.
#
#   bash benchmarks/iekd.sh                  # the main job twice: about 45 min on 2 idle cores
#   bash benchmarks/iekd.sh --preset=smoke   # every stage on tiny sizes: a few minutes
#
# Further flags go to both runs, e.g. --seed=1. The plain run is the main job
# as README's "Latest results" runs it, in a directory of its own, so that both
# runs start from the same data prefix and the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
GAMES=pong,qbert,freeway
PRESET=default
SEED=0
for arg in "$@"; do
    case "$arg" in
        --preset=*) PRESET="${arg#--preset=}" ;;
        --seed=*) SEED="${arg#--seed=}" ;;
    esac
done
PYTHON="${PYTHON:-python}"
RUNS="runs/iekd"
PLAIN="$RUNS/plain_${PRESET}_seed${SEED}"
IEKD="$RUNS/iekd_${PRESET}_seed${SEED}"
OUT=benchmarks/iekd
TC=runs/teacher_episodes.json  # The teachers play once (the same seeds in every run).
[ "$PRESET" = default ] || OUT="$RUNS/comparison_${PRESET}"

[ -f "$PLAIN/report.json" ] || "$PYTHON" train.py --games=$GAMES --run_dir="$PLAIN" --teacher_cache="$TC" "$@"
[ -f "$IEKD/report.json" ] || "$PYTHON" train.py --games=$GAMES --run_dir="$IEKD" --iekd --teacher_cache="$TC" "$@"
"$PYTHON" -m multidistill.compare "$PLAIN" "$IEKD" \
    --labels="plain student,IE-KD (inheritance + exploration halves)" --output_dir="$OUT"
