"""Margin triplet loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dml.config_checks import check_range
from dml.distances import Distance
from dml.losses.base import Reduction, TripletLoss, check_reduction, reduce_terms
from dml.miners.base import TripletMiner
from dml.miners.batch_hard import BatchHardMiner


class MarginTripletLoss(TripletLoss):
    """Margin triplet loss (Weinberger & Saul 2009; Schroff et al. CVPR 2015, Sec. 3.1):

        ℓ(a, p, n) = max(0, d_ap - d_an + margin)

    written with the closeness ``c`` of ``distance`` as ``max(0, c_an - c_ap + margin)``, so it
    also holds for similarities (``S_an - S_ap + margin``), ``margin >= 0``. Reduction over the
    mined triplets: ``"mean"`` or ``"mean_nonzero"`` (sum over the number of violating triplets).
    Default miner: batch-hard with the same distance (Hermans et al. 2017, "In defense of the
    triplet loss").
    """

    def __init__(
        self,
        margin: float = 0.2,
        miner: TripletMiner | None = None,
        distance: str | Distance = "euclidean",
        reduction: Reduction = "mean",
    ) -> None:
        check_range("loss.margin", margin, 0)
        check_reduction(reduction)
        super().__init__(miner if miner is not None else BatchHardMiner(distance), distance)
        self.margin = margin
        self.reduction = reduction

    def triplet_terms(self, m_ap: Tensor, m_an: Tensor) -> tuple[Tensor, Tensor]:
        terms = F.relu(self.distance.closeness(m_an) - self.distance.closeness(m_ap) + self.margin)
        return terms, terms > 0

    def reduce(self, terms: Tensor) -> Tensor:
        return reduce_terms(terms, self.reduction)
