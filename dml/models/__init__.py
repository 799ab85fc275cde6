"""Embedding networks: a timm backbone with an embedding head, and conv4. (The LightningModule
that trains them is :class:`dml.train.module.DMLModule`.)"""

from dml.errors import ConfigError
from dml.models import convnet  # noqa: F401  (registers conv4 in timm)
from dml.models.backbone import EmbeddingNet, create_backbone

__all__ = ["ConfigError", "EmbeddingNet", "create_backbone"]
