"""Multi-similarity pair mining (Wang et al., "Multi-Similarity Loss with General Pair Weighting
for Deep Metric Learning", CVPR 2019, the mining step). The rule is :func:`ms_pair_masks`, shared
with the LoOp multi-similarity loss."""

from __future__ import annotations

import torch
from torch import Tensor

from dml.config_checks import check_range
from dml.distances import Distance
from dml.miners.base import PairMiner, Pairs, label_masks


def ms_pair_masks(pos_close: Tensor, positive: Tensor, neg_close: Tensor, negative: Tensor,
                  epsilon: float) -> tuple[Tensor, Tensor]:
    """The multi-similarity mining rule; row ``i`` is an anchor, ``pos_close`` / ``neg_close``
    the closeness of its candidate positives / negatives (where ``positive`` / ``negative``):

        keep negative (i, j)  iff  c_ij + epsilon > min_{k in P_i} c_ik
        keep positive (i, j)  iff  c_ij - epsilon < max_{k in N_i} c_ik

    Returns the ``(positive, negative)`` masks of the kept pairs; an anchor without positives
    keeps no negative and vice versa. The miner passes one B×B matrix for both; the LoOp loss
    a positive pair's own cosine and its LoOp negatives."""
    hardest_pos = pos_close.masked_fill(~positive, torch.inf).amin(dim=1, keepdim=True)
    hardest_neg = neg_close.masked_fill(~negative, -torch.inf).amax(dim=1, keepdim=True)
    return (positive & (pos_close - epsilon < hardest_neg),
            negative & (neg_close + epsilon > hardest_pos))


class MultiSimilarityMiner(PairMiner):
    """Multi-similarity pair mining (Wang et al. CVPR 2019, the mining step), with closeness ``c``:

        keep negative (i, j)  iff  c_ij + epsilon > min_{k in P_i} c_ik
        keep positive (i, j)  iff  c_ij - epsilon < max_{k in N_i} c_ik

    An anchor without positives keeps no negative and vice versa. ``epsilon >= 0`` (0: keep
    only the pairs that violate the hardest pair of the other kind).
    """

    def __init__(self, epsilon: float = 0.1, distance: str | Distance = "cosine") -> None:
        check_range("loss.miner.epsilon", epsilon, 0)
        super().__init__(distance)
        self.epsilon = epsilon

    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Pairs:
        close = self.distance.closeness(matrix)
        positive, negative = label_masks(labels, ref_labels, allowed)
        keep_pos, keep_neg = ms_pair_masks(close, positive, close, negative, self.epsilon)
        return (*keep_pos.nonzero(as_tuple=True), *keep_neg.nonzero(as_tuple=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon}, distance={self.distance})"
