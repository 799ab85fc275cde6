"""Miners: select triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)`` from a batch's B×B matrix,
one miner per file (``batch_hard.py``, ``semihard.py``, ``multisimilarity.py``, …)."""

from dml.miners.all_pairs import AllPairsMiner
from dml.miners.all_triplets import AllTripletsMiner
from dml.miners.base import Miner, PairMiner, Pairs, TripletMiner, Triplets
from dml.miners.batch_hard import BatchHardMiner
from dml.miners.easy_positive_hard_negative import EasyPositiveHardNegativeMiner
from dml.miners.multisimilarity import MultiSimilarityMiner
from dml.miners.per_anchor import PerAnchorTripletMiner
from dml.miners.random_negative import RandomNegativeMiner
from dml.miners.semihard import FaceNetSemiHardMiner, SemiHardNegativeMiner

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
