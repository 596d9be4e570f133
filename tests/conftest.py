"""Shared fakes: tiny teachers and tiny datasets made inside the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent

# Episodes capped at 1,200 emulator frames (300 agent steps) keep env-driven
# tests to seconds; teachers and datasets of the tests all use this spec.
SPEC_KW = dict(max_episode_frames=1200)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Each test leaves SIGINT and SIGTERM as it found them (ray.init installs
    its own and ray.shutdown keeps them, which a later test in the same
    worker would inherit)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        if handler is not None:
            signal.signal(s, handler)


@pytest.fixture(scope="session")
def spec():
    from multidistill import environments

    return environments.Preprocessing(**SPEC_KW)


def make_teacher(directory, game, kind, spec, seed=0, filters=(4, 4, 4), fc=16):
    import keras

    from multidistill import games, networks, teachers

    keras.utils.set_random_seed(seed)
    n = games.get_game(game).num_actions
    model = networks.build_teacher_network(n, spec.observation_shape, filters, fc)
    teachers.save_teacher(model, game, kind, spec, directory,
                          evaluation={"mean": 0.0, "std": 0.0, "episodes": 1})
    return model


@pytest.fixture(scope="session")
def teachers_dir(tmp_path_factory, spec):
    d = tmp_path_factory.mktemp("teachers")
    make_teacher(d, "pong", "q_values", spec, seed=1)
    make_teacher(d, "freeway", "logits", spec, seed=2)
    return d


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory, teachers_dir, spec):
    """Real datasets recorded by the tiny teachers (about 600 steps a game)."""
    from multidistill import collect, teachers

    d = tmp_path_factory.mktemp("datasets")
    config = collect.CollectConfig(num_agent_steps=500, num_envs=2, seed=3)
    for game in ("pong", "freeway"):
        t = teachers.load_teacher(game, teachers_dir, spec)
        collect.build_dataset(t, d / f"{game}.h5", config, spec, progress=False)
    return d


def synthetic_episode(t, num_actions=3, feature_dim=5, seed=0, shape=(84, 84)):
    """An episode of T steps whose frame i is filled with a recognisable value
    (every per-step array of schema v2)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((t,) + shape, np.uint8)
    for i in range(t):
        frames[i] = (seed * 37 + i + 1) % 251
    terminated = np.zeros(t, bool)
    terminated[-1] = True
    return {
        "frames": frames,
        "teacher_outputs": rng.normal(size=(t, num_actions)).astype(np.float32),
        "teacher_features": rng.normal(size=(t, feature_dim)).astype(np.float32),
        "teacher_values": rng.normal(size=t).astype(np.float32),
        "actions": rng.integers(0, num_actions, size=t).astype(np.uint8),
        "behaviour_log_probs": -rng.uniform(0.0, 3.0, size=t).astype(np.float32),
        "rewards": rng.normal(size=t).astype(np.float32),
        "terminated": terminated,
        "truncated": np.zeros(t, bool),
    }


def new_writer(path, spec, game="pong", num_actions=3, feature_dim=5, teacher_sha="a" * 64,
               session=True, seed=0):
    """A writer of a schema-v2 file; with `session`, a teacher session
    (epsilon 0.05) is started so that episodes can be appended at once."""
    from multidistill import datasets

    w = datasets.DatasetWriter(
        path, game=game, rom_md5="0" * 32, num_actions=num_actions, feature_dim=feature_dim,
        preprocessing=spec, teacher_sha256=teacher_sha, teacher_kind="q_values",
        teacher_path="teacher.keras", teacher_value_source="max_q", seed=0)
    if session:
        w.start_session(datasets.Session(
            seed=seed, behaviour="teacher", beta=1.0, epsilon=0.05,
            behaviour_sha256=teacher_sha, labeller_sha256=teacher_sha))
    return w


def run_cli(args, cwd=None, env=None, timeout=600):
    """Runs a command-line entry point; returns (exit code, stdout + stderr)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    full_env.update(env or {})
    p = subprocess.run([sys.executable] + args, cwd=cwd or REPO, env=full_env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


_CASES_DRIVER = """
import contextlib, io, json, sys
from absl import flags
from multidistill import cli
module_name, define_name, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
module = __import__(module_name, fromlist=["main"])
owner = cli if define_name.startswith("cli.") else module
getattr(owner, define_name.removeprefix("cli."))()
results = []
for argv in cases:
    flags.FLAGS.unparse_flags()
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        sys.argv = [module_name, *argv]
        try:
            cli.run(module.main)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results.append([code, out.getvalue()])
sys.__stdout__.write("\\nCASES " + json.dumps(results) + "\\n")
"""


def run_cli_cases(module: str, define: str, cases: list[list[str]], timeout=600
                  ) -> list[tuple[int, str]]:
    """Runs the entry point `module` (its `main` under `cli.run`) once per
    argv of `cases`, in one fresh interpreter (a process start per case costs
    about 5 s of imports), the flags defined once by `define` (a function of
    the module, or "cli.NAME") and reset to their defaults between cases.
    For cases that stop early with a usage error; returns (exit code, stdout
    + stderr) per case."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", _CASES_DRIVER, module, define, json.dumps(cases)],
                       cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    marker = p.stdout.rfind("\nCASES ")
    assert p.returncode == 0 and marker >= 0, p.stdout[-3000:] + p.stderr[-3000:]
    return [tuple(r) for r in json.loads(p.stdout[marker + len("\nCASES "):])]


class FakeAtari:
    """A stand-in for `ale_py.AtariVectorEnv` (NextStep autoreset): every
    episode lasts `length` agent steps; frames are random pixels drawn from
    each environment's reset seed, stacked as ALE stacks them (zeros before
    an episode's first frame); the reward of a step is the action taken.
    """

    def __init__(self, num_envs, length, frame_stack=4, shape=(84, 84)):
        self.num_envs, self.length, self.shape = num_envs, length, shape
        self.t = np.zeros(num_envs, int)
        self.stacks = np.zeros((num_envs, frame_stack) + shape, np.uint8)
        self.actions = None
        self.closed = False

    def _push(self, i, first):
        if first:
            self.stacks[i] = 0
        self.stacks[i, :-1] = self.stacks[i, 1:]
        self.stacks[i, -1] = self.rngs[i].integers(0, 256, self.shape, dtype=np.uint8)

    def reset(self, seed):
        self.rngs = [np.random.default_rng(seed + i) for i in range(self.num_envs)]
        self.t[:] = 0
        for i in range(self.num_envs):
            self._push(i, first=True)
        return self.stacks.copy(), {}

    def send(self, actions):
        self.actions = np.asarray(actions)

    def recv(self):
        ended = np.zeros(self.num_envs, bool)
        rewards = self.actions.astype(np.float32)
        for i in range(self.num_envs):
            if self.t[i] == self.length:  # The step after an end is a reset.
                self.t[i] = 0
                rewards[i] = 0.0
                self._push(i, first=True)
            else:
                self.t[i] += 1
                self._push(i, first=False)
                ended[i] = self.t[i] == self.length
        self.actions = None
        return self.stacks.copy(), rewards, ended, np.zeros_like(ended), {}

    def close(self):
        self.closed = True


def use_fake_atari(monkeypatch, length):
    """Makes `environments.make_vector_envs` build `FakeAtari` groups of
    `length`-step episodes; returns the list the groups built are put in."""
    from multidistill import environments

    built = []

    def make(game, spec, num_envs, num_threads=0, num_groups=0):
        groups = max(1, min(int(num_groups) or 1, num_envs))
        sizes = [num_envs // groups + (k < num_envs % groups) for k in range(groups)]
        envs = [FakeAtari(n, length, spec.frame_stack,
                          (spec.frame_height, spec.frame_width)) for n in sizes]
        built.extend(envs)
        return envs

    monkeypatch.setattr(environments, "make_vector_envs", make)
    return built


def finite_difference_gradient(f, theta, eps=1e-6):
    """Central finite differences of a scalar function of an array: df/dtheta."""
    g = np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        e = np.zeros_like(theta)
        e[idx] = eps
        g[idx] = (f(theta + e) - f(theta - e)) / (2 * eps)
    return g


def constant_report(student_returns: dict, extra: dict | None = None) -> dict:
    """An evaluation report of the given student returns per game against
    teachers scoring 10 on as many episodes (paired)."""
    from multidistill import environments, evaluation

    scores = {g: evaluation.Scores(returns=r, lengths=[1] * len(r), seconds=0.0)
              for g, r in student_returns.items()}
    teacher = {g: dict(evaluation.Scores(returns=[10.0] * len(r), lengths=[1] * len(r),
                                         seconds=0.0).to_dict(),
                       source="evaluated with the student")
               for g, r in student_returns.items()}
    return evaluation.make_report(scores, teacher, evaluation.EvalProtocol(),
                                  environments.Preprocessing(), extra=extra)


def flag_parser(*define_more):
    """A fixture body: defines the main job's collection, distillation and
    evaluation flags once per process (and `define_more`, each a (flag that
    shows it is defined, define function) pair), then yields parse(*argv) ->
    cli, unparsing the flags after the test."""
    from multidistill import cli

    if "num_agent_steps" not in cli.FLAGS:
        cli.define_collect_flags()
        cli.define_distill_flags()
        cli.define_eval_flags()
    for marker, define in define_more:
        if marker not in cli.FLAGS:
            define()

    def parse(*argv):
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["test", *argv])
        return cli

    yield parse
    cli.FLAGS.unparse_flags()
