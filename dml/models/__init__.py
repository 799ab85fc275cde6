"""Embedding networks and the LightningModule."""

from dml.errors import ConfigError
from dml.models import convnet  # noqa: F401  (registers conv4 in timm)
from dml.models.backbone import EmbeddingNet, create_backbone
from dml.models.module import DMLModule, NonFiniteLossError

__all__ = ["ConfigError", "DMLModule", "EmbeddingNet", "NonFiniteLossError", "create_backbone"]
