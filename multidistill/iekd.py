"""IE-KD: inheritance and exploration knowledge distillation as an objective.

Huang, Shen, Xing, Liu, Tian, Li, Deng, Huang and Hua, "Revisiting
Knowledge Distillation: An Inheritance and Exploration Framework", CVPR
2021. The student's features are split in two parts: the *inheritance* part
is pulled toward a compact code of the teacher's features (its *factors*),
the *exploration* part is pushed away from it, and the task loss (here the
policy term) makes the explored features useful. Three pieces, in the
paper's order:

1. Compact knowledge extraction. Per game, an auto-encoder is fitted on the
   teacher's features h_T (the datasets store them at every step), before
   distillation, by the L1 reconstruction loss
   (`losses.reconstruction_l1`):

       F_T = E(h_T),   L_rec = mean (1/d) || h_T - D(E(h_T)) ||_1

   E and D are three dense layers each (d -> d -> k -> k, and k -> k -> d
   -> d), every layer followed by a LeakyReLU of slope 0.1: the authors'
   three-layer convolutional coder, made dense because h_T is a vector, and
   without its batch norm. k = round(factor_rate * d), with the authors'
   rate of one half (64 teacher channels -> 32 factors in their code; the
   paraphrase rate of factor transfer, Kim et al. 2018). E is then frozen.
   The fitted encoders are saved in the run directory (`FACTORS_FILE`, with
   a summary in `SUMMARY_FILE`), so a resumed run reuses them.

2. The split. The student's shared hidden layer h_S is cut in halves (its
   first units, the inheritance part h_inh; the others, the exploration
   part h_exp: the authors' "natural" division), and each half has, per
   game, its own encoder onto the game's k factors, trained with the
   student (`networks.MultiTaskStudent`, `split_factor_dims`):
   F_inh = E_inh(h_inh), F_exp = E_exp(h_exp).

3. The losses (`losses.inheritance_loss`, `losses.exploration_loss`):
   factor transfer's L1 distance between L2-normalised factors, toward the
   teacher for the inheritance part, away from it for the exploration part:

       L_inh =  mean_batch (1/k) || F_inh/||F_inh||_2 - F_T/||F_T||_2 ||_1
       L_exp = -mean_batch (1/k) || F_exp/||F_exp||_2 - F_T/||F_T||_2 ||_1

       L = policy_weight * L_policy + lambda_inh * L_inh + lambda_exp * L_exp

   with L_policy the policy term of `objectives.Distillation` (by default
   the temperature-sharpened KL) and lambda_inh = lambda_exp = 1, the
   weights of the authors' configuration.

Sources and readings. The paper's own text could not be read here; the
equations come from the authors' public code (github.com/aliyun/
Revisiting-Knowledge-Distillation-an-Inheritance-and-Exploration-Framework:
its factor-transfer loss, which divides the L1 norm of the batch's
difference by its element count, hence the 1/k; its negated variant for
exploration; its L1 reconstruction loss; its three-layer coder; its halves;
its weights of 1), read against the paper's abstract and the factor transfer
paper, on which IE-KD builds. Where the two settings differ: the paper
classifies images with convolutional features and a cross-entropy task
loss; here the features are vectors (dense coders) and the task loss is the
policy distillation term, with one teacher, one auto-encoder and one pair
of student encoders per game.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from multidistill import files, losses, networks, objectives

FACTORS_FILE = "iekd_teacher_factors.npz"
SUMMARY_FILE = "iekd_teacher_factors.json"

# Negative slope of every LeakyReLU of the coders (the authors' code), the
# teacher's and the student's.
LEAKY_SLOPE = networks.FACTOR_LEAKY_SLOPE


def factor_dim(feature_dim: int, rate: float) -> int:
    """k, the factor count of a teacher with `feature_dim` features: round(rate * d), >= 1."""
    return max(1, int(round(rate * feature_dim)))


def _leaky(x):
    return np.where(x > 0, x, LEAKY_SLOPE * x)


class TeacherFactors:
    """The frozen encoders E of the teachers' auto-encoders, one per game.

    Attributes:
      games: the games, in the student's head order.
      feature_dims: per game, the teacher's feature count d.
      factor_dims: per game, the factor count k.
      weights: per game, [(kernel, bias)] x 3 of its encoder, float32
        (d x d, d x k, k x k).
      summary: how they were fitted (rows, steps, reconstruction errors).
    """

    def __init__(self, games, feature_dims, factor_dims, weights, summary=None):
        self.games = [str(g) for g in games]
        self.feature_dims = [int(d) for d in feature_dims]
        self.factor_dims = [int(k) for k in factor_dims]
        self.weights = [[(np.asarray(w, np.float32), np.asarray(b, np.float32))
                         for w, b in layers] for layers in weights]
        self.summary = dict(summary or {})

    def encode_numpy(self, features: np.ndarray, game_index: int) -> np.ndarray:
        """F_T = E(h_T) of one game's (N, d) features, in numpy."""
        f = np.asarray(features, np.float32)[:, : self.feature_dims[game_index]]
        for w, b in self.weights[game_index]:
            f = _leaky(f @ w + b)
        return f

    def encode(self, teacher_features, game_id):
        """F_T of a batch: (B, max k), each sample's game's encoder on its
        teacher features (B, max d), zero beyond the game's k; a constant
        (no gradient)."""
        from keras import ops

        one_hot = ops.one_hot(ops.cast(game_id, "int32"), len(self.games))
        max_k = max(self.factor_dims)
        total = 0.0
        for g, layers in enumerate(self.weights):
            f = ops.cast(teacher_features, "float32")[:, : self.feature_dims[g]]
            for w, b in layers:
                f = ops.leaky_relu(ops.matmul(f, ops.convert_to_tensor(w))
                                   + ops.convert_to_tensor(b), negative_slope=LEAKY_SLOPE)
            if max_k > self.factor_dims[g]:
                f = ops.pad(f, [[0, 0], [0, max_k - self.factor_dims[g]]])
            total = total + one_hot[:, g:g + 1] * f
        return ops.stop_gradient(total)

    # -- the file -------------------------------------------------------------

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Writes `FACTORS_FILE` (the weights) and `SUMMARY_FILE` in `run_dir`, atomically."""
        arrays = {}
        for g, layers in enumerate(self.weights):
            for i, (w, b) in enumerate(layers):
                arrays[f"g{g}_kernel{i}"], arrays[f"g{g}_bias{i}"] = w, b
        meta = {"games": self.games, "feature_dims": self.feature_dims,
                "factor_dims": self.factor_dims, "summary": self.summary}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        path = Path(run_dir) / FACTORS_FILE

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        files.atomic_write(path, write)
        files.atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherFactors:
        """Reads a `FACTORS_FILE`.

        Raises:
          ValueError: the file is not one (names the file and what is missing).
        """
        try:
            with np.load(path) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                weights = [[(data[f"g{g}_kernel{i}"], data[f"g{g}_bias{i}"]) for i in range(3)]
                           for g in range(len(meta["games"]))]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path} is not an IE-KD teacher factors file ({e}): delete it to "
                             "fit the auto-encoders again") from None
        return cls(meta["games"], meta["feature_dims"], meta["factor_dims"], weights,
                   meta.get("summary"))


def teacher_features_of(source, rows_per_game: int) -> list[np.ndarray]:
    """Per game, up to `rows_per_game` teacher feature vectors (N, d) from
    the source's first training batches (the rows the student meets first),
    for fitting the auto-encoders.

    Raises:
      ValueError: a game's data stores no teacher features, or gives no row.
    """
    games, dims = list(source.games), list(source.feature_dims)
    missing = [g for g, d in zip(games, dims) if d < 1]
    if missing:
        raise ValueError(f"IE-KD needs the teachers' features: the data of {missing} hold "
                         "none (feature count 0)")
    num_batches = max(1, math.ceil(rows_per_game * len(games) / source.batch_size))
    parts = [[] for _ in games]
    for i in range(num_batches):
        x, y = source.batch(i)
        gid = np.asarray(x["game_id"])
        for g in range(len(games)):
            parts[g].append(np.asarray(y["teacher_features"])[gid == g, : dims[g]])
    out = []
    for g, game in enumerate(games):
        rows = np.concatenate(parts[g])[:rows_per_game].astype(np.float32)
        if not len(rows):
            raise ValueError(f"IE-KD: the batches give no row of {game} to fit its teacher's "
                             "auto-encoder (is its game weight 0?)")
        out.append(rows)
    return out


def fit_autoencoder(features: np.ndarray, num_factors: int, grad_steps: int, batch_size: int,
                    learning_rate: float, seed: int, holdout_fraction: float = 0.05
                    ) -> tuple[list, dict]:
    """Fits one teacher's auto-encoder on its features by the L1
    reconstruction loss (module docstring, step 1), Adam, minibatches drawn
    with replacement.

    Args:
      features: (N, d) the teacher's features.
      num_factors: k.
      grad_steps: Adam steps.
      batch_size: rows per step.
      learning_rate: Adam step size.
      seed: initial weights and minibatches.
      holdout_fraction: share of the rows (the last ones) kept out of
        training to measure the reconstruction error.

    Returns:
      (the encoder's [(kernel, bias)] x 3; a summary: rows, steps, and the
      held-out mean absolute reconstruction error against that of the mean
      feature vector).
    """
    import keras
    from keras import layers

    x = np.asarray(features, np.float32)
    n, d = x.shape
    n_hold = int(n * holdout_fraction) if n >= 20 else 0
    train, held = x[: n - n_hold], x[n - n_hold:]
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,), name="teacher_features")
    encoder = [layers.Dense(u, name=f"encoder{i}") for i, u in
               enumerate((d, num_factors, num_factors))]
    decoder = [layers.Dense(u, name=f"decoder{i}") for i, u in
               enumerate((num_factors, d, d))]
    h = inputs
    for layer in encoder + decoder:
        h = layers.LeakyReLU(negative_slope=LEAKY_SLOPE)(layer(h))
    model = keras.Model(inputs, h, name="teacher_autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses.reconstruction_l1)
    rng = np.random.default_rng([seed, 0x1EED])
    last = float("nan")
    for _ in range(grad_steps):
        batch = train[rng.integers(0, len(train), size=min(batch_size, len(train)))]
        last = float(np.asarray(model.train_on_batch(batch, batch)))
    check = held if len(held) else train
    recon = np.asarray(model.predict_on_batch(check))
    summary = {
        "rows": int(n), "heldout_rows": int(len(held)), "grad_steps": int(grad_steps),
        "last_train_l1": last,
        "heldout_l1": float(np.mean(np.abs(check - recon))),
        "heldout_l1_of_mean_vector": float(np.mean(np.abs(check - train.mean(axis=0)))),
        "heldout_mean_abs_feature": float(np.mean(np.abs(check))),
    }
    return [tuple(layer.get_weights()) for layer in encoder], summary


@dataclasses.dataclass(frozen=True)
class IEKD:
    """IE-KD on the policy distillation term (module docstring).

    The interface of `objectives.Distillation` (`fields`,
    `needs_feature_projections`, `to_dict`, `terms`, `loss`), plus
    `factor_dims` (the student's split, `distiller.build_student`) and
    `prepare` (fits or reloads the teachers' auto-encoders in the run
    directory before training; `objectives.prepare`).

    Attributes:
      policy_loss: the policy term's loss, as `objectives.Distillation`'s.
      temperatures: per game tau of the KL term, as `objectives.Distillation`'s.
      policy_weight: weight of the policy term.
      inheritance_weight: lambda_inh, weight of the inheritance loss (1: the
        authors'). The loss lies in [0, 2/sqrt(k)].
      exploration_weight: lambda_exp, weight of the exploration loss (1: the
        authors'). The loss lies in [-2/sqrt(k), 0].
      factor_rate: k / d, factors per teacher feature (one half: the
        authors').
      autoencoder_rows_per_game: teacher feature vectors per game the
        auto-encoder is fitted on (from the run's first training batches).
      autoencoder_grad_steps: Adam steps of each auto-encoder.
      autoencoder_batch_size: rows per auto-encoder step.
      autoencoder_learning_rate: Adam step size of the auto-encoders.
      teacher_factors: the fitted encoders (`prepare` sets them; not part
        of the settings: `to_dict` and equality leave them out).
    """

    policy_loss: str = "kl"
    temperatures: tuple[float, ...] = ()
    policy_weight: float = 1.0
    inheritance_weight: float = 1.0
    exploration_weight: float = 1.0
    factor_rate: float = 0.5
    autoencoder_rows_per_game: int = 16_384
    autoencoder_grad_steps: int = 2_000
    autoencoder_batch_size: int = 256
    autoencoder_learning_rate: float = 1e-3
    teacher_factors: TeacherFactors | None = dataclasses.field(
        default=None, compare=False, repr=False)

    def __post_init__(self):
        _ = self.policy_term  # Its checks: the loss name, temperatures, its weight.
        for name in ("inheritance_weight", "exploration_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, found {getattr(self, name)}")
        if not 0 < self.factor_rate <= 1:
            raise ValueError(f"factor_rate must be in (0, 1], found {self.factor_rate}")
        for name in ("autoencoder_rows_per_game", "autoencoder_grad_steps",
                     "autoencoder_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if not self.autoencoder_learning_rate > 0:
            raise ValueError(f"autoencoder_learning_rate must be > 0, found "
                             f"{self.autoencoder_learning_rate}")

    @property
    def policy_term(self) -> objectives.Distillation:
        """The policy term alone, as a `Distillation` objective."""
        return objectives.Distillation(policy_loss=self.policy_loss,
                                       temperatures=self.temperatures,
                                       policy_weight=self.policy_weight)

    @property
    def fields(self) -> tuple[str, ...]:
        """The batch fields (`y` keys) the terms read."""
        return ("teacher_outputs", "teacher_features")

    @property
    def needs_feature_projections(self) -> bool:
        return False

    def factor_dims(self, feature_dims) -> list[int]:
        """Per game, k from its teacher's feature count: the student's split."""
        return [factor_dim(d, self.factor_rate) for d in feature_dims]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name != "teacher_factors"}
        return dict(d, name="iekd", temperatures=list(self.temperatures))

    # -- before training ----------------------------------------------------------

    def prepare(self, run_dir: str | os.PathLike, source, seed: int = 0,
                write: bool = True) -> IEKD:
        """This objective with its teachers' factors: read from `run_dir`
        when a run there fitted them, else fitted on `source`'s teacher
        features (`teacher_features_of`, `fit_autoencoder`, one game after
        another, seeds from `seed`) and, if `write`, saved there.

        Raises:
          ValueError: the data hold no teacher features, or the file in
            `run_dir` is of other games or sizes.
        """
        games, dims = list(source.games), [int(d) for d in source.feature_dims]
        ks = self.factor_dims(dims)
        path = Path(run_dir) / FACTORS_FILE
        if path.exists():
            factors = TeacherFactors.load(path)
            found = (factors.games, factors.feature_dims, factors.factor_dims)
            if found != (games, dims, ks):
                raise ValueError(
                    f"{path} holds the auto-encoders of games {found[0]} with features "
                    f"{found[1]} and factors {found[2]}; this run needs {games}, {dims}, {ks}: "
                    "use another run directory, or delete the file to fit them again")
            return dataclasses.replace(self, teacher_factors=factors)
        features = teacher_features_of(source, self.autoencoder_rows_per_game)
        weights, summaries = [], {}
        for g, (game, x, k) in enumerate(zip(games, features, ks)):
            w, s = fit_autoencoder(x, k, self.autoencoder_grad_steps,
                                   self.autoencoder_batch_size,
                                   self.autoencoder_learning_rate, seed=seed * 1000 + g)
            weights.append(w)
            summaries[game] = s
            print(f"  IE-KD teacher factors of {game}: {dims[g]} features -> {k} factors, "
                  f"held-out L1 reconstruction error {s['heldout_l1']:.4f} (the mean "
                  f"vector's: {s['heldout_l1_of_mean_vector']:.4f})")
        factors = TeacherFactors(games, dims, ks, weights, {"games": summaries})
        if write:
            factors.save(run_dir)
        return dataclasses.replace(self, teacher_factors=factors)

    # -- the loss ---------------------------------------------------------------------

    def terms(self, student, x, y, y_pred) -> dict:
        """The weighted loss terms of a batch, each a scalar tensor: "policy",
        "inheritance" and "exploration" (each absent at weight 0).

        Args:
          student: the `MultiTaskStudent` with the split (its masks).
          x: {"frames", "game_id"}.
          y: the batch fields of `fields`.
          y_pred: the student's outputs, with `inheritance_factors` and
            `exploration_factors`.

        Raises:
          ValueError: no teacher factors yet (`prepare` first), or a student
            without the split.
        """
        if self.teacher_factors is None:
            raise ValueError("the IE-KD objective has no teacher factors yet: call "
                             "prepare(run_dir, source) first (the distiller does)")
        if "inheritance_factors" not in y_pred:
            raise ValueError("the IE-KD objective needs a student with the split "
                             "(MultiTaskStudent(split_factor_dims=objective.factor_dims(...)))")
        out = self.policy_term.terms(student, x, y, y_pred)
        game_id = x["game_id"]
        teacher = self.teacher_factors.encode(y["teacher_features"], game_id)
        mask = student.factor_mask(game_id)
        if self.inheritance_weight > 0:
            out["inheritance"] = self.inheritance_weight * losses.inheritance_loss(
                y_pred["inheritance_factors"], teacher, mask)
        if self.exploration_weight > 0:
            out["exploration"] = self.exploration_weight * losses.exploration_loss(
                y_pred["exploration_factors"], teacher, mask)
        return out

    def loss(self, student, x, y, y_pred):
        """The scalar loss of a batch: the sum of `terms`."""
        total = 0.0
        for value in self.terms(student, x, y, y_pred).values():
            total = total + value
        return total
