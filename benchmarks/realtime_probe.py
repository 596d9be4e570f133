"""Does a real-time student's trunk die while its DQN teacher learns?

    python -m benchmarks.realtime_probe --labeller=online --num_env_frames=140000

Trains a Double DQN teacher on Pong from scratch for --num_env_frames with one
`tiny` real-time student (`multidistill.realtime`), labelled by the online
network (the product's choice) or by the DQN's target network, then prints,
on 256 states of --dataset, the fraction of active (> 0) units after each
layer of the student's trunk and the standard deviation of its logits over
the states. A dead trunk shows 0.0 after the first convolution and a
standard deviation near 0 (see benchmarks/realtime/first_run.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from absl import app, flags

from multidistill import datasets, environments, realtime
from multidistill.agents import dqn, runner

FLAGS = flags.FLAGS


def trunk_activity(student, frames: np.ndarray) -> dict[str, float]:
    """Per trunk layer with weights, the fraction of outputs > 0 on `frames`."""
    out, x = {}, frames
    for layer in student.trunk:
        x = layer(x)
        if layer.weights:
            out[layer.name] = float((np.asarray(x) > 0).mean())
    return out


def main(argv):
    del argv
    spec = environments.Preprocessing()
    folder = Path(FLAGS.output_dir)
    shutil.rmtree(folder, ignore_errors=True)
    agent = dqn.DQN("pong", 6, spec, dqn.DQNConfig(),
                    total_agent_steps=FLAGS.num_env_frames // 4, seed=0)
    students = realtime.RealtimeDistillation(
        realtime.RealtimeConfig(sizes=("tiny",), learning_rate=FLAGS.learning_rate,
                                start_frames=0, recent_steps=0, label_horizon=0),
        "pong", 6, agent.kind, spec,
        folder / "ck" / "realtime")
    students.build(agent.learner.target_net if FLAGS.labeller == "target" else agent.net)
    run = runner.Runner(agent, "dqn", "pong", spec, runner.RunConfig(
        num_env_frames=FLAGS.num_env_frames, eval_every_frames=10**9, final_eval_episodes=0,
        checkpoint_every_s=10**6), folder / "teachers", folder / "ck", companions=[students])
    run.train(progress=False)
    frames = datasets.Dataset(FLAGS.dataset).read_block(1000, 1256)["observations"]
    student = students.students["tiny"][0]
    for name, active in trunk_activity(student, frames).items():
        print(f"{name}: active fraction {active:.3f}")
    logits = np.asarray(student.policy_network("pong")(frames))
    print(f"logits' standard deviation over states: {logits.std(0).mean():.2e}")
    print(f"student gradient steps: {students.counters['grad_steps']:,}")


if __name__ == "__main__":
    flags.DEFINE_enum("labeller", "online", ["online", "target"],
                      "Which DQN network labels the student's states.")
    flags.DEFINE_integer("num_env_frames", 140_000, "Teacher training, emulator frames.")
    flags.DEFINE_float("learning_rate", 2.5e-4, "The student's Adam step size (the "
                       "probes of first_run.md: 2.5e-4, and 2.5e-5).")
    flags.DEFINE_string("dataset", "datasets/pong.h5",
                        "A Pong dataset whose states probe the student (the main job's).")
    flags.DEFINE_string("output_dir", "/tmp/realtime_probe",
                        "Scratch folder (deleted first).")
    app.run(main)
