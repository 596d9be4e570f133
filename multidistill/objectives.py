"""Objectives: what the student is trained to minimise, and the data it needs.

An objective is a frozen config that names its loss terms and their
weights, and declares the batch fields those terms read (`fields`, among
`datasets.STEP_FIELDS`), so that a batch source loads exactly those. The
student (`networks.MultiTaskStudent`) only computes its forward pass; its
`compute_loss` hands the batch to the objective attached to it, which keeps
Keras' `fit()`, callbacks and every backend working. A saved student does
not carry its objective: it loads without knowing how it was trained.

`Distillation` is the objective of Rusu et al. (2016) and Parisotto et al.
(2016, Actor-Mimic): one policy term per sample, the loss of the sample's
game between the teacher's outputs and the student's logits (see
`multidistill.losses`), plus, with `feature_beta` > 0, Actor-Mimic's
feature regression of the teacher's last hidden layer:

    L = mean_batch [ policy_loss(q_T, z_S; tau_game) ]
        + feature_beta * mean_batch || f_game(h_S) - h_T ||^2

Other objectives: `update_rules.UpdateRule` (Czarnecki et al. 2019) and
`iekd.IEKD` (Huang et al. 2021, which also splits the student's shared
hidden layer, `factor_dims`, and fits its teachers' auto-encoders first,
`prepare`).

Every term is written with `keras.ops`, so it runs on every Keras backend.
"""

from __future__ import annotations

import dataclasses

from multidistill import losses


def sum_of_terms(terms: dict):
    """An objective's scalar loss: the sum of its named terms (the "policy"
    term first, as the objectives have always added them)."""
    total = terms["policy"]
    for name, value in terms.items():
        if name != "policy":
            total = total + value
    return total


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Policy distillation with optional Actor-Mimic feature regression.

    Attributes:
      policy_loss: the policy term, "kl" (temperature-sharpened KL, Rusu et
        al.), "nll" (negative log-likelihood of the teacher's argmax action)
        or "mse" (squared error to the teacher's outputs); see
        `losses.POLICY_LOSSES`.
      temperatures: per game (in the student's head order) tau, dividing
        the teacher's outputs in the KL term (0.01 for Q-value teachers, 1
        for logits; `default_temperature`).
      feature_beta: weight of feature regression (0: off; the paper: 0.01).
      policy_weight: weight of the policy term.
    """

    policy_loss: str = "kl"
    temperatures: tuple[float, ...] = ()
    feature_beta: float = 0.0
    policy_weight: float = 1.0

    def __post_init__(self):
        if self.policy_loss not in losses.POLICY_LOSSES:
            raise ValueError(f"policy_loss must be one of {sorted(losses.POLICY_LOSSES)}, "
                             f"found {self.policy_loss!r}")
        if any(not t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, found {list(self.temperatures)}")
        for name in ("feature_beta", "policy_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, found {getattr(self, name)}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The batch fields (`y` keys) the terms read."""
        return ("teacher_outputs",) + (("teacher_features",) if self.feature_beta > 0 else ())

    @property
    def needs_feature_projections(self) -> bool:
        """Whether the student needs its per-game feature projections."""
        return self.feature_beta > 0

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), name="distillation",
                    temperatures=list(self.temperatures))

    def terms(self, student, x, y, y_pred) -> dict:
        """The weighted loss terms of a batch, each a scalar tensor.

        Args:
          student: the `MultiTaskStudent` (its action and feature masks).
          x: {"frames", "game_id"}.
          y: the batch fields of `fields`.
          y_pred: the student's outputs {"logits", "features"}.
        """
        from keras import ops

        game_id = ops.cast(x["game_id"], "int32")
        tau = ops.take(ops.convert_to_tensor(list(self.temperatures), "float32"), game_id,
                       axis=0)
        out = {"policy": losses.policy_loss(
            self.policy_loss, y["teacher_outputs"], y_pred["logits"],
            action_mask=student.action_mask(game_id), temperature=tau)}
        if self.policy_weight != 1.0:
            out["policy"] = self.policy_weight * out["policy"]
        if self.feature_beta > 0:
            out["features"] = self.feature_beta * losses.feature_regression(
                y_pred["features"], ops.cast(y["teacher_features"], "float32"),
                feature_mask=student.feature_mask(game_id))
        return out

    def loss(self, student, x, y, y_pred):
        """The scalar loss of a batch: the sum of `terms`."""
        return sum_of_terms(self.terms(student, x, y, y_pred))


def prepare(objective, run_dir, source, seed: int = 0, write: bool = True):
    """The objective ready to train in `run_dir` on `source`.

    Objectives that fit something to the data before training define
    `prepare(run_dir, source, seed, write)` and return a copy holding it
    (`iekd.IEKD`: its teachers' auto-encoders, saved in the run directory so
    that a resumed run reads them back; only where `write`); the others are
    returned as they are. The distiller calls this once, before it builds
    the student.
    """
    fit = getattr(objective, "prepare", None)
    return objective if fit is None else fit(run_dir, source, seed=seed, write=write)


def default_temperature(teacher_kind: str) -> float:
    """tau for a teacher kind: 0.01 sharpens Q-values into a near-argmax
    target (Rusu et al.); logits are a policy already (1)."""
    return 0.01 if teacher_kind == "q_values" else 1.0
