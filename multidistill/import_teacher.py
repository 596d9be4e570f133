"""Imports a PyTorch Atari teacher (Stable-Baselines3 / RL Zoo, CleanRL) as a Keras teacher.

    python -m multidistill.import_teacher --from=sb3 dqn-PongNoFrameskip-v4.zip --game=pong
    python -m multidistill.import_teacher --from=cleanrl dqn_atari.cleanrl_model --game=pong
    multidistill import-teacher --from=sb3 ppo-QbertNoFrameskip-v4.zip --game=qbert

Writes `<teachers_dir>/<game>.keras` and its card (`teachers.save_teacher`),
a `networks.build_teacher_network` holding the source's weights:

* SB3 / RL Zoo `.zip`: DQN `CnnPolicy` (`q_net.features_extractor.*`,
  `q_net.q_net.0.*`; the target network is ignored) gives a `q_values`
  teacher; PPO / A2C `CnnPolicy` (`features_extractor.*`, `action_net.*`,
  `value_net.*`) a `logits` teacher with its critic as the second output.
  The zip's `data` JSON says the observation space (its shape gives the
  channel order and the stack), the action count and `normalize_images`;
  only its plain JSON fields are read, never its cloudpickled ones.
* CleanRL `.cleanrl_model` (`torch.save` of a state_dict): `dqn_atari`
  (`network.0/2/4/7/9`) gives `q_values`, `ppo_atari` (`network.0/2/4/7`,
  `actor`, `critic`) gives `logits` with the critic.

Anything else is refused with one message naming the file, what was
expected and what was found: unknown or missing keys, a network other than
the Nature CNN (kernels 8/4/3, strides 4/2/1 as the first linear layer's
width tells), an action count other than the game's minimal set, an
observation space that does not fit the first convolution.

Weight layout. A PyTorch convolution (out, in, kh, kw) becomes a Keras
kernel (kh, kw, in, out); a Linear (out, in) a Dense kernel (in, out). The
teacher takes uint8 (stack, H, W) frames, as the sources do, scales by 1/255
and moves channels last, so its Flatten runs over (H, W, C) where PyTorch's
ran over (C, H, W): the first linear layer's input rows are permuted to
match. Both sources stack frames oldest first along the channel axis (SB3's
VecFrameStack stacks on the last axis of (84, 84, 4), VecTransposeImage
moves it first; CleanRL's FrameStack gives (4, 84, 84)), which is the order
`ale_py.AtariVectorEnv` gives here, so frames need no reordering.

The card's `training` records the source (path, format, sha256, algorithm,
library version where the file has it) and the preprocessing the source was
trained with as far as the file tells; what it does not tell (sticky
actions, life loss, reward clipping, frame skip, no-op starts: wrappers are
not saved in either format) is "unknown", with the library's usual Atari
setting as a note. The card's `preprocessing` is the spec the teacher is to
be used under here (the caller's, with the file's stack and frame size).

Reading without torch, and without running the file. A `torch.save` file
is a zip: `<name>/data.pkl` (a pickle of the state_dict in which each
tensor is a call `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)` and each storage a persistent id naming `<name>/data/<key>`,
raw bytes), `<name>/byteorder`, `<name>/version`. A pickle can call any
importable function, so `pickle.load` on a downloaded file runs whatever
its author chose. Here `data.pkl` is read by an unpickler whose
`find_class` knows only the names a state_dict of dense tensors needs
(`collections.OrderedDict`, the tensor and parameter rebuild functions,
the typed storage classes), each mapped to a stand-in of this module that
builds a NumPy array from the storage bytes with the tensor's offset, size
and stride (bounds checked); every other global is refused before anything
is called. This is the same allowlist idea as torch's own
`weights_only=True` loading, without torch: torch from the registry pulls
several GB of CUDA libraries into every install (CI's too) that needs it,
for reading a few megabytes of float32. The tests build the exact file
layout themselves and check the outputs against an independent NumPy
forward pass; where torch happens to be installed they also read files
that torch itself wrote.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from multidistill import environments
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

FORMATS = ("sb3", "cleanrl")


class TeacherImportError(ValueError):
    """A source file that cannot be read, or mapped onto a teacher network."""


# -- torch.save files, read without torch -------------------------------------

# Typed storage class (the persistent id's storage type) -> little-endian dtype.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # Upper half of a float32: widened on reading.
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "<i1", "ByteStorage": "<u1", "BoolStorage": "<?",
}
_TORCH_SAVE_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class _StorageType(NamedTuple):
    name: str
    dtype: np.dtype


class _Storage(NamedTuple):
    """One storage's elements, a 1-D array (bfloat16 already widened)."""

    array: np.ndarray


class _Refused(pickle.UnpicklingError):
    pass


def _rebuild_tensor(storage, storage_offset, size, stride) -> np.ndarray:
    """Stand-in for torch._utils._rebuild_tensor: the strided view, copied."""
    if not isinstance(storage, _Storage):
        raise _Refused(f"a tensor whose storage is a {type(storage).__name__}")
    if (not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in (storage_offset, *size, *stride))):
        raise _Refused(f"a tensor of size {size!r}, stride {stride!r}, offset "
                       f"{storage_offset!r}")
    array = storage.array
    if math.prod(size) > array.size:  # Only an expanded view (stride 0) could; no parameter is.
        raise _Refused(f"a tensor of size {size}, more elements than its storage's {array.size}")
    if math.prod(size) == 0:
        return np.zeros(size, array.dtype.newbyteorder("="))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= array.size:
        raise _Refused(f"a tensor of size {size}, stride {stride}, offset {storage_offset} "
                       f"reaching past its storage of {array.size} elements")
    view = np.lib.stride_tricks.as_strided(
        array[storage_offset:], shape=size,
        strides=tuple(s * array.itemsize for s in stride), writeable=False)
    return np.array(view, dtype=array.dtype.newbyteorder("="))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> np.ndarray:
    """Stand-in for torch._utils._rebuild_tensor_v2 (gradients, hooks dropped)."""
    del requires_grad, backward_hooks, metadata
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for torch._utils._rebuild_parameter(_with_state): the data."""
    del requires_grad, backward_hooks, state
    if not isinstance(data, np.ndarray):
        raise _Refused(f"a parameter holding a {type(data).__name__}")
    return data


# (module, name) -> stand-in. Sparse, quantized and nested tensors, and
# `torch.serialization._get_layout` (only sparse tensors pickle a layout), are
# left out on purpose: a Nature CNN's state_dict has dense tensors only.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, np.dtype(dtype))
       for name, dtype in _STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch.save'd state_dict into NumPy arrays; refuses any
    global outside `_ALLOWED_GLOBALS` before it could be called."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._big_endian = archive, prefix, big_endian
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"the global {module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and re.fullmatch(r"\w+", pid[2]) and isinstance(pid[4], int)):
            raise _Refused(f"the persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            dtype = storage_type.dtype.newbyteorder(">" if self._big_endian else "<")
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise _Refused(f"storage {key}, which the archive does not hold") from None
            if len(raw) < numel * dtype.itemsize:
                raise _Refused(f"storage {key} of {len(raw)} bytes, expected {numel} elements "
                               f"of {dtype.itemsize} bytes")
            array = np.frombuffer(raw, dtype, count=numel)
            if storage_type.name == "BFloat16Storage":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            self._storages[key] = _Storage(array)
        return self._storages[key]


def read_state_dict(data: bytes, source: str) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state_dict (zip format, torch >= 1.6) into NumPy
    arrays without torch and without executing the file's pickle.

    Args:
      data: the file's bytes.
      source: the file's name, for messages.

    Returns:
      Parameter name -> array, in the file's order.

    Raises:
      TeacherImportError: not a zip-format torch.save file, a pickle that
        asks for anything a state_dict of dense tensors does not need, or a
        value that is not a tensor.
    """
    if data.startswith(_TORCH_SAVE_MAGIC):
        raise TeacherImportError(
            f"{source}: a torch.save file in the legacy format (torch < 1.6, or "
            "_use_new_zipfile_serialization=False), expected the zip format: load and "
            "save it again with a recent torch")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise TeacherImportError(
            f"{source}: not a torch.save file (expected a zip archive holding data.pkl, "
            f"found {len(data)} bytes starting {data[:8]!r}); CleanRL's JAX scripts save "
            "Flax bytes, which are not supported")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")
                   and n.count("/") == 1]
        if len(pickles) != 1:
            raise TeacherImportError(
                f"{source}: not a torch.save file (expected one <name>/data.pkl in the zip, "
                f"found {pickles or 'none'} among {archive.namelist()[:6]})")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise TeacherImportError(f"{source}: byte order {byteorder!r}, expected "
                                     "'little' or 'big'")
        unpickler = _StateDictUnpickler(archive.read(pickles[0]), archive, prefix,
                                        big_endian=byteorder == "big")
        try:
            state = unpickler.load()
        except _Refused as e:
            raise TeacherImportError(
                f"{source}: refused to load: its pickle asks for {e}, which a state_dict of "
                "tensors does not need (nothing from the file was run); expected a "
                "torch.save of a model's state_dict") from None
        except Exception as e:  # A damaged pickle raises many types; none is ours.
            raise TeacherImportError(
                f"{source}: unreadable pickle ({type(e).__name__}: {e}); expected a "
                "torch.save of a model's state_dict") from None
    if not isinstance(state, dict):
        raise TeacherImportError(f"{source}: expected a state_dict (a dict of tensors), "
                                 f"found a {type(state).__name__}")
    bad = {k: type(v).__name__ for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, np.ndarray)}
    if bad:
        raise TeacherImportError(f"{source}: expected a state_dict of tensors, found "
                                 f"entries that are not tensors: {dict(list(bad.items())[:5])}")
    return dict(state)


# -- the Nature CNN -------------------------------------------------------------

_NATURE_KERNELS = ((8, 4), (4, 2), (3, 1))  # (size, stride) of conv0..conv2.


class NatureWeights(NamedTuple):
    """A Nature-CNN policy or Q-network in PyTorch's layout.

    convs: three (weight (out, in, kh, kw), bias (out,)); hidden, outputs,
    value: (weight (out, in), bias (out,)); value None without a critic.
    """

    convs: tuple[tuple[np.ndarray, np.ndarray], ...]
    hidden: tuple[np.ndarray, np.ndarray]
    outputs: tuple[np.ndarray, np.ndarray]
    value: tuple[np.ndarray, np.ndarray] | None

    @property
    def num_actions(self) -> int:
        return int(self.outputs[0].shape[0])

    @property
    def stack(self) -> int:
        return int(self.convs[0][0].shape[1])


def _layers(state: Mapping[str, np.ndarray], names: Mapping[str, str], source: str,
            expected_prefixes: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Role -> (weight, bias) for `names` (role -> key prefix), refusing missing keys."""
    wanted = {f"{p}.{part}" for p in names.values() for part in ("weight", "bias")}
    missing = sorted(wanted - set(state))
    if missing:
        raise TeacherImportError(
            f"{source}: missing {missing[:6]} (expected the keys of {expected_prefixes}; "
            f"found {sorted(state)[:12]})")
    return {role: (state[f"{p}.weight"], state[f"{p}.bias"]) for role, p in names.items()}


def check_nature(weights: NatureWeights, observation_hw: tuple[int, int], source: str) -> None:
    """Refuses weights that are not the Nature CNN on (stack, H, W) frames.

    Raises:
      TeacherImportError: a shape that does not fit, naming the layer.
    """
    def fail(layer, expected, found):
        raise TeacherImportError(f"{source}: {layer} has shape {tuple(found.shape)}, "
                                 f"expected {expected} (the Nature CNN)")

    channels = weights.stack
    h, w = observation_hw
    for i, ((kernel, bias), (size, stride)) in enumerate(zip(weights.convs, _NATURE_KERNELS)):
        if kernel.ndim != 4 or kernel.shape[1] != channels or kernel.shape[2:] != (size, size):
            fail(f"conv{i}'s weight", f"(out, {channels}, {size}, {size})", kernel)
        if bias.shape != kernel.shape[:1]:
            fail(f"conv{i}'s bias", f"({kernel.shape[0]},)", bias)
        channels = kernel.shape[0]
        h, w = (h - size) // stride + 1, (w - size) // stride + 1
    if h < 1 or w < 1:
        raise TeacherImportError(f"{source}: frames of {observation_hw} are too small for "
                                 "the Nature CNN's convolutions")
    flat = channels * h * w
    for name, layer, inputs in (("the hidden layer", weights.hidden, flat),
                                ("the output layer", weights.outputs, None),
                                ("the value layer", weights.value, None)):
        if layer is None:
            continue
        kernel, bias = layer
        inputs = weights.hidden[0].shape[0] if inputs is None else inputs
        if kernel.ndim != 2 or kernel.shape[1] != inputs:
            fail(f"{name}'s weight", f"(units, {inputs}) for frames of {observation_hw}", kernel)
        if bias.shape != kernel.shape[:1]:
            fail(f"{name}'s bias", f"({kernel.shape[0]},)", bias)
    if weights.value is not None and weights.value[0].shape[0] != 1:
        fail("the value layer's weight", f"(1, {weights.hidden[0].shape[0]})", weights.value[0])


def keras_teacher(weights: NatureWeights, observation_shape: tuple[int, int, int]):
    """The teacher network (`networks.build_teacher_network`) holding `weights`.

    Convolutions (out, in, kh, kw) -> (kh, kw, in, out); linear (out, in) ->
    (in, out); the hidden layer's input rows reordered from PyTorch's
    (C, H, W) flatten to the channels-last (H, W, C) one.
    """
    from multidistill import networks  # Keras only once there is something to build.

    model = networks.build_teacher_network(
        weights.num_actions, observation_shape,
        conv_filters=[int(k.shape[0]) for k, _ in weights.convs],
        fc_units=int(weights.hidden[0].shape[0]), with_value=weights.value is not None)
    for i, (kernel, bias) in enumerate(weights.convs):
        model.get_layer(f"conv{i}").set_weights([kernel.transpose(2, 3, 1, 0), bias])
    conv_out = model.get_layer("conv2").output.shape[1:]  # (h, w, c)
    kernel, bias = weights.hidden
    units = kernel.shape[0]
    kernel = kernel.reshape(units, conv_out[2], conv_out[0], conv_out[1])  # (out, c, h, w)
    model.get_layer("features").set_weights(
        [kernel.transpose(2, 3, 1, 0).reshape(-1, units), bias])
    model.get_layer("outputs").set_weights([weights.outputs[0].T, weights.outputs[1]])
    if weights.value is not None:
        model.get_layer("value").set_weights([weights.value[0].T, weights.value[1]])
    return model


# -- the formats ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
    """What a source file holds, mapped onto the teacher network.

    Attributes:
      weights: the network in PyTorch's layout.
      observation_shape: (stack, H, W) the network takes.
      kind: "q_values" or "logits".
      algorithm: the card's `training.algorithm` (e.g. "sb3-dqn").
      imported_from: path, format, sha256 and what else the file says of itself.
      source_preprocessing: the preprocessing the source was trained with as
        far as the file tells; "unknown" where it does not.
    """

    weights: NatureWeights
    observation_shape: tuple[int, int, int]
    kind: str
    algorithm: str
    imported_from: dict
    source_preprocessing: dict


_UNKNOWN = "unknown"
_NOT_RECORDED = ("sticky_action_prob", "episodic_life", "reward_clipping", "frame_skip",
                 "max_pool", "noop_max")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TeacherImportError(f"{path}: cannot read the file ({e.strerror or e})") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _refuse_unknown(state: Mapping[str, np.ndarray], known: set[str], source: str,
                    what: str) -> None:
    unknown = sorted(set(state) - known)
    if unknown:
        raise TeacherImportError(
            f"{source}: unknown keys {unknown[:8]}{' ...' if len(unknown) > 8 else ''} "
            f"(expected only the keys of {what}); a network other than the Nature CNN "
            "cannot be mapped")


def _conv_prefixes(prefix: str) -> dict[str, str]:
    return {f"conv{i}": f"{prefix}{j}" for i, j in enumerate((0, 2, 4))}


def _weights(layers, value_role: str | None) -> NatureWeights:
    return NatureWeights(convs=tuple(layers[f"conv{i}"] for i in range(3)),
                         hidden=layers["hidden"], outputs=layers["outputs"],
                         value=layers[value_role] if value_role else None)


def _ints(value) -> tuple[int, ...] | None:
    """A shape from SB3's JSON: a list of ints, or its str() ("(4, 84, 84)")."""
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    if isinstance(value, str) and re.fullmatch(r"\(?\[?[\d,\s]*\]?\)?", value):
        return tuple(int(v) for v in re.findall(r"\d+", value))
    return None


def _sb3_space(data: dict, key: str, source: str) -> dict:
    space = data.get(key)
    if not isinstance(space, dict):
        raise TeacherImportError(f"{source}: its `data` has no {key} (expected the space "
                                 f"SB3 records; found keys {sorted(data)[:10]})")
    return space


def read_sb3(path: str | Path) -> Source:
    """Reads an SB3 / RL Zoo `.zip` (DQN, PPO or A2C with `CnnPolicy`).

    Args:
      path: the zip `model.save()` wrote.

    Raises:
      TeacherImportError: not such a zip, or a network or space that cannot
        be mapped.
    """
    path = Path(path)
    raw = _read_bytes(path)
    source = str(path)
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise TeacherImportError(f"{source}: not an SB3 model (expected the .zip that "
                                 "model.save() writes, holding data and policy.pth)")
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        members = archive.namelist()
        if not {"data", "policy.pth"} <= set(members):
            raise TeacherImportError(f"{source}: not an SB3 model (expected data and "
                                     f"policy.pth in the zip, found {members[:8]})")
        try:
            data = json.loads(archive.read("data"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TeacherImportError(f"{source}: its `data` is not JSON ({e})") from None
        policy = archive.read("policy.pth")
        version = (archive.read("_stable_baselines3_version").decode("utf-8", "replace").strip()
                   if "_stable_baselines3_version" in members else _UNKNOWN)
    if not isinstance(data, dict):
        raise TeacherImportError(f"{source}: its `data` is a JSON {type(data).__name__}, "
                                 "expected an object")
    state = read_state_dict(policy, f"{source}:policy.pth")
    source = f"{source}:policy.pth"

    nature_keys = ("cnn.0", "cnn.2", "cnn.4", "linear.0")
    if any(k.startswith("q_net.") for k in state):
        extractor, algorithm, kind = "q_net.features_extractor.", "dqn", "q_values"
        names = {**_conv_prefixes(f"{extractor}cnn."), "hidden": f"{extractor}linear.0",
                 "outputs": "q_net.q_net.0"}
        value_role = None
        known = {f"{net}.{p}.{part}" for net in ("q_net", "q_net_target")
                 for p in [f"features_extractor.{k}" for k in nature_keys] + ["q_net.0"]
                 for part in ("weight", "bias")}
        what = "DQN's CnnPolicy (q_net.*, q_net_target.*)"
    elif any(k.startswith("action_net.") for k in state):
        if any(k.startswith("pi_features_extractor.") for k in state) and not any(
                k.startswith("features_extractor.") for k in state):
            raise TeacherImportError(
                f"{source}: separate actor and critic trunks (share_features_extractor="
                "False): expected one trunk (features_extractor.*) that both heads share")
        algorithm = "ppo" if "clip_range" in data else "a2c" if "n_steps" in data else (
            "actor-critic")
        kind, value_role = "logits", "value"
        names = {**_conv_prefixes("features_extractor.cnn."),
                 "hidden": "features_extractor.linear.0", "outputs": "action_net",
                 "value": "value_net"}
        trunk = {f"{ex}.{k}.{part}" for ex in ("features_extractor", "pi_features_extractor",
                                               "vf_features_extractor")
                 for k in nature_keys for part in ("weight", "bias")}
        known = trunk | {f"{h}.{part}" for h in ("action_net", "value_net")
                         for part in ("weight", "bias")}
        what = "PPO / A2C's CnnPolicy (features_extractor.*, action_net.*, value_net.*)"
        for key in sorted(trunk & set(state)):  # Shared trunks: the same tensors.
            base = re.sub(r"^(pi|vf)_", "", key)
            if base in state and not np.array_equal(state[key], state[base]):
                raise TeacherImportError(f"{source}: {key} differs from {base}: expected "
                                         "one trunk shared by actor and critic")
    else:
        raise TeacherImportError(
            f"{source}: neither a DQN (q_net.*) nor a PPO / A2C (action_net.*) CnnPolicy; "
            f"found keys {sorted(state)[:10]}")
    _refuse_unknown(state, known, source, what)
    weights = _weights(_layers(state, names, source, what), value_role)

    # What the zip's `data` tells. Only plain JSON fields are read: the
    # ":serialized:" ones are cloudpickles, which would run code.
    obs = _sb3_space(data, "observation_space", str(path))
    act = _sb3_space(data, "action_space", str(path))
    shape = _ints(obs.get("_shape", obs.get("shape")))
    dtype = str(obs.get("dtype", _UNKNOWN))
    if shape is None or len(shape) != 3 or "Box" not in str(obs.get(":type:", "Box")):
        raise TeacherImportError(
            f"{path}: observation space {obs.get(':type:', '?')} of shape "
            f"{obs.get('_shape', obs.get('shape'))}, expected a Box of 3-D images "
            "((stack, 84, 84) or (84, 84, stack))")
    if dtype != "uint8":
        raise TeacherImportError(f"{path}: observations of dtype {dtype}, expected uint8 "
                                 "frames (the teacher scales 0..255 itself)")
    stack = weights.stack
    if shape[0] == stack:
        channels, hw = "first", shape[1:]
    elif shape[2] == stack:
        # SB3 builds NatureCNN from shape[0]; a channels-last space whose last
        # axis fits conv0 can only have reached the network transposed.
        channels, hw = ("last (saved space; transposed to channels first before the "
                        "network, as VecTransposeImage does)"), shape[:2]
    else:
        raise TeacherImportError(
            f"{path}: observation space of shape {shape} does not fit conv0's {stack} input "
            f"channels: expected ({stack}, H, W) (channels first) or (H, W, {stack})")
    n = act.get("n")
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise TeacherImportError(
            f"{path}: action space {act.get(':type:', '?')}, expected a Discrete one "
            f"(found n={n!r})") from None
    if n != weights.num_actions:
        raise TeacherImportError(f"{path}: action space of {n} actions, but the output layer "
                                 f"has {weights.num_actions} rows")
    kwargs = data.get("policy_kwargs")
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    extractor_class = str(kwargs.get("features_extractor_class", "NatureCNN"))
    if "NatureCNN" not in extractor_class:
        raise TeacherImportError(f"{path}: features extractor {extractor_class}, expected "
                                 "NatureCNN")
    normalize = kwargs.get("normalize_images", True)
    normalize = normalize if isinstance(normalize, bool) else str(normalize) != "False"
    if not normalize:  # The network saw 0..255: fold the teacher's 1/255 back into conv0.
        (kernel, bias), *rest = weights.convs
        weights = weights._replace(convs=((kernel * 255.0, bias), *rest))
    stacked = {k: data[k] for k in ("n_stack", "frame_stack") if k in data}
    preprocessing = {
        "observation_space": {"shape": list(shape), "dtype": dtype},
        "channels": channels,
        "frame_stack": stack,
        **({"n_stack": next(iter(stacked.values()))} if stacked else {}),
        "frame_stack_order": "oldest first (VecFrameStack's order; the file does not "
                             "record it)",
        "frame_height": int(hw[0]), "frame_width": int(hw[1]), "num_actions": n,
        "pixel_scaling": ("1/255 in the policy (normalize_images)" if normalize else
                          "none (normalize_images=False): the import folds 255 into conv0"),
        **dict.fromkeys(_NOT_RECORDED, _UNKNOWN),
        "note": ("SB3 saves no wrapper settings; RL Zoo trains Atari with AtariWrapper: "
                 "30 no-op starts, frame skip 4 with a max over the last two frames, "
                 "life loss ends a training episode, rewards clipped to their sign; "
                 "sticky actions as the env id sets them (NoFrameskip-v4: none, v5: 0.25)"),
    }
    policy_class = data.get("policy_class")
    policy_class = policy_class if isinstance(policy_class, dict) else {}
    imported_from = {
        "path": str(path.resolve()), "format": "sb3", "sha256": _sha256(raw),
        "algorithm": algorithm, "stable_baselines3_version": version,
        "policy_module": str(policy_class.get("__module__", _UNKNOWN)),
        "num_timesteps": data.get("num_timesteps", _UNKNOWN),
        "n_envs": data.get("n_envs", _UNKNOWN),
    }
    return Source(weights, (stack, int(hw[0]), int(hw[1])), kind, f"sb3-{algorithm}",
                  imported_from, preprocessing)


def read_cleanrl(path: str | Path, frame_hw: tuple[int, int] = (84, 84)) -> Source:
    """Reads a CleanRL `.cleanrl_model` of `dqn_atari.py` or `ppo_atari.py`.

    Args:
      path: the file (`torch.save(model.state_dict(), path)`).
      frame_hw: the frame size (the file does not record it; CleanRL's Atari
        scripts use 84x84); the first linear layer's width must fit it.

    Raises:
      TeacherImportError: not such a file, or a network that cannot be mapped.
    """
    path = Path(path)
    raw = _read_bytes(path)
    state = read_state_dict(raw, str(path))
    source = str(path)
    trunk = {**_conv_prefixes("network."), "hidden": "network.7"}
    if any(k.startswith("actor.") for k in state):
        algorithm, kind, value_role = "ppo_atari", "logits", "value"
        names = {**trunk, "outputs": "actor", "value": "critic"}
        what = "ppo_atari's Agent (network.0/2/4/7, actor, critic)"
    elif "network.9.weight" in state:
        algorithm, kind, value_role = "dqn_atari", "q_values", None
        names = {**trunk, "outputs": "network.9"}
        what = "dqn_atari's QNetwork (network.0/2/4/7/9)"
    else:
        raise TeacherImportError(
            f"{source}: neither dqn_atari's QNetwork (network.0/2/4/7/9) nor ppo_atari's "
            f"Agent (network.0/2/4/7, actor, critic); found keys {sorted(state)[:10]}")
    known = {f"{p}.{part}" for p in names.values() for part in ("weight", "bias")}
    _refuse_unknown(state, known, source, what)
    weights = _weights(_layers(state, names, source, what), value_role)
    stack = weights.stack
    preprocessing = {
        "observation_space": _UNKNOWN,
        "channels": "first (the network's input is NCHW; the file records no space)",
        "frame_stack": stack,
        "frame_stack_order": "oldest first (FrameStack's order; the file does not record it)",
        "frame_height": int(frame_hw[0]), "frame_width": int(frame_hw[1]),
        "num_actions": weights.num_actions,
        "pixel_scaling": "1/255 in the network's forward pass (CleanRL's Atari scripts)",
        **dict.fromkeys(_NOT_RECORDED, _UNKNOWN),
        "note": ("the file holds weights only; CleanRL's Atari scripts train with 30 "
                 "no-op starts, frame skip 4 with a max over the last two frames, "
                 "life loss ending a training episode, FIRE on reset, rewards clipped "
                 "to their sign, and the env id's sticky actions (NoFrameskip-v4: none; "
                 "v5 and envpool variants: see their script)"),
    }
    imported_from = {"path": str(path.resolve()), "format": "cleanrl", "sha256": _sha256(raw),
                     "algorithm": algorithm}
    return Source(weights, (stack, int(frame_hw[0]), int(frame_hw[1])), kind,
                  f"cleanrl-{algorithm}", imported_from, preprocessing)


def import_teacher(
    path: str | Path,
    source_format: str,
    game: str,
    teachers_dir: str | Path,
    preprocessing: environments.Preprocessing | None = None,
    overwrite: bool = False,
    command: str = "",
) -> tuple[Path, Path]:
    """Converts a PyTorch Atari teacher into `<teachers_dir>/<game>.keras` + card.

    Args:
      path: the source file.
      source_format: "sb3" (SB3 / RL Zoo .zip) or "cleanrl" (.cleanrl_model).
      game: the game the teacher plays (its minimal action set must match).
      teachers_dir: where the teacher goes.
      preprocessing: the spec the teacher is to be used under (the card's
        `preprocessing`; default: the project's); its stack and frame size
        must be the file's.
      overwrite: replace a teacher already there.
      command: the command line, recorded in the card.

    Returns:
      The paths of the Keras file and of the card.

    Raises:
      TeacherImportError: an unreadable or unmappable file, a game whose
        action count differs, or a teacher already there (without overwrite).
    """
    if source_format not in FORMATS:
        raise TeacherImportError(f"unknown source format {source_format!r}, expected one "
                                 f"of {FORMATS}")
    game_info = games_lib.get_game(game)
    spec = preprocessing or environments.Preprocessing()
    model_path, card_path = teachers_lib.teacher_paths(game_info.name, teachers_dir)
    if not overwrite and (model_path.exists() or card_path.exists()):
        raise TeacherImportError(f"{model_path} already exists: expected a free place for "
                                 "the imported teacher (overwrite it explicitly, or choose "
                                 "another teachers folder)")
    src = (read_sb3(path) if source_format == "sb3"
           else read_cleanrl(path, (spec.frame_height, spec.frame_width)))
    check_nature(src.weights, src.observation_shape[1:], str(path))
    if src.weights.num_actions != game_info.num_actions:
        full = " (the full action set)" if src.weights.num_actions == 18 else ""
        raise TeacherImportError(
            f"{path}: {src.weights.num_actions} actions{full}, expected "
            f"{game_info.num_actions}: the minimal action set of {game_info.name} "
            f"({', '.join(game_info.action_meanings)})")
    if src.observation_shape != spec.observation_shape:
        raise TeacherImportError(
            f"{path}: the network takes frames of shape {src.observation_shape}, the "
            f"preprocessing asks for {spec.observation_shape} (frame_stack, height, width)")
    model = keras_teacher(src.weights, src.observation_shape)
    training = {"algorithm": src.algorithm, "imported_from": src.imported_from,
                "source_preprocessing": src.source_preprocessing}
    if command:
        training["command"] = command
    Path(teachers_dir).mkdir(parents=True, exist_ok=True)
    return teachers_lib.save_teacher(model, game_info.name, src.kind, spec, teachers_dir,
                                     training=training)


if __name__ == "__main__":
    import shlex

    from absl import flags

    from multidistill import cli

    FLAGS = flags.FLAGS
    flags.DEFINE_string("from", None, f"The source's format: one of {', '.join(FORMATS)} "
                        "(SB3 / RL Zoo .zip; CleanRL .cleanrl_model). Required.")
    flags.DEFINE_string("game", None, "The game the teacher plays, e.g. pong. Required.")
    flags.DEFINE_string("teachers_dir", str(teachers_lib.default_output_dir()),
                        "Where <game>.keras and <game>.json go (default: the checkout's "
                        "teachers/, or ./teachers for an installed package).")
    flags.DEFINE_bool("overwrite", False, "Replace a teacher already in --teachers_dir.")
    cli.define_preprocessing_flags()
    cli.define_verbose_flag()

    def main(argv):
        source_format = FLAGS["from"].value
        cli.require(source_format in FORMATS,
                    f"--from must be one of {', '.join(FORMATS)}, found {source_format!r}")
        cli.require(FLAGS.game is not None, "--game is required, e.g. --game=pong")
        cli.require(len(argv) == 2, "give one source file, e.g. python -m "
                    f"multidistill.import_teacher --from=sb3 PATH.zip --game=pong (found "
                    f"{len(argv) - 1} arguments: {argv[1:]})")
        game = games_lib.parse_games(FLAGS.game, "--game")[0]
        model_path, card_path = import_teacher(
            argv[1], source_format, game, FLAGS.teachers_dir, cli.preprocessing_from_flags(),
            overwrite=FLAGS.overwrite, command=shlex.join(sys.orig_argv))
        print(f"wrote {model_path} and {card_path}; evaluate it under the protocol with "
              f"python -m multidistill.train_teacher --game={game} --mode=evaluate "
              f"--teachers_dir={FLAGS.teachers_dir}")

    cli.run(main, positional=True)
