"""The losses, objectives and the student run under the JAX backend too.

The TensorFlow run of the suite covers the default backend; this test runs
the same loss, objective and network tests, and IE-KD's fast ones, in one
fresh process with KERAS_BACKEND=jax.
"""

import ast
import collections
import os
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO, run_cli

FILES = ("tests/test_losses.py", "tests/test_objectives.py", "tests/test_networks.py")
IEKD_FILE = "tests/test_iekd.py"  # Parametrised: counted loosely.
IEKD_SLOW = IEKD_FILE + "::test_distillation_step_fit_save_and_resume"  # Not its fast part.


def _count_tests(path):
    """Test functions of a file (these files have no parametrised tests)."""
    tree = ast.parse((REPO / path).read_text())
    names = [f.name for f in tree.body
             if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    assert "parametrize" not in (REPO / path).read_text(), path
    return len(names)


@pytest.mark.slow
def test_losses_and_student_under_jax(tmp_path):
    """FILES, and IE-KD's fast tests (its losses, split, gradients and
    objective), in one JAX process."""
    pytest.importorskip("jax")
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("the whole suite already runs under JAX")
    report = tmp_path / "jax.xml"
    rc, out = run_cli(["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                       *FILES, IEKD_FILE, "--deselect", IEKD_SLOW],
                      env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert rc == 0, out
    cases = ET.parse(report).getroot().iter("testcase")
    by_file = collections.Counter()
    for case in cases:
        # Every test ran and passed: none skipped, failed or in error.
        assert not list(case), (case.get("classname"), case.get("name"), out[-3000:])
        by_file[case.get("classname")] += 1
    for path in FILES:
        assert by_file[path[:-3].replace("/", ".")] == _count_tests(path), (path, by_file)
    assert by_file[IEKD_FILE[:-3].replace("/", ".")] >= 15, by_file
