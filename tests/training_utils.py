"""Compose the real Hydra configs for fast in-process training runs."""

from __future__ import annotations

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
]


def tiny_config(run_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*TINY, f"run_dir={run_dir}", *overrides])
