"""Keras networks: the single-game teacher network and the multi-task student.

All networks take uint8 observations shaped (frame_stack, height, width), as
the environments return them, and do the rest themselves (scale to [0, 1],
move channels last for the convolutions), so callers never convert frames.

Sizes (Rusu et al. 2016, Table 3): the Nature-DQN trunk has conv filters
32/64/64 and a 512-unit hidden layer; the compressed students are

    net1: 16/32/32, 256      net2: 16/16/16, 128      net3: 16/16/16, 64

and `tiny`, 8/8/8 and 64 units, is about 1.7 % of the DQN (29,214 parameters
against 1,687,206 for a 6-action game): the smallest student of Sun & Fazli
(2019), real-time policy distillation. `parameter_count` counts any of them.

The multi-task student shares the trunk (convs + hidden layer) and has, per
game, a `head_units` hidden layer (none when 0: the papers' layout, a
single-game student is then the teacher's network at the student's size)
and a linear output sized to that game's actions, plus a linear projection
of the shared hidden layer onto the game's teacher features (Actor-Mimic
feature regression). With `head="shared18"` (Actor-Mimic's layout) the
games share one head instead: one `head_units` layer and one linear output
over ALE's full 18-action set, of which each game reads its own actions
(the others masked).

IE-KD's split (Huang et al. 2021, `multidistill.iekd`): with
`split_factor_dims`, the shared hidden layer's first half is its
*inheritance* part and the second half its *exploration* part; per game,
each half has an encoder onto that game's teacher factors, whose outputs
the objective compares with the teacher's. The split adds encoders only:
the trunk, the heads and acting are those of the plain student.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import multidistill
from multidistill import distribution
from multidistill import games as games_lib

multidistill.import_keras_quietly()

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

# Conv filters and hidden units of each named size.
STUDENT_SIZES: dict[str, tuple[tuple[int, int, int], int]] = {
    "dqn": ((32, 64, 64), 512),
    "net1": ((16, 32, 32), 256),
    "net2": ((16, 16, 16), 128),
    "net3": ((16, 16, 16), 64),
    "tiny": ((8, 8, 8), 64),
}

# Kernel sizes and strides of the three Nature-DQN convolutions.
_CONV_SHAPES = ((8, 4), (4, 2), (3, 1))

# Numeric precisions of a student: "float32", or "mixed_bfloat16" (the trunk
# computes in bfloat16 on float32 weights; the heads, outputs and loss stay
# float32). See `default_precision`.
PRECISIONS = ("float32", "mixed_bfloat16")

# Logit given to actions a game does not have, so that softmax gives them
# (numerically) zero probability without producing NaNs.
MASKED_LOGIT = -1e9

# Output layouts of the student (`MultiTaskStudent.head`): a head per game,
# or one head over ALE's full action set shared by every game.
STUDENT_HEADS = ("per_game", "shared18")

# Negative slope of the LeakyReLUs of IE-KD's encoders (the authors' code).
FACTOR_LEAKY_SLOPE = 0.1


def default_precision(cpu_flags: str | None = None) -> str:
    """The student precision that trains fastest here: "mixed_bfloat16" on
    the TensorFlow backend on a CPU with native bfloat16 arithmetic
    (AVX512-BF16 or AMX, which oneDNN uses), "float32" elsewhere.

    On the 2-core AMD EPYC (AVX512-BF16) of benchmarks/results.md, a
    training step of the default student ran about 1.4x faster in mixed
    bfloat16; on CPUs without it bfloat16 is emulated and slower.

    Args:
      cpu_flags: the CPU's feature flags (default: read from /proc/cpuinfo;
        none found means float32).
    """
    if keras.backend.backend() != "tensorflow":
        return "float32"
    if cpu_flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpu_flags = f.read()
        except OSError:
            cpu_flags = ""
    native = {"avx512_bf16", "amx_bf16"} & set(cpu_flags.split())
    return "mixed_bfloat16" if native else "float32"


def _kernel_initializer(gain: float | None):
    """Keras' default (Glorot uniform) when gain is None, else orthogonal of that gain."""
    return "glorot_uniform" if gain is None else keras.initializers.Orthogonal(gain=gain)


def make_trunk(
    conv_filters: Sequence[int], fc_units: int, prefix: str, hidden_name: str = "hidden",
    dtype: str | None = None, orthogonal_gain: float | None = None,
) -> list:
    """Scale, channels-last, three convolutions, flatten, one hidden layer.

    `dtype`: the layers' dtype policy (None: Keras' global one).
    `orthogonal_gain`: initialise the convolutions' and the hidden layer's
    kernels orthogonal with this gain (CleanRL's PPO: sqrt(2)); None keeps
    Keras' default.
    """
    kernel = _kernel_initializer(orthogonal_gain)
    out = [
        layers.Rescaling(1.0 / 255.0, name=f"{prefix}scale", dtype=dtype),
        layers.Permute((2, 3, 1), name=f"{prefix}channels_last", dtype=dtype),
    ]
    for i, (filters, (size, stride)) in enumerate(zip(conv_filters, _CONV_SHAPES)):
        out.append(
            layers.Conv2D(
                filters, size, strides=stride, activation="relu", name=f"{prefix}conv{i}",
                dtype=dtype, kernel_initializer=kernel,
            )
        )
    out.append(layers.Flatten(name=f"{prefix}flatten", dtype=dtype))
    out.append(layers.Dense(fc_units, activation="relu", name=f"{prefix}{hidden_name}",
                            dtype=dtype, kernel_initializer=kernel))
    return out


def build_teacher_network(
    num_actions: int,
    observation_shape: Sequence[int] = (4, 84, 84),
    conv_filters: Sequence[int] = (32, 64, 64),
    fc_units: int = 512,
    with_value: bool = False,
    name: str = "teacher",
    orthogonal: bool = False,
) -> keras.Model:
    """The Nature-DQN network for one game.

    Args:
      num_actions: outputs (Q-values or policy logits), one per action.
      observation_shape: (frame_stack, height, width).
      conv_filters: filters of the three convolutions.
      fc_units: units of the last hidden layer (the teacher's features).
      with_value: also output a state value (actor-critic training).
      name: model name.
      orthogonal: CleanRL's PPO initialisation: orthogonal kernels of gain
        sqrt(2) in the trunk, 0.01 for the outputs (a near-uniform first
        policy), 1 for the value; zero biases. False keeps Keras' default.

    Returns:
      A functional model frames(uint8) -> outputs (and value, if asked). The
      last hidden layer is named `features`: the distiller records it for
      feature regression.
    """
    frames = keras.Input(shape=tuple(observation_shape), dtype="uint8", name="frames")
    x = frames
    trunk = make_trunk(conv_filters, fc_units, prefix="", hidden_name="features",
                       orthogonal_gain=math.sqrt(2.0) if orthogonal else None)
    for layer in trunk:
        x = layer(x)
    outputs = layers.Dense(num_actions, name="outputs",
                           kernel_initializer=_kernel_initializer(0.01 if orthogonal else None))(x)
    if with_value:
        value = layers.Dense(1, name="value",
                             kernel_initializer=_kernel_initializer(1.0 if orthogonal else None))(x)
        return keras.Model(frames, [outputs, value], name=name)
    return keras.Model(frames, outputs, name=name)


@keras.saving.register_keras_serializable(package="multidistill")
class MultiTaskStudent(keras.Model):
    """One shared trunk, one hidden layer and output head per game (or one
    masked 18-way head shared by all games).

    Inputs: a dict with `frames` (B, stack, H, W) uint8 and `game_id` (B,)
    int32, the index of each sample's game in `games`.

    Outputs: a dict with
      `logits`: (B, max_actions) the sample's game head, in the game's own
        action order (its minimal set); actions beyond that game's count
        hold MASKED_LOGIT.
      `features`: (B, max_feature_dim) the projection of the shared hidden
        layer for the sample's game; positions beyond that game's teacher
        feature size are zero.
      with `split_factor_dims` only, `inheritance_factors` and
        `exploration_factors`: (B, max factor count) the sample's game's
        encoders on the two halves of the shared hidden layer; positions
        beyond that game's factor count are zero.

    The student is the forward pass only. What it is trained to minimise is
    the objective attached to it (`student.objective`, see
    `multidistill.objectives`): `compute_loss` delegates to it, so `fit()`,
    its callbacks and every Keras backend work unchanged. The objective is
    not saved: a saved student loads without knowing how it was trained.

    `precision` "mixed_bfloat16" makes the shared trunk compute in bfloat16
    (weights stay float32); the heads, outputs and loss are float32 in
    either precision.

    The saved `.keras` file carries the games, their action counts, the
    preprocessing spec (as a dict), the precision and the training config;
    it loads with `keras.saving.load_model` once `multidistill.networks` is
    imported (`multidistill.students.load_student` does both).

    Args:
      feature_projections: give each game a linear projection of the shared
        hidden layer onto its teacher's features (Actor-Mimic feature
        regression); without, `features` outputs zeros and no weights exist
        for them.
      head: "per_game" (default): each game has its own `head_units` layer
        and output. "shared18" (Actor-Mimic, Parisotto et al. 2016): the
        games share one `head_units` layer (none when 0) and one output of
        `games.NUM_ALE_ACTIONS` logits over ALE's full action set; a game's
        logits are those at its `ale_action_indices`, so its softmax is the
        18-way softmax with the actions it lacks masked out, and losses,
        acting and everything downstream see the game's own action order.
      ale_action_indices: with "shared18", per game, the full-set index of
        each of its actions (`games.Game.ale_action_indices`); saved with
        the student, which then loads without ALE. Not used by "per_game".
      split_factor_dims: IE-KD's split (None: none, the plain student). Per
        game, its teacher's factor count k; the shared hidden layer's units
        [0, fc_units // 2) are the inheritance part, the others the
        exploration part, and each part has, per game, an encoder of three
        dense layers (part size -> part size -> k -> k, each followed by a
        LeakyReLU of slope 0.1: the authors' three-layer encoder, dense
        rather than convolutional on a vector, without batch norm) whose
        outputs are `inheritance_factors` and `exploration_factors`.
    """

    def __init__(
        self,
        games: Sequence[str],
        num_actions: Sequence[int],
        feature_dims: Sequence[int] | None = None,
        conv_filters: Sequence[int] = (32, 64, 64),
        fc_units: int = 512,
        head_units: int = 128,
        observation_shape: Sequence[int] = (4, 84, 84),
        feature_projections: bool | None = None,
        preprocessing: dict[str, Any] | None = None,
        training_config: dict[str, Any] | None = None,
        precision: str = "float32",
        objective=None,
        head: str = "per_game",
        ale_action_indices: Sequence[Sequence[int]] | None = None,
        split_factor_dims: Sequence[int] | None = None,
        **kwargs,
    ):
        # Students saved before objectives existed carry their loss settings;
        # only whether feature projections exist matters to the network.
        legacy_beta = kwargs.pop("feature_beta", 0.0)
        kwargs.pop("loss", None)
        kwargs.pop("temperatures", None)
        if feature_projections is None:
            feature_projections = legacy_beta > 0
        super().__init__(**kwargs)
        self.objective = objective

        self.games = list(games)
        self.num_actions = [int(a) for a in num_actions]
        if len(self.num_actions) != len(self.games):
            raise ValueError(
                f"num_actions has {len(self.num_actions)} entries for "
                f"{len(self.games)} games"
            )
        self.feature_dims = [int(f) for f in (feature_dims or [0] * len(self.games))]
        self.conv_filters = [int(f) for f in conv_filters]
        self.fc_units = int(fc_units)
        self.head_units = int(head_units)
        self.observation_shape = [int(s) for s in observation_shape]
        self.feature_projections_enabled = bool(feature_projections)
        self.preprocessing = dict(preprocessing or {})
        self.training_config = dict(training_config or {})
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, found {precision!r}")
        self.precision = precision
        if head not in STUDENT_HEADS:
            raise ValueError(f"head must be one of {list(STUDENT_HEADS)}, found {head!r}")
        self.head = head
        self.ale_action_indices = (None if ale_action_indices is None else
                                   [[int(i) for i in a] for a in ale_action_indices])
        if head == "shared18":
            self._check_ale_action_indices()
        self.split_factor_dims = (None if split_factor_dims is None else
                                  [int(k) for k in split_factor_dims])
        if self.split_factor_dims is not None:
            self._check_split()

        self.max_actions = max(self.num_actions)
        self.max_feature_dim = max(self.feature_dims + [1])
        # The trunk computes in `precision`; everything after it in float32.
        self.trunk = make_trunk(self.conv_filters, self.fc_units, prefix="shared_",
                                   dtype=precision)
        if self.head_units < 0:
            raise ValueError(f"head_units must be >= 0, found {self.head_units}")
        per_game = head == "per_game"
        self.game_hidden = [
            layers.Dense(self.head_units, activation="relu", name=f"{g}_hidden",
                         dtype="float32")
            for g in self.games
        ] if self.head_units and per_game else []
        self.game_heads = [
            layers.Dense(a, name=f"{g}_logits", dtype="float32")
            for g, a in zip(self.games, self.num_actions)
        ] if per_game else []
        # shared18: one head for all games (None with a head per game).
        self.shared_head_hidden = layers.Dense(
            self.head_units, activation="relu", name="shared18_hidden", dtype="float32",
        ) if self.head_units and not per_game else None
        self.shared_head = None if per_game else layers.Dense(
            games_lib.NUM_ALE_ACTIONS, name="shared18_logits", dtype="float32")
        # Projections exist only when feature regression is on (no dead weights).
        self.feature_projections = [
            layers.Dense(max(f, 1), name=f"{g}_feature_projection", dtype="float32")
            for g, f in zip(self.games, self.feature_dims)
        ] if self.feature_projections_enabled else []
        # (games, max_actions) 1 where the game has that action.
        self._action_mask = ops.convert_to_tensor(
            [[1.0 if a < n else 0.0 for a in range(self.max_actions)] for n in self.num_actions]
        )
        self._feature_mask = ops.convert_to_tensor(
            [[1.0 if i < f else 0.0 for i in range(self.max_feature_dim)]
             for f in self.feature_dims]
        )
        # IE-KD: per game, an encoder of each half of the shared hidden layer
        # onto the game's teacher factors (none without the split).
        split = self.split_factor_dims or []
        self.inheritance_encoders = [
            self._factor_encoder(f"{g}_inheritance", self.inheritance_units, k)
            for g, k in zip(self.games, split)]
        self.exploration_encoders = [
            self._factor_encoder(f"{g}_exploration", self.fc_units - self.inheritance_units, k)
            for g, k in zip(self.games, split)]
        self.max_factor_dim = max(split + [1])
        self._factor_mask = ops.convert_to_tensor(
            [[1.0 if i < k else 0.0 for i in range(self.max_factor_dim)] for k in split]
            or [[0.0]])
        if not per_game:
            # (games, max_actions) the full-set index of each game action; the
            # padding (0) is gathered, then masked, so it gets no gradient.
            self._ale_index = ops.convert_to_tensor(
                [a + [0] * (self.max_actions - len(a)) for a in self.ale_action_indices],
                dtype="int32")

    def _check_split(self):
        dims = self.split_factor_dims
        if len(dims) != len(self.games) or any(k < 1 for k in dims):
            raise ValueError(
                f"split_factor_dims: expected, for each of the {len(self.games)} games "
                f"{self.games}, its teacher's factor count (>= 1), found {dims}")
        if self.fc_units < 2:
            raise ValueError(f"split_factor_dims: the shared hidden layer must have at least "
                             f"2 units to split in halves, found fc_units={self.fc_units}")

    @property
    def inheritance_units(self) -> int:
        """IE-KD: units of the shared hidden layer's inheritance part, the
        first ones; the exploration part is the rest."""
        return self.fc_units // 2

    @staticmethod
    def _factor_encoder(prefix: str, units: int, factors: int) -> list:
        """IE-KD's encoder of one part: three dense layers (the LeakyReLUs
        are applied in `encode_factors`)."""
        return [layers.Dense(n, name=f"{prefix}_encoder{i}", dtype="float32")
                for i, n in enumerate((units, factors, factors))]

    def _check_ale_action_indices(self):
        indices, n = self.ale_action_indices, games_lib.NUM_ALE_ACTIONS
        if indices is None or len(indices) != len(self.games):
            raise ValueError(
                f"ale_action_indices: head 'shared18' needs, for each of the {len(self.games)} "
                f"games {self.games}, its actions' indices in ALE's full action set "
                f"(games.get_game(name).ale_action_indices), found {indices}")
        for game, a, idx in zip(self.games, self.num_actions, indices):
            if len(idx) != a or len(set(idx)) != a or not all(0 <= i < n for i in idx):
                raise ValueError(
                    f"ale_action_indices of {game}: expected {a} distinct indices in "
                    f"[0, {n}) (one per action), found {idx}")

    # -- forward ----------------------------------------------------------

    def shared_hidden(self, frames):
        x = frames
        for layer in self.trunk:
            x = layer(x)
        return x

    def split_hidden(self, hidden):
        """IE-KD: the shared hidden layer's (inheritance, exploration) parts."""
        n = self.inheritance_units
        return hidden[:, :n], hidden[:, n:]

    def encode_factors(self, hidden, game_id):
        """IE-KD: {"inheritance_factors", "exploration_factors"}, each
        (B, max_factor_dim), the sample's game's encoder on its part of
        `hidden` (the shared hidden layer), zero beyond the game's count."""
        one_hot = ops.one_hot(ops.cast(game_id, "int32"), len(self.games))
        out = {}
        for name, part, encoders in (
                ("inheritance_factors", 0, self.inheritance_encoders),
                ("exploration_factors", 1, self.exploration_encoders)):
            x, total = self.split_hidden(hidden)[part], 0.0
            for g, encoder in enumerate(encoders):
                f = x
                for layer in encoder:
                    f = ops.leaky_relu(layer(f), negative_slope=FACTOR_LEAKY_SLOPE)
                pad = self.max_factor_dim - self.split_factor_dims[g]
                if pad:
                    f = ops.pad(f, [[0, 0], [0, pad]])
                total = total + one_hot[:, g:g + 1] * f
            out[name] = total
        return out

    def ale_logits(self, hidden):
        """shared18: the shared head's logits over ALE's full action set, (B, 18)."""
        if self.shared_head_hidden is not None:
            hidden = self.shared_head_hidden(hidden)
        return self.shared_head(hidden)

    def game_logits(self, hidden, game_index: int):
        """Logits of one game's head, (B, num_actions[game_index]), in the
        game's action order."""
        if self.head == "shared18":
            index = ops.convert_to_tensor(self.ale_action_indices[game_index], dtype="int32")
            return ops.take(self.ale_logits(hidden), index, axis=1)
        if self.game_hidden:
            hidden = self.game_hidden[game_index](hidden)
        return self.game_heads[game_index](hidden)

    def call(self, inputs):
        frames, game_id = inputs["frames"], inputs["game_id"]
        game_id = ops.cast(game_id, "int32")
        hidden = self.shared_hidden(frames)
        one_hot = ops.one_hot(game_id, len(self.games))  # (B, G)
        logits, features = 0.0, 0.0
        if self.head == "shared18":
            # Each sample reads its game's actions out of the 18-way output.
            index = ops.take(self._ale_index, game_id, axis=0)  # (B, max_actions)
            logits = ops.take_along_axis(self.ale_logits(hidden), index, axis=1)
        else:
            for g in range(len(self.games)):
                lg = self.game_logits(hidden, g)
                pad = self.max_actions - self.num_actions[g]
                if pad:
                    lg = ops.pad(lg, [[0, 0], [0, pad]], constant_values=MASKED_LOGIT)
                logits = logits + one_hot[:, g : g + 1] * lg
        for g in range(len(self.feature_projections)):
            ft = self.feature_projections[g](hidden)
            pad = self.max_feature_dim - ft.shape[-1]
            if pad:
                ft = ops.pad(ft, [[0, 0], [0, pad]])
            features = features + one_hot[:, g : g + 1] * ft * self._feature_mask[g]
        # Masked actions get exactly MASKED_LOGIT (the one-hot sum above would
        # otherwise leave 0 for a game whose head is shorter, the gather the
        # padding's index).
        if not self.feature_projections:
            features = ops.zeros((ops.shape(hidden)[0], self.max_feature_dim))
        action_mask = ops.take(self._action_mask, game_id, axis=0)
        logits = ops.where(action_mask > 0, logits, MASKED_LOGIT)
        out = {"logits": logits, "features": features}
        if self.split_factor_dims is not None:
            # Built after the heads: a split student's trunk and heads start
            # from the plain student's initial weights (same seed).
            out.update(self.encode_factors(hidden, game_id))
        return out

    def action_mask(self, game_id):
        """(B, max_actions) 1 where the sample's game has that action."""
        return ops.take(self._action_mask, ops.cast(game_id, "int32"), axis=0)

    def feature_mask(self, game_id):
        """(B, max_feature_dim) 1 where the sample's teacher has that feature."""
        return ops.take(self._feature_mask, ops.cast(game_id, "int32"), axis=0)

    def factor_mask(self, game_id):
        """IE-KD: (B, max_factor_dim) 1 where the sample's game has that factor."""
        return ops.take(self._factor_mask, ops.cast(game_id, "int32"), axis=0)

    def head_weights(self, game: str) -> tuple[list | None, list]:
        """One game's head as a teacher's layers (`students.head_network`):
        the head layer's [kernel, bias] (None without one) and the outputs'
        [kernel (units, A), bias (A,)] in the game's action order (shared18:
        the 18-way output's columns at the game's indices), numpy arrays."""
        import numpy as np

        if game not in self.games:
            raise ValueError(f"the student has no head for {game!r}: it has {self.games}")
        g = self.games.index(game)
        if self.head == "per_game":
            hidden = self.game_hidden[g].get_weights() if self.game_hidden else None
            return hidden, self.game_heads[g].get_weights()
        hidden = (self.shared_head_hidden.get_weights()
                  if self.shared_head_hidden is not None else None)
        kernel, bias = self.shared_head.get_weights()
        index = np.asarray(self.ale_action_indices[g])
        return hidden, [kernel[:, index], bias[index]]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The attached objective's loss of a batch (`multidistill.objectives`);
        under a TensorFlow strategy, a replica's share of it
        (`distribution.per_replica_loss`)."""
        if self.objective is None:
            raise ValueError(
                "this student has no objective to train on: attach one first, e.g. "
                "student.objective = multidistill.objectives.Distillation(temperatures=...)")
        # Under a TensorFlow strategy the replicas' gradients are summed: each
        # replica's mean is scaled so that the sum is the global batch's mean.
        return distribution.per_replica_loss(self.objective.loss(self, x, y, y_pred))

    # -- acting -----------------------------------------------------------

    def policy_network(self, game: str) -> keras.Model:
        """A functional model frames -> logits of `game`'s head only.

        It shares weights with the student; use it to act in one game (it
        skips the other games' heads).
        """
        if game not in self.games:
            raise ValueError(f"the student has no head for {game!r}: it has {self.games}")
        g = self.games.index(game)
        frames = keras.Input(shape=tuple(self.observation_shape), dtype="uint8", name="frames")
        logits = self.game_logits(self.shared_hidden(frames), g)
        return keras.Model(frames, logits, name=f"student_{game}")

    # -- saving -----------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            games=self.games,
            num_actions=self.num_actions,
            feature_dims=self.feature_dims,
            conv_filters=self.conv_filters,
            fc_units=self.fc_units,
            head_units=self.head_units,
            observation_shape=self.observation_shape,
            feature_projections=self.feature_projections_enabled,
            preprocessing=self.preprocessing,
            training_config=self.training_config,
            precision=self.precision,
            head=self.head,
            ale_action_indices=self.ale_action_indices,
        )
        if self.split_factor_dims is not None:  # Files of plain students stay as they were.
            config["split_factor_dims"] = self.split_factor_dims
        return config

    def build_for_inputs(self):
        """Creates the weights by running one dummy batch."""
        import numpy as np

        self(
            {
                "frames": np.zeros([1] + self.observation_shape, np.uint8),
                "game_id": np.zeros([1], np.int32),
            }
        )
        return self


def parameter_count(size: str, num_actions: int, head_units: int = 0,
                    observation_shape: Sequence[int] = (4, 84, 84)) -> int:
    """Parameters of a one-game student of a named size (`STUDENT_SIZES`),
    counted on the built network: trunk, `head_units` head layer (0: none,
    the teacher's layout) and outputs, without feature projections.

    `parameter_count("dqn", 6)` is the Nature-DQN teacher of a 6-action game.
    """
    if size not in STUDENT_SIZES:
        raise ValueError(f"size must be one of {sorted(STUDENT_SIZES)}, found {size!r}")
    filters, fc = STUDENT_SIZES[size]
    student = MultiTaskStudent(["game"], [num_actions], conv_filters=filters, fc_units=fc,
                               head_units=head_units, observation_shape=observation_shape)
    student.build_for_inputs()
    return int(student.count_params())


def sizes_markdown(num_actions: int = 6, head_units: int = 128) -> str:
    """The named sizes as a Markdown table: layers, parameters of a one-game
    network without and with a `head_units` head layer, share of the DQN.

        python -c "from multidistill import networks; print(networks.sizes_markdown())"
    """
    teacher = parameter_count("dqn", num_actions)
    lines = [f"| size | conv filters | hidden units | parameters ({num_actions} actions, "
             f"no head layer) | share of the DQN | with a {head_units}-unit head layer |",
             "|---|---|---|---|---|---|"]
    for name, (filters, units) in STUDENT_SIZES.items():
        n = parameter_count(name, num_actions)
        lines.append(f"| `{name}` | {'/'.join(map(str, filters))} | {units} | {n:,} | "
                     f"{100 * n / teacher:.2f} % | "
                     f"{parameter_count(name, num_actions, head_units):,} |")
    return "\n".join(lines) + "\n"
