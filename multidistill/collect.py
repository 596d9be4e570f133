"""Collection: a behaviour policy plays a game while a labeller labels every step.

The library half of `python -m multidistill.build_datasets`. Two parts meet
here, kept apart on purpose (Actor-Mimic, DAgger and the rules of
Czarnecki et al. differ in who acts, not in who labels):

  * the *labeller*, the game's teacher (`teachers.Teacher`): for every
    visited state its outputs (Q-values or logits), its last hidden layer
    and, where it has one, its state value;
  * the *behaviour policy*, who acts (`BehaviourPolicy`): the teacher by its
    own rule (`TeacherBehaviour`), a student's head (`NetworkBehaviour`), a
    mixture in which the teacher acts with probability beta at each step
    (`MixtureBehaviour`), or uniformly random (`RandomBehaviour`); each
    epsilon-greedy, each reporting the probability of the action it took.

`record` runs them over `acting.play` in `num_envs` environments stepped
together (one labeller call per vector step, which the teacher behaviour
reuses to act) and appends completed episodes to a `datasets.DatasetWriter`,
one session per call, until the file holds at least `num_agent_steps` steps.

A dataset can also be recorded in parts, each by its own worker
(`build_shard`, one part of a sharded dataset, see `datasets`): part i of N
records its share of the game's steps (`shard_config`: the game's
`num_agent_steps` split as evenly as whole steps allow, the first parts
taking the remainder) with seeds derived from (the base seed, i) alone, in
one lockstep environment group unless the config names another grouping,
so that the part's content does not depend on who records it, nor on that
machine's core count (`environments.env_groups` would pick by it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from multidistill import acting, datasets, environments, files, interrupts
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

BEHAVIOURS = datasets.SESSION_BEHAVIOURS


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """How one game's dataset is collected.

    Attributes:
      num_agent_steps: the file holds at least this many agent steps when done
        (whole episodes only, so it may hold a little more).
      behaviour: who acts, one of `BEHAVIOURS` ("student" and "mixture" need
        a student network, see `make_behaviour`).
      beta: with "mixture", probability that the teacher acts at a step
        (DAgger's beta); the student acts otherwise.
      epsilon: probability of a uniformly random action instead of the
        behaviour policy's.
      num_envs: environments stepped together (one labeller call per step).
      num_threads: emulator threads (0: one per core).
      num_env_groups: groups the environments are split into
        (`acting.play`); 0 picks by core count (`environments.env_groups`).
      overlap_env_groups: overlap the groups' emulation with inference
        (True) or step them in lockstep, one labeller call for all (False);
        None picks by core count.
      seed: base seed for environments and exploration.
    """

    num_agent_steps: int = 100_000
    behaviour: str = "teacher"
    beta: float = 0.5
    epsilon: float = 0.05
    num_envs: int = 32
    num_threads: int = 0
    num_env_groups: int = 0
    overlap_env_groups: bool | None = None
    seed: int = 0

    def __post_init__(self):
        if self.num_agent_steps < 1:
            raise ValueError(f"num_agent_steps must be >= 1, found {self.num_agent_steps}")
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {list(BEHAVIOURS)}, "
                             f"found {self.behaviour!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], found {self.beta}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], found {self.epsilon}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, found {self.num_envs}")


# -- behaviour policies ------------------------------------------------------


class BehaviourPolicy(Protocol):
    """Who acts while recording.

    Attributes:
      name: one of `BEHAVIOURS` (recorded in the session table).
      beta: probability that the teacher acts at a step.
      epsilon: probability of a uniformly random action on top.
      sha256: checksum of the acting network(s) ("" for random).
    """

    name: str
    beta: float
    epsilon: float
    sha256: str

    def probabilities(self, observations: np.ndarray, labels: dict) -> np.ndarray:
        """(B, A) probabilities of each action, exploration included."""

    def act(self, observations: np.ndarray, labels: dict, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
        """Actions (B,) int32 and their log-probabilities (B,) float32.

        Args:
          observations: (B, S, H, W) uint8.
          labels: the labeller's labels of these observations
            (`teachers.Teacher.label`).
          rng: source of randomness.
        """


@dataclasses.dataclass
class TeacherBehaviour:
    """The teacher acts by its own rule (`teachers.act`), reusing its labels."""

    kind: str
    epsilon: float
    sha256: str
    name: str = "teacher"
    beta: float = 1.0

    def probabilities(self, observations, labels):
        return teachers_lib.policy_probabilities(labels["outputs"], self.kind, self.epsilon)

    def act(self, observations, labels, rng):
        outputs = labels["outputs"]
        actions = teachers_lib.act(outputs, self.kind, self.epsilon, rng)
        return actions, teachers_lib.action_log_probs(outputs, self.kind, self.epsilon,
                                                      actions)


@dataclasses.dataclass
class NetworkBehaviour:
    """Another network acts (a student's head), by the acting rule `kind`.

    Attributes:
      predict: observations (B, S, H, W) uint8 -> outputs (B, A).
      kind: its acting rule, "q_values" (argmax) or "logits" (sample); a
        student acts by the rule of the teacher it learnt from.
    """

    predict: Callable[[np.ndarray], np.ndarray]
    kind: str
    epsilon: float
    sha256: str
    name: str = "student"
    beta: float = 0.0
    _cache: tuple = (None, None)

    def _outputs(self, observations):
        # Within one step `probabilities` and `act` see the same batch: one pass.
        if self._cache[0] is not observations:
            self._cache = (observations, np.asarray(self.predict(observations), np.float32))
        return self._cache[1]

    def probabilities(self, observations, labels):
        return teachers_lib.policy_probabilities(self._outputs(observations), self.kind,
                                                 self.epsilon)

    def act(self, observations, labels, rng):
        outputs = self._outputs(observations)
        actions = teachers_lib.act(outputs, self.kind, self.epsilon, rng)
        return actions, teachers_lib.action_log_probs(outputs, self.kind, self.epsilon,
                                                      actions)


@dataclasses.dataclass
class MixtureBehaviour:
    """At each step and environment the teacher acts with probability beta,
    the other policy otherwise (DAgger's mixture; Ross et al. 2011).

    The probability of an action is beta mu_T(a) + (1 - beta) mu_S(a), each
    with its own exploration.
    """

    teacher: TeacherBehaviour
    other: NetworkBehaviour
    beta: float
    name: str = "mixture"

    @property
    def epsilon(self) -> float:
        return self.teacher.epsilon

    @property
    def sha256(self) -> str:
        return hashlib.sha256((self.teacher.sha256 + self.other.sha256).encode()).hexdigest()

    def probabilities(self, observations, labels):
        return (self.beta * self.teacher.probabilities(observations, labels)
                + (1.0 - self.beta) * self.other.probabilities(observations, labels))

    def act(self, observations, labels, rng):
        by_teacher = rng.random(len(observations)) < self.beta
        actions = np.where(by_teacher, self.teacher.act(observations, labels, rng)[0],
                           self.other.act(observations, labels, rng)[0]).astype(np.int32)
        mu = self.probabilities(observations, labels)
        with np.errstate(divide="ignore"):
            log_probs = np.log(mu[np.arange(len(actions)), actions]).astype(np.float32)
        return actions, log_probs


@dataclasses.dataclass
class RandomBehaviour:
    """Uniformly random actions."""

    num_actions: int
    name: str = "random"
    beta: float = 0.0
    epsilon: float = 1.0
    sha256: str = ""

    def probabilities(self, observations, labels):
        return np.full((len(observations), self.num_actions), 1.0 / self.num_actions)

    def act(self, observations, labels, rng):
        actions = rng.integers(0, self.num_actions, size=len(observations)).astype(np.int32)
        return actions, np.full(len(actions), -math.log(self.num_actions), np.float32)


def make_behaviour(config: CollectConfig, teacher: teachers_lib.Teacher,
                   student_predict: Callable[[np.ndarray], np.ndarray] | None = None,
                   student_sha256: str = "") -> BehaviourPolicy:
    """The behaviour policy `config.behaviour` names.

    Args:
      config: names the behaviour, its beta and epsilon.
      teacher: the game's teacher (labeller, and actor for "teacher" and
        "mixture").
      student_predict: for "student" and "mixture": observations -> the
        student head's outputs for this game (`students.head_predictor`).
      student_sha256: checksum of the student file.

    Raises:
      ValueError: "student" or "mixture" without a student.
    """
    if config.behaviour == "teacher":
        return TeacherBehaviour(teacher.kind, config.epsilon, teacher.sha256)
    if config.behaviour == "random":
        return RandomBehaviour(teacher.num_actions)
    if student_predict is None:
        raise ValueError(f"behaviour {config.behaviour!r} needs a student network to act "
                         "(--student)")
    student = NetworkBehaviour(student_predict, teacher.kind, config.epsilon, student_sha256)
    if config.behaviour == "student":
        return student
    return MixtureBehaviour(TeacherBehaviour(teacher.kind, config.epsilon, teacher.sha256),
                            student, config.beta)


# -- recording ----------------------------------------------------------------


def _session_seed(seed: int, session: int) -> int:
    return int(np.random.SeedSequence([seed, session]).generate_state(1)[0] % (2**31 - 1))


def shard_seed(base_seed: int, shard_index: int) -> int:
    """The seed of part `shard_index` of a sharded dataset: the first word
    of child `shard_index` of `numpy.random.SeedSequence(base_seed)` (what
    `.spawn()` gives), reduced to [0, 2**31 - 1). It does not depend on the
    number of parts. Its sessions are seeded from it as a whole file's are
    from the base seed."""
    child = np.random.SeedSequence(base_seed, spawn_key=(shard_index,))
    return int(child.generate_state(1)[0] % (2**31 - 1))


def shard_config(config: CollectConfig, shard: datasets.Shard) -> CollectConfig:
    """The recording settings of one part: its share of the game's budget,
    its own seed (`shard_seed`) and a fixed environment grouping.

    Part i of N records `config.num_agent_steps // N` steps, one more for
    the first `config.num_agent_steps % N` parts, so the shares sum to the
    game's steps. Unset grouping (`num_env_groups` 0, `overlap_env_groups`
    None) becomes one lockstep group, whatever the core count.

    Raises:
      ValueError: fewer steps than parts (a part would record nothing).
    """
    if config.num_agent_steps < shard.count:
        raise ValueError(
            f"num_agent_steps ({config.num_agent_steps}) is fewer than the {shard.count} "
            "shards: every part records at least one step")
    share = config.num_agent_steps // shard.count + (
        shard.index < config.num_agent_steps % shard.count)
    return dataclasses.replace(
        config, num_agent_steps=share, seed=shard_seed(config.seed, shard.index),
        num_env_groups=config.num_env_groups or 1,
        overlap_env_groups=(False if config.overlap_env_groups is None
                            else config.overlap_env_groups))


def _summary(game: str, path, ds) -> dict:
    """The summary of a build that added nothing to the dataset `ds`."""
    return dict(game=game, path=str(path), added_agent_steps=0,
                num_agent_steps=ds.num_agent_steps, num_episodes=ds.num_episodes,
                seconds=0.0, agent_steps_per_s=0.0, interrupted="")


def _open_writer(path: Path, teacher: teachers_lib.Teacher, game: games_lib.Game,
                 preprocessing: environments.Preprocessing, seed: int,
                 shard: datasets.Shard | None = None) -> datasets.DatasetWriter:
    return datasets.DatasetWriter(
        path,
        game=game.name,
        rom_md5=game.rom_md5,
        num_actions=teacher.num_actions,
        feature_dim=teacher.feature_dim,
        preprocessing=preprocessing,
        teacher_sha256=teacher.sha256,
        teacher_kind=teacher.kind,
        teacher_path=str(teacher.path),
        teacher_value_source=teacher.value_source,
        seed=seed,
        shard=shard,
    )


def build_dataset(
    teacher: teachers_lib.Teacher,
    path: str | os.PathLike,
    config: CollectConfig,
    preprocessing: environments.Preprocessing,
    behaviour: BehaviourPolicy | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> dict:
    """Records `behaviour` playing, labelled by `teacher`, into `path`.

    Args:
      teacher: the game's teacher (the labeller).
      path: the dataset file; appended to if it exists and fits. A sharded
        dataset's folder is used as it is when it holds enough steps (it is
        never topped up: `build_shard` writes parts).
      config: sizes and seeds.
      preprocessing: the run's spec; must be the teacher's.
      behaviour: who acts (default: `make_behaviour(config, teacher)`).
      rebuild: delete an existing file first.
      progress: show a progress bar.

    Returns:
      A summary: steps and episodes in the file, steps added, seconds,
      agent steps per second.

    Raises:
      DatasetError: the existing file does not fit (other teacher or spec),
        is damaged, or is locked by another builder; a sharded dataset at
        `path` is incomplete, does not fit, holds too few steps, or is to
        be rebuilt.
    """
    path = Path(path)
    game = games_lib.get_game(teacher.game, preprocessing.full_action_space)
    behaviour = behaviour or make_behaviour(config, teacher)
    if path.is_dir():
        return _use_sharded(path, teacher, game, config, preprocessing, rebuild)
    if path.exists() and not rebuild:
        # Big enough already: read-only, so a training run may hold the file.
        with datasets.Dataset(path) as ds:
            ds.check_compatible(game.name, preprocessing, teacher.sha256)
            if ds.num_agent_steps >= config.num_agent_steps:
                return _summary(game.name, path, ds)
    with datasets.file_lock(path):
        if rebuild and path.exists():
            path.unlink()
        with _open_writer(path, teacher, game, preprocessing, config.seed) as writer:
            return record(writer, teacher, behaviour, game, config, preprocessing, progress)


def _use_sharded(folder: Path, teacher: teachers_lib.Teacher, game: games_lib.Game,
                 config: CollectConfig, preprocessing: environments.Preprocessing,
                 rebuild: bool) -> dict:
    """A sharded dataset as it is, if whole, fitting and big enough."""
    if rebuild:
        raise datasets.DatasetError(
            f"dataset {folder} is sharded (a folder of part files): rebuilding replaces "
            "single files only; rebuild its parts with build_datasets --num_shards=N "
            "--rebuild_datasets, or delete the folder")
    with datasets.Dataset(folder) as ds:
        ds.check_compatible(game.name, preprocessing, teacher.sha256)
        if ds.num_agent_steps < config.num_agent_steps:
            raise datasets.DatasetError(
                f"sharded dataset {folder} holds {ds.num_agent_steps} agent steps, fewer than "
                f"the {config.num_agent_steps} asked for: its parts are never topped up; ask "
                f"for at most {ds.num_agent_steps} steps, or rebuild the parts with more "
                f"(build_datasets --num_shards={ds.num_shards} "
                f"--num_agent_steps={config.num_agent_steps} --rebuild_datasets)")
        return _summary(game.name, folder, ds)


def build_shard(
    teacher: teachers_lib.Teacher,
    datasets_dir: str | os.PathLike,
    config: CollectConfig,
    preprocessing: environments.Preprocessing,
    shard: datasets.Shard,
    behaviour: BehaviourPolicy | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> dict:
    """Records one part of a game's sharded dataset in `datasets_dir`.

    The part (`datasets.part_path`) records `shard_config(config, shard)`:
    its share of `config.num_agent_steps`, seeded from (`config.seed`,
    `shard.index`). It is written as `.partial.h5` and renamed to its final
    name once it holds its share: a killed part resumes from its last whole
    episode on the next call (a new session; a part killed before its first
    episode starts afresh, so it comes out as if never killed), and a
    complete part is left as it is.

    Args:
      teacher: the game's teacher (the labeller).
      datasets_dir: the folder of datasets (the part goes to `<game>/`).
      config: the whole game's recording settings (`num_agent_steps`: the
        steps of all parts together; `seed`: the base seed).
      preprocessing: the run's spec; must be the teacher's.
      shard: which part, of how many; its `base_seed` must be `config.seed`.
      behaviour: who acts (default: `make_behaviour`).
      rebuild: delete this part (complete or partial) first.
      progress: show a progress bar.

    Returns:
      The summary of `build_dataset`, `path` the part's final name (its
      `.partial.h5` name while `interrupted`).

    Raises:
      DatasetError: the game's dataset is a single file, or its folder holds
        parts of another split; an existing part does not fit (teacher,
        spec, base seed), holds fewer steps than its share, or is locked.
      ValueError: `shard.base_seed` is not `config.seed`, or fewer steps
        than parts.
    """
    if shard.base_seed != config.seed:
        raise ValueError(f"shard base seed {shard.base_seed} is not the config's seed "
                         f"{config.seed}")
    game = games_lib.get_game(teacher.game, preprocessing.full_action_space)
    part_config = shard_config(config, shard)
    behaviour = behaviour or make_behaviour(part_config, teacher)
    datasets.check_layout(datasets_dir, game.name, shard.count)
    final = datasets.part_path(datasets_dir, game.name, shard)
    partial = datasets.partial_path(final)
    with datasets.file_lock(final):  # Guards both names of this part.
        if rebuild:
            final.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        if final.exists():
            with datasets.Dataset(final) as ds:
                _check_part(ds, game.name, preprocessing, teacher.sha256, shard)
                if ds.num_agent_steps < part_config.num_agent_steps:
                    raise datasets.DatasetError(
                        f"part {final} is complete with {ds.num_agent_steps} agent steps, "
                        f"fewer than the {part_config.num_agent_steps} this run asks of part "
                        f"{shard.index} ({config.num_agent_steps} for {game.name} over "
                        f"{shard.count} parts): a complete part is never topped up; pass "
                        "--rebuild_datasets to write it anew, or ask for fewer steps")
                return _summary(game.name, final, ds)
        if partial.exists():
            with datasets.Dataset(partial) as ds:
                empty = ds.num_episodes == 0
            if empty:  # Killed before its first episode: as if never started.
                partial.unlink()
        with _open_writer(partial, teacher, game, preprocessing, part_config.seed,
                          shard) as writer:
            summary = record(writer, teacher, behaviour, game, part_config, preprocessing,
                             progress)
            complete = writer.num_agent_steps >= part_config.num_agent_steps
        if not complete:  # Interrupted: resumed by the next call.
            return summary
        files.rename_into_place(partial, final)
    return dict(summary, path=str(final))


def _check_part(ds: datasets.Dataset, game: str, preprocessing: environments.Preprocessing,
                teacher_sha256: str, shard: datasets.Shard) -> None:
    """Raises DatasetError unless a complete part fits this run and is `shard`."""
    ds.check_compatible(game, preprocessing, teacher_sha256)
    found = ds.shard
    if found != shard:
        was = ("a whole dataset" if found is None else
               f"part {found.index} of {found.count} with base seed {found.base_seed}")
        raise datasets.DatasetError(
            f"part {ds.path} was written as {was}, this run asks for part {shard.index} of "
            f"{shard.count} with base seed {shard.base_seed} (--seed): delete it or pass "
            "--rebuild_datasets")


def record(writer: datasets.DatasetWriter, labeller: teachers_lib.Teacher,
           behaviour: BehaviourPolicy, game: games_lib.Game, config: CollectConfig,
           preprocessing: environments.Preprocessing, progress: bool) -> dict:
    """One recording session into an open writer, until it holds
    `config.num_agent_steps` steps (see `build_dataset`)."""
    start_steps = writer.num_agent_steps
    summary = dict(game=game.name, path=str(writer.path), added_agent_steps=0)
    if start_steps >= config.num_agent_steps:
        return dict(summary, num_agent_steps=start_steps, num_episodes=writer.num_episodes,
                    seconds=0.0, agent_steps_per_s=0.0)
    seed = _session_seed(config.seed, len(writer.sessions))
    writer.start_session(datasets.Session(
        seed=seed, behaviour=behaviour.name, beta=behaviour.beta,
        epsilon=behaviour.epsilon, behaviour_sha256=behaviour.sha256,
        labeller_sha256=labeller.sha256))
    rng = np.random.default_rng(seed)
    num_groups, overlap = environments.env_groups(config.num_env_groups,
                                                  config.overlap_env_groups)
    env = environments.make_vector_envs(
        game.name, preprocessing, config.num_envs, num_threads=config.num_threads,
        num_groups=num_groups)

    def policy(observations):
        labels = labeller.label(observations)
        actions, log_probs = behaviour.act(observations, labels, rng)
        return actions, dict(labels, log_probs=log_probs)

    buffers = [_EpisodeBuffer() for _ in range(config.num_envs)]
    # Whole episodes, and no recorded step thrown away: an environment that
    # finishes an episode starts another only while the target is not met by
    # the steps written plus those the other episodes under way are expected
    # to reach (see `_projected_steps`); the last one recording goes on until
    # the target is met. A top-up of a file that has episodes starts only as
    # many environments as its mean episode length says are needed.
    recording = np.ones(config.num_envs, dtype=bool)
    if writer.num_episodes:
        mean_length = writer.num_agent_steps / writer.num_episodes
        needed = math.ceil((config.num_agent_steps - start_steps) / mean_length)
        recording[max(1, needed):] = False
    bar = _progress_bar(progress, config.num_agent_steps - start_steps, game.name)
    t0 = time.perf_counter()
    startup = None
    interrupted = ""
    appender = _BackgroundAppender(writer)
    with interrupts.deferred_interrupts() as stop:
        try:
            for step in acting.play(env, policy, seed, active=recording, overlap=overlap):
                if startup is None:  # Resets and the first inference calls.
                    startup = time.perf_counter() - t0
                for i in np.flatnonzero(step.valid & recording):
                    buffers[i].add(step, i)
                    if not (step.terminated[i] or step.truncated[i]):
                        continue
                    episode = buffers[i].take()
                    appender.append(episode)
                    if bar is not None:
                        bar.update(min(len(episode["frames"]), bar.total - bar.n))
                        bar.set_postfix(episodes=appender.num_episodes,
                                        mean_return=f"{appender.mean_episode_return:.1f}")
                    if _projected_steps(appender, buffers, recording, i) >= \
                            config.num_agent_steps:
                        recording[i] = False
                if stop.requested:  # Whole episodes are written; the rest is dropped.
                    interrupted = stop.name
                    break
                if not recording.any():
                    break
        finally:
            environments.close_all(env)
            try:
                appender.close()  # Every episode handed over is written.
            finally:
                if bar is not None:
                    bar.close()
    seconds = time.perf_counter() - t0
    startup = seconds if startup is None else startup
    added = writer.num_agent_steps - start_steps
    # Steps/s in steady state: environment start-up (resets, first inference)
    # is a fixed cost, reported apart.
    return dict(summary, num_agent_steps=writer.num_agent_steps,
                num_episodes=writer.num_episodes, added_agent_steps=added,
                seconds=seconds, startup_seconds=startup,
                agent_steps_per_s=added / max(seconds - startup, 1e-9),
                interrupted=interrupted)


def _projected_steps(appender: _BackgroundAppender, buffers: list[_EpisodeBuffer],
                     recording: np.ndarray, but: int) -> float:
    """Steps the file is expected to hold once the episodes under way end.

    The steps handed to the writer, plus, for each environment recording
    except `but`, the length its episode has reached or the mean episode
    length so far, whichever is larger.
    """
    mean_length = appender.num_agent_steps / max(appender.num_episodes, 1)
    return appender.num_agent_steps + sum(
        max(len(buffers[j]), mean_length) for j in np.flatnonzero(recording) if j != but)


class _BackgroundAppender:
    """Appends whole episodes to a `DatasetWriter` from a background thread.

    Compressing and checksumming an episode takes tens of milliseconds;
    h5py releases the GIL while it writes, so the writing overlaps with
    emulation and inference instead of stalling the play loop. At most
    `max_pending` episodes wait (bounded memory). Counts (`num_agent_steps`,
    ...) include the episodes handed over, written or not. A write error is
    raised by the next `append` or by `close`; the episodes written before
    it are intact (the writer's commit protocol).
    """

    def __init__(self, writer: datasets.DatasetWriter, max_pending: int = 4):
        self.writer = writer
        self.num_agent_steps = writer.num_agent_steps
        self.num_episodes = writer.num_episodes
        self._return_sum = writer.mean_episode_return * writer.num_episodes \
            if writer.num_episodes else 0.0
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="multidistill-writer",
                                        daemon=True)
        self._thread.start()

    @property
    def mean_episode_return(self) -> float:
        return self._return_sum / self.num_episodes if self.num_episodes else float("nan")

    def _run(self) -> None:
        while True:
            episode = self._queue.get()
            if episode is None:
                return
            if self._error is None:  # After an error, the rest is dropped.
                try:
                    self.writer.append_episode(episode)
                except BaseException as e:  # Handed to the main thread.
                    self._error = e

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def append(self, episode: dict[str, np.ndarray]) -> None:
        self._raise_error()
        self._queue.put(episode)
        self.num_agent_steps += len(episode["frames"])
        self.num_episodes += 1
        self._return_sum += float(np.sum(episode["rewards"], dtype=np.float64))

    def close(self) -> None:
        """Waits until every episode handed over is written; raises a write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_error()


class _EpisodeBuffer:
    """The steps of one environment's current episode.

    Rows are copied into arrays owned by the buffer (grown by doubling), so
    the step's batch arrays (all environments' frame stacks, teacher outputs)
    are freed at once: holding views into them would keep every step's whole
    batch alive until the episode ends, hundreds of MB, and make each new
    batch land in fresh, cold memory.
    """

    def __init__(self):
        self._cols: dict[str, np.ndarray] | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, step: acting.StepBatch, i: int):
        row = {
            "frames": step.observations[i, -1],
            "teacher_outputs": step.extras["outputs"][i],
            "teacher_features": step.extras["features"][i],
            "teacher_values": step.extras["values"][i],
            "actions": step.actions[i],
            "behaviour_log_probs": step.extras["log_probs"][i],
            "rewards": step.rewards[i],
            "terminated": step.terminated[i],
            "truncated": step.truncated[i],
        }
        if self._cols is None:
            self._cols = {k: np.empty((1024,) + np.shape(v), _BUFFER_DTYPES[k])
                          for k, v in row.items()}
        if self._n == len(self._cols["frames"]):
            self._cols = {k: np.concatenate([v, np.empty_like(v)])
                          for k, v in self._cols.items()}
        for k, v in row.items():
            self._cols[k][self._n] = v
        self._n += 1

    def take(self) -> dict[str, np.ndarray]:
        """The episode's arrays (copies); the buffer starts empty again."""
        n, self._n = self._n, 0
        return {k: v[:n].copy() for k, v in self._cols.items()}


_BUFFER_DTYPES = dict(frames=np.uint8, teacher_outputs=np.float32,
                      teacher_features=np.float32, teacher_values=np.float32,
                      actions=np.uint8, behaviour_log_probs=np.float32, rewards=np.float32,
                      terminated=bool, truncated=bool)


def _progress_bar(enabled: bool, total: int, game: str):
    if not enabled:
        return None
    from multidistill import progress

    return progress.bar(total, f"build {game}", "step", smoothing=0.05)


def ensure_datasets(
    game_names, teachers_dir, datasets_dir, config: CollectConfig,
    preprocessing: environments.Preprocessing, rebuild: bool = False,
    allow_unsafe_teacher: bool = False, progress: bool = True,
) -> dict[str, dict]:
    """Loads each game's teacher and builds (or tops up) its dataset, the
    teacher acting and labelling (the default behaviour).

    Every existing file is checked against its teacher before any recording
    starts. Returns per game the build summary.
    """
    teachers = {game: teachers_lib.load_teacher(game, teachers_dir, preprocessing,
                                                allow_unsafe=allow_unsafe_teacher)
                for game in game_names}
    check_existing(teachers, datasets_dir, preprocessing, rebuild)
    summaries = {}
    for game in game_names:
        summaries[game] = build_dataset(teachers[game], datasets.dataset_path(datasets_dir, game),
                                        config, preprocessing, rebuild=rebuild,
                                        progress=progress)
        if summaries[game].get("interrupted"):
            break
    return summaries


def check_existing(teachers: dict[str, teachers_lib.Teacher], datasets_dir,
                   preprocessing: environments.Preprocessing, rebuild: bool,
                   num_shards: int = 1) -> None:
    """Refuses, before any long work, a dataset labelled by another teacher
    or with another preprocessing (unless it is to be rebuilt), and a
    dataset in another layout than `num_shards` asks for (a single file for
    1, a folder of parts for more; `datasets.check_layout`), whatever
    `rebuild`. With `num_shards` > 1 every part there, complete or being
    written, is checked."""
    for game, teacher in teachers.items():
        datasets.check_layout(datasets_dir, game, num_shards)
        if rebuild:
            continue
        folder = datasets.shard_folder(datasets_dir, game)
        if num_shards > 1:
            complete, partial, _ = (datasets.part_files(folder) if folder.is_dir()
                                    else ({}, {}, set()))
            paths = [*complete.values(), *partial.values()]
        else:
            path = datasets.dataset_path(datasets_dir, game)
            paths = [path] if path.exists() else []
        for path in paths:
            with datasets.Dataset(path) as ds:
                ds.check_compatible(game, preprocessing, teacher.sha256)
