"""Module boundaries: every module imports on its own, the data side loads no
deep-learning framework, only entry points read flags, and the pipeline uses
the datasets module's public API only."""

import os
import pkgutil
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import REPO

import multidistill

PACKAGE = REPO / "multidistill"
FRAMEWORKS = ("tensorflow", "keras", "jax")
ENTRY_MODULES = {"cli.py", "build_datasets.py", "evaluate.py", "train_teacher.py", "compare.py",
                 "sweep.py", "main_job.py", "export_dataset.py", "import_teacher.py",
                 "disagreement.py"}


def _python(code, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _all_modules():
    names = ["multidistill"]
    for info in pkgutil.walk_packages(multidistill.__path__, "multidistill."):
        names.append(info.name)
    return names


def test_the_walk_finds_every_module_and_subpackage():
    names = _all_modules()
    files = {p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
             for p in PACKAGE.rglob("*.py")}
    files = {n[: -len(".__init__")] if n.endswith(".__init__") else n for n in files}
    assert set(names) == files
    assert {"multidistill.collect", "multidistill.students", "multidistill.agents"} <= set(names)


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = _all_modules()
    with ThreadPoolExecutor(max_workers=2) as pool:  # Two cores: two at a time.
        results = dict(zip(names, pool.map(lambda n: _python(f"import {n}"), names)))
    failed = {n: (p.stdout + p.stderr)[-2000:] for n, p in results.items() if p.returncode}
    assert not failed, failed


def test_the_data_side_loads_no_framework(tmp_path):
    """Importing (and using) the data-side modules leaves TensorFlow, Keras
    and JAX unloaded; each check runs after one more module is imported."""
    code = f"""
import sys
FRAMEWORKS = {FRAMEWORKS!r}

def loaded(after):
    found = [m for m in FRAMEWORKS if m in sys.modules]
    print(after, found)

import multidistill
loaded("multidistill")
import multidistill.games
loaded("games")
import multidistill.datasets
loaded("datasets")
import multidistill.environments
loaded("environments")
import multidistill.collect
loaded("collect")
sys.path.insert(0, {str(REPO / "tests")!r})
from conftest import new_writer, synthetic_episode
from multidistill import datasets, environments
spec = environments.Preprocessing()
path = {str(tmp_path / "pong.h5")!r}
with new_writer(path, spec) as w:
    w.append_episode(synthetic_episode(6))
with datasets.Dataset(path) as ds:
    ds.read_block(0, ds.num_agent_steps)
    ds.sessions
loaded("writing and reading a dataset")
"""
    p = _python(code)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines == [f"{step} []" for step in (
        "multidistill", "games", "datasets", "environments", "collect",
        "writing and reading a dataset")], p.stdout + p.stderr


@pytest.mark.slow
def test_networks_registers_the_student_with_keras():
    p = _python("import keras, multidistill.networks as n; print(keras.saving."
                "get_registered_object('multidistill>MultiTaskStudent') is n.MultiTaskStudent)")
    assert p.returncode == 0 and p.stdout.strip().endswith("True"), p.stdout + p.stderr


def test_only_entry_modules_read_flags():
    readers = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                     if re.search(r"\bFLAGS\b", p.read_text()))
    assert readers, "no module reads flags at all?"
    assert set(readers) <= ENTRY_MODULES, readers
    # Nor does a library module import absl's flags.
    importers = sorted(p.name for p in PACKAGE.rglob("*.py")
                       if re.search(r"from absl import .*\bflags\b|import absl\.flags",
                                    p.read_text()) and p.name not in ENTRY_MODULES)
    assert not importers, importers


def test_pipeline_uses_only_the_public_api_of_datasets():
    source = (PACKAGE / "pipeline.py").read_text()
    assert "from multidistill import datasets as datasets_lib" in source
    private = re.findall(r"\b(?:ds|datasets_lib|self\.ds|dataset|self\.datasets\[\w+\])"
                         r"\._\w+", source)
    assert not private, private
    # Nor does it open the files itself.
    assert "h5py" not in source
