#!/usr/bin/env bash
# PPO with and without Random Network Distillation's exploration bonus on a
# hard-exploration game (README, "Teachers"; Burda et al. 2018).
#
#   ppo      the project's PPO teacher trainer as it is
#   ppo_rnd  the same with --rnd: a second value head for the non-episodic
#            intrinsic return, gamma_E 0.999, advantages 2 A_E + 1 A_I, and
#            10,240 agent steps (40,960 frames) of random play first, counted
#            in FRAMES, that set the bonus's pixel statistics
#
# Both train FRAMES emulator frames with seed SEED and are evaluated every
# EVAL_EVERY frames (8 episodes under the protocol, then 4 more episodes in
# emulators whose RAM gives the room number: rooms per episode and rooms
# found so far). Episodes are capped at 18,000 frames (4,500 agent steps), the
# paper's cap. The runs go one after the other (two at once on 2 cores slow
# both); each resumes from its checkpoint, so the script can be rerun after an
# interruption (or with a larger FRAMES to extend both). The last step writes
# $OUT/comparison.md, comparison.json and curves.png.
#
#   bash benchmarks/rnd.sh                            # montezuma_revenge, 2M frames
#   GAME=venture FRAMES=4000000 bash benchmarks/rnd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
GAME=${GAME:-montezuma_revenge}
FRAMES=${FRAMES:-2000000}
EVAL_EVERY=${EVAL_EVERY:-250000}
SEED=${SEED:-0}
PY=${PY:-python}
RUNS=${RUNS:-$HOME/.cache/multidistill/teacher_runs}
TEACHERS=${TEACHERS:-$HOME/.cache/multidistill/rnd_teachers}
OUT=${OUT:-benchmarks/rnd}
COMMON=(--game="$GAME" --algo=ppo --num_env_frames="$FRAMES" --eval_every_frames="$EVAL_EVERY"
        --eval_episodes=8 --final_eval_episodes=0 --room_probe_episodes=4
        --max_episode_frames=18000 --seed="$SEED")
PPO_CK="$RUNS/${GAME}_ppo_bench_seed$SEED"
RND_CK="$RUNS/${GAME}_ppo_rnd_bench_seed$SEED"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
"$PY" -m multidistill.train_teacher "${COMMON[@]}" \
    --teachers_dir="$TEACHERS/ppo_seed$SEED" --checkpoint_dir="$PPO_CK"
"$PY" -m multidistill.train_teacher "${COMMON[@]}" --rnd \
    --teachers_dir="$TEACHERS/ppo_rnd_seed$SEED" --checkpoint_dir="$RND_CK"
"$PY" -m benchmarks.rnd_compare --game="$GAME" --runs="ppo:$PPO_CK,ppo_rnd:$RND_CK" \
    --output_dir="$OUT" --from_script
