#!/usr/bin/env bash
# Real-time policy distillation against train-then-distill on Pong (README,
# "Real-time distillation"; Sun & Fazli 2019 claim <= 0.5x the time).
#
#   real-time           a Double DQN teacher trains FRAMES frames from scratch
#                       while students of 3.6 % (net3) and 1.7 % (tiny) of its
#                       parameters distil from its replay, one student step per
#                       teacher step, at step size LR, from START frames on,
#                       on its latest RECENT agent steps (0: all), labelled by
#                       a moving average of its weights over HORIZON gradient
#                       steps (0: the live teacher); all are evaluated every
#                       250,000 frames
#   train-then-distill  the main job for pong alone on the teacher that run
#                       shipped, with students of the same sizes
#
# Every command resumes (the teacher run from its checkpoint, the main job
# from its run directory), so the script can be rerun after an interruption;
# the last step writes comparison.md (and .json, .png) into OUTPUT.
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${FRAMES:-1500000}
LR=${LR:-2.5e-5}
START=${START:-0}
RECENT=${RECENT:-0}
HORIZON=${HORIZON:-0}
OUTPUT=${OUTPUT:-benchmarks/realtime}
for v in FRAMES START RECENT HORIZON; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "realtime_pong.sh: $v must be a whole number, found '${!v}'" >&2; exit 2; }
done
# Each setting trains its own teacher: runs, datasets and checkpoints are
# named by it (the first settings keep their first names).
VARIANT=lr$LR
[ "$START" = 0 ] || VARIANT+=_start$START
[ "$RECENT" = 0 ] || VARIANT+=_recent$RECENT
[ "$HORIZON" = 0 ] || VARIANT+=_horizon$HORIZON
CK=${CK:-$HOME/.cache/multidistill/teacher_runs/pong_realtime_$VARIANT}
TEACHERS=${TEACHERS:-$HOME/.cache/multidistill/realtime_teachers_$VARIANT}
SIZES=(net3 tiny)
TAG=$FRAMES
[ "$VARIANT" = lr2.5e-5 ] || TAG+=_$VARIANT
COMMAND="bash benchmarks/realtime_pong.sh"
for v in OUTPUT HORIZON RECENT START LR FRAMES; do
    case "$v=${!v}" in FRAMES=1500000|LR=2.5e-5|START=0|RECENT=0|HORIZON=0|OUTPUT=benchmarks/realtime) ;;
        *) COMMAND="$v=${!v} $COMMAND" ;; esac
done
# The shipped teacher is played once for all four evaluations (same seeds,
# so every ratio stays paired).
TC="runs/realtime_teacher_episodes_$TAG.json"
python -m multidistill.train_teacher --game=pong --algo=dqn --num_env_frames="$FRAMES" \
    --eval_every_frames=250000 --eval_episodes=8 --final_eval_episodes=30 \
    --distill_into=net3,tiny --distill_learning_rate="$LR" --distill_start_frames="$START" \
    --distill_recent_steps="$RECENT" --distill_label_horizon="$HORIZON" --teachers_dir="$TEACHERS" --checkpoint_dir="$CK"
for size in "${SIZES[@]}"; do
    [ -f "runs/realtime_ttd_${size}_$TAG/report.json" ] || python train.py --games=pong \
        --teachers_dir="$TEACHERS" --datasets_dir="datasets/realtime_$TAG" \
        --student_size="$size" --run_dir="runs/realtime_ttd_${size}_$TAG" --eval_episodes=30 \
        --novideos --teacher_cache="$TC"
    [ -f "runs/realtime_rt_${size}_$TAG/report.json" ] || python -m multidistill.evaluate \
        --student="$CK/realtime/$size/student.keras" --teachers_dir="$TEACHERS" \
        --eval_episodes=30 --output_dir="runs/realtime_rt_${size}_$TAG" --novideos \
        --teacher_cache="$TC"
done
python -m benchmarks.realtime_compare --checkpoint_dir="$CK" --teachers_dir="$TEACHERS" \
    --ttd_runs="net3:runs/realtime_ttd_net3_$TAG,tiny:runs/realtime_ttd_tiny_$TAG" \
    --rt_reports="net3:runs/realtime_rt_net3_$TAG,tiny:runs/realtime_rt_tiny_$TAG" \
    --output_dir="$OUTPUT" --command="$COMMAND"
