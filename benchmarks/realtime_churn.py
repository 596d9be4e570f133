"""Why real-time students die: the live DQN's labels churn.

    python -m benchmarks.realtime_churn \
        --checkpoint_dir=$HOME/.cache/multidistill/teacher_runs/pong_realtime_lr2.5e-5 \
        --frozen_teacher=$HOME/.cache/multidistill/realtime_teachers_lr2.5e-5/pong.keras \
        --dataset=datasets/realtime_1500000/pong.h5 --arms=live,frozen

Resumes a copy of a Double DQN teacher run (`benchmarks/realtime_pong.sh`
leaves one) for --num_env_frames more frames with one `tiny` real-time
student per arm, all from the same initial weights, all on the same replay
states (each arm draws with the same seed), differing only in their labels:

    live           the teacher as it trains (the product's default)
    frozen         --frozen_teacher, fixed (the teacher the run exported,
                   i.e. the resumed weights): offline distillation's labels
    average<H>     a moving average of the live teacher's weights over about
                   H of its gradient steps (`--distill_label_horizon=H`)

Every 4 teacher iterations (1,024 teacher gradient steps) it prints, on 1,024
states of --dataset: the churn of each labeller (the share of states whose
top action changed since the last line), its agreement with the live
teacher, and per student the active fraction of the first convolution, the
standard deviation of its logits over the states (about 1e-6: a student
that answers the same for every state, a dead trunk) and its top-1 agreement
with its own labeller. The lines also go to --output (JSON lines).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from absl import app, flags

from benchmarks.realtime_probe import trunk_activity
from multidistill import checkpoints, datasets, environments, realtime
from multidistill.agents import dqn, runner

FLAGS = flags.FLAGS


def arm_config(arm: str, learning_rate: float) -> realtime.RealtimeConfig:
    if arm in ("live", "frozen"):
        horizon = 0.0
    elif arm.startswith("average") and arm[len("average"):].isdigit():
        horizon = float(arm[len("average"):])
    else:
        raise app.UsageError(f"--arms: expected live, frozen or average<H>, found {arm!r}")
    return realtime.RealtimeConfig(sizes=("tiny",), learning_rate=learning_rate,
                                   start_frames=0, recent_steps=0, label_horizon=horizon)


class Probe:
    """A runner companion printing the labellers' churn and the students' state."""

    def __init__(self, arms: dict, probe_states: np.ndarray, output: Path):
        self.arms, self.states, self.output = arms, probe_states, output
        self.iterations, self.previous = 0, {}

    def restore(self):
        return []

    def save(self):
        pass

    def on_evaluation(self, *args, **kwargs):
        return ""

    def on_record(self, agent, record, writer=None):
        self.iterations += 1
        if self.iterations % 4:
            return
        live = np.asarray(agent.net.predict_on_batch(self.states)).argmax(1)
        row = {"frames": record.num_env_frames, "teacher_steps": agent.gradient_steps}
        if "live" in self.previous:
            row["live_churn"] = float(np.mean(live != self.previous["live"]))
        self.previous["live"] = live
        for name, rt in self.arms.items():
            student = rt.students["tiny"][0]
            labels = np.asarray(rt._labeller.predict_on_batch(self.states)[0]).argmax(1)
            logits = np.asarray(student.policy_network("pong")(self.states))
            row[name] = {
                "churn": (float(np.mean(labels != self.previous[name]))
                          if name in self.previous else None),
                "labels_agree_with_live": float(np.mean(labels == live)),
                "conv0_active": trunk_activity(student, self.states)["shared_conv0"],
                "logit_std": float(logits.std(0).mean()),
                "agreement": rt.agreement(self.states)["tiny"],
                "student_steps": rt.counters["grad_steps"]}
            self.previous[name] = labels
        with self.output.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['frames']:,} frames" + "".join(
            f" | {name}: churn {r['churn'] if r['churn'] is None else round(r['churn'], 2)}, "
            f"conv0 {r['conv0_active']:.3f}, logit std {r['logit_std']:.1e}, "
            f"agreement {r['agreement']:.3f}"
            for name, r in ((n, row[n]) for n in self.arms)), flush=True)


def main(argv):
    del argv
    import keras

    if not (Path(FLAGS.checkpoint_dir) / "checkpoint.npz").is_file():
        raise app.UsageError(f"--checkpoint_dir={FLAGS.checkpoint_dir}: expected a teacher "
                             "run's folder with checkpoint.npz, found none")
    folder = Path(FLAGS.output_dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(FLAGS.checkpoint_dir, folder / "ck",
                    ignore=shutil.ignore_patterns("realtime", "tb"))
    try:
        done = 4 * int(checkpoints.read_state(folder / "ck" / "checkpoint.npz")
                       ["algo_state"]["agent_steps"])
    except (checkpoints.CheckpointError, KeyError) as e:
        raise app.UsageError(f"--checkpoint_dir={FLAGS.checkpoint_dir}: expected a teacher "
                             f"run's checkpoint.npz ({e})") from None
    total = done + FLAGS.num_env_frames
    spec = environments.Preprocessing()
    agent = dqn.DQN("pong", 6, spec, dqn.DQNConfig(), total_agent_steps=total // 4, seed=0)
    frozen = keras.saving.load_model(FLAGS.frozen_teacher, compile=False)
    arms = {}
    for arm in FLAGS.arms:
        arms[arm] = realtime.RealtimeDistillation(
            arm_config(arm, FLAGS.learning_rate), "pong", 6, agent.kind, spec,
            folder / f"students_{arm}")
        arms[arm].build(frozen if arm == "frozen" else agent.net)
    first = next(iter(arms.values())).students["tiny"][0].get_weights()
    for rt in arms.values():
        rt.students["tiny"][0].set_weights(first)
    states = datasets.Dataset(FLAGS.dataset).read_block(100_000, 101_024)["observations"]
    probe = Probe(arms, states, folder / "probe.jsonl")
    run = runner.Runner(agent, "dqn", "pong", spec, runner.RunConfig(
        num_env_frames=total, eval_every_frames=10**9, final_eval_episodes=0,
        checkpoint_every_s=10**6), folder / "teachers", folder / "ck",
        companions=[*arms.values(), probe])
    print("resumed at", f"{4 * agent.agent_steps:,}" if run.restore() else "?", "frames")
    run.train(progress=False)


if __name__ == "__main__":
    flags.DEFINE_string("checkpoint_dir", None, "A Double DQN teacher run on Pong "
                        "(its checkpoint.npz) to resume; it is copied, not changed.")
    flags.DEFINE_string("frozen_teacher", None, "The teacher file the frozen arm is "
                        "labelled by (the run's exported teacher).")
    flags.DEFINE_string("dataset", "datasets/realtime_1500000/pong.h5",
                        "A Pong dataset whose states 100,000-101,023 are probed.")
    flags.DEFINE_list("arms", ["live", "frozen"], "Students' labels: live, frozen, "
                      "average<H> (H: gradient steps).")
    flags.DEFINE_integer("num_env_frames", 300_000, "Teacher frames to train on (emulator "
                         "frames).")
    flags.DEFINE_float("learning_rate", 2.5e-4, "The students' Adam step size.")
    flags.DEFINE_string("output_dir", "/tmp/realtime_churn", "Where the copy and the "
                        "students go; probe.jsonl there holds the lines.")
    flags.mark_flags_as_required(["checkpoint_dir", "frozen_teacher"])
    app.run(main)
