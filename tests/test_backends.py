"""The losses and the student run under the JAX backend too.

The TensorFlow run of the suite covers the default backend; this test runs
the same loss and network tests in a fresh process with KERAS_BACKEND=jax.
"""

import os
import re

import pytest
from conftest import run_cli


def test_losses_and_student_under_jax():
    pytest.importorskip("jax")
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("the whole suite already runs under JAX")
    rc, out = run_cli(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "tests/test_losses.py", "tests/test_networks.py"],
                      env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert rc == 0, out
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\b1[0-9] passed\b", summary) and "failed" not in summary, summary
