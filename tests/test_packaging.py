"""Packaging: a wheel (what `pip install .` or `pip install git+URL` installs, as on Colab)
ships the experiments, and name lookup finds them there as well as in a source checkout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from jaxtl import cli
from jaxtl import config as config_lib

REPO = Path(__file__).resolve().parents[1]
# What setuptools reads to build the wheel; copied so the build never writes into the checkout.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "jaxtl", "experiments")


def repo_experiments() -> list[str]:
    return sorted(p.stem for p in (REPO / "experiments").glob("*.py") if not p.stem.startswith("_"))


def run(args, cwd, env=None):
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_source_checkout_lists_every_experiment_file(capsys):
    assert config_lib.EXPERIMENTS_DIR == REPO / "experiments"
    assert config_lib.experiment_names() == repo_experiments()
    assert cli.main(["list", "experiments"]) == 0
    assert capsys.readouterr().out.strip() == f"experiments: {', '.join(repo_experiments())}"


def test_wheel_ships_the_experiments_and_lists_them_outside_the_repo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    offline = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", src],
        tmp_path,
        offline,
    )
    (wheel,) = (tmp_path / "dist").glob("jaxtl-*.whl")
    run([*pip, "install", "-q", "--no-deps", "--target", "site", wheel], tmp_path, offline)
    site = tmp_path / "site"
    shipped = sorted(p.stem for p in (site / "jaxtl" / "experiments").glob("*.py"))
    assert shipped == sorted(p.stem for p in (REPO / "experiments").glob("*.py"))

    elsewhere = tmp_path / "elsewhere"  # no experiments/ folder anywhere near the cwd
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    listed = run([sys.executable, "-m", "jaxtl.cli", "list", "experiments"], elsewhere, env)
    assert listed.strip() == f"experiments: {', '.join(repo_experiments())}"
    # Each experiment file imports jaxtl (e.g. jaxtl.runner.base_config) from the wheel.
    check = (
        "import jaxtl, jaxtl.config as c\n"
        "print(jaxtl.__file__)\n"
        "print(c.EXPERIMENTS_DIR)\n"
        "names = c.experiment_names()\n"
        "configs = [c.load_config(name) for name in names]\n"
        "print(names)\n"
    )
    module, folder, loaded = run([sys.executable, "-c", check], elsewhere, env).splitlines()
    assert Path(module) == site / "jaxtl" / "__init__.py"
    assert Path(folder) == site / "jaxtl" / "experiments"
    assert loaded == str(repo_experiments())
