"""Hand a picture a run wrote (triplet diagram, retrieval grid) to the attached W&B loggers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger


def log_image_to_wandb(
    loggers: Iterable[Logger], path: Path, step: int, key: str, caption: str | None = None
) -> None:
    """Log the PNG at ``path`` as the ``wandb.Image`` ``key`` (with ``caption``) to every
    attached W&B logger (none attached: nothing happens)."""
    extra = {} if caption is None else {"caption": [caption]}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step, **extra)
