"""Selectively contrastive triplet loss (SCT)."""

from __future__ import annotations

import torch
from torch import Tensor

from dml.config_checks import check_range
from dml.losses.nca import NCATripletLoss
from dml.miners.base import TripletMiner


class SCTLoss(NCATripletLoss):
    """Selectively contrastive triplet loss (Xuan et al., "Hard negative examples are hard, but
    useful", ECCV 2020), on cosine similarity:

        ℓ(a, p, n) = λ · S_an                         if the triplet is hard,
                     softplus((S_an - S_ap) / τ)      otherwise (the NCA term),

    with ``λ = lam >= 0`` and ``τ > 0``, a triplet being hard when S_an > S_ap, or also when
    S_an > ``hard_threshold`` in [-1, 1] (default 0.8, as in the authors' released code; ``None``
    gives the paper's pure rule). One mean over all valid triplets (-1 < S < 1 for S_ap and
    S_an, see :class:`NCATripletLoss`). Default miner: EPHN (closest positive, closest negative)
    in cosine without near-duplicate positives.
    """

    def __init__(
        self,
        lam: float = 1.0,
        temperature: float = 0.1,
        hard_threshold: float | None = 0.8,
        miner: TripletMiner | None = None,
    ) -> None:
        check_range("loss.lam", lam, 0)
        check_range("loss.hard_threshold", hard_threshold, -1, 1, nullable=True)
        super().__init__(temperature, miner)
        self.lam = lam
        self.hard_threshold = hard_threshold

    def hard(self, s_ap: Tensor, s_an: Tensor) -> Tensor:
        """Boolean mask of the triplets SCT treats as hard."""
        hard = s_an > s_ap
        if self.hard_threshold is not None:
            hard |= s_an > self.hard_threshold
        return hard

    def triplet_terms(self, m_ap: Tensor, m_an: Tensor) -> tuple[Tensor, Tensor]:
        hard = self.hard(m_ap.detach(), m_an.detach())
        nca = self.nca_terms(m_ap, m_an)
        terms = torch.where(hard, self.lam * m_an, nca)
        return terms, hard | (nca > 0)
