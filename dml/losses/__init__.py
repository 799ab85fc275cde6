"""Losses: every class is a :class:`DMLLoss` called as ``loss(embeddings, labels)``.

:mod:`dml.losses.pml` (the pytorch-metric-learning bridge) is not imported here: PML is optional.
"""

from dml.losses.base import DMLLoss, PairLoss, TripletLoss
from dml.losses.contrastive import ContrastiveLoss
from dml.losses.hcl import HardnessAwareContrastiveLoss
from dml.losses.loop import (
    LoOpContrastiveLoss,
    LoOpLiftedStructureLoss,
    LoOpMultiSimilarityLoss,
    LoOpTripletLoss,
)
from dml.losses.multisimilarity import MultiSimilarityLoss
from dml.losses.nca import NCATripletLoss
from dml.losses.sct import SCTLoss
from dml.losses.triplet_margin import MarginTripletLoss

__all__ = [
    "ContrastiveLoss",
    "DMLLoss",
    "HardnessAwareContrastiveLoss",
    "LoOpContrastiveLoss",
    "LoOpLiftedStructureLoss",
    "LoOpMultiSimilarityLoss",
    "LoOpTripletLoss",
    "MarginTripletLoss",
    "MultiSimilarityLoss",
    "NCATripletLoss",
    "PairLoss",
    "SCTLoss",
    "TripletLoss",
]
