"""Hardness-aware contrastive loss (Robinson, Chuang, Sra, Jegelka, "Contrastive Learning with Hard
Negative Samples", ICLR 2021), in the supervised setting."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dml.config_checks import check_range
from dml.errors import ConfigError
from dml.losses.base import PairLoss
from dml.miners.base import PairMiner


def _negatives_lse(x: Tensor, negative: Tensor) -> Tensor:
    """Per row ``log Σ_{n: negative} exp(x_n)`` (``-inf`` for a row without negatives)."""
    return torch.logsumexp(x.masked_fill(~negative, -math.inf), dim=1)


class HardnessAwareContrastiveLoss(PairLoss):
    """Per positive pair ``(i, p)`` of the batch, with cosine ``S``, temperature ``τ``, the ``N_i``
    negatives ``n`` of anchor ``i`` and their importance weights ``w_n = exp(β S_in / τ)``
    (harder negatives weigh more; ``β = 0``: the plain InfoNCE denominator):

        ℓ_ip = -log( e^{S_ip/τ} / (e^{S_ip/τ} + N_g) ),
        N_g  = max( (N_i Σ_n w_n e^{S_in/τ} / Σ_n w_n  -  τ⁺ N_i e^{S_ip/τ}) / (1 - τ⁺),
                    N_i e^{-1/τ} ),

    averaged over the positive pairs whose anchor has a negative. ``τ⁺`` (``tau_plus``) is the
    debiasing class prior of the paper (the probability that a "negative" is a positive); with
    labels every negative is a true negative, so the supervised default is ``τ⁺ = 0``. As in the
    authors' code, ``β`` scales ``S/τ`` (their ``imp = exp(β log neg)``). Computed in log space:
    ``ℓ = log(1 + N_g e^{-S_ip/τ})``. Pairs from ``miner`` (default: all pairs).
    """

    def __init__(self, temperature: float = 0.1, beta: float = 1.0, tau_plus: float = 0.0,
                 miner: PairMiner | None = None) -> None:
        check_range("loss.temperature", temperature, 0, strict=True)
        check_range("loss.beta", beta, 0)
        check_range("loss.tau_plus", tau_plus, 0, 1)
        if tau_plus == 1:
            raise ConfigError("loss.tau_plus must be < 1 (the prior of false negatives), got 1")
        super().__init__(miner, "cosine")
        self.temperature, self.beta, self.tau_plus = temperature, beta, tau_plus

    def pair_loss(self, matrix: Tensor, a1: Tensor, p: Tensor, a2: Tensor,
                  n: Tensor) -> tuple[Tensor, Tensor]:
        negative = torch.zeros_like(matrix, dtype=torch.bool)
        negative[a2, n] = True
        count = negative.sum(dim=1).to(matrix.dtype)  # in the matrix's precision
        keep = count[a1] > 0
        a1, p = a1[keep], p[keep]
        if a1.numel() == 0:
            return matrix.sum() * 0, torch.zeros((), device=matrix.device)
        logits = matrix / self.temperature
        log_count = count.clamp_min(1).log()
        # log(N Σ w e^{S/τ} / Σ w) per anchor, w = e^{β S/τ}
        log_reweighted = (_negatives_lse((1 + self.beta) * logits, negative)
                          - _negatives_lse(self.beta * logits, negative))
        log_reweighted = log_reweighted + log_count
        pos = logits[a1, p]
        # N_g e^{-S_ip/τ}, clamped below at N e^{-1/τ - S_ip/τ}
        scaled = (torch.exp(log_reweighted[a1] - pos)
                  - self.tau_plus * count[a1]) / (1 - self.tau_plus)
        floor = torch.exp(log_count[a1] - 1 / self.temperature - pos)
        terms = torch.log1p(torch.maximum(scaled, floor))
        return terms.mean(), torch.tensor(float(a1.numel()), device=matrix.device)
