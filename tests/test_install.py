"""A non-editable install (``pip install .``) finds its configs from any directory, and a user's
own config directory (``--config-dir``) adds options to our groups."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .training_utils import REPO, TINY


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel of a copy of the checkout (building in the checkout would leave build/ there),
    installed with pip into a folder of its own."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("dml", "conf", "hydra_plugins"):  # dml/conf stays a link to ../conf
        shutil.copytree(REPO / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", base / "wheel", src],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (base / "wheel").glob("dml-*.whl")
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
                   check=True, capture_output=True, timeout=600)
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_the_wheel_holds_every_config(installed):
    ours = sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml"))
    shipped = sorted(p.relative_to(installed / "dml" / "conf")
                     for p in (installed / "dml" / "conf").rglob("*.yaml"))
    assert shipped == ours and not (installed / "dml" / "conf").is_symlink()


def test_installed_dml_train_runs_from_another_directory(installed, tmp_path):
    where = run_installed(installed, tmp_path, "-c", "import dml; print(dml.__file__)")
    assert where.stdout.startswith(str(installed)), where  # not the checkout
    proc = run_installed(installed, tmp_path, "-m", "dml.cli.train", *TINY,
                         "trainer.max_epochs=1", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_a_users_config_dir_adds_options_to_our_groups(installed, tmp_path):
    mine = tmp_path / "my_conf" / "loss"
    mine.mkdir(parents=True)
    (mine / "my_triplet.yaml").write_text(
        "defaults:\n  - triplet_batchhard\n  - _self_\nmargin: 0.05\n"
    )
    proc = run_installed(installed, tmp_path, "-m", "dml.cli.train",
                         f"--config-dir={tmp_path / 'my_conf'}", "loss=my_triplet", *TINY,
                         "trainer.max_epochs=1", "test=false", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "margin: 0.05" in config and "MarginTripletLoss" in config
    resumed = run_installed(installed, tmp_path, "-m", "dml.cli.train",
                            f"resume={tmp_path / 'run'}", "trainer.max_epochs=2")  # my_triplet
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_the_installed_optuna_sweeper_runs_a_study(installed, tmp_path):
    where = run_installed(installed, tmp_path, "-c", "import hydra_plugins.dml_optuna_sweeper."
                          "optuna_sweeper as m; print(m.__file__)")
    assert where.stdout.startswith(str(installed)), where  # the wheel's plugin, not the checkout's
    proc = run_installed(installed, tmp_path, "-m", "dml.cli.train", "-m", *TINY, "search=sct",
                         "trainer.max_epochs=1", "test=false", "hydra.sweeper.n_trials=1",
                         "hydra.sweep.dir=study")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "study" / "trial_0" / "metrics.json").is_file()
    assert (tmp_path / "study" / "study.json").is_file()
