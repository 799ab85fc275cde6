"""Batch-hard mining (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", 2017)."""

from __future__ import annotations

from dml.distances import Distance
from dml.miners.per_anchor import PerAnchorTripletMiner


class BatchHardMiner(PerAnchorTripletMiner):
    """Batch-hard mining (Hermans et al. 2017): hardest positive and hardest negative per anchor."""

    def __init__(self, distance: str | Distance = "cosine", exclude_duplicates: bool = False):
        super().__init__("hardest", "hardest", distance, exclude_duplicates)
