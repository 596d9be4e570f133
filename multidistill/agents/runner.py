"""The runner of a teacher-training run: resume, train, evaluate, export, checkpoint.

As Dopamine's Runner, it owns the phases of a run around one agent, which
knows nothing of them:

  * `restore` continues from `<checkpoint_dir>/checkpoint.npz` (weights,
    optimizer, the agent's counters and the run's), refusing one of
    another game, algorithm or preprocessing;
  * `start_from_teacher` starts instead from an exported teacher: its
    weights (critic included, layers copied by name) and the counters its
    card recorded (`training.algo_state`), so that DQN's epsilon schedule
    and PPO's learning-rate anneal go on where the teacher was exported;
  * `train` runs `loop.iterations` inside `interrupts.deferred_interrupts`:
    TensorBoard scalars (`metrics.jsonl`, `tb/`) and a progress bar per
    record; every `eval_every_frames` an evaluation under the project's
    protocol, exporting the teacher when it beats the best so far; a
    checkpoint every `checkpoint_every_s`, at the end, and at the first
    record after SIGINT or SIGTERM, where it stops.

Companions ride along without the agent knowing (e.g. real-time students,
`multidistill.realtime`): the runner hands them every record and every
evaluation, and saves and restores them with the agent (see `Companion`).

Files: `<checkpoint_dir>/checkpoint.npz`, `metrics.jsonl`, `tb/`,
`learning_curve.png`; `<teachers_dir>/<game>.keras` and `<game>.json`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from multidistill import checkpoints, environments, evaluation, interrupts, summaries
from multidistill import teachers as teachers_lib
from multidistill.agents import base, dqn, loop, ppo

# Algorithm name -> (agent class, config class).
ALGORITHMS: dict[str, tuple[type, type]] = {
    "ppo": (ppo.PPO, ppo.PPOConfig),
    "dqn": (dqn.DQN, dqn.DQNConfig),
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a teacher-training run is driven (the agent's own settings are its config).

    Attributes:
      num_env_frames: training length, emulator frames (1 agent step =
        `frame_skip` frames); a run stops at the first iteration past it.
      eval_every_frames: emulator frames between periodic evaluations (each
        exports the teacher if it beats the best so far).
      eval_episodes: episodes per periodic evaluation.
      final_eval_episodes: episodes of the evaluation written into the
        card at the end (0: none).
      checkpoint_every_s: wall-clock seconds between checkpoints.
      seed: seeds the agent and the environments' episode starts; the
        evaluation protocol's seed is 1,000,000 + seed.
      num_threads: emulator threads of the training environments and of
        the periodic evaluations (0: one per core).
    """

    num_env_frames: int = 10_000_000
    eval_every_frames: int = 1_000_000
    eval_episodes: int = 8
    final_eval_episodes: int = 30
    checkpoint_every_s: int = 300
    seed: int = 0
    num_threads: int = 0

    def __post_init__(self):
        for name in ("num_env_frames", "eval_every_frames", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"RunConfig.{name} must be >= 1, found {getattr(self, name)}")
        for name in ("final_eval_episodes", "checkpoint_every_s", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"RunConfig.{name} must be >= 0, found {getattr(self, name)}")

    @property
    def eval_protocol_seed(self) -> int:
        return 1_000_000 + self.seed


class Companion(Protocol):
    """What rides along a run (`multidistill.realtime.RealtimeDistillation`)."""

    def restore(self) -> list:
        """Resumes from its own checkpoint (called when the agent resumed from its)."""

    def save(self) -> None:
        """Checkpoints (called just before the agent's checkpoint is written)."""

    def on_record(self, agent: base.Agent, record: loop.Record,
                  writer: summaries.ScalarWriter | None = None) -> Any:
        """After each iteration of the agent."""

    def on_evaluation(self, frames: int, scores: evaluation.Scores,
                      protocol: evaluation.EvalProtocol, wall_clock_s: float,
                      writer: summaries.ScalarWriter | None = None) -> str:
        """After each evaluation of the agent's teacher; returns a note for the console."""


def make_agent(algo: str, game: str, num_actions: int, spec: environments.Preprocessing,
               config, total_agent_steps: int, seed: int) -> base.Agent:
    """The agent of `algo` ("ppo" or "dqn") with `config` (its config class)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}: expected one of {sorted(ALGORITHMS)}")
    agent_class, config_class = ALGORITHMS[algo]
    if not isinstance(config, config_class):
        raise ValueError(f"algorithm {algo!r} takes a {config_class.__name__}, "
                         f"found {type(config).__name__}")
    return agent_class(game, num_actions, spec, config, total_agent_steps=total_agent_steps,
                       seed=seed)


STAGE_FIELDS = ("algorithm", "num_env_frames", "wall_clock_s", "hardware", "command", "history",
                "imported_from", "init_trunk_from")


def stages_of(training: dict) -> list[dict]:
    """A teacher's training stages, oldest first, from its card's `training`
    section: the stages it lists (`earlier_stages`), then the run that
    exported it (its frames, wall-clock, hardware, command, and where it
    started: an imported file or a student's trunk). A run started from that
    teacher (`--init_from_teacher`) records them as its own
    `earlier_stages`, so a card says where every frame was trained.

    A stage's `num_env_frames` and `wall_clock_s` are running totals when
    it went on from a teacher of its own algorithm (the runner carries the
    counters on), not the stage's own share: the last stage's figures are
    the teacher's totals, and a stage's share is its figure minus the one
    before.
    """
    stages = [dict(stage) for stage in training.get("earlier_stages") or []]
    if training:
        stages.append({k: training[k] for k in STAGE_FIELDS if k in training})
    return stages


def accelerators() -> list[str]:
    """Names of the accelerators Keras' backend computes on (e.g. ["NVIDIA
    H200"]); [] on a CPU-only machine or where the backend cannot say."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return [d.device_kind for d in jax.devices() if d.platform != "cpu"]
        if backend == "tensorflow":
            import tensorflow as tf

            return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
                    for d in tf.config.list_physical_devices("GPU")]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # A card's wording is not worth a failed run.
        return []
    return []


def hardware() -> str:
    """The machine, in words, for the teacher's card: processor, cores,
    system, Keras backend and any accelerators (e.g. "x86_64 16 cores,
    Linux, keras backend jax, 1 x NVIDIA H200")."""
    import keras

    text = (f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, "
            f"keras backend {keras.backend.backend()}")
    names = accelerators()
    for name in sorted(set(names)):
        text += f", {names.count(name)} x {name}"
    return text


class Runner:
    """Drives one agent through a run (see the module docstring).

    Args:
      agent: the agent, fresh (its counters at 0).
      algo: its algorithm name, recorded in checkpoints and cards.
      game: ROM id.
      spec: the preprocessing.
      config: how the run is driven.
      teachers_dir: where the teacher and its card are exported.
      checkpoint_dir: the training state folder.
      command: the command line, recorded in the card.
      companions: what rides along (`Companion`), saved and restored with
        the agent.

    Attributes:
      run: the run's counters, checkpointed: `wall_clock_s` (training time
        so far, evaluations included), `best_eval` (mean return of the best
        evaluation, the teacher on disk; None before any),
        `last_eval_frames` (emulator frames at the last evaluation), and
        where the run started: `earlier_stages` (`stages_of` the teacher of
        `start_from_teacher`) or `init_trunk_from` (`start_from_trunk`).
    """

    def __init__(self, agent: base.Agent, algo: str, game: str,
                 spec: environments.Preprocessing, config: RunConfig,
                 teachers_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike,
                 command: str = "", companions: tuple = ()):
        self.agent = agent
        self.companions = tuple(companions)
        self.last_companion_notes: list[str] = []
        self.algo = algo
        self.game = game
        self.spec = spec
        self.config = config
        self.teachers_dir = Path(teachers_dir)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.command = command
        self.run: dict[str, Any] = {"wall_clock_s": 0.0, "best_eval": None,
                                    "last_eval_frames": 0}
        self._t_start = time.perf_counter()

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint_dir / "checkpoint.npz"

    @property
    def run_key(self) -> dict:
        """What a checkpoint must share with the run that resumes it."""
        return {"game": self.game, "algo": self.algo, "preprocessing": self.spec.to_dict()}

    @property
    def num_env_frames(self) -> int:
        """Emulator frames trained so far."""
        return self.agent.agent_steps * self.spec.frame_skip

    def _wall_clock_s(self) -> float:
        return time.perf_counter() - self._t_start

    def restore(self) -> bool:
        """Continues from the checkpoint if there is one.

        Returns:
          Whether there was one.

        Raises:
          checkpoints.CheckpointError: it is unreadable, of another game,
            algorithm or preprocessing, or of another network size.
        """
        path = self.checkpoint_path
        if not path.exists():
            return False
        saved = checkpoints.read_state(path)
        if isinstance(saved.get("algo"), dict):  # Checkpoints of 0.1.0 dev runs.
            saved["algo_state"] = saved.pop("algo")
            saved["algo"] = self.algo
        key = self.run_key
        for k in ("game", "algo"):
            if saved.get(k) != key[k]:
                raise checkpoints.CheckpointError(
                    f"checkpoint {path} is for {k}={saved.get(k)!r}, this run asks "
                    f"for {key[k]!r}: use another --checkpoint_dir")
        if saved.get("preprocessing") != key["preprocessing"]:
            theirs = environments.Preprocessing.from_dict(saved["preprocessing"])
            raise checkpoints.CheckpointError(
                f"checkpoint {path} was trained with another preprocessing: "
                + "; ".join(theirs.differences(self.spec)).replace("here vs",
                                                                    "checkpoint vs asked")
                + ": use another --checkpoint_dir")
        saved = checkpoints.restore(path, self.agent.learner, self.agent.optimizer)
        state = saved.get("algo_state")
        if state is None:
            state = saved["algo"]  # 0.1.0 dev runs: the counters under "algo".
        self.agent.load_state(state)
        self.run.update(saved["run"])
        self._t_start = time.perf_counter() - float(self.run["wall_clock_s"])
        for companion in self.companions:
            companion.restore()
        return True

    def start_from_teacher(self, teacher: teachers_lib.Teacher) -> int:
        """Starts from an exported teacher: weights, counters and its score.

        The counters are the card's `training.algo_state`; a card written
        before they were recorded gives the agent steps of its
        `training.num_env_frames`. A teacher of another algorithm gives its
        weights only. The teacher's evaluation is the best to beat.

        Returns:
          The number of layers copied.
        """
        training = teacher.card.get("training") or {}
        state = {"agent_steps": 0}
        if training.get("algorithm") == self.algo:
            state = training.get("algo_state") or {
                "agent_steps": int(training.get("num_env_frames", 0)) // self.spec.frame_skip}
        copied = self.agent.start_from_teacher(teacher.model, state)
        self.run["best_eval"] = (teacher.card.get("evaluation") or {}).get("mean")
        self.run["last_eval_frames"] = self.num_env_frames
        if training.get("algorithm") == self.algo:
            self.run["wall_clock_s"] = float(training.get("wall_clock_s", 0.0))
        self.run["earlier_stages"] = stages_of(training)
        self._t_start = time.perf_counter() - float(self.run["wall_clock_s"])
        return copied

    def start_from_trunk(self, student, source: str = "") -> int:
        """Transfer: starts the agent's network from `student`'s shared trunk
        (`agent.load_trunk`); the outputs, the critic and the counters stay
        fresh, so a run from a trunk and one from scratch differ only there.

        Returns:
          The number of layers copied.
        """
        copied = self.agent.load_trunk(student)
        self.run["init_trunk_from"] = str(source)
        return copied

    def save_checkpoint(self) -> None:
        """Writes the checkpoint (atomically) and redraws the learning curve."""
        self.run["wall_clock_s"] = self._wall_clock_s()
        # Companions first: a kill between the two leaves them ahead, never
        # behind, the agent they resume with.
        for companion in self.companions:
            companion.save()
        checkpoints.save(self.checkpoint_path, self.agent.learner, self.agent.optimizer,
                         dict(self.run_key, algo_state=self.agent.state(), run=self.run))
        summaries.plot_curves(
            self.checkpoint_dir / "metrics.jsonl", self.checkpoint_dir / "learning_curve.png",
            [("episode return", ["charts/episodic_return", "eval/mean_return"]),
             ("loss", ["losses/loss"]),
             ("learning rate", ["charts/learning_rate"]),
             ("exploration", ["charts/epsilon"]),
             ("RND bonus (normalised)", ["rnd/intrinsic_reward"]),
             ("rooms", ["rooms/found", "rooms/mean_per_episode"])],
            "emulator frames",
            labels={"charts/episodic_return": "training episodes",
                    "rooms/found": "found so far", "rooms/mean_per_episode": "per episode",
                    "eval/mean_return":
                        f"evaluation ({self.config.eval_episodes} episodes, protocol)"})

    def evaluate_and_export(self, writer: summaries.ScalarWriter | None = None
                            ) -> tuple[evaluation.Scores, bool]:
        """Evaluates the agent's teacher; exports it if it beats the best so far.

        Returns:
          The scores, and whether the teacher was exported.
        """
        frames = self.num_env_frames
        protocol = evaluation.EvalProtocol(num_episodes=self.config.eval_episodes,
                                           seed=self.config.eval_protocol_seed,
                                           num_threads=self.config.num_threads)
        model = self.agent.teacher_model
        scores = evaluation.evaluate(self.game,
                                     evaluation.predict_fn(base.policy_network(model)),
                                     self.agent.kind, self.spec, protocol, progress=False)
        if writer is not None:
            writer.scalars(frames, {"eval/mean_return": scores.mean,
                                    "eval/std_return": scores.std})
        self.last_companion_notes = [
            companion.on_evaluation(frames, scores, protocol, self._wall_clock_s(), writer)
            for companion in self.companions]
        self.run["last_eval_frames"] = frames
        improved = self.run["best_eval"] is None or scores.mean > self.run["best_eval"]
        if improved:
            self.run["best_eval"] = scores.mean
            teachers_lib.save_teacher(
                model, self.game, self.agent.kind, self.spec, self.teachers_dir,
                evaluation=dict(scores.to_dict(), protocol=protocol.to_dict()),
                training=self.training_card())
        return scores, improved

    def training_card(self) -> dict:
        """The card's `training` section for a teacher exported now."""
        return {
            "algorithm": self.algo,
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(self.agent.config).items()},
            "algo_state": self.agent.state(),
            "num_env_frames": self.num_env_frames,
            "wall_clock_s": round(self._wall_clock_s(), 1),
            "hardware": hardware(),
            "command": self.command,
            **({"init_trunk_from": self.run["init_trunk_from"]}
               if self.run.get("init_trunk_from") else {}),
            **({"earlier_stages": self.run["earlier_stages"]}
               if self.run.get("earlier_stages") else {}),
        }

    def train(self, progress: bool = True) -> str:
        """Trains until `num_env_frames`, or until SIGINT or SIGTERM.

        Args:
          progress: show a progress bar counting emulator frames.

        Returns:
          "" when the run reached `num_env_frames` (then it was evaluated,
          exported if better, and checkpointed), or the name of the signal
          that stopped it ("SIGTERM", "SIGINT"), after checkpointing at the
          end of the iteration under way.
        """
        c = self.config
        writer = summaries.ScalarWriter(self.checkpoint_dir)
        bar = None
        if progress:
            from multidistill import progress as progress_lib

            bar = progress_lib.bar(c.num_env_frames, f"train {self.game} {self.algo}", "frame",
                                   initial=min(self.num_env_frames, c.num_env_frames),
                                   unit_scale=True, smoothing=0.1)
        envs = []
        try:
            with interrupts.deferred_interrupts() as stop:
                if self.num_env_frames < c.num_env_frames:
                    envs = environments.make_vector_envs(
                        self.game, self.spec, self.agent.config.num_envs,
                        num_threads=c.num_threads, num_groups=1)
                    stopped = self._train_loop(envs, writer, bar, stop)
                    environments.close_all(envs)
                    envs = []
                    if stopped:
                        return stopped
                if self.run["last_eval_frames"] < self.num_env_frames:
                    self.evaluate_and_export(writer)
                self.save_checkpoint()
                return ""
        finally:
            environments.close_all(envs)
            if bar is not None:
                bar.close()
            writer.close()

    def _train_loop(self, envs, writer, bar, stop) -> str:
        """The records of `loop.iterations`: log, evaluate, checkpoint, stop.

        Returns:
          "" at `num_env_frames`, else the name of the signal that stopped it.
        """
        c = self.config
        recent: list[float] = []
        last_checkpoint = time.perf_counter()
        records = loop.iterations(self.agent, envs, seed=c.seed + self.agent.agent_steps,
                                  frame_skip=self.spec.frame_skip)
        try:
            for record in records:
                frames = record.num_env_frames
                returns = [ret for ret, _ in record.episodes]
                recent = (recent + returns)[-20:]
                logs = {"losses/loss": record.loss if np.isfinite(record.loss) else None,
                        "charts/SPS": record.agent_steps_per_s}
                if returns:
                    logs["charts/episodic_return"] = float(np.mean(returns))
                logs.update(record.metrics or {})
                writer.scalars(frames, logs)
                for companion in self.companions:
                    companion.on_record(self.agent, record, writer)
                if bar is not None:
                    bar.update(min(frames, c.num_env_frames) - bar.n)
                if frames - self.run["last_eval_frames"] >= c.eval_every_frames:
                    scores, improved = self.evaluate_and_export(writer)
                    message = (f"{frames:,} frames: eval {scores.mean:.1f}"
                               + (" (new best, teacher written)" if improved else "")
                               + "".join(f"; {note}" for note in self.last_companion_notes
                                         if note))
                    if bar is not None:
                        bar.write(message)
                    else:
                        print(message)
                if bar is not None:
                    bar.set_postfix(ret=f"{np.mean(recent):.1f}" if recent else "n/a",
                                    eval=self.run["best_eval"])
                if stop.requested:
                    self.save_checkpoint()
                    return stop.name
                if frames >= c.num_env_frames:
                    return ""
                if time.perf_counter() - last_checkpoint >= c.checkpoint_every_s:
                    self.save_checkpoint()
                    last_checkpoint = time.perf_counter()
        finally:
            records.close()
        return ""
