"""Datasets, samplers, transforms and the DataModule.

The names below are imported on first use, so that importing one module of the package (as the
deployment commands do, e.g. ``dml.data.image_io``) does not import Lightning with the
DataModule."""

from importlib import import_module
from typing import Any

__all__ = [
    "DMLDataModule",
    "DMLDataset",
    "DatasetError",
    "DatasetSource",
    "PKBatchSampler",
    "Record",
    "carve_validation",
]

_LAZY = {
    "DMLDataModule": "dml.data.datamodule",
    "DMLDataset": "dml.data.dataset",
    "DatasetError": "dml.errors",
    "DatasetSource": "dml.data.source",
    "PKBatchSampler": "dml.data.sampler",
    "Record": "dml.data.records",
    "carve_validation": "dml.data.datamodule",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dml.data' has no attribute {name!r}")
