#!/usr/bin/env bash
# Codistillation (Anil et al. 2018; multidistill/codistill.py) against one
# student on all the data: the main job on the same datasets and settings,
# seeds 0 and 1 each, in three settings:
#
#   plain            one student on all the training episodes, STEPS gradient
#                    steps (the main job as README's "Latest results" runs it)
#   codistill_steps  --codistill=2, each student STEPS steps on its half of
#                    the episodes: equal wall-clock in the paper's setting
#                    (each student on its own machine, steps in parallel);
#                    here the two alternate on one machine, so it takes about
#                    twice the plain run's training time (the reports say how
#                    long)
#   codistill_samples  --codistill=2, each student STEPS/2 steps: equal
#                    samples (the two students together see as many batches
#                    as the plain student), and so about equal wall-clock on
#                    this one machine too (plus the peers' forward passes)
#
# The evaluated student of a codistillation run is student 0
# (<run>/student_0). Then multidistill.compare writes per game % of teacher
# with intervals, and multidistill.disagreement the top-1 disagreement and
# TV distance between the seed 0 and seed 1 students of each setting on the
# held-out states (the paper's reproducibility claim), and between the two
# students of one codistillation run, into benchmarks/codistill/comparison.md.
# Every run lives in its own directory under runs/codistill/ (a rerun resumes
# it; a finished run is not trained or evaluated again). The teachers play
# once: every run evaluates on the same seeds, so the later runs read their
# episodes from runs/codistill/teacher_episodes_<preset>.json (--teacher_cache).
#
#   bash benchmarks/codistill.sh                  # about 2.5 hours on 2 idle cores
#   bash benchmarks/codistill.sh --preset=smoke   # every stage on tiny sizes: a few minutes
#                                                 # (datasets of 10k steps a game in datasets/smoke_codistill)
#
# Further flags go to every run (not --seed: the script runs seeds 0 and 1).
set -euo pipefail
cd "$(dirname "$0")/.."
GAMES=pong,qbert,freeway
PRESET=default
STEPS=25000
DATASETS=datasets
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --preset=*) PRESET="${arg#--preset=}"; ARGS+=("$arg") ;;
        --num_grad_steps=*) STEPS="${arg#--num_grad_steps=}" ;;
        --datasets_dir=*) DATASETS="${arg#--datasets_dir=}"; ARGS+=("$arg") ;;
        --seed=*) echo "codistill.sh runs seeds 0 and 1 itself; drop $arg" >&2; exit 2 ;;
        *) ARGS+=("$arg") ;;
    esac
done
if [ "$PRESET" = smoke ]; then
    [[ " $* " == *" --num_grad_steps="* ]] || STEPS=60
    # The smoke preset's datasets hold one training episode per game: too few
    # to split into two disjoint shares. Its own, of about 5 episodes a game.
    if [[ " $* " != *" --datasets_dir="* ]]; then
        DATASETS=datasets/smoke_codistill
        ARGS+=("--datasets_dir=$DATASETS" --num_agent_steps=10000 --num_envs=4)
    fi
fi
HALF=$((STEPS / 2))
PYTHON="${PYTHON:-python}"
RUNS="runs/codistill"
OUT=benchmarks/codistill
[ "$PRESET" = default ] || OUT="$RUNS/comparison_${PRESET}"

run() {  # run DIR REPORT_DIR FLAGS...: the main job unless REPORT_DIR has its report.
    local dir="$1" report="$2"
    shift 2
    [ -f "$report/report.json" ] || "$PYTHON" train.py --games=$GAMES --run_dir="$dir" \
        --teacher_cache="$RUNS/teacher_episodes_${PRESET}.json" "${ARGS[@]}" "$@"
}

# The equal-samples arms first (on this one machine they are also about equal
# wall-clock), then the longer equal-steps arms.
for SEED in 0 1; do
    P="$RUNS/plain_${PRESET}_seed${SEED}"
    H="$RUNS/codistill_samples_${PRESET}_seed${SEED}"
    run "$P" "$P" --seed=$SEED --num_grad_steps=$STEPS
    run "$H" "$H/student_0" --seed=$SEED --num_grad_steps=$HALF --codistill=2
done
for SEED in 0 1; do
    S="$RUNS/codistill_steps_${PRESET}_seed${SEED}"
    run "$S" "$S/student_0" --seed=$SEED --num_grad_steps=$STEPS --codistill=2
done

P0="$RUNS/plain_${PRESET}_seed0" P1="$RUNS/plain_${PRESET}_seed1"
S0="$RUNS/codistill_steps_${PRESET}_seed0/student_0"
S1="$RUNS/codistill_steps_${PRESET}_seed1/student_0"
H0="$RUNS/codistill_samples_${PRESET}_seed0/student_0"
H1="$RUNS/codistill_samples_${PRESET}_seed1/student_0"
"$PYTHON" -m multidistill.compare "$P0" "$P1" "$S0" "$S1" "$H0" "$H1" \
    --labels="plain seed 0,plain seed 1,codistill equal steps seed 0,codistill equal steps seed 1,codistill equal samples seed 0,codistill equal samples seed 1" \
    --output_dir="$OUT"
"$PYTHON" -m multidistill.disagreement --games=$GAMES --datasets_dir="$DATASETS" \
    "$P0" "$P1" "$S0" "$S1" "$H0" "$H1" \
    "$S0" "$RUNS/codistill_steps_${PRESET}_seed0/student_1" \
    --labels="plain: seed 0 vs seed 1,codistill equal steps: seed 0 vs seed 1,codistill equal samples: seed 0 vs seed 1,codistill equal steps seed 0: student 0 vs student 1" \
    --output="$OUT/disagreement.md"
{
    echo
    echo "## Prediction disagreement on the held-out states"
    echo
    echo "Top-1 disagreement and mean total-variation distance between the students'"
    echo "policies (multidistill.disagreement; a codistillation run's student 0)."
    echo
    cat "$OUT/disagreement.md"
} >> "$OUT/comparison.md"
echo "comparison: $OUT/comparison.md"
