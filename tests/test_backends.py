"""The losses, objectives and the student run under the JAX backend too.

The TensorFlow run of the suite covers the default backend; this test runs
the same loss, objective and network tests in a fresh process with
KERAS_BACKEND=jax.
"""

import ast
import os
import re

import pytest
from conftest import REPO, run_cli

FILES = ("tests/test_losses.py", "tests/test_objectives.py", "tests/test_networks.py")


def _count_tests(path):
    """Test functions of a file (these files have no parametrised tests)."""
    tree = ast.parse((REPO / path).read_text())
    names = [f.name for f in tree.body
             if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    assert "parametrize" not in (REPO / path).read_text(), path
    return len(names)


@pytest.mark.slow
def test_losses_and_student_under_jax():
    pytest.importorskip("jax")
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("the whole suite already runs under JAX")
    expected = sum(_count_tests(f) for f in FILES)
    rc, out = run_cli(["-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES],
                      env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert rc == 0, out
    summary = out.strip().splitlines()[-1]
    # Every test ran and passed: none skipped, failed or in error.
    assert re.fullmatch(rf"{expected} passed(, \d+ warnings?)? in .*", summary), summary
