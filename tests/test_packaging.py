"""Packaging: the `multidistill` command and its subcommands, where the
default teachers are found (a checkout or the packaged copy), and what
pyproject.toml puts in a wheel. All quick: no subcommand here loads a
deep-learning framework."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

from multidistill import console, main_job, teachers


def _multidistill(*args):
    """`python -m multidistill ARGS` (what the console script runs) from an
    empty folder's view: the exit code and stdout + stderr."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "multidistill", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def test_help_lists_every_subcommand_with_one_line(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: multidistill SUBCOMMAND" in out
    for name in ("train", "build-datasets", "evaluate", "train-teacher", "compare", "sweep"):
        lines = [ln for ln in out.splitlines() if ln.startswith(f"  {name} ")]
        assert len(lines) == 1 and len(lines[0].split(maxsplit=1)[1]) > 20, (name, out)


def test_an_unknown_subcommand_exits_2_naming_it_and_the_valid_ones(capsys):
    assert console.main(["trian", "--games=pong"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'trian'" in err
    assert all(name in err for name in console.SUBCOMMANDS), err
    assert console.main([]) == 2  # No subcommand: the usage, on stderr.
    assert "subcommands:" in capsys.readouterr().err


def test_every_subcommand_runs_an_entry_module_as_main():
    for name, (module, _) in console.SUBCOMMANDS.items():
        path = REPO / (module.replace(".", "/") + ".py")
        assert path.is_file(), (name, module)
        assert 'if __name__ == "__main__":' in path.read_text(), (name, module)


def test_a_subcommand_gets_its_arguments_and_exits_with_its_code():
    code, out = _multidistill("compare")  # compare wants run directories: its own error.
    assert code == 2 and "give one or more run directories" in out, out
    code, out = _multidistill("bogus")
    assert code == 2 and "unknown subcommand 'bogus'" in out, out
    code, out = _multidistill("--help")
    assert code == 0 and "build-datasets" in out, out


def test_the_main_job_records_the_command_as_typed(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["/venv/bin/python3", "/venv/bin/multidistill",
                                           "train", "--games=pong"])
    assert main_job.command_line() == "multidistill train --games=pong"
    monkeypatch.setattr(sys, "orig_argv", ["python3", "train.py", "--preset=smoke"])
    assert main_job.command_line() == "python train.py --preset=smoke"


# -- the default teachers folder --------------------------------------------------------


def test_in_a_checkout_the_default_teachers_are_the_checkouts(tmp_path):
    assert teachers.DEFAULT_TEACHERS_DIR == REPO / "teachers"  # This checkout.
    checkout = tmp_path / "checkout"
    (checkout / "multidistill").mkdir(parents=True)
    (checkout / "teachers").mkdir()
    (checkout / "pyproject.toml").write_text("")
    assert teachers.default_teachers_dir(checkout / "multidistill") == checkout / "teachers"
    # A new teacher goes where the main job finds it.
    assert teachers.default_output_dir(checkout / "multidistill") == checkout / "teachers"


def test_installed_the_default_teachers_are_the_packaged_copy(tmp_path):
    site = tmp_path / "site-packages"
    (site / "multidistill" / "_teachers").mkdir(parents=True)
    (site / "teachers").mkdir()  # Somebody else's folder: no pyproject.toml beside it.
    assert teachers.default_teachers_dir(site / "multidistill") == (
        site / "multidistill" / "_teachers")
    # train_teacher never writes into the installed package.
    assert teachers.default_output_dir(site / "multidistill") == Path("teachers")


# -- what pyproject.toml packages ---------------------------------------------------


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_packaged(pyproject):
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    folders = {p.parent.relative_to(REPO).as_posix().replace("/", ".")
               for p in (REPO / "multidistill").rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)


def test_the_shipped_teachers_are_package_data(pyproject):
    setuptools = pyproject["tool"]["setuptools"]
    assert setuptools["package-dir"]["multidistill._teachers"] == "teachers"
    patterns = setuptools["package-data"]["multidistill._teachers"]
    shipped = {p.name for p in (REPO / "teachers").iterdir()
               if any(p.match(pattern) for pattern in patterns)}
    for game in ("pong", "qbert", "freeway"):
        assert {f"{game}.keras", f"{game}.json"} <= shipped, shipped
    assert "README.md" in shipped


def test_the_console_script_version_and_dependencies(pyproject):
    project = pyproject["project"]
    assert project["scripts"] == {"multidistill": "multidistill.console:main"}
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "multidistill.__version__"}
    assert (REPO / project["license-files"][0]).read_text().startswith("MIT License")
    # OpenCV only for the benchmarks (multidistill.videos resizes with numpy).
    assert not any(d.startswith("opencv") for d in project["dependencies"])
    assert any(d.startswith("opencv") for d in project["optional-dependencies"]["bench"])
    test = project["optional-dependencies"]["test"]
    assert "multidistill[jax,bench]" in test and any(d.startswith("pytest") for d in test)
