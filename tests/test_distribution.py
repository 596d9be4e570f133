"""Data-parallel training (`multidistill.distribution`): two devices give the
one-device result, and a two-device run resumes.

The device count is fixed before a backend starts, so each backend runs in a
fresh process (`_train_runs`) with the host CPU split into two logical
devices (`distribution.use_cpu_devices`: TensorFlow's logical device
configuration, JAX's `jax_num_cpu_devices`, the same as
XLA_FLAGS=--xla_force_host_platform_device_count=2). There a tiny student
trains on a tiny synthetic dataset through the real `Distiller`: on one
device ("none") and on both ("data_parallel"), on the same global batches;
on both again, stopped after K steps and resumed to N; and started on one
device, resumed on both.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, flag_parser, run_cli

from multidistill import distiller, distribution, objectives, pipeline

NUM_GRAD_STEPS, STOP_AT = 6, 3


def test_worker_slices_by_hand():
    assert distribution.worker_slice(12, 0, 1) == slice(0, 12)
    assert [distribution.worker_slice(12, w, 3) for w in range(3)] == \
        [slice(0, 4), slice(4, 8), slice(8, 12)]
    rows = np.arange(64)
    parts = [rows[distribution.worker_slice(64, w, 4)] for w in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), rows)  # The union is the batch.
    with pytest.raises(ValueError, match="a batch of 10 samples does not split into 3 equal"):
        distribution.worker_slice(10, 0, 3)
    with pytest.raises(ValueError, match=r"worker_index must be in \[0, 2\), found 2"):
        distribution.worker_slice(10, 2, 2)


def test_one_device_engine_and_the_config_setting(monkeypatch):
    engine = distribution.get_engine("none")
    assert (engine.num_replicas, engine.num_workers, engine.is_chief) == (1, 1, True)
    engine.check_batch_size(7)  # Any batch splits over one device.
    config = distiller.DistillConfig(games=("pong",), distribution="data_parallel",
                                     objective=objectives.Distillation(temperatures=(1.0,)))
    assert config.to_dict()["distribution"] == "data_parallel"
    assert "distribution" not in config.identity()  # A run resumes on any engine.
    assert config.global_batch_size == 32
    with pytest.raises(ValueError, match=r"distribution must be one of \['none', "
                                         r"'data_parallel', 'multi_worker'\], found 'gpus'"):
        distiller.DistillConfig(games=(), distribution="gpus")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    # No cluster configured: a clear refusal (the backend of this process).
    with pytest.raises(ValueError, match="distribution multi_worker on (TensorFlow reads the "
                                         "cluster from TF_CONFIG, which is not set|JAX found "
                                         "one process)"):
        distribution.get_engine("multi_worker")


@pytest.fixture()
def parse():
    yield from flag_parser()


def test_distribution_flag(parse):
    cli = parse("--distribution=data_parallel")
    assert cli.distill_config_from_flags(["pong"], ["q_values"]).distribution == "data_parallel"
    assert parse().distill_config_from_flags(["pong"], ["q_values"]).distribution == "none"
    help_text = cli.FLAGS["distribution"].help
    assert all(name in help_text for name in distribution.DISTRIBUTIONS)
    assert "learning rate" in help_text


def test_the_main_job_starts_the_engine_first(tmp_path):
    """A multi-worker engine must exist before any TensorFlow operation: the
    main job creates it before loading teachers (here: none to load)."""
    env = {k: "" for k in ("TF_CONFIG", "KERAS_DISTRIBUTION_JOB_ADDRESSES",
                           "KERAS_DISTRIBUTION_NUM_PROCESSES")}
    rc, out = run_cli(["-m", "multidistill.main_job", "--distribution=multi_worker",
                       f"--teachers_dir={tmp_path / 'none'}", f"--run_dir={tmp_path / 'run'}"],
                      env=dict(env, KERAS_BACKEND="tensorflow"), timeout=120)
    assert rc == 2 and "error: distribution multi_worker on TensorFlow reads the cluster " \
        "from TF_CONFIG, which is not set; on one machine use data_parallel" in out, out
    assert not (tmp_path / "run").exists()


# -- two logical devices, in a fresh process per backend ---------------------------------


def _config(distribution_name, num_grad_steps, batch_size_per_game=4, games=("pong", "freeway")):
    return distiller.DistillConfig(
        games=games, distribution=distribution_name,
        objective=objectives.Distillation(temperatures=(0.01, 1.0)[:len(games)]),
        student_size="tiny", head_units=8, num_grad_steps=num_grad_steps,
        checkpoint_every_steps=100, eval_every_steps=NUM_GRAD_STEPS, learning_rate=1e-3,
        pipeline=pipeline.PipelineConfig(batch_size_per_game=batch_size_per_game,
                                         block_rows=32, blocks_in_memory=2, seed=5))


def _write_datasets(work) -> list[str]:
    """Two tiny synthetic datasets (Pong, Freeway) in `work`; their paths."""
    from conftest import new_writer, synthetic_episode

    from multidistill import environments

    paths = []
    for g, (game, actions) in enumerate([("pong", 6), ("freeway", 3)]):
        paths.append(str(Path(work) / f"{game}.h5"))
        with new_writer(paths[-1], environments.Preprocessing(), game=game,
                        num_actions=actions) as w:
            for e in range(3):
                w.append_episode(synthetic_episode(60, actions, seed=10 * g + e))
    return paths


def _run(work, name, engine, num_grad_steps, games=("pong", "freeway"), batch_size_per_game=4):
    """Trains the run `work/name` to `num_grad_steps` (resuming it if it exists),
    ending as `Distiller.train` ends; its weights and the losses of the steps."""
    from multidistill import environments

    config = _config(engine, num_grad_steps, batch_size_per_game, games)
    paths = [str(Path(work) / f"{g}.h5") for g in games]
    source = pipeline.HDF5Source(paths, config.pipeline,
                                 max_episodes=distiller.data_prefix(Path(work) / name))
    try:
        d = distiller.Distiller(Path(work) / name, config, source, environments.Preprocessing(),
                                teacher_kinds=["q_values", "logits"][:len(games)])
    except BaseException:
        source.close()
        raise
    losses = [r.loss for r in d.steps()]
    d.writer.scalars(d.grad_step, d.heldout_metrics())  # As `train` ends a run.
    d.save_checkpoint()
    weights = [np.asarray(v) for v in d.student.weights]
    d.close()
    return weights, losses


def _max_difference(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _train_runs(work: str) -> None:
    """The child process: trains the runs, writes their results to work/result.json."""
    from multidistill import environments

    distribution.use_cpu_devices(2)
    work = Path(work)
    spec = environments.Preprocessing()
    paths = _write_datasets(work)

    def run(*args, **kwargs):
        return _run(work, *args, **kwargs)

    # Each device computes on its half of the global batch, in order.
    config = _config("data_parallel", 0)
    source = pipeline.HDF5Source(paths, config.pipeline)
    x, y = source.batch(0)
    source.close()
    parts = distribution.get_engine("data_parallel").local_parts({**x, **y})
    out = {"part_rows": [len(p["frames"]) for p in parts],
           "parts_are_the_batch": all(
               np.array_equal(np.concatenate([p[k] for p in parts]), v)
               for k, v in {**x, **y}.items())}
    one, one_losses = run("one", "none", NUM_GRAD_STEPS)
    two, two_losses = run("two", "data_parallel", NUM_GRAD_STEPS)
    run("resumed", "data_parallel", STOP_AT)
    resumed, _ = run("resumed", "data_parallel", NUM_GRAD_STEPS)
    run("switched", "none", STOP_AT)  # Started on one device, resumed on two.
    switched, _ = run("switched", "data_parallel", NUM_GRAD_STEPS)
    out["two_vs_one"] = _max_difference(one, two)
    out["resumed_vs_two"] = _max_difference(two, resumed)
    out["switched_vs_one"] = _max_difference(one, switched)
    out["moved"] = max(float(np.abs(a).max()) for a in
                       (x - y for x, y in zip(one, _initial(spec))))
    out["losses"] = [one_losses, two_losses]
    out["heldout"] = [_last_metrics(work / name) for name in ("one", "two")]
    out["config"] = json.loads((work / "two" / "config.json").read_text())
    try:
        run("odd", "data_parallel", 1, games=("pong",), batch_size_per_game=3)
    except distiller.TrainingError as e:
        out["odd_batch_error"] = str(e)
    (work / "result.json").write_text(json.dumps(out))


def _initial(spec):
    """The student's initial weights (the same seed as the runs)."""
    student, _ = distiller.build_student(_config("none", 0), [6, 3], [5, 5], spec)
    return [np.asarray(v) for v in student.weights]


def _last_metrics(run_dir) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {k: v for r in rows if r["step"] == NUM_GRAD_STEPS for k, v in r.items()
            if k.startswith("heldout/")}


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_equal_one_and_resume(tmp_path, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
            f"import test_distribution; test_distribution._train_runs({str(tmp_path)!r})")
    rc, out = run_cli(["-c", code], env={"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"},
                      timeout=300)
    assert rc == 0, out
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["part_rows"] == [4, 4] and result["parts_are_the_batch"]
    assert result["moved"] > 1e-3  # The steps did train.
    assert result["two_vs_one"] < 1e-5, result
    assert result["resumed_vs_two"] < 1e-5, result
    assert result["switched_vs_one"] < 1e-5, result
    one_losses, two_losses = result["losses"]
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
    one_heldout, two_heldout = result["heldout"]
    assert set(one_heldout) == set(two_heldout) and "heldout/kl/pong" in one_heldout
    for tag, value in one_heldout.items():  # Held-out predictions: every row, in order.
        assert two_heldout[tag] == pytest.approx(value, rel=1e-4, abs=1e-6), tag
    saved = result["config"]
    assert saved["config"]["distribution"] == "data_parallel"
    assert "distribution" not in saved["identity"]["config"]
    assert saved["engine"] == {"distribution": "data_parallel", "backend": backend,
                               "devices": 2, "workers": 1, "worker_index": 0}
    assert result["odd_batch_error"] == (
        "batch_size_per_game: the global batch of 3 samples (samples per game x games) "
        "does not split into 2 equal per-device batches (--distribution=data_parallel: 2 "
        "devices on 1 worker(s)); make it a multiple of 2")


# -- two workers on this machine -----------------------------------------------------------
#
# The suite runs the TensorFlow cluster (about 20 s). The same check on JAX
# (jax.distributed from the KERAS_DISTRIBUTION_* variables, about 40 s) runs
# with `_two_workers(tmp_path, "jax")`; kept out of the suite for time.


def _worker(work: str, index: int, ports: list[int]) -> None:
    """Worker `index` of a two-worker cluster on localhost (one CPU device
    each) on the process's backend: trains the run work/mw; worker 0 then
    trains the same run on one device of its own (work/one). Writes
    work/worker<index>.json and .npz."""
    import keras

    if keras.backend.backend() == "tensorflow":
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
             "task": {"type": "worker", "index": index}})
    else:
        os.environ.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{ports[0]}",
                          KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                          KERAS_DISTRIBUTION_PROCESS_ID=str(index))
    engine = distribution.get_engine("multi_worker")  # Before any backend operation.
    weights, losses = _run(work, "mw", "multi_worker", NUM_GRAD_STEPS)
    out = {"engine": engine.describe(), "losses": losses}
    if index == 0:
        one, out["one_losses"] = _run(work, "one", "none", NUM_GRAD_STEPS)
        out["vs_one"] = _max_difference(one, weights)
    np.savez(Path(work) / f"worker{index}.npz", *weights)
    (Path(work) / f"worker{index}.json").write_text(json.dumps(out))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_tensorflow_workers_equal_one_device(tmp_path):
    _two_workers(tmp_path, "tensorflow")


def _two_workers(tmp_path, backend):
    """Two workers and a one-device run (`_worker`) on `backend`, checked."""
    _write_datasets(tmp_path)
    ports = _free_ports(2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
               KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    workers = [subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
         f"import test_distribution; test_distribution._worker({str(tmp_path)!r}, {i}, "
         f"{ports})"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=240)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(results):
        assert r["engine"] == {"distribution": "multi_worker", "backend": backend,
                               "devices": 2, "workers": 2, "worker_index": i}
    weights = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    for key in weights[0].files:  # The workers hold the same student.
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    assert results[0]["vs_one"] < 1e-5, results[0]
    np.testing.assert_allclose(results[0]["losses"], results[0]["one_losses"], rtol=1e-5)
    assert results[1]["losses"] == results[0]["losses"]
    # Only the chief wrote the run directory: one held-out row for the last step.
    rows = [json.loads(line) for line in
            (tmp_path / "mw" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "heldout/kl/pong" in r] == [NUM_GRAD_STEPS]
    saved = json.loads((tmp_path / "mw" / "config.json").read_text())
    assert saved["engine"]["worker_index"] == 0
