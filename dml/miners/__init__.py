"""Miners: select triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)`` from a batch."""

from dml.miners.base import Miner, PairMiner, Pairs, TripletMiner, Triplets
from dml.miners.pair import AllPairsMiner, MultiSimilarityMiner
from dml.miners.semihard import FaceNetSemiHardMiner
from dml.miners.triplet import (
    AllTripletsMiner,
    BatchHardMiner,
    EasyPositiveHardNegativeMiner,
    PerAnchorTripletMiner,
    RandomNegativeMiner,
    SemiHardNegativeMiner,
)

__all__ = [
    "AllPairsMiner",
    "AllTripletsMiner",
    "BatchHardMiner",
    "EasyPositiveHardNegativeMiner",
    "FaceNetSemiHardMiner",
    "Miner",
    "MultiSimilarityMiner",
    "PairMiner",
    "Pairs",
    "PerAnchorTripletMiner",
    "RandomNegativeMiner",
    "SemiHardNegativeMiner",
    "TripletMiner",
    "Triplets",
]
