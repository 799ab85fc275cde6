"""LoOp (Vasudeva et al., "LoOp: Looking for Optimal Hard Negative Embeddings for Deep Metric
Learning", ICCV 2021): the hardest negative of a positive pair is searched on the whole arc
between two negatives, not only at the negatives themselves.

* :mod:`~dml.losses.loop.geometry`: the LoOp distance of two arcs, :func:`min_arc_distance`
  (the reference the batched solver is tested against);
* :mod:`~dml.losses.loop.candidates`: its closed-form candidate set;
* :mod:`~dml.losses.loop.solver`: the batched solver (:func:`loop_cosines` over the
  :func:`pairs_of_pairs` of a batch);
* :mod:`~dml.losses.loop.losses`: the four losses, each stating its formula.
"""

from dml.losses.loop.geometry import ArcDistance, min_arc_distance
from dml.losses.loop.losses import (
    LoOpContrastiveLoss,
    LoOpLiftedStructureLoss,
    LoOpLoss,
    LoOpMultiSimilarityLoss,
    LoOpTripletLoss,
    LoOpTuples,
)
from dml.losses.loop.solver import PairsOfPairs, loop_cosines, pairs_of_pairs

__all__ = [
    "ArcDistance",
    "LoOpContrastiveLoss",
    "LoOpLiftedStructureLoss",
    "LoOpLoss",
    "LoOpMultiSimilarityLoss",
    "LoOpTripletLoss",
    "LoOpTuples",
    "PairsOfPairs",
    "loop_cosines",
    "min_arc_distance",
    "pairs_of_pairs",
]
