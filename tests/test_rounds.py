"""Collection rounds: control policies, aggregation under a cap, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, SPEC_KW

from multidistill import (
    checkpoints,
    collect,
    datasets,
    distiller,
    objectives,
    pipeline,
    rounds,
    teachers,
)


def test_config_checks_and_beta_schedule():
    c = rounds.RoundsConfig(control="mixture", rounds=3, beta=0.5, beta_decay=0.5)
    assert [c.beta_at(r) for r in (1, 2, 3)] == [0.5, 0.25, 0.125]
    assert rounds.RoundsConfig(control="teacher").beta_at(2) == 1.0
    assert rounds.RoundsConfig(control="student").beta_at(1) == 0.0
    assert rounds.RoundsConfig(control="uniform").behaviour == "random"
    for kw, msg in [(dict(beta=1.5), r"^beta must be in \[0, 1\], found 1.5"),
                    (dict(rounds=-1), "^rounds must be >= 0, found -1"),
                    (dict(control="expert"), "^control must be one of"),
                    (dict(epsilon=-0.1), r"^epsilon must be in \[0, 1\]"),
                    (dict(max_agent_steps_per_game=-5), "^max_agent_steps_per_game must be")]:
        with pytest.raises(ValueError, match=msg):
            rounds.RoundsConfig(**kw)
    capped = rounds.RoundsConfig(agent_steps_per_round=1000, max_agent_steps_per_game=5000)
    capped.check_cap(4000)
    with pytest.raises(ValueError, match=r"must hold the 4,500 teacher-driven steps plus one "
                                         r"round's 1,000 steps \(>= 5,500\), found 5,000"):
        capped.check_cap(4500)
    rounds.RoundsConfig(agent_steps_per_round=1000, max_agent_steps_per_game=1000,
                        keep_teacher_data=False).check_cap(10**6)


def _distill_config(num_grad_steps=12):
    return distiller.DistillConfig(
        games=("pong", "freeway"),
        objective=objectives.Distillation(temperatures=(0.01, 1.0)),
        student_size="net3", head_units=16, num_grad_steps=num_grad_steps,
        checkpoint_every_steps=4, eval_every_steps=100, learning_rate=1e-3,
        pipeline=pipeline.PipelineConfig(batch_size_per_game=8, block_rows=64,
                                         blocks_in_memory=4))


def _loop(run_dir, teachers_dir, datasets_dir, spec, **kw):
    games = ("pong", "freeway")
    loaded = {g: teachers.load_teacher(g, teachers_dir, spec) for g in games}
    config = rounds.RoundsConfig(**{**dict(control="student", rounds=2,
                                           agent_steps_per_round=120, grad_steps_per_round=6),
                                    **kw})
    return rounds.RoundLoop(
        run_dir, config, _distill_config(), loaded,
        [str(datasets_dir / f"{g}.h5") for g in games], spec,
        collect.CollectConfig(num_envs=2, num_threads=1, seed=7), progress=False)


@pytest.mark.slow
def test_student_rounds_record_who_acted_and_train_on_the_aggregate(
        tmp_path, teachers_dir, datasets_dir, spec):
    run = tmp_path / "run"
    summary = _loop(run, teachers_dir, datasets_dir, spec).run()
    assert summary["grad_steps"] == 12 + 2 * 6
    assert summary["run_collect_seconds"] > 0 and summary["run_seconds"] == pytest.approx(
        summary["run_train_seconds"] + summary["run_collect_seconds"])
    state = json.loads((run / "rounds" / "state.json").read_text())
    assert state["trained"] == 2 and sorted(state["collected"]) == ["1", "2"]
    assert state["active"]["2"] == {"rounds": [1, 2], "teacher_data": True}
    for game in ("pong", "freeway"):
        for r in (1, 2):
            with datasets.Dataset(run / "rounds" / game / f"round_{r:03d}.h5") as ds:
                # One environment suffices at this mean episode length: whole
                # episodes overshoot the 120 steps by less than one episode (300).
                assert 120 <= ds.num_agent_steps < 120 + 300
                assert state["collected"][str(r)][game]["num_agent_steps"] == ds.num_agent_steps
                assert state["collected"][str(r)][game]["num_envs"] == 1
                (session,) = ds.sessions
                assert (session.behaviour, session.beta, session.epsilon) == \
                    ("student", 0.0, 0.1)
                # The teacher labels: its checksum, and a behaviour log-probability of
                # an epsilon-greedy policy (at least log(0.1 / A)).
                assert session.labeller_sha256 == ds.teacher_sha256
                lp = ds.read_rows(0, ds.num_agent_steps, ("behaviour_log_probs",))
                assert (lp["behaviour_log_probs"] >= np.log(0.1 / ds.num_actions) - 1e-5).all()
        assert not list((run / "rounds" / game).glob("*partial*"))
    # The snapshots that acted are gone once used; the final student remains.
    assert not list((run / "rounds").glob("student_*.keras"))
    assert (run / "student.keras").exists()
    # A rerun finds everything done.
    again = _loop(run, teachers_dir, datasets_dir, spec).run()
    assert again["grad_steps"] == 24
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["rounds/round"] for m in metrics if "rounds/round" in m] == [1.0, 2.0]


@pytest.mark.slow
def test_the_cap_drops_the_oldest_rounds_and_their_files(
        tmp_path, teachers_dir, datasets_dir, spec):
    """Base ~500 steps + rounds of >= 120: a cap of base + 300 holds two rounds
    at most, so round 3 pushes round 1 out (and deletes its files)."""
    with datasets.Dataset(datasets_dir / "pong.h5") as a, \
            datasets.Dataset(datasets_dir / "freeway.h5") as b:
        base = max(a.num_agent_steps, b.num_agent_steps)
    run = tmp_path / "run"
    loop = _loop(run, teachers_dir, datasets_dir, spec, control="mixture", beta=0.8,
                 rounds=3, max_agent_steps_per_game=base + 300)
    loop.run()
    state = json.loads((run / "rounds" / "state.json").read_text())
    sizes = {r: max(v["num_agent_steps"] for v in state["collected"][r].values())
             for r in state["collected"]}
    assert state["active"]["2"]["rounds"] == ([1, 2] if sizes["1"] + sizes["2"] <= 300
                                              else [2])
    assert state["active"]["3"]["rounds"][-1] == 3 and 1 not in state["active"]["3"]["rounds"]
    assert not (run / "rounds" / "pong" / "round_001.h5").exists()
    with datasets.Dataset(run / "rounds" / "freeway" / "round_003.h5") as ds:
        assert ds.sessions[0].behaviour == "mixture" and ds.sessions[0].beta == \
            pytest.approx(0.8 * 0.25)


# Runs the loop of `_loop` in a fresh process (what a user's rerun does).
RUNNER = """
import sys
sys.path[:0] = [{tests!r}, {repo!r}]
from pathlib import Path
from multidistill import environments
import test_rounds
spec = environments.Preprocessing(max_episode_frames={frames})
print("START", flush=True)
test_rounds._loop(Path({run!r}), Path({teachers!r}), Path({datasets!r}), spec).run()
print("DONE")
"""


def _run(run_dir, teachers_dir, datasets_dir, kill_after=None):
    code = RUNNER.format(tests=str(REPO / "tests"), repo=str(REPO), run=str(run_dir),
                         teachers=str(teachers_dir), datasets=str(datasets_dir),
                         frames=SPEC_KW["max_episode_frames"])
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    head = []
    for line in p.stdout:  # Imports done: the loop starts.
        head.append(line)
        if line.startswith("START"):
            break
    t0 = time.time()
    if kill_after is not None:
        try:
            p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
    out, _ = p.communicate(timeout=600)
    return p.returncode, "".join(head) + out, time.time() - t0


def _fingerprint(run_dir):
    """The final weights and every round file's steps."""
    import hashlib

    with np.load(run_dir / "checkpoint.npz") as z:
        out = {k: hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest()
               for k in z.files if k != "__state__"}
    out["grad_step"] = checkpoints.read_state(run_dir / "checkpoint.npz")["grad_step"]
    for game in ("pong", "freeway"):
        for path in sorted((run_dir / "rounds" / game).glob("*.h5")):
            with datasets.Dataset(path) as ds:
                block = ds.read_rows(0, ds.num_agent_steps)
                out[path.name + game] = hashlib.sha256(b"".join(
                    np.ascontiguousarray(block[k]).tobytes() for k in sorted(block)
                    if k != "prefix")).hexdigest()
    return out


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_exactly(tmp_path, teachers_dir, datasets_dir):
    """The round loop killed with SIGKILL at seeded random moments (start-up,
    collecting, renaming, training, checkpointing, between rounds), then rerun
    until done, ends with the files and weights of an uninterrupted run."""
    code, out, loop_seconds = _run(tmp_path / "clean", teachers_dir, datasets_dir)
    assert code == 0 and "DONE" in out, out[-2000:]
    rng = np.random.default_rng(2026)
    killed = tmp_path / "killed"
    kills = 0
    for _ in range(4):  # Each rerun resumes further: kills land at ever later stages.
        code, out, _ = _run(killed, teachers_dir, datasets_dir,
                            kill_after=float(rng.uniform(0.1, 0.6) * loop_seconds))
        if code == 0:
            break
        assert code == -signal.SIGKILL, out[-2000:]
        kills += 1
    if code != 0:
        code, out, _ = _run(killed, teachers_dir, datasets_dir)
        assert code == 0, out[-2000:]
    assert kills >= 2
    assert _fingerprint(killed) == _fingerprint(tmp_path / "clean")
