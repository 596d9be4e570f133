"""Teacher import from SB3 / RL Zoo and CleanRL files, with no torch installed.

The tests write the exact file layouts themselves: `torch.save`'s zip
(`archive/data.pkl`, pickled with the opcodes and globals torch emits for an
OrderedDict of tensors, `archive/data/<key>` raw storages, `byteorder`,
`version`) and SB3's zip around it (`data` JSON, `policy.pth`). Random
weights of the Nature shapes are converted, and the Keras teacher's outputs
are checked against an independent NumPy forward pass in PyTorch's
conventions (NCHW convolutions, flatten over C, H, W).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import REPO

from multidistill import console, environments
from multidistill import import_teacher as it
from multidistill import teachers as teachers_lib


def _q(path) -> str:
    """`path` as a regular expression matching itself."""
    return re.escape(str(path))


# -- a writer of torch.save's layout (pickle protocol 2, as torch writes it) ---------


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _tuple(items: list[bytes]) -> bytes:
    if not items:
        return b")"  # EMPTY_TUPLE
    if len(items) <= 3:
        return b"".join(items) + b"\x85\x86\x87"[len(items) - 1:len(items)]  # TUPLE1..3
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"  # OrderedDict() via REDUCE


class Stored(NamedTuple):
    """A tensor stored at `offset` elements into its storage, in C or Fortran order."""

    array: np.ndarray
    offset: int = 0
    fortran: bool = False
    as_parameter: bool = False


class Same(NamedTuple):
    """A tensor sharing another entry's storage and view (SB3's shared trunks)."""

    key: str


def _strides(shape, fortran):
    strides, step = [], 1
    for n in (shape if fortran else reversed(shape)):
        strides.append(step)
        step *= n
    return tuple(strides if fortran else reversed(strides))


def torch_save_bytes(state: dict, archive: str = "archive", byteorder: str = "little",
                     pickle_bytes: bytes | None = None) -> bytes:
    """The bytes torch.save(state_dict) writes (zip format): `state` maps
    names to arrays, `Stored` or `Same`; `pickle_bytes` replaces data.pkl."""
    storages, views, out = {}, {}, [b"\x80\x02", _ORDERED_DICT, b"("]
    for name, value in state.items():
        if isinstance(value, Same):
            key, offset, shape, stride, numel = views[value.key]
        else:
            value = value if isinstance(value, Stored) else Stored(value)
            key = str(len(storages))
            flat = value.array.ravel(order="F" if value.fortran else "C")
            storages[key] = np.concatenate([np.zeros(value.offset, np.float32), flat,
                                            np.zeros(3, np.float32)])  # Slack past the end.
            offset, shape = value.offset, value.array.shape
            stride, numel = _strides(shape, value.fortran), storages[key].size
        views[name] = (key, offset, shape, stride, numel)
        pid = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"),
                      _int(numel)])
        tensor = (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q"
                  + _int(offset) + _tuple([_int(n) for n in shape])
                  + _tuple([_int(s) for s in stride]) + b"\x89" + _ORDERED_DICT + b"tR")
        if isinstance(value, Stored) and value.as_parameter:
            tensor = (_global("torch._utils", "_rebuild_parameter") + b"(" + tensor + b"\x89"
                      + _ORDERED_DICT + b"tR")
        out += [_str(name), tensor]
    # SETITEMS, then the state_dict's `_metadata` attribute by BUILD, as torch does.
    metadata = _ORDERED_DICT + b"(" + _str("") + b"}" + _str("version") + _int(1) + b"su"
    out += [b"u", b"}", _str("_metadata"), metadata, b"s", b"b", b"."]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", pickle_bytes or b"".join(out))
        z.writestr(f"{archive}/byteorder", byteorder)
        for key, storage in storages.items():
            z.writestr(f"{archive}/data/{key}",
                       storage.astype(">f4" if byteorder == "big" else "<f4").tobytes())
        z.writestr(f"{archive}/version", "3\n")
        z.writestr(f"{archive}/.data/version", "3\n")
    return buf.getvalue()


def _system_pickle(marker: Path, module="os", name="system") -> bytes:
    """A pickle that would run `touch marker` (data.pkl from a hostile author)."""
    return (b"\x80\x02" + _global(module, name) + _tuple([_str(f"touch {marker}")])
            + b"R.")


# -- Nature-CNN weights in PyTorch's layout, and its forward pass in NumPy -----------------


def nature_params(seed: int, num_actions: int, value: bool, stack: int = 4,
                  hidden_inputs: int = 3136) -> dict:
    """Role -> (weight, bias), PyTorch's default init (uniform, 1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)

    def layer(*shape):
        bound = 1.0 / np.sqrt(np.prod(shape[1:]))
        return (rng.uniform(-bound, bound, shape).astype(np.float32),
                rng.uniform(-bound, bound, shape[0]).astype(np.float32))

    p = {"conv0": layer(32, stack, 8, 8), "conv1": layer(64, 32, 4, 4),
         "conv2": layer(64, 64, 3, 3), "hidden": layer(512, hidden_inputs),
         "outputs": layer(num_actions, 512)}
    if value:
        p["value"] = layer(1, 512)
    return p


def _conv2d_nchw(x, weight, bias, stride):
    kh, kw = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, kh, kw)
    return np.einsum("nchwij,ocij->nohw", windows, weight.astype(np.float64),
                     optimize=True) + bias[None, :, None, None]


def reference_forward(frames: np.ndarray, p: dict, scale: float = 255.0):
    """PyTorch's forward pass of the Nature CNN, in float64: (outputs, value or None)."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    x = frames.astype(np.float64) / scale
    for i, stride in enumerate((4, 2, 1)):
        x = relu(_conv2d_nchw(x, *p[f"conv{i}"], stride))
    x = x.reshape(len(x), -1)  # torch.flatten: C, H, W.
    h = relu(x @ p["hidden"][0].T.astype(np.float64) + p["hidden"][1])
    out = h @ p["outputs"][0].T.astype(np.float64) + p["outputs"][1]
    value = h @ p["value"][0].T.astype(np.float64) + p["value"][1] if "value" in p else None
    return out, value


def _keyed(p: dict, names: dict) -> dict:
    """role -> prefix mapping to a state_dict {prefix.weight, prefix.bias}."""
    state = {}
    for role, prefix in names.items():
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = p[role]
    return state


TRUNK = {"conv0": "cnn.0", "conv1": "cnn.2", "conv2": "cnn.4", "hidden": "linear.0"}


def sb3_dqn_state(p, target):
    state = _keyed(p, {r: f"q_net.features_extractor.{k}" for r, k in TRUNK.items()}
                   | {"outputs": "q_net.q_net.0"})
    state |= _keyed(target, {r: f"q_net_target.features_extractor.{k}" for r, k in TRUNK.items()}
                    | {"outputs": "q_net_target.q_net.0"})
    return state


def sb3_ppo_state(p):
    state = _keyed(p, {r: f"features_extractor.{k}" for r, k in TRUNK.items()})
    for copy in ("pi_features_extractor", "vf_features_extractor"):
        state |= {f"{copy}.{k[len('features_extractor.'):]}": Same(k) for k in list(state)
                  if k.startswith("features_extractor.")}
    return state | _keyed(p, {"outputs": "action_net", "value": "value_net"})


CLEANRL_TRUNK = {"conv0": "network.0", "conv1": "network.2", "conv2": "network.4",
                 "hidden": "network.7"}


def cleanrl_state(p):
    if "value" in p:
        return _keyed(p, CLEANRL_TRUNK | {"outputs": "actor", "value": "critic"})
    return _keyed(p, CLEANRL_TRUNK | {"outputs": "network.9"})


def sb3_zip(path: Path, state: dict, algo: str, marker: Path, n: int = 6,
            obs_shape=(4, 84, 84), policy_kwargs=None, extra=None,
            policy_pth: bytes | None = None) -> Path:
    """An SB3 `model.save()` zip. Its cloudpickled fields hold a pickle that
    would touch `marker`: the importer must never unpickle them."""
    hostile = base64.b64encode(_system_pickle(marker)).decode()
    data = {
        "policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": hostile,
                         "__module__": ("stable_baselines3.dqn.policies" if algo == "dqn"
                                        else "stable_baselines3.common.policies")},
        "observation_space": {":type:": "<class 'gymnasium.spaces.box.Box'>",
                              ":serialized:": hostile, "dtype": "uint8",
                              "_shape": list(obs_shape), "low_repr": "0", "high_repr": "255",
                              "_np_random": None},
        "action_space": {":type:": "<class 'gymnasium.spaces.discrete.Discrete'>",
                         ":serialized:": hostile, "n": str(n), "start": "0", "_shape": [],
                         "dtype": "int64", "_np_random": None},
        "n_envs": 8, "num_timesteps": 10_000_000,
        "policy_kwargs": policy_kwargs if policy_kwargs is not None else {},
        **({"exploration_final_eps": 0.01} if algo == "dqn" else
           {"clip_range": {":type:": "<class 'function'>", ":serialized:": hostile},
            "n_steps": 128}),
        **(extra or {}),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data", json.dumps(data, indent=4))
        z.writestr("policy.pth", policy_pth or torch_save_bytes(state))
        z.writestr("pytorch_variables.pth", torch_save_bytes({}))
        z.writestr("_stable_baselines3_version", "2.3.2")
        z.writestr("system_info.txt", "- OS: Linux\n")
    return path


# -- the torch.save reader ----------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_the_reader_rebuilds_views_shared_storages_and_parameters(byteorder):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    b = rng.normal(size=(7, 6)).astype(np.float32)
    c = rng.normal(size=(5,)).astype(np.float32)
    data = torch_save_bytes({"a": Stored(a, offset=11, fortran=True), "b": Stored(b, offset=3),
                             "b_again": Same("b"), "c": Stored(c, as_parameter=True),
                             "scalar": np.float32(2.5).reshape(())},
                            archive="my_model", byteorder=byteorder)
    state = it.read_state_dict(data, "x.pth")
    assert list(state) == ["a", "b", "b_again", "c", "scalar"]
    for key, want in (("a", a), ("b", b), ("b_again", b), ("c", c)):
        assert state[key].dtype == np.float32 and state[key].shape == want.shape
        np.testing.assert_array_equal(state[key], want)
    assert state["scalar"].shape == () and state["scalar"] == 2.5


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"),
                                         ("subprocess", "Popen"), ("torch", "load")])
def test_a_hostile_pickle_is_refused_without_running(tmp_path, module, name):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.cleanrl_model"
    path.write_bytes(torch_save_bytes({}, pickle_bytes=_system_pickle(marker, module, name)))
    with pytest.raises(it.TeacherImportError, match=rf"{_q(path)}.*refused.*{module}\.{name}"):
        it.read_cleanrl(path)
    # Also inside an SB3 zip, and as the storage type of a persistent id.
    zipped = sb3_zip(tmp_path / "evil.zip", {}, "dqn", marker, policy_pth=torch_save_bytes(
        {}, pickle_bytes=_system_pickle(marker, module, name)))
    with pytest.raises(it.TeacherImportError, match=r"evil.zip:policy.pth: refused"):
        it.read_sb3(zipped)
    pid = _tuple([_str("storage"), _global(module, name), _str("0"), _str("cpu"), _int(1)])
    with pytest.raises(it.TeacherImportError, match=rf"refused.*{module}\.{name}"):
        it.read_state_dict(torch_save_bytes({}, pickle_bytes=b"\x80\x02" + pid + b"Q."), "p")
    assert not marker.exists()


def test_a_tensor_reaching_past_its_storage_is_refused():
    pid = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"),
                  _int(4)])
    bad = (b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q"
           + _int(2) + _tuple([_int(3)]) + _tuple([_int(1)]) + b"\x89" + _ORDERED_DICT + b"tR.")
    data = torch_save_bytes({"w": np.zeros(1, np.float32)}, pickle_bytes=bad)
    with pytest.raises(it.TeacherImportError, match="reaching past its storage"):
        it.read_state_dict(data, "w.pth")


def test_files_that_are_not_zip_torch_saves_are_refused(tmp_path):
    legacy = tmp_path / "old.cleanrl_model"
    legacy.write_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" + b"\0" * 20)
    with pytest.raises(it.TeacherImportError, match=rf"{_q(legacy)}: .*legacy format"):
        it.read_cleanrl(legacy)
    flax = tmp_path / "flax.cleanrl_model"
    flax.write_bytes(b"\x82\xa6params" + b"\0" * 20)
    with pytest.raises(it.TeacherImportError, match=rf"{_q(flax)}: not a torch.save file"):
        it.read_cleanrl(flax)
    with pytest.raises(it.TeacherImportError, match=rf"{_q(flax)}: not an SB3 model"):
        it.read_sb3(flax)
    with pytest.raises(it.TeacherImportError, match="cannot read"):
        it.read_cleanrl(tmp_path / "missing.cleanrl_model")


# -- conversion: outputs equal the PyTorch forward pass ------------------------------------

CASES = {
    # name: (format, game, number of actions, critic?, extra SB3 policy_kwargs)
    "sb3_dqn": ("sb3", "pong", 6, False, None),
    "sb3_dqn_unnormalized": ("sb3", "freeway", 3, False, {"normalize_images": False}),
    "sb3_ppo": ("sb3", "qbert", 6, True, None),
    "cleanrl_dqn": ("cleanrl", "pong", 6, False, None),
    "cleanrl_ppo": ("cleanrl", "freeway", 3, True, None),
}


def _write_source(tmp_path, name, p, marker):
    fmt, _, _, critic, kwargs = CASES[name]
    if fmt == "cleanrl":
        path = tmp_path / f"{name}.cleanrl_model"
        path.write_bytes(torch_save_bytes(cleanrl_state(p)))
        return path
    if critic:
        return sb3_zip(tmp_path / f"{name}.zip", sb3_ppo_state(p), "ppo", marker)
    target = nature_params(99, p["outputs"][0].shape[0], value=False)
    return sb3_zip(tmp_path / f"{name}.zip", sb3_dqn_state(p, target), "dqn", marker,
                   n=p["outputs"][0].shape[0], policy_kwargs=kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_the_keras_teacher_computes_what_the_pytorch_network_does(tmp_path, name):
    fmt, game, num_actions, critic, kwargs = CASES[name]
    p = nature_params(len(name), num_actions, value=critic)
    marker = tmp_path / "ran"
    path = _write_source(tmp_path, name, p, marker)
    out_dir = tmp_path / "teachers"
    model_path, card_path = it.import_teacher(path, fmt, game, out_dir, command="test")
    assert not marker.exists()  # SB3's cloudpickled fields were never unpickled.

    teacher = teachers_lib.load_teacher(game, out_dir, environments.Preprocessing())
    frames = np.random.default_rng(1).integers(0, 256, (5, 4, 84, 84), dtype=np.uint8)
    found = teacher.model(frames, training=False)
    found = [np.asarray(f) for f in (found if critic else [found])]
    # normalize_images=False: the PyTorch network was fed 0..255 unscaled.
    want, want_value = reference_forward(frames, p, scale=1.0 if kwargs else 255.0)
    np.testing.assert_allclose(found[0], want, rtol=1e-5, atol=1e-5)
    if critic:
        np.testing.assert_allclose(found[1], want_value, rtol=1e-5, atol=1e-5)

    card = json.loads(card_path.read_text())
    assert card["kind"] == ("logits" if critic else "q_values")
    assert card["value"] == ("output" if critic else "max_q")
    assert card["num_actions"] == num_actions
    source = card["training"]["imported_from"]
    assert source["format"] == fmt and source["path"] == str(path.resolve())
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    pre = card["training"]["source_preprocessing"]
    assert pre["frame_stack"] == 4 and pre["frame_stack_order"].startswith("oldest first")
    assert pre["channels"].startswith("first")
    for unknown in ("sticky_action_prob", "episodic_life", "reward_clipping"):
        assert pre[unknown] == "unknown"
    assert card["training"]["algorithm"] == {
        "sb3_dqn": "sb3-dqn", "sb3_dqn_unnormalized": "sb3-dqn", "sb3_ppo": "sb3-ppo",
        "cleanrl_dqn": "cleanrl-dqn_atari", "cleanrl_ppo": "cleanrl-ppo_atari"}[name]
    if fmt == "sb3":
        assert pre["observation_space"] == {"shape": [4, 84, 84], "dtype": "uint8"}
        assert source["stable_baselines3_version"] == "2.3.2"


def test_a_channels_last_space_is_recorded_and_mapped(tmp_path):
    p = nature_params(0, 6, value=False)
    path = sb3_zip(tmp_path / "m.zip", sb3_dqn_state(p, p), "dqn", tmp_path / "ran",
                   obs_shape=(84, 84, 4), extra={"n_stack": 4})
    src = it.read_sb3(path)
    assert src.observation_shape == (4, 84, 84)
    assert src.source_preprocessing["channels"].startswith("last")
    assert src.source_preprocessing["n_stack"] == 4


# -- refusals: one message naming the file, what was expected and what was found -----------


def _cleanrl_file(tmp_path, state, name="m.cleanrl_model"):
    path = tmp_path / name
    path.write_bytes(torch_save_bytes(state))
    return path


def test_unknown_and_missing_keys_are_refused(tmp_path):
    p = nature_params(0, 6, value=False)
    extra = cleanrl_state(p) | {"network.11.weight": np.zeros((6, 6), np.float32)}
    path = _cleanrl_file(tmp_path, extra)
    with pytest.raises(it.TeacherImportError,
                       match=rf"{_q(path)}: unknown keys \['network.11.weight'\].*dqn_atari"):
        it.read_cleanrl(path)
    missing = cleanrl_state(p)
    del missing["network.7.bias"]
    path = _cleanrl_file(tmp_path, missing, "missing.cleanrl_model")
    with pytest.raises(it.TeacherImportError, match=r"missing \['network.7.bias'\]"):
        it.read_cleanrl(path)
    other = _cleanrl_file(tmp_path, {"fc.weight": np.zeros((2, 2), np.float32)}, "o.model")
    with pytest.raises(it.TeacherImportError, match=r"neither dqn_atari.*found keys"):
        it.read_cleanrl(other)
    path = sb3_zip(tmp_path / "mlp.zip", sb3_ppo_state(nature_params(0, 6, value=True))
                   | {"mlp_extractor.policy_net.0.weight": np.zeros((64, 512), np.float32)},
                   "ppo", tmp_path / "ran")
    with pytest.raises(it.TeacherImportError, match=r"unknown keys \['mlp_extractor"):
        it.read_sb3(path)


def test_shapes_that_are_not_the_nature_cnn_are_refused(tmp_path):
    p = nature_params(0, 6, value=False)
    p["conv1"] = (np.zeros((64, 32, 5, 5), np.float32), p["conv1"][1])
    path = _cleanrl_file(tmp_path, cleanrl_state(p))
    with pytest.raises(it.TeacherImportError,
                       match=rf"{_q(path)}: conv1's weight has shape \(64, 32, 5, 5\), expected "
                             r"\(out, 32, 4, 4\)"):
        it.import_teacher(path, "cleanrl", "pong", tmp_path / "t")
    small = nature_params(0, 6, value=False, hidden_inputs=1024)  # 64x64 frames.
    path = _cleanrl_file(tmp_path, cleanrl_state(small), "small.cleanrl_model")
    with pytest.raises(it.TeacherImportError,
                       match=r"hidden layer's weight has shape \(512, 1024\), expected "
                             r"\(units, 3136\) for frames of \(84, 84\)"):
        it.import_teacher(path, "cleanrl", "pong", tmp_path / "t")


def test_another_action_count_than_the_games_minimal_set_is_refused(tmp_path):
    path = _cleanrl_file(tmp_path, cleanrl_state(nature_params(0, 18, value=False)))
    with pytest.raises(it.TeacherImportError,
                       match=rf"{_q(path)}: 18 actions \(the full action set\), expected 6: "
                             r"the minimal action set of pong \(NOOP, FIRE"):
        it.import_teacher(path, "cleanrl", "pong", tmp_path / "t")
    p = nature_params(0, 6, value=False)
    path = sb3_zip(tmp_path / "m.zip", sb3_dqn_state(p, p), "dqn", tmp_path / "ran", n=4)
    with pytest.raises(it.TeacherImportError, match=r"action space of 4 actions, but the "
                                                    r"output layer has 6 rows"):
        it.read_sb3(path)
    assert not (tmp_path / "t").exists()


def test_sb3_spaces_and_trunks_that_cannot_be_mapped_are_refused(tmp_path):
    p = nature_params(0, 6, value=False)
    marker = tmp_path / "ran"
    path = sb3_zip(tmp_path / "a.zip", sb3_dqn_state(p, p), "dqn", marker, obs_shape=(3, 84, 84))
    with pytest.raises(it.TeacherImportError,
                       match=r"shape \(3, 84, 84\) does not fit conv0's 4 input channels"):
        it.read_sb3(path)
    path = sb3_zip(tmp_path / "b.zip", sb3_dqn_state(p, p), "dqn", marker,
                   policy_kwargs={"features_extractor_class": "<class 'my.ResNet'>"})
    with pytest.raises(it.TeacherImportError, match=r"features extractor .*ResNet.*NatureCNN"):
        it.read_sb3(path)
    pv = nature_params(0, 6, value=True)
    state = {k.replace("features_extractor.", "pi_features_extractor.")
             if k.startswith("features_extractor.") else k: v
             for k, v in sb3_ppo_state(pv).items() if not isinstance(v, Same)}
    path = sb3_zip(tmp_path / "c.zip", state, "ppo", marker)
    with pytest.raises(it.TeacherImportError, match=r"separate actor and critic trunks"):
        it.read_sb3(path)
    assert not marker.exists()


def test_an_existing_teacher_is_not_overwritten_unless_asked(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "pong.keras").write_bytes(b"x")
    path = _cleanrl_file(tmp_path, cleanrl_state(nature_params(0, 6, value=False)))
    with pytest.raises(it.TeacherImportError, match=r"pong.keras already exists"):
        it.import_teacher(path, "cleanrl", "pong", tmp_path / "t")


# -- the command ----------------------------------------------------------------------------


def _run(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_command_exits_2_with_one_message_on_bad_input(tmp_path):
    assert console.SUBCOMMANDS["import-teacher"][0] == "multidistill.import_teacher"
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    for args, message in (
            (["multidistill.import_teacher", "--from=sb3", str(bad), "--game=pong"],
             f"error: {bad}: not an SB3 model"),
            (["multidistill", "import-teacher", "--from=onnx", str(bad), "--game=pong"],
             "error: --from must be one of sb3, cleanrl, found 'onnx'"),
            (["multidistill.import_teacher", "--from=cleanrl", "--game=pong"],
             "error: give one source file"),
            (["multidistill.import_teacher", "--from=cleanrl", str(bad), "--game=pongg"],
             "error: ")):
        p = _run(*args, f"--teachers_dir={tmp_path / 't'}", cwd=tmp_path)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


@pytest.mark.slow
def test_the_command_writes_a_teacher_that_loads(tmp_path):
    path = sb3_zip(tmp_path / "ppo-QbertNoFrameskip-v4.zip",
                   sb3_ppo_state(nature_params(3, 6, value=True)), "ppo", tmp_path / "ran")
    p = _run("multidistill", "import-teacher", "--from=sb3", str(path), "--game=qbert",
             f"--teachers_dir={tmp_path / 't'}", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "--mode=evaluate" in p.stdout
    teacher = teachers_lib.load_teacher("qbert", tmp_path / "t", environments.Preprocessing())
    assert teacher.kind == "logits" and len(teacher.model.outputs) == 2
    assert "import-teacher" in teacher.card["training"]["command"]


# -- against files torch itself wrote, where torch happens to be installed -------------------


def test_files_written_by_torch_itself():
    torch = pytest.importorskip("torch")
    import tempfile

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2),
                        nn.ReLU(), nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 6))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "dqn_atari.cleanrl_model"
        torch.save({f"network.{k}": v for k, v in net.state_dict().items()}, path)
        model_path, _ = it.import_teacher(path, "cleanrl", "pong", Path(d) / "t")
        teacher = teachers_lib.load_teacher("pong", Path(d) / "t")
        frames = np.random.default_rng(0).integers(0, 256, (3, 4, 84, 84), dtype=np.uint8)
        with torch.no_grad():
            want = net(torch.from_numpy(frames).float() / 255.0).numpy()
        np.testing.assert_allclose(np.asarray(teacher.model(frames)), want, rtol=1e-5,
                                   atol=1e-5)
