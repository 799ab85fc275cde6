"""Checkpoints of untrained networks for the deployment tests: as ``dml-train`` writes them (the
resolved config and the ``net.``-prefixed weights), without training."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from .training_utils import tiny_config


def untrained_checkpoint(path: Path, *overrides: str, seed: int = 0) -> Path:
    """A checkpoint of a randomly initialised network of the composed config; BatchNorm running
    statistics are drawn too, so that the evaluation-mode arithmetic is not the identity."""
    cfg = tiny_config(path.parent / "run", *overrides)
    torch.manual_seed(seed)
    net = instantiate(cfg.model)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"dml_config": config, "state_dict": state}, path)
    return path
