#!/usr/bin/env bash
# Trains the three shipped teachers further, all at once, on one GPU machine
# for a fixed wall-clock budget, starting from the teachers in teachers/
# (`--init_from_teacher`: weights, critic, counters; DQN explores at its final
# epsilon). Each trainer writes its teacher into a copy of teachers/ whenever
# a periodic evaluation (8 episodes) beats the best so far (the committed
# card's 30-episode mean to begin with); what improved is copied to $OUT with
# the logs and curves. Re-evaluate a returned teacher over 30 episodes before
# committing it:
#     python -m multidistill.train_teacher --mode=evaluate --game=GAME
#
#     WALL=480 OUT=/tmp/gpu_teachers bash teachers/train_gpu.sh
#
# Environment: WALL (training seconds per trainer, all three in parallel),
# OUT (folder for the results), KERAS_BACKEND (default jax; torch is tried if
# Keras cannot train on jax there), WHEELS (default .whl: a folder of wheels
# the machine lacks, e.g. keras, ale-py, gymnasium, installed first; empty:
# none).
set -u
WALL=${WALL:-480}
OUT=${OUT:-/tmp/gpu_teachers}
WORK=${WORK:-/tmp/gpu_teachers_work}
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK" && cp -r teachers "$WORK/teachers"
WHEELS=${WHEELS-.whl}
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1

smoke() {
  timeout 180 python3 - <<'EOF'
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
  smoke >> "$WORK/smoke.log" 2>&1
}
cat "$WORK/smoke.log"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 \
  > "$WORK/nvidia_smi.csv" 2>&1 &
SMI=$!

train() {  # game, then flags
  local game=$1; shift
  timeout -s TERM -k 60 "$WALL" python3 -m multidistill.train_teacher --game="$game" \
    --init_from_teacher --teachers_dir="$WORK/teachers" --checkpoint_dir="$WORK/run_$game" \
    --num_env_frames=200000000 --final_eval_episodes=0 "$@" > "$WORK/$game.log" 2>&1
  echo "$game exit $? after $SECONDS s" >> "$WORK/status.txt"
}
train pong --algo=dqn --eval_every_frames=300000 --num_threads=4 &
P1=$!
train freeway --algo=dqn --ez_mu=2 --epsilon_end=0.01 --eval_every_frames=250000 \
  --num_threads=4 &
P2=$!
train qbert --algo=ppo --num_envs=16 --eval_every_frames=1000000 --num_threads=6 &
P3=$!
wait $P1 $P2 $P3
kill $SMI 2>/dev/null
cat "$WORK/status.txt"

for game in pong freeway qbert; do
  grep -E "frames: eval|resuming|initialised|Error|error" "$WORK/$game.log" | tail -40
  if ! cmp -s "teachers/$game.keras" "$WORK/teachers/$game.keras"; then
    cp "$WORK/teachers/$game.keras" "$OUT/$game.keras"
  fi
done
(cd "$WORK" && tar czf "$OUT/runs.tar.gz" smoke.log status.txt nvidia_smi.csv pong.log freeway.log qbert.log \
  teachers/*.json run_*/metrics.jsonl run_*/learning_curve.png)
ls -la "$OUT"
