#!/usr/bin/env bash
# The Atari comparison of student-driven distillation (README, "Student-driven
# distillation"): pong, qbert, freeway at equal teacher-labelled samples
# (100,000 agent steps per game) and equal gradient steps (25,000).
#
#   teacher-driven   the main job: 100,000 teacher-driven steps, 25,000 steps
#   student          50,000 teacher-driven steps and 12,500 gradient steps
#                    (round 0), then 2 rounds of 25,000 steps collected by the
#                    student (epsilon 0.1) and 6,250 gradient steps each
#   mixture          the same rounds, DAgger's mixture (beta 0.5, then 0.25)
#   RULE             the student rounds, trained by an update rule of
#                    Czarnecki et al. (first argument; default
#                    expected_entropy_regularised)
#
# Each command resumes its run directory, so the script can be rerun after an
# interruption; the last step writes benchmarks/student_driven/comparison.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RULE=${1:-expected_entropy_regularised}
GAMES=pong,qbert,freeway
BASE=runs/pong-qbert-freeway_kl_dqn_default_seed0
# 12 environments: only whole episodes are kept and each environment plays at
# least one, so 32 (the default) would record ~73,000 steps of 2,300-step Pong
# episodes for a 50,000-step target.
HALF=(--games=$GAMES --num_agent_steps=50000 --datasets_dir=datasets/half --num_envs=12
      --num_grad_steps=12500 --rounds=2 --agent_steps_per_round=25000
      --grad_steps_per_round=6250 --teacher_cache=runs/teacher_episodes.json)
[ -f "$BASE/report.json" ] || python train.py --games=$GAMES --teacher_cache=runs/teacher_episodes.json
[ -f runs/sd_student/report.json ] || python train.py "${HALF[@]}" --control=student --run_dir=runs/sd_student
[ -f runs/sd_mixture/report.json ] || python train.py "${HALF[@]}" --control=mixture --beta=0.5 --run_dir=runs/sd_mixture
[ -f "runs/sd_$RULE/report.json" ] || python train.py "${HALF[@]}" --control=student --update_rule="$RULE" --run_dir="runs/sd_$RULE"
python -m multidistill.compare "$BASE" runs/sd_student runs/sd_mixture "runs/sd_$RULE" \
    --labels="teacher-driven,student (Actor-Mimic),mixture (DAgger),student + $RULE" \
    --output_dir=benchmarks/student_driven
