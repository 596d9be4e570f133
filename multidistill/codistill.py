"""Codistillation: n students trained at once, each on its own share of the
data, each also pulled toward its peers' stale predictions.

Anil et al. (2018), "Large scale distributed neural network training
through online distillation", Algorithm 1 (codistillation): every model i
minimises its own loss phi on its own examples plus a distillation term psi
between the average prediction of the other models on the same examples and
its own; for the first n_burn_in steps the models train on phi alone; the
other models' predictions may come from stale copies whose weights are
exchanged only now and then (the paper's Sec. 2-3: checkpoints reloaded
every so many steps, which costs little communication and still helps).
Here phi is the usual distillation loss against the teacher labels
(`objectives.Distillation`) and

    L_i = phi_i(batch_i) + w * [step >= burn_in] * KL(p_peers || p_i)

    p_i     = softmax(z_i)                        (the student's policy)
    p_peers = mean_{j != i} softmax(z_j^stale)    (its peers' stale policies)

on the same batch. The KL is at temperature 1 on both sides: a student's
logits are already a policy, trained to match the teacher's at the game's
tau (softmax(q_T / tau)), so the peer's softmax(z_j) is the target as it is;
dividing it by tau again (0.01 for Q-value teachers) would turn the peer
into an argmax. The weight w is 1 by default: Algorithm 1 adds psi to phi
unweighted.

Staleness schedule (pure functions of the step, so a resumed run sees the
copies the uninterrupted run saw). Gradient step k (0-based: batch index k)
of every student sees its peers' weights as they were after
`snapshot_step(k) = K * floor(k / K)` gradient steps, K = refresh_steps;
steps k < burn_in_steps see no peer term (`peer_active`). The students
step in alternation (student 0, 1, ..., n-1 on batch k, then on k + 1), so
at every multiple of K all of them have made exactly k steps when the
snapshot is taken: a student's copy of its peer lags by k mod K steps.

Run directory:

    student_<i>/        a `distiller.Distiller` run each (config.json,
                        checkpoint.npz, student.keras, metrics.jsonl), on
                        share i of n of each dataset's training episodes
                        (`pipeline.share_episodes`); the held-out episodes
                        are the same for all
    stale_step<k>.npz   the students' weights after k steps (the last
                        snapshots: a resumed run reloads its copies from
                        these; older ones are removed once every student's
                        checkpoint is past them)

The objective (`Codistillation`) reads the peers' predictions from the batch
(`peer_logits`, `peer_active`), which the driver's batch source adds
(`PeerLabelledSource`): the loss stays a pure function of the batch.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from multidistill import distiller, environments, files, interrupts, losses, objectives, pipeline

PEER_FIELDS = ("peer_logits", "peer_active")
_SNAPSHOT = re.compile(r"stale_step(\d+)\.npz$")


# -- the staleness schedule ----------------------------------------------------------

def snapshot_step(grad_step: int, refresh_steps: int) -> int:
    """Gradient steps the peers had made in the copy that batch `grad_step`
    (0-based) sees: the last multiple of `refresh_steps` at or before it."""
    return (int(grad_step) // int(refresh_steps)) * int(refresh_steps)


def is_refresh(grad_step: int, refresh_steps: int) -> bool:
    """Whether the copies are refreshed before batch `grad_step`."""
    return int(grad_step) % int(refresh_steps) == 0


def peer_active(grad_step: int, burn_in_steps: int) -> bool:
    """Whether batch `grad_step` (0-based) has the peer term (after the burn-in)."""
    return int(grad_step) >= int(burn_in_steps)


def student_seed(seed: int, index: int) -> int:
    """Student `index`'s seed (initial weights, batch draws): student 0 keeps the
    run's seed, as a plain run of that seed has it; the others are apart."""
    return int(seed) + 1000 * int(index)


# -- the objective ---------------------------------------------------------------------

def peer_kl(peer_logits, student_logits, action_mask=None):
    """KL(p_peers || p_student) at temperature 1, the batch mean.

        p_peers = softmax(peer_logits), log p_S = log_softmax(z_S)
        loss = mean_batch sum_a p_peers(a) (log p_peers(a) - log p_S(a))

    `peer_logits` may be the log of the mean of several peers' policies
    (`mean_policy_logits`): softmax gives that mean back.
    """
    return losses.kl(peer_logits, student_logits, temperature=1.0, action_mask=action_mask)


@dataclasses.dataclass(frozen=True)
class Codistillation:
    """A distillation objective plus the pull toward the peers' stale policies.

        L = base.loss + weight * mean_batch(peer_active) * KL(p_peers || p_S)

    Attributes:
      base: the distillation objective on the teacher's labels.
      weight: w, the weight of the peer term (>= 0; Algorithm 1: 1).
      num_students: n, the students trained together (>= 2).
      refresh_steps: K, gradient steps between refreshes of the stale copies.
      burn_in_steps: gradient steps before the peer term switches on.
    """

    base: objectives.Distillation = objectives.Distillation()
    weight: float = 1.0
    num_students: int = 2
    refresh_steps: int = 500
    burn_in_steps: int = 2_500

    def __post_init__(self):
        if not isinstance(self.base, objectives.Distillation):
            raise ValueError(f"base must be an objectives.Distillation, found "
                             f"{type(self.base).__name__}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, found {self.weight}")
        if self.num_students < 2:
            raise ValueError(f"num_students must be >= 2, found {self.num_students}")
        if self.refresh_steps < 1:
            raise ValueError(f"refresh_steps must be >= 1, found {self.refresh_steps}")
        if self.burn_in_steps < 0:
            raise ValueError(f"burn_in_steps must be >= 0, found {self.burn_in_steps}")

    # What the distiller and the student read of an objective, from the base.
    @property
    def policy_loss(self) -> str:
        return self.base.policy_loss

    @property
    def temperatures(self) -> tuple[float, ...]:
        return self.base.temperatures

    @property
    def needs_feature_projections(self) -> bool:
        return self.base.needs_feature_projections

    @property
    def fields(self) -> tuple[str, ...]:
        return self.base.fields + PEER_FIELDS

    def to_dict(self) -> dict:
        return {"name": "codistillation", "base": self.base.to_dict(), "weight": self.weight,
                "num_students": self.num_students, "refresh_steps": self.refresh_steps,
                "burn_in_steps": self.burn_in_steps}

    def terms(self, student, x, y, y_pred) -> dict:
        """The base's terms and "peers", the weighted peer term."""
        from keras import ops

        out = self.base.terms(student, x, y, y_pred)
        game_id = ops.cast(x["game_id"], "int32")
        active = ops.mean(ops.cast(y["peer_active"], "float32"))
        out["peers"] = self.weight * active * peer_kl(
            ops.stop_gradient(ops.cast(y["peer_logits"], "float32")), y_pred["logits"],
            action_mask=student.action_mask(game_id))
        return out

    def loss(self, student, x, y, y_pred):
        return objectives.sum_of_terms(self.terms(student, x, y, y_pred))


# -- the batch source ------------------------------------------------------------------

class PeerLabelledSource:
    """A batch source whose batches also carry the peers' stale predictions.

    Wraps a source (one student's share); `label(index, x)` gives batch
    `index`'s (peer_logits (B, A) float32, active float). It is called as the
    student takes the batch (in the consumer's thread, not the prefetching
    one), so that the driver can refresh the copies between steps.
    """

    def __init__(self, source, label: Callable[[int, dict], tuple[np.ndarray, float]]):
        self.source = source
        self._label = label
        self.games = source.games
        self.num_actions = source.num_actions
        self.feature_dims = source.feature_dims
        self.fields = tuple(source.fields) + PEER_FIELDS

    @property
    def batch_size(self) -> int:
        return self.source.batch_size

    def identity(self) -> dict:
        return self.source.identity()

    def _add(self, index, x, y):
        logits, active = self._label(index, x)
        y = dict(y, peer_logits=np.asarray(logits, np.float32),
                 peer_active=np.full(len(x["game_id"]), float(active), np.float32))
        return x, y

    def batch(self, index: int) -> tuple[dict, dict]:
        return self._add(index, *self.source.batch(index))

    def iterate(self, start: int) -> Iterator[tuple[int, dict, dict]]:
        for index, x, y in self.source.iterate(start):
            yield (index, *self._add(index, x, y))

    def holdout(self, game_index: int):
        return self.source.holdout(game_index)

    def close(self) -> None:
        self.source.close()


def mean_policy_logits(logits: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """log of the mean of several policies softmax(z_j) over the valid actions
    (`mask` (B, A) 0/1); invalid actions get a large negative logit. One
    policy gives its own log-softmax back."""
    masked = [np.where(mask > 0, z.astype(np.float64), -np.inf) for z in logits]
    probs = [np.exp(z - z.max(-1, keepdims=True)) for z in masked]
    mean = np.mean([p / p.sum(-1, keepdims=True) for p in probs], axis=0)
    with np.errstate(divide="ignore"):
        out = np.log(mean)
    return np.where(mask > 0, out, -1e9).astype(np.float32)


# -- the driver --------------------------------------------------------------------

def student_dir(run_dir: str | os.PathLike, index: int) -> Path:
    return Path(run_dir) / f"student_{index}"


class Codistiller:
    """Owns n students (a `distiller.Distiller` each, in `<run_dir>/student_<i>`),
    their stale copies, and the loop that steps them in alternation."""

    def __init__(self, run_dir: str | os.PathLike, config: distiller.DistillConfig,
                 sources: Sequence, spec: environments.Preprocessing,
                 teacher_kinds: Sequence[str]):
        """Builds the students, or resumes them.

        Args:
          config: the run's settings; `config.objective` a `Codistillation`.
            Student i trains with the pipeline seed `student_seed(seed, i)`.
          sources: per student, its batch source (share i of n; `open_sources`).
        """
        objective = config.objective
        if not isinstance(objective, Codistillation):
            raise distiller.TrainingError("a codistillation run needs a Codistillation "
                                          f"objective, found {type(objective).__name__}")
        n = objective.num_students
        if len(sources) != n:
            raise distiller.TrainingError(f"{n} students need {n} sources, found {len(sources)}")
        self.run_dir = Path(run_dir)
        self.config = config
        self.objective = objective
        self.students: list[distiller.Distiller] = []
        try:
            for i, source in enumerate(sources):
                c = dataclasses.replace(config, pipeline=dataclasses.replace(
                    config.pipeline, seed=student_seed(config.pipeline.seed, i)))
                wrapped = PeerLabelledSource(source, self._labeller(i))
                self.students.append(distiller.Distiller(student_dir(run_dir, i), c, wrapped,
                                                         spec, teacher_kinds))
        except BaseException:
            for d in self.students:  # Their writers; the caller closes the sources.
                d.writer.close()
            raise
        # One stale copy per student; student i's peers are the copies j != i.
        self.stale = [distiller.build_student(self.students[0].config, source.num_actions,
                                              source.feature_dims, spec)[0]
                      for source in sources]
        self.snapshot_at = None  # Steps of the weights the copies hold.

    @property
    def grad_steps(self) -> list[int]:
        return [d.grad_step for d in self.students]

    def snapshot_path(self, grad_step: int) -> Path:
        return self.run_dir / f"stale_step{int(grad_step)}.npz"

    def _refresh(self, grad_step: int) -> None:
        """The copies hold the students' weights after `snapshot_step(grad_step)` steps."""
        s = snapshot_step(grad_step, self.objective.refresh_steps)
        if self.snapshot_at == s:
            return
        path = self.snapshot_path(s)
        if all(step == s for step in self.grad_steps):  # Taken now, kept for a resume.
            weights = [d.student.get_weights() for d in self.students]
            files.atomic_write_bytes(path, _npz_bytes(weights))
        elif path.exists():
            with np.load(path) as f:
                weights = [[f[f"s{j}_{k}"] for k in range(int(f[f"s{j}_count"]))]
                           for j in range(len(self.students))]
        else:
            raise distiller.TrainingError(
                f"{path} is missing: the stale copies of step {s} cannot be rebuilt for "
                f"batch {grad_step} (students at steps {self.grad_steps}); delete "
                f"{self.run_dir} to start over")
        for model, w in zip(self.stale, weights):
            model.set_weights(w)
        self.snapshot_at = s

    def _labeller(self, i: int):
        def label(index: int, x: dict):
            from keras import ops

            d = self.students[i]
            a = d.source.source  # The share's own source (widest action count).
            width = max(a.num_actions)
            if not peer_active(index, self.objective.burn_in_steps):
                # Still refresh on schedule: the copies of a later step may be these.
                if is_refresh(index, self.objective.refresh_steps):
                    self._refresh(index)
                return np.zeros((len(x["game_id"]), width), np.float32), 0.0
            self._refresh(index)
            peers = [np.asarray(d.engine.predict_on_batch(m, x)["logits"], np.float32)
                     for j, m in enumerate(self.stale) if j != i]
            if len(peers) == 1:
                return peers[0], 1.0
            mask = np.asarray(ops.convert_to_numpy(
                d.student.action_mask(ops.convert_to_tensor(x["game_id"], "int32"))))
            return mean_policy_logits(peers, mask), 1.0
        return label

    def steps(self) -> Iterator[tuple[int, distiller.StepResult]]:
        """Steps the students in alternation up to `num_grad_steps`: yields
        (student index, its step result). A student behind the others (a run
        stopped between two students' checkpoints) steps alone until level."""
        gens = [d.steps() for d in self.students]
        while True:
            low = min(self.grad_steps)
            if low >= self.config.num_grad_steps:
                return
            for i, d in enumerate(self.students):
                if d.grad_step == low:
                    yield i, next(gens[i])

    def _checkpoint(self) -> None:
        for d in self.students:
            d.save_checkpoint()
        # Snapshots no resume can need any more: before every student's copy step.
        keep = snapshot_step(min(self.grad_steps), self.objective.refresh_steps)
        for p in self.run_dir.glob("stale_step*.npz"):
            m = _SNAPSHOT.search(p.name)
            if m and int(m.group(1)) < keep:
                p.unlink(missing_ok=True)

    def train(self, progress: bool = True) -> dict:
        """`steps()` with logging (each student's metrics.jsonl), held-out
        metrics, checkpoints and signal handling; returns a summary."""
        c = self.config
        start = self.grad_steps
        t0 = time.perf_counter()
        for d in self.students:  # Their own clocks (train_seconds) run too.
            d._t0 = t0
        recent = [[] for _ in self.students]
        bar = None
        if progress:
            from multidistill import progress as progress_lib

            bar = progress_lib.bar(c.num_grad_steps, "codistill", "step", initial=min(start))
        try:
            with interrupts.deferred_interrupts() as stop:
                for d in self.students:
                    if d.grad_step == 0:
                        d.writer.scalars(0, d.heldout_metrics())
                for i, r in self.steps():
                    d = self.students[i]
                    recent[i] = (recent[i] + [r.loss])[-50:]
                    if r.grad_step % 50 == 0:
                        d.writer.scalars(r.grad_step, {
                            "losses/train_loss": float(np.mean(recent[i])),
                            "codistill/peer_active": float(peer_active(
                                r.grad_step - 1, self.objective.burn_in_steps)),
                            "codistill/copy_lag_steps": float(
                                r.grad_step - 1 - snapshot_step(r.grad_step - 1,
                                                                self.objective.refresh_steps))})
                    if r.grad_step % c.eval_every_steps == 0:
                        d.writer.scalars(r.grad_step, d.heldout_metrics())
                    last = all(s.grad_step >= r.grad_step for s in self.students)
                    if bar is not None and last:
                        bar.update(1)
                    if last and (r.grad_step % c.checkpoint_every_steps == 0
                                 or stop.requested):
                        self._checkpoint()
                        if stop.requested:
                            raise KeyboardInterrupt
        finally:
            if bar is not None:
                bar.close()
        if self.grad_steps != start or not all(d.student_path.exists()
                                               for d in self.students):
            for d in self.students:
                if d.grad_step % c.eval_every_steps:
                    d.writer.scalars(d.grad_step, d.heldout_metrics())
            self._checkpoint()
        seconds = time.perf_counter() - t0
        run_seconds = []
        for d in self.students:
            run_seconds.append(d.train_seconds)
            d._seconds_before, d._t0 = d.train_seconds, None
        # The students share one clock (they alternate): a student's own
        # train_seconds is the run's wall-clock, not its share of it.
        return {"grad_steps": min(self.grad_steps), "students": len(self.students),
                "trained_steps": min(self.grad_steps) - min(start), "seconds": seconds,
                "samples_per_s": sum(d.source.batch_size for d in self.students)
                * (min(self.grad_steps) - min(start)) / max(seconds, 1e-9),
                "run_train_seconds": max(run_seconds),
                "student_paths": [str(d.student_path) for d in self.students]}

    def close(self) -> None:
        for d in self.students:
            d.close()


def _npz_bytes(weights: list[list[np.ndarray]]) -> bytes:
    import io

    arrays = {}
    for j, w in enumerate(weights):
        arrays[f"s{j}_count"] = np.asarray(len(w))
        arrays.update({f"s{j}_{k}": v for k, v in enumerate(w)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def open_sources(paths: Sequence, config: distiller.DistillConfig,
                 max_episodes: Sequence[int] | None = None) -> list[pipeline.HDF5Source]:
    """Per student, the HDF5 source of its share of the training episodes
    (the same held-out episodes for all); the base fields only (the peers'
    are added by the driver)."""
    n = config.objective.num_students
    fields = config.objective.base.fields
    out = []
    try:
        for i in range(n):
            c = dataclasses.replace(config.pipeline,
                                    seed=student_seed(config.pipeline.seed, i))
            out.append(pipeline.HDF5Source(paths, c, fields=fields, max_episodes=max_episodes,
                                           share=(i, n)))
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def distil(run_dir: str | os.PathLike, config: distiller.DistillConfig, paths: Sequence,
           spec: environments.Preprocessing, teacher_kinds: Sequence[str],
           progress: bool = True) -> tuple[dict, list[Path]]:
    """The main job's distillation stage with codistillation: trains the
    students in `<run_dir>/student_<i>` (resuming them), on the data prefix
    student 0 started from (`distiller.data_prefix`).

    Returns:
      (the `Codistiller.train` summary, each student's path).

    Raises:
      KeyboardInterrupt: SIGINT or SIGTERM; every student was checkpointed.
    """
    sources = open_sources(paths, config, distiller.data_prefix(student_dir(run_dir, 0)))
    try:
        run = Codistiller(run_dir, config, sources, spec, teacher_kinds)
    except BaseException:
        for s in sources:
            s.close()
        raise
    try:
        summary = run.train(progress=progress)
        return summary, [d.student_path for d in run.students]
    finally:
        run.close()

