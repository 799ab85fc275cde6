"""NCA (softplus) triplet loss on cosine similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.config_checks import check_range
from dml.losses.base import TripletLoss
from dml.miners.base import TripletMiner
from dml.miners.easy_positive_hard_negative import EasyPositiveHardNegativeMiner

_ULPS = 16


class NCATripletLoss(TripletLoss):
    """NCA / softplus triplet loss on cosine similarity (as used by Xuan et al. ECCV 2020):

        ℓ(a, p, n) = -log( exp(S_ap/τ) / (exp(S_ap/τ) + exp(S_an/τ)) ) = softplus((S_an - S_ap)/τ)

    with temperature ``τ > 0``, averaged over the valid mined triplets, valid meaning
    -1 < S < 1 for both S_ap and S_an (as in the SCT authors' code), judged with a slack of 16
    machine epsilons of the dtype. Default miner: EPHN in cosine without near-duplicate
    positives; the miner may measure closeness differently (e.g. Euclidean), the loss stays in
    cosine.
    """

    def __init__(self, temperature: float = 0.1, miner: TripletMiner | None = None) -> None:
        check_range("loss.temperature", temperature, 0, strict=True)
        if miner is None:
            miner = EasyPositiveHardNegativeMiner("cosine", exclude_duplicates=True)
        super().__init__(miner, "cosine")
        self.temperature = temperature

    def valid(self, m_ap: Tensor, m_an: Tensor) -> Tensor:
        # |S| < 1, with a few ulps of slack: identical or opposite images must not become valid
        # because the cosine of equal vectors rounds to 1 - 1e-16.
        bound = 1 - _ULPS * torch.finfo(m_ap.dtype).eps
        return (m_ap.abs() < bound) & (m_an.abs() < bound)

    def nca_terms(self, s_ap: Tensor, s_an: Tensor) -> Tensor:
        """``softplus((S_an - S_ap) / τ)`` per triplet."""
        return F.softplus((s_an - s_ap) / self.temperature)

    def triplet_terms(self, m_ap: Tensor, m_an: Tensor) -> tuple[Tensor, Tensor]:
        terms = self.nca_terms(m_ap, m_an)
        return terms, terms > 0
