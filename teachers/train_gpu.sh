#!/usr/bin/env bash
# Trains teachers further on one GPU machine for a fixed wall-clock budget,
# the chosen games all at once, each starting from the teacher in $SOURCE
# (`--init_from_teacher`: weights, critic, counters; DQN explores at its
# final epsilon, with an empty replay memory). Each trainer writes its
# teacher into a copy of $SOURCE whenever a periodic evaluation (8 episodes)
# beats the best so far (the card's score to begin with); what improved
# comes back in $OUT as <game>.keras, with the cards, logs and curves in
# $OUT/runs.tar.gz. Re-evaluate a returned teacher over 30 episodes before
# committing it (teachers/candidates/README.md):
#     python -m multidistill.train_teacher --mode=evaluate --game=GAME \
#         --teachers_dir=teachers/candidates
#
#     WALL=470 OUT=/tmp/gpu_teachers bash teachers/train_gpu.sh
#
# Environment:
#   WALL     training seconds (wall-clock) of every trainer, all in parallel
#            (default 470; the device tool allows 600 s per command).
#   GAMES    games to train, space-separated (default "pong freeway qbert");
#            each trainer gets cores / games - 1 emulator threads (the
#            remaining core runs its Python loop).
#   SOURCE   folder of the teachers to start from (default
#            teachers/candidates, else teachers).
#   OUT      folder for the results (default /tmp/gpu_teachers).
#   KERAS_BACKEND  default jax; torch is tried if Keras cannot train on jax.
#   WHEELS   folder of wheels the machine lacks (keras, ale-py, gymnasium,
#            namex, optree, farama-notifications), installed first
#            (default .whl; empty: none). For the GPU machine of 2026-12
#            (Python 3.12, JAX, no Keras, no ALE), fetched beforehand with:
#              python3 -m pip download --no-deps --only-binary=:all: \
#                --python-version 3.12 --implementation cp \
#                --platform manylinux_2_28_x86_64 -d .whl keras==3.15.1 \
#                ale-py==0.12.1 gymnasium==1.4.0 namex==0.1.0 optree==0.20.0 \
#                farama-notifications==0.0.6
set -u
WALL=${WALL:-470}
GAMES=${GAMES:-pong freeway qbert}
SOURCE=${SOURCE:-$( [ -d teachers/candidates ] && echo teachers/candidates || echo teachers )}  # The same files since 2026-12-05.
OUT=${OUT:-/tmp/gpu_teachers}
WORK=${WORK:-/tmp/gpu_teachers_work}
settings() {  # The trainer's flags of each game (those of its card's stages).
  case $1 in
    pong) echo "--algo=dqn --learning_rate=5e-5 --eval_every_frames=300000" ;;
    freeway) echo "--algo=dqn --ez_mu=0 --epsilon_end=0.05 --learning_rate=5e-5 --eval_every_frames=250000" ;;
    qbert) echo "--algo=ppo --num_envs=16 --num_minibatches=8 --lr_horizon_frames=60000000 --eval_every_frames=1000000" ;;
    *) return 1 ;;
  esac
}
[[ "$WALL" =~ ^[1-9][0-9]*$ ]] || { echo "WALL: expected seconds (a whole number), found '$WALL'" >&2; exit 2; }
[ -n "${GAMES// }" ] || { echo "GAMES: empty; expected e.g. 'pong freeway qbert'" >&2; exit 2; }
for game in $GAMES; do
  settings "$game" > /dev/null || {
    echo "GAMES: no settings for '$game' in $0 (it has pong, freeway, qbert)" >&2; exit 2; }
  for f in "$SOURCE/$game.keras" "$SOURCE/$game.json"; do
    [ -f "$f" ] || { echo "SOURCE: no $f" >&2; exit 2; }
  done
done
if [ -n "${WHEELS+set}" ] && [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then
  echo "WHEELS: no folder $WHEELS" >&2; exit 2
fi
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK/teachers" && cp "$SOURCE"/*.keras "$SOURCE"/*.json "$WORK/teachers/" \
  || exit 1
echo "from $SOURCE: $GAMES, $WALL s each"
WHEELS=${WHEELS-.whl}
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1

smoke() {
  timeout 90 python3 - <<'EOF'
import time, numpy as np, keras
t = time.time()
m = keras.Sequential([keras.Input((4, 84, 84)), keras.layers.Flatten(), keras.layers.Dense(6)])
m.compile(optimizer="adam", loss="mse")
m.train_on_batch(np.ones((32, 4, 84, 84), "float32"), np.ones((32, 6), "float32"))
m.predict_on_batch(np.ones((8, 4, 84, 84), "float32"))
print("keras", keras.__version__, "backend", keras.backend.backend(), f"{time.time() - t:.1f} s")
if keras.backend.backend() == "jax":
    import jax
    print("devices", jax.devices())
EOF
}
{ date; nvidia-smi -L; smoke; } > "$WORK/smoke.log" 2>&1 || {
  echo "keras on $KERAS_BACKEND failed; trying torch" >> "$WORK/smoke.log"
  export KERAS_BACKEND=torch
  smoke >> "$WORK/smoke.log" 2>&1 || { cat "$WORK/smoke.log"; echo "Keras cannot train here" >&2; exit 1; }
}
cat "$WORK/smoke.log"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 \
  > "$WORK/nvidia_smi.csv" 2>&1 &
SMI=$!

train() {  # game, then flags
  local game=$1; shift
  # SIGTERM at WALL: the trainer checkpoints at the end of its iteration and
  # exits 130 (kept by --preserve-status); SIGKILL 60 s later if it has not.
  timeout --preserve-status -s TERM -k 60 "$WALL" python3 -m multidistill.train_teacher --game="$game" \
    --init_from_teacher --teachers_dir="$WORK/teachers" --checkpoint_dir="$WORK/run_$game" \
    --num_env_frames=200000000 --final_eval_episodes=0 "$@" > "$WORK/$game.log" 2>&1
  echo "$game exit $? after $((SECONDS - T0)) s of training" >> "$WORK/status.txt"
}
T0=$SECONDS
NGAMES=$(echo $GAMES | wc -w)
CORES=$(nproc)
PIDS=""
for game in $GAMES; do
  # shellcheck disable=SC2086
  train "$game" $(settings "$game") --num_threads=$(( CORES / NGAMES > 1 ? CORES / NGAMES - 1 : 1 )) &
  PIDS="$PIDS $!"
done
# shellcheck disable=SC2086
wait $PIDS
kill $SMI 2>/dev/null
cat "$WORK/status.txt"

LOGS=""
for game in $GAMES; do
  LOGS="$LOGS $game.log"
  grep -E "frames: eval|resuming|initialised|Error|error" "$WORK/$game.log" | tail -40
  if ! cmp -s "$SOURCE/$game.keras" "$WORK/teachers/$game.keras"; then
    cp "$WORK/teachers/$game.keras" "$OUT/$game.keras"
  fi
done
# shellcheck disable=SC2086
(cd "$WORK" && tar czf "$OUT/runs.tar.gz" smoke.log status.txt nvidia_smi.csv $LOGS \
  teachers/*.json run_*/metrics.jsonl run_*/learning_curve.png)
ls -la "$OUT"
