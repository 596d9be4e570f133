#!/usr/bin/env bash
# Transfer (Actor-Mimic): a teacher on a game the student never saw starts
# from the main job's student trunk, against the same run from scratch (same
# seeds, same settings; the runs differ only in the initial trunk). README,
# "Transfer from a student's trunk".
#
# Every run resumes from its checkpoint, so the script can be rerun after an
# interruption; the last step writes benchmarks/transfer/transfer.md.
#
# Environment: GAME, ALGO, FRAMES (per run), SEEDS; RUNS (checkpoint
# folders); TRUNK (the student whose trunk starts the trunk runs; default the
# main job's, which is trained first if missing); PARALLEL (runs at once,
# default 1; on a many-core machine, e.g. PARALLEL=4 on 16 cores, each run
# gets an equal share of the emulator threads).
set -euo pipefail
cd "$(dirname "$0")/.."
GAME=${GAME:-boxing}
ALGO=${ALGO:-ppo}
FRAMES=${FRAMES:-2000000}
SEEDS=${SEEDS:-"0 1"}
RUNS=${RUNS:-$HOME/.cache/multidistill/teacher_runs}
PARALLEL=${PARALLEL:-1}
MAIN_JOB_STUDENT=runs/pong-qbert-freeway_kl_dqn_default_seed0/student.keras
TRUNK=${TRUNK:-$MAIN_JOB_STUDENT}  # Relative paths are from the checkout's root.
[[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]] || { echo "PARALLEL: expected a whole number >= 1 (runs at once), found '$PARALLEL'" >&2; exit 2; }
if [ ! -f "$TRUNK" ]; then
    [ "$TRUNK" = "$MAIN_JOB_STUDENT" ] || { echo "TRUNK: no file $TRUNK (from $(pwd))" >&2; exit 2; }
    python train.py --games=pong,qbert,freeway
fi
THREADS=0  # One run at a time: every core.
[ "$PARALLEL" -gt 1 ] && THREADS=$(( $(nproc) / PARALLEL > 1 ? $(nproc) / PARALLEL : 1 ))
scratch=() trunk=() running=0
# A failed run (or Ctrl-C) stops the others too: a rerun resumes them all,
# and two trainers must never share a checkpoint folder.
trap 'jobs -p | xargs -r kill 2>/dev/null' EXIT
for seed in $SEEDS; do
    for start in scratch trunk; do
        ck="$RUNS/${GAME}_${start}_s$seed"
        args=(--game="$GAME" --algo="$ALGO" --num_env_frames="$FRAMES"
              --eval_every_frames=250000 --eval_episodes=8 --final_eval_episodes=0
              --seed="$seed" --checkpoint_dir="$ck" --teachers_dir="$ck/teacher"
              --num_threads="$THREADS")
        [ "$start" = trunk ] && args+=(--init_trunk_from="$TRUNK")
        if [ "$start" = scratch ]; then scratch+=("$ck"); else trunk+=("$ck"); fi
        if [ "$PARALLEL" -le 1 ]; then
            python -m multidistill.train_teacher "${args[@]}"
            continue
        fi
        if [ "$running" -ge "$PARALLEL" ]; then
            wait -n  # A run ended: a failed one stops the script (set -e).
            running=$((running - 1))
        fi
        mkdir -p "$ck"
        echo "started $ck (log: $ck/train.log)"
        python -m multidistill.train_teacher "${args[@]}" >> "$ck/train.log" 2>&1 &
        running=$((running + 1))
    done
done
while [ "$running" -gt 0 ]; do wait -n; running=$((running - 1)); done
python -m benchmarks.transfer_compare --game="$GAME" --output_dir=benchmarks/transfer \
    --scratch="$(IFS=,; echo "${scratch[*]}")" --trunk="$(IFS=,; echo "${trunk[*]}")" \
    --from_script
