"""Compose the real Hydra configs for fast in-process training runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data=synthetic",
    "logger=csv",
    "model.backbone=resnet10t",
    "model.embedding_dim=16",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "module.nmi=false",
    "eval.show=0",  # the end-of-run retrieval grid costs more than a tiny run's test
]


def tiny_config(run_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*TINY, f"run_dir={run_dir}", *overrides])


def install_wheel(src: Path, base: Path) -> Path:
    """The wheel of the source tree ``src``, installed with pip into ``base/site`` (run code from
    it with :func:`run_installed`)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", base / "wheel", src],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (base / "wheel").glob("dml-*.whl")
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
                   check=True, capture_output=True, timeout=600)
    return site


def run_installed(site: Path, cwd: Path, *args: str,
                  **env_vars: str) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` with the package installed in ``site`` first on the path
    (and ``env_vars`` in its environment)."""
    env = {**{k: v for k, v in os.environ.items() if k != "DML_COMMIT"},
           "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", **env_vars}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)
