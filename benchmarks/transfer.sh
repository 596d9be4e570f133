#!/usr/bin/env bash
# Transfer (Actor-Mimic): a teacher on a game the student never saw starts
# from the main job's student trunk, against the same run from scratch (same
# seeds, same settings; the runs differ only in the initial trunk). README,
# "Transfer from a student's trunk".
#
# Every run resumes from its checkpoint, so the script can be rerun after an
# interruption; the last step writes benchmarks/transfer/transfer.md.
set -euo pipefail
cd "$(dirname "$0")/.."
GAME=${GAME:-boxing}
ALGO=${ALGO:-ppo}
FRAMES=${FRAMES:-2000000}
SEEDS=${SEEDS:-"0 1"}
RUNS=${RUNS:-$HOME/.cache/multidistill/teacher_runs}
BASE=runs/pong-qbert-freeway_kl_dqn_default_seed0
[ -f "$BASE/student.keras" ] || python train.py --games=pong,qbert,freeway
scratch=() trunk=()
for seed in $SEEDS; do
    for start in scratch trunk; do
        ck="$RUNS/${GAME}_${start}_s$seed"
        extra=()
        [ "$start" = trunk ] && extra=(--init_trunk_from="$BASE/student.keras")
        python -m multidistill.train_teacher --game="$GAME" --algo="$ALGO" \
            --num_env_frames="$FRAMES" --eval_every_frames=250000 --eval_episodes=8 \
            --final_eval_episodes=0 --seed="$seed" --checkpoint_dir="$ck" \
            --teachers_dir="$ck/teacher" "${extra[@]}"
        if [ "$start" = scratch ]; then scratch+=("$ck"); else trunk+=("$ck"); fi
    done
done
python -m benchmarks.transfer_compare --game="$GAME" --output_dir=benchmarks/transfer \
    --scratch="$(IFS=,; echo "${scratch[*]}")" --trunk="$(IFS=,; echo "${trunk[*]}")" \
    --from_script
