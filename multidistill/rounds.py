"""Collection rounds: the student drives the data, the teacher labels it.

Student-driven distillation (Parisotto et al. 2016, Actor-Mimic; Ross et
al. 2011, DAgger; Czarnecki et al. 2019): round 0 trains on the
teacher-driven datasets as the main job does; each later round r

  1. collects `agent_steps_per_round` steps per game (whole episodes, in
     as many environments as that needs at the game's mean episode length)
     with the *control policy* of the run (`CONTROLS`), the live teacher labelling every
     visited state (outputs, features, value), into a file of its own,
     `<run>/rounds/<game>/round_<r>.h5`, one recording session that records
     who acted (`datasets.Session`: behaviour, beta, epsilon, checksums);
  2. aggregates: the game's data is now the teacher-driven file and the
     round files (`datasets.DatasetSet`); past `max_agent_steps_per_game`
     the oldest rounds leave the sampler first and their files are deleted
     (HDF5 gives no disk back otherwise), the teacher-driven data staying
     unless `keep_teacher_data` is off;
  3. trains `grad_steps_per_round` more gradient steps on the aggregate.

Control policies (who acts in rounds 1..N):
  * teacher: the teacher, epsilon-greedy with the recording epsilon (more
    teacher-driven data: the baseline at equal samples);
  * student: the student's head of the game, epsilon-greedy with
    `epsilon` (Actor-Mimic: 0.1), by the acting rule of the teacher it
    learnt from (argmax for Q-value teachers, sampling for policies);
  * mixture: at each step the teacher acts with probability beta_r, the
    student otherwise (DAgger), beta_r = beta * beta_decay^(r-1) for
    rounds r >= 1 (round 0, the teacher's data, is beta = 1);
  * uniform: uniformly random actions.

Resuming. `<run>/rounds/state.json` (written atomically) records what is
done: the rounds collected (with their files' counts), which rounds are in
the sampler at each round, and the last round trained. A kill at any moment
loses nothing and duplicates nothing:
  * a round's file is written under a temporary name and renamed when
    complete; a partial file found on resume is deleted and the round is
    collected again from its start, with the same seeds and the same
    student, so its steps are those of an uninterrupted run (appending to
    the partial file would start new episodes on other seeds);
  * the student that collects round r+1 is the snapshot
    `rounds/student_<r>.keras` written once round r's training reached
    its step count, so a resumed collection acts with the same weights;
  * training resumes from the run's checkpoint (`distiller.Distiller`) on
    the same files, whose batches are a pure function of the step index.
The resumed run therefore ends with the files and weights of the
uninterrupted run (`tests/test_rounds.py` kills it at random moments).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from multidistill import collect, datasets, distiller, environments, files, pipeline, students
from multidistill import teachers as teachers_lib

# Control policy -> the behaviour recorded in the round's session.
CONTROLS = {"teacher": "teacher", "student": "student", "mixture": "mixture",
            "uniform": "random"}
STATE_FORMAT = "multidistill-rounds/1"


@dataclasses.dataclass(frozen=True)
class RoundsConfig:
    """Who acts in the collection rounds, how much, and the aggregate's cap.

    Attributes:
      control: who acts in rounds 1..N, one of `CONTROLS`.
      rounds: collection rounds after round 0 (0: offline, teacher-driven).
      agent_steps_per_round: agent steps collected per game and round
        (whole episodes, so a round may hold a little more).
      grad_steps_per_round: gradient steps trained after each round's
        collection, on the aggregate.
      epsilon: probability of a random action when the student or the
        mixture acts (Actor-Mimic: 0.1); the teacher control uses the
        recording epsilon of its `collect.CollectConfig`.
      beta: with "mixture", probability that the teacher acts in round 1.
      beta_decay: with "mixture", beta_r = beta * beta_decay^(r-1).
      max_agent_steps_per_game: cap on the agent steps a game's sampler
        holds (teacher-driven data included while `keep_teacher_data`); 0:
        no cap. Past it the oldest rounds leave first; the newest round
        always stays.
      keep_teacher_data: the teacher-driven data never leaves the sampler
        (else it counts toward the cap and, the oldest, leaves first).
    """

    control: str = "teacher"
    rounds: int = 0
    agent_steps_per_round: int = 25_000
    grad_steps_per_round: int = 5_000
    epsilon: float = 0.1
    beta: float = 0.5
    beta_decay: float = 0.5
    max_agent_steps_per_game: int = 0
    keep_teacher_data: bool = True

    def __post_init__(self):
        # One message per field, starting with its name (cli names the flag).
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {list(CONTROLS)}, found {self.control!r}")
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, found {self.rounds}")
        if self.agent_steps_per_round < 1:
            raise ValueError(f"agent_steps_per_round must be >= 1, found "
                             f"{self.agent_steps_per_round}")
        if self.grad_steps_per_round < 0:
            raise ValueError(f"grad_steps_per_round must be >= 0, found "
                             f"{self.grad_steps_per_round}")
        for name in ("epsilon", "beta", "beta_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], found {getattr(self, name)}")
        if self.max_agent_steps_per_game < 0:
            raise ValueError(f"max_agent_steps_per_game must be >= 0 (0: no cap), found "
                             f"{self.max_agent_steps_per_game}")

    @property
    def behaviour(self) -> str:
        """The session behaviour of the rounds (`datasets.SESSION_BEHAVIOURS`)."""
        return CONTROLS[self.control]

    def beta_at(self, round_index: int) -> float:
        """The probability that the teacher acts in round `round_index` (>= 1)."""
        if self.control == "teacher":
            return 1.0
        if self.control != "mixture":
            return 0.0
        return self.beta * self.beta_decay ** (round_index - 1)

    def check_cap(self, teacher_steps: int) -> None:
        """Raises ValueError if the cap cannot hold the teacher-driven data
        (when kept) and one round."""
        if not self.max_agent_steps_per_game:
            return
        need = self.agent_steps_per_round + (teacher_steps if self.keep_teacher_data else 0)
        if self.max_agent_steps_per_game < need:
            kept = (f"the {teacher_steps:,} teacher-driven steps plus " if
                    self.keep_teacher_data else "")
            raise ValueError(
                f"max_agent_steps_per_game must hold {kept}one round's "
                f"{self.agent_steps_per_round:,} steps (>= {need:,}), found "
                f"{self.max_agent_steps_per_game:,}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The settings a resumed run must share (the round count may grow)."""
        d = self.to_dict()
        d.pop("rounds")
        return d


def grad_target(round0_steps: int, config: RoundsConfig, round_index: int) -> int:
    """Gradient steps the student has taken when round `round_index` ends."""
    return round0_steps + round_index * config.grad_steps_per_round


def _round_seed(seed: int, round_index: int, game_index: int) -> int:
    return int(np.random.SeedSequence([seed, 0x726F756E, round_index, game_index])
               .generate_state(1)[0] % (2**31 - 1))


class RoundLoop:
    """Runs (or resumes) the rounds of one run directory.

    Args:
      run_dir: the run directory (the distiller's, plus `rounds/`).
      config: the rounds' settings.
      distill_config: the student's settings; its `num_grad_steps` is
        round 0's step count.
      teachers: per game (head order), the teacher that labels (and acts
        with the teacher and mixture controls).
      base_paths: per game, the teacher-driven dataset (round 0's data).
      spec: the preprocessing.
      collect_config: recording settings of the rounds (environments,
        threads, seed; its epsilon is the teacher control's).
      progress: show progress bars.
      on_round: called with (round, summary so far) after each round's
        training (e.g. to measure memory between rounds).
    """

    def __init__(self, run_dir: str | os.PathLike, config: RoundsConfig,
                 distill_config: distiller.DistillConfig,
                 teachers: dict[str, teachers_lib.Teacher], base_paths: Sequence[str],
                 spec: environments.Preprocessing, collect_config: collect.CollectConfig,
                 progress: bool = True,
                 on_round: Callable[[int, dict], None] | None = None):
        self.run_dir = Path(run_dir)
        self.on_round = on_round
        self.dir = self.run_dir / "rounds"
        self.config = config
        self.distill_config = distill_config
        self.games = list(distill_config.games)
        self.teachers = teachers
        self.base_paths = [str(p) for p in base_paths]
        self.spec = spec
        self.collect_config = collect_config
        self.progress = progress
        self.state_path = self.dir / "state.json"
        if self.config.control == "student" or self.config.control == "mixture":
            if distill_config.num_grad_steps < 1 and config.rounds:
                raise ValueError(
                    f"num_grad_steps must be >= 1 with control {config.control!r}: round 1's "
                    "student acts, and round 0 trains it (found 0: it would act untrained)")

    # -- state --------------------------------------------------------------

    def _load_state(self, identity: dict) -> dict:
        if not self.state_path.exists():
            return {"format": STATE_FORMAT, "identity": identity, "collected": {},
                    "active": {}, "trained": -1}
        state = json.loads(self.state_path.read_text())
        if state.get("identity") != identity:
            raise distiller.TrainingError(
                f"{self.state_path} records rounds with other settings: a resumed run must "
                "keep --control and the round sizes; use another --run_dir, or delete it")
        return state

    def _save_state(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(self.state_path, json.dumps(state, indent=2))

    def round_path(self, game: str, round_index: int) -> Path:
        return self.dir / game / f"round_{round_index:03d}.h5"

    def snapshot_path(self, round_index: int) -> Path:
        return self.dir / f"student_{round_index:03d}.keras"

    # -- the loop -------------------------------------------------------------

    def run(self) -> dict:
        """Trains round 0 and every round up to `config.rounds`; returns a summary.

        Raises:
          KeyboardInterrupt: SIGINT/SIGTERM (the distiller saved a checkpoint;
            a collection keeps nothing of its unfinished round).
        """
        c, dc = self.config, self.distill_config
        prefix = distiller.data_prefix(self.run_dir)
        base = pipeline.HDF5Source(self.base_paths, dc.pipeline, fields=dc.objective.fields,
                                   max_episodes=prefix)
        base_prefix = [ds.num_episodes for ds in base.datasets]
        identity = {"datasets": base.identity()["datasets"], "rounds": c.identity()}
        state = self._load_state(identity)
        self._base_counts = [(ds.num_agent_steps, ds.num_episodes) for ds in base.datasets]
        d = distiller.Distiller(
            self.run_dir, dataclasses.replace(dc, num_grad_steps=grad_target(
                dc.num_grad_steps, c, 0)), base, self.spec,
            teacher_kinds=[self.teachers[g].kind for g in self.games], data_identity=identity)
        t0 = time.perf_counter()
        summary = {"control": c.to_dict()}
        try:
            for r in range(0, c.rounds + 1):
                if state["trained"] >= r:
                    continue
                if r > 0:
                    collected = self._collect(state, r)
                    active = self._aggregate(state, r)
                    d.use_source(pipeline.HDF5Source(
                        [self._files(g, gi, active) for gi, g in enumerate(self.games)],
                        dc.pipeline, fields=dc.objective.fields,
                        max_episodes=[self._prefixes(gi, active, base_prefix, state)
                                      for gi in range(len(self.games))]))
                    d.writer.scalars(d.grad_step, _round_scalars(r, collected, c))
                    print(f"[round {r}/{c.rounds}] training to gradient step "
                          f"{grad_target(dc.num_grad_steps, c, r):,}")
                d.set_num_grad_steps(grad_target(dc.num_grad_steps, c, r))
                d.train(progress=self.progress)
                if r < c.rounds:  # The student that collects the next round.
                    students.save_student(d.student, self.snapshot_path(r))
                state["trained"] = r
                self._save_state(state)
                self._remove_snapshots_before(r)
                if self.on_round is not None:
                    self.on_round(r, {"grad_steps": d.grad_step, "state": state})
            last = state["active"].get(str(c.rounds), {"rounds": [], "teacher_data": True})
            collecting = sum(g.get("seconds", 0.0) for counts in state["collected"].values()
                             for g in counts.values())
            summary.update(
                grad_steps=d.grad_step, seconds=time.perf_counter() - t0,
                run_train_seconds=d.train_seconds, run_collect_seconds=collecting,
                run_seconds=d.train_seconds + collecting, student=str(d.student_path),
                collected=state["collected"], sampler=last)
            return summary
        finally:
            d.close()

    def _prefixes(self, game_index, active, base_prefix, state) -> list[int]:
        """Episodes to read of each file of a game (rounds complete; base: its prefix)."""
        game = self.games[game_index]
        out = [int(state["collected"][str(k)][game]["num_episodes"]) for k in active["rounds"]]
        if active["teacher_data"]:
            out.append(int(base_prefix[game_index]))
        return out

    def _files(self, game: str, game_index: int, active: dict) -> list[str]:
        """The files of a game's sampler: active rounds oldest first, then the
        teacher-driven file (whose last episodes are the held-out data)."""
        out = [str(self.round_path(game, k)) for k in active["rounds"]]
        if active["teacher_data"]:
            out.append(self.base_paths[game_index])
        return out

    def _collect(self, state: dict, r: int) -> dict:
        """Round r's files, collected unless already done; their counts."""
        key = str(r)
        if key in state["collected"]:
            return state["collected"][key]
        c = self.config
        student = None
        sha = ""
        if c.control in ("student", "mixture"):
            snapshot = self.snapshot_path(r - 1)
            student = students.load_student(snapshot)
            sha = teachers_lib.sha256_of(snapshot)
        out = {}
        epsilon = self.collect_config.epsilon if c.control == "teacher" else c.epsilon
        print(f"[round {r}/{c.rounds}] collecting {c.agent_steps_per_round:,} steps per game, "
              f"{c.control} acting" + (f" (beta {c.beta_at(r):.3g})" if c.control == "mixture"
                                       else ""))
        for gi, game in enumerate(self.games):
            teacher = self.teachers[game]
            config = dataclasses.replace(
                self.collect_config, num_agent_steps=c.agent_steps_per_round,
                behaviour=c.behaviour, beta=c.beta_at(r), epsilon=epsilon,
                num_envs=self._num_envs(state, r, gi),
                seed=_round_seed(self.collect_config.seed, r, gi))
            behaviour = collect.make_behaviour(
                config, teacher,
                students.head_predictor(student, game) if student is not None else None, sha)
            final = self.round_path(game, r)
            partial = final.with_name(final.stem + ".partial.h5")
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # Renamed, but the state was not saved: complete.
                with datasets.Dataset(final) as ds:
                    out[game] = dict(_counts(ds, 0.0), num_envs=config.num_envs)
                continue
            partial.unlink(missing_ok=True)  # An unfinished collection: start it again.
            s = collect.build_dataset(teacher, partial, config, self.spec, behaviour=behaviour,
                                      progress=self.progress)
            if s.get("interrupted"):
                partial.unlink(missing_ok=True)
                raise KeyboardInterrupt
            os.replace(partial, final)
            datasets.lock_file(partial).unlink(missing_ok=True)
            with datasets.Dataset(final) as ds:
                out[game] = dict(_counts(ds, s["seconds"]), num_envs=config.num_envs)
            print(f"  {game}: {out[game]['num_agent_steps']:,} steps, "
                  f"{out[game]['num_episodes']} episodes, mean return "
                  f"{out[game]['mean_return']:.1f}")
        state["collected"][key] = out
        self._save_state(state)
        return out

    def _num_envs(self, state: dict, r: int, game_index: int) -> int:
        """Environments for round r's collection of a game: as many as the
        round's steps need at the mean episode length of the game's latest
        data (the previous round's, or the teacher-driven file's), at most
        the recording's `num_envs`. Only whole episodes are kept and every
        environment plays at least one, so 32 environments on 2,300-step
        Pong episodes would turn a 25,000-step round into 70,000 steps."""
        game = self.games[game_index]
        if r > 1 and str(r - 1) in state["collected"]:
            last = state["collected"][str(r - 1)][game]
            steps, episodes = last["num_agent_steps"], last["num_episodes"]
        else:
            steps, episodes = self._base_counts[game_index]
        mean_length = steps / max(episodes, 1)
        need = math.ceil(self.config.agent_steps_per_round / max(mean_length, 1.0))
        return int(min(max(need, 1), self.collect_config.num_envs))

    def _aggregate(self, state: dict, r: int) -> dict:
        """Which rounds are in the sampler in round r (decided once, recorded),
        and the files of those that left deleted."""
        key = str(r)
        if key not in state["active"]:
            previous = state["active"].get(str(r - 1), {"rounds": [], "teacher_data": True})
            rounds = list(previous["rounds"]) + [r]
            teacher_data = previous["teacher_data"]
            cap = self.config.max_agent_steps_per_game
            if cap:
                def size(gi):
                    game = self.games[gi]
                    return (sum(state["collected"][str(k)][game]["num_agent_steps"]
                                for k in rounds)
                            + (self._base_counts[gi][0] if teacher_data else 0))
                while any(size(gi) > cap for gi in range(len(self.games))):
                    if teacher_data and not self.config.keep_teacher_data:
                        teacher_data = False
                    elif len(rounds) > 1:
                        rounds.pop(0)
                    else:
                        break
            state["active"][key] = {"rounds": rounds, "teacher_data": teacher_data}
            self._save_state(state)
        active = state["active"][key]
        for k in range(1, r + 1):  # Idempotent: a resumed run finishes the deletions.
            if k not in active["rounds"]:
                for game in self.games:
                    self.round_path(game, k).unlink(missing_ok=True)
        return active

    def _remove_snapshots_before(self, r: int) -> None:
        for k in range(r):
            self.snapshot_path(k).unlink(missing_ok=True)


def _counts(ds: datasets.Dataset, seconds: float) -> dict:
    return {"num_agent_steps": ds.num_agent_steps, "num_episodes": ds.num_episodes,
            "mean_return": float(np.mean(ds.episode_returns)) if ds.num_episodes else 0.0,
            "seconds": seconds}


def _round_scalars(r: int, collected: dict, config: RoundsConfig) -> dict[str, float]:
    """What a round's collection says: the control policy's returns (the
    student's own score, with exploration, when it acts), steps, beta."""
    out = {"rounds/round": float(r), "rounds/beta": config.beta_at(r)}
    for game, counts in collected.items():
        out[f"rounds/episode_return/{game}"] = counts["mean_return"]
        out[f"rounds/agent_steps/{game}"] = float(counts["num_agent_steps"])
    return out

