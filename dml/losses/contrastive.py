"""Contrastive (pair) loss."""

from __future__ import annotations

import torch
from torch import Tensor

from dml.config_checks import check_range
from dml.distances import Distance
from dml.losses.base import PairLoss, Reduction, check_reduction, reduce_terms
from dml.losses.terms import contrastive_hinges
from dml.miners.base import PairMiner


class ContrastiveLoss(PairLoss):
    """Contrastive loss (Hadsell, Chopra & LeCun CVPR 2006), hinge form with two margins:

        L = R_{(i,j) ∈ P} max(0, d_ij - m_pos) + R_{(i,j) ∈ N} max(0, m_neg - d_ij)

    written with the closeness ``c`` of ``distance`` (for a similarity: max(0, m_pos - S_ij)
    and max(0, S_ij - m_neg)). P / N are the positive / negative pairs from ``miner`` (default
    all pairs) and R the ``reduction`` of each sum, ``"mean_nonzero"`` by default (each part
    averaged over its non-zero terms, as pytorch-metric-learning's ContrastiveLoss). Margins
    are values of the measure: ``>= 0`` for a distance, in ``[-1, 1]`` for the cosine.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        miner: PairMiner | None = None,
        distance: str | Distance = "euclidean",
        reduction: Reduction = "mean_nonzero",
    ) -> None:
        check_reduction(reduction)
        super().__init__(miner, distance)
        bounds = (-1.0, 1.0) if self.distance.higher_is_closer else (0.0, None)
        check_range("loss.pos_margin", pos_margin, *bounds)
        check_range("loss.neg_margin", neg_margin, *bounds)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.reduction = reduction

    def pair_loss(
        self, matrix: Tensor, a1: Tensor, p: Tensor, a2: Tensor, n: Tensor
    ) -> tuple[Tensor, Tensor]:
        far = self.distance.farness  # the hinges in distance form (-S for a similarity)
        pos, neg = contrastive_hinges(far(matrix[a1, p]), far(self.pos_margin),
                                      far(matrix[a2, n]), far(self.neg_margin))
        loss = reduce_terms(pos, self.reduction) if pos.numel() else matrix.sum() * 0
        if neg.numel():
            loss = loss + reduce_terms(neg, self.reduction)
        active = torch.count_nonzero(pos) + torch.count_nonzero(neg)
        return loss, active
