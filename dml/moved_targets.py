"""Configs saved before a move of the code they name: their old ``_target_`` paths, mapped to
where that code is now, so that a checkpoint written by an earlier ``dml-train`` still loads in
``dml-eval`` and :func:`dml.load_embedder` (:func:`dml.inference.load_checkpoint` applies it)."""

from __future__ import annotations

from typing import Any

#: Old ``_target_`` → current one (issue 25: the training wing, the loss wrappers).
MOVED_TARGETS = {
    "dml.launch.job_ddp_strategy": "dml.train.launch.job_ddp_strategy",
    "dml.optim.warmup_cosine": "dml.train.optim.warmup_cosine",
    "dml.callbacks.triplet_diagram.TripletDiagram":
        "dml.train.callbacks.triplet_diagram.TripletDiagram",
    "dml.losses.memory.CrossBatchMemory": "dml.losses.wrappers.xbm.CrossBatchMemory",
    "dml.losses.mixing.HardNegativeMixing": "dml.losses.wrappers.mochi.HardNegativeMixing",
    "dml.losses.embedding_expansion.EmbeddingExpansion":
        "dml.losses.wrappers.embedding_expansion.EmbeddingExpansion",
}


def current_targets(config: Any) -> Any:
    """``config`` (plain dicts and lists, as a checkpoint holds it) with each ``_target_`` of
    :data:`MOVED_TARGETS` replaced by its current path; other values unchanged."""
    if isinstance(config, dict):
        return {
            k: MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str)
            else current_targets(v)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [current_targets(v) for v in config]
    return config
