"""dml: deep metric learning with hard negatives (PyTorch Lightning + Hydra + timm)."""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["load_embedder", "retrieval_metrics"]

_LAZY = {"load_embedder": "dml.inference", "retrieval_metrics": "dml.eval"}


def __getattr__(name: str) -> Any:  # lazy: `import dml` stays cheap
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dml' has no attribute {name!r}")
