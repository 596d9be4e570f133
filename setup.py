"""Install multidistill: `pip install -e .` (add `[test]` for the test tools)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_VERSION = re.search(
    r'__version__ = "([^"]+)"',
    (Path(__file__).parent / "multidistill" / "__init__.py").read_text(),
).group(1)

setup(
    name="multidistill",
    version=_VERSION,
    description="Offline multi-task policy distillation for Atari: "
    "teachers -> HDF5 datasets -> one Keras student -> evaluation.",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["multidistill", "multidistill.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.5",
        "gymnasium[atari]>=1.0",
        "ale-py>=0.11",
        "h5py>=3.8",
        "absl-py>=1.4",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
        "tensorboard>=2.16",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=7", "jax[cpu]>=0.4.30", "ruff>=0.5"],
    },
)
