"""The loss of a config with the wrappers its config groups set around it."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from dml.errors import ConfigError
from dml.losses.base import DMLLoss
from dml.losses.wrappers.xbm import CrossBatchMemory


def build_loss(cfg: DictConfig) -> DMLLoss:
    """The loss of a config: ``loss=...``, wrapped by ``synthesis=...`` and then ``memory=...``
    when they are set."""
    loss = instantiate(cfg.loss)
    if not isinstance(loss, DMLLoss):
        raise ConfigError(
            f"loss._target_ builds a {type(loss).__name__}, not a dml.losses.DMLLoss: subclass "
            "DMLLoss (README: Add a loss), or wrap a pytorch-metric-learning loss with loss=pml"
        )
    if cfg.get("synthesis") and cfg.get("memory"):
        raise ConfigError("memory= and synthesis= cannot be combined yet (the memory would hold "
                          "real embeddings only): drop one of them")
    if cfg.get("synthesis") and not cfg.model.get("normalize", True):
        raise ConfigError("synthesis= makes unit-norm points: set model.normalize=true (or drop "
                          "synthesis=)")
    for wrapper in ("synthesis", "memory"):
        if cfg.get(wrapper):
            loss = instantiate(cfg[wrapper])(loss=loss)
    return loss


def check_wrappers(loss: DMLLoss, batch: int, embedding_dim: int) -> None:
    """The loss's wrappers fit the run (a cross-batch memory holds a batch of ``batch``
    embeddings of size ``embedding_dim``), checked before the run writes anything rather than at
    its first step."""
    for wrapper in loss.modules():
        if isinstance(wrapper, CrossBatchMemory):
            wrapper.check_fits(batch, embedding_dim)
