"""Loss terms shared by the plain losses and their LoOp versions (one definition each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def log1p_sum_exp(x: Tensor, mask: Tensor) -> Tensor:
    """Per row ``log(1 + Σ_{j: mask_ij} exp(x_ij))``, computed stably (0 for empty rows): the
    two halves of the multi-similarity loss (Wang et al. CVPR 2019, Eq. 10)."""
    masked = x.masked_fill(~mask, float("-inf"))
    zeros = x.new_zeros(x.shape[0], 1)
    return torch.logsumexp(torch.cat([masked, zeros], dim=1), dim=1)


def contrastive_hinges(
    d_pos: Tensor, pos_margin: float | Tensor, d_neg: Tensor, neg_margin: float | Tensor
) -> tuple[Tensor, Tensor]:
    """The contrastive loss's hinges (Hadsell, Chopra & LeCun CVPR 2006) in distance form:
    ``max(0, d_pos - m_pos)`` per positive pair and ``max(0, m_neg - d_neg)`` per negative."""
    return F.relu(d_pos - pos_margin), F.relu(neg_margin - d_neg)
