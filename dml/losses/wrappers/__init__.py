"""Wrappers around a loss, each in a file named like its config (``conf/memory/``,
``conf/synthesis/``): a cross-batch memory (:mod:`~dml.losses.wrappers.xbm`, ``memory=xbm``) and
synthetic points (:mod:`~dml.losses.wrappers.mochi`, ``synthesis=mochi``;
:mod:`~dml.losses.wrappers.embedding_expansion`, ``synthesis=embedding_expansion``).
:func:`~dml.losses.wrappers.compose.build_loss` builds a config's loss with its wrappers."""

from dml.losses.wrappers.embedding_expansion import EmbeddingExpansion
from dml.losses.wrappers.mochi import HardNegativeMixing
from dml.losses.wrappers.xbm import CrossBatchMemory

__all__ = ["CrossBatchMemory", "EmbeddingExpansion", "HardNegativeMixing"]
