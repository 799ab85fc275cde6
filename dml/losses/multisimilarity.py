"""Multi-similarity loss."""

from __future__ import annotations

import torch
from torch import Tensor

from dml.config_checks import check_range
from dml.losses.base import PairLoss
from dml.losses.terms import log1p_sum_exp
from dml.miners.base import PairMiner
from dml.miners.multisimilarity import MultiSimilarityMiner


def check_ms_parameters(alpha: float, beta: float, base: float) -> None:
    """:class:`~dml.errors.ConfigError` unless α > 0, β > 0 and λ (``base``) is in [-2, 2].

    λ is a threshold on cosines, but not bounded by them: at λ > 1 every positive pair pays and
    each negative's term shrinks as exp(-β (λ - S)), a legal trade between the two terms that a
    search may choose. |λ| > 2 puts every cosine more than 1 away from it and is refused as a
    likely typo (e.g. a β value in ``loss.base``)."""
    check_range("loss.alpha", alpha, 0, strict=True)
    check_range("loss.beta", beta, 0, strict=True)
    check_range("loss.base", base, -2, 2)


def _pair_mask(like: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    mask = torch.zeros_like(like, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


class MultiSimilarityLoss(PairLoss):
    """Multi-similarity loss (Wang et al. CVPR 2019) on cosine similarity S:

        L = 1/B Σ_i [ 1/α log(1 + Σ_{k ∈ P_i} exp(-α (S_ik - λ)))
                      + 1/β log(1 + Σ_{k ∈ N_i} exp( β (S_ik - λ))) ]

    with P_i / N_i the positive / negative pairs of anchor i kept by ``miner`` (default the
    paper's pair mining, :class:`~dml.miners.MultiSimilarityMiner` with ε = 0.1). Defaults
    α = 2, β = 50, λ = 0.5 (``base``); α, β > 0 and λ in [-2, 2] (see
    :func:`check_ms_parameters`).
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        miner: PairMiner | None = None,
    ) -> None:
        check_ms_parameters(alpha, beta, base)
        super().__init__(miner if miner is not None else MultiSimilarityMiner(0.1), "cosine")
        self.alpha = alpha
        self.beta = beta
        self.base = base

    def pair_loss(
        self, matrix: Tensor, a1: Tensor, p: Tensor, a2: Tensor, n: Tensor
    ) -> tuple[Tensor, Tensor]:
        pos_mask, neg_mask = _pair_mask(matrix, a1, p), _pair_mask(matrix, a2, n)
        pos = log1p_sum_exp(-self.alpha * (matrix - self.base), pos_mask) / self.alpha
        neg = log1p_sum_exp(self.beta * (matrix - self.base), neg_mask) / self.beta
        active = pos_mask.sum() + neg_mask.sum()
        return (pos + neg).mean(), active
