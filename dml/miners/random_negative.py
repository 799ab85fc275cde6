"""A random negative per anchor (the uninformed baseline of hard-negative selection)."""

from __future__ import annotations

from dml.distances import Distance
from dml.miners.per_anchor import PerAnchorTripletMiner, PositiveRule


class RandomNegativeMiner(PerAnchorTripletMiner):
    """Per anchor the ``positive`` rule (default the closest positive) and a negative drawn
    uniformly among the anchor's negatives (``torch`` global RNG)."""

    def __init__(
        self,
        distance: str | Distance = "cosine",
        exclude_duplicates: bool = False,
        positive: PositiveRule = "easiest",
    ) -> None:
        super().__init__(positive, "random", distance, exclude_duplicates)
