"""Datasets, samplers, transforms and the DataModule."""

from dml.data.datamodule import DMLDataModule, carve_validation
from dml.data.dataset import DMLDataset
from dml.data.records import Record
from dml.data.sampler import PKBatchSampler
from dml.data.source import DatasetSource
from dml.errors import DatasetError

__all__ = [
    "DMLDataModule",
    "DMLDataset",
    "DatasetError",
    "DatasetSource",
    "PKBatchSampler",
    "Record",
    "carve_validation",
]
