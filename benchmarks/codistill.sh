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
# wall-clock), then the longer equal-steps arms (seeds STEPS_SEEDS, default
# "0 1"; STEPS_SEEDS=0 when the time allows one).
for SEED in 0 1; do
    P="$RUNS/plain_${PRESET}_seed${SEED}"
    H="$RUNS/codistill_samples_${PRESET}_seed${SEED}"
    run "$P" "$P" --seed=$SEED --num_grad_steps=$STEPS
    run "$H" "$H/student_0" --seed=$SEED --num_grad_steps=$HALF --codistill=2
done
for SEED in ${STEPS_SEEDS:-0 1}; do
    S="$RUNS/codistill_steps_${PRESET}_seed${SEED}"
    H="$RUNS/codistill_samples_${PRESET}_seed${SEED}"
    # The equal-steps run's first STEPS/2 steps are the equal-samples run's
    # (the same seed and settings; batches, refreshes and the burn-in are
    # functions of the step, the learning rate is constant, and a run resumes
    # exactly), so it starts from a copy of that run and trains the rest.
    if [ ! -e "$S" ] && [ -f "$H/student_0/report.json" ]; then
        cp -a "$H" "$S.tmp" && rm -f "$S.tmp/student_0/report.json" && mv "$S.tmp" "$S"
        echo "$S: from a copy of $H at $HALF steps per student"
    fi
    run "$S" "$S/student_0" --seed=$SEED --num_grad_steps=$STEPS --codistill=2
done

# The comparison covers the runs that finished (their report.json).
RUN_DIRS=() LABELS=() PAIRS=() PAIR_LABELS=()
add_run() {  # add_run DIR LABEL
    [ -f "$1/report.json" ] || return 0
    RUN_DIRS+=("$1"); LABELS+=("$2")
}
add_pair() {  # add_pair A B LABEL
    [ -f "$1/report.json" ] && [ -f "$2/report.json" ] || return 0
    PAIRS+=("$1" "$2"); PAIR_LABELS+=("$3")
}
for SEED in 0 1; do add_run "$RUNS/plain_${PRESET}_seed${SEED}" "plain seed $SEED"; done
for SEED in 0 1; do
    add_run "$RUNS/codistill_steps_${PRESET}_seed${SEED}/student_0" "codistill equal steps seed $SEED"
done
for SEED in 0 1; do
    add_run "$RUNS/codistill_samples_${PRESET}_seed${SEED}/student_0" "codistill equal samples seed $SEED"
done
add_pair "$RUNS/plain_${PRESET}_seed0" "$RUNS/plain_${PRESET}_seed1" "plain: seed 0 vs seed 1"
for ARM in steps samples; do
    add_pair "$RUNS/codistill_${ARM}_${PRESET}_seed0/student_0" \
        "$RUNS/codistill_${ARM}_${PRESET}_seed1/student_0" "codistill equal $ARM: seed 0 vs seed 1"
done
for ARM in steps samples; do  # The two students of one run (student 1 is not evaluated).
    D="$RUNS/codistill_${ARM}_${PRESET}_seed0"
    [ -f "$D/student_1/student.keras" ] && [ -f "$D/student_0/report.json" ] || continue
    PAIRS+=("$D/student_0" "$D/student_1"); PAIR_LABELS+=("codistill equal $ARM seed 0: student 0 vs student 1")
done
join() { local IFS=,; echo "$*"; }
"$PYTHON" -m multidistill.compare "${RUN_DIRS[@]}" --labels="$(join "${LABELS[@]}")" \
    --output_dir="$OUT"
"$PYTHON" -m multidistill.disagreement --games=$GAMES --datasets_dir="$DATASETS" \
    "${PAIRS[@]}" --labels="$(join "${PAIR_LABELS[@]}")" --output="$OUT/disagreement.md"
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
