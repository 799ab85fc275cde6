"""Easy-positive hard-negative mining (EPHN; Xuan, Stylianou, Pless, WACV 2020), the selection
of the SCT paper (Xuan et al., ECCV 2020)."""

from __future__ import annotations

from dml.distances import Distance
from dml.miners.per_anchor import PerAnchorTripletMiner


class EasyPositiveHardNegativeMiner(PerAnchorTripletMiner):
    """EPHN (Xuan et al. WACV 2020; the SCT paper's selection): per anchor the closest positive
    and the closest negative."""

    def __init__(self, distance: str | Distance = "cosine", exclude_duplicates: bool = False):
        super().__init__("easiest", "hardest", distance, exclude_duplicates)
