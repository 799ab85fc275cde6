"""Base classes of the losses: the call contract, per-batch statistics and triplet plumbing.

Contract (the LightningModule relies on it): ``loss(embeddings [B, d], labels [B]) -> scalar``;
afterwards ``loss.stats`` holds detached 0-d tensors and ``loss.triplet_similarities`` the cosine
``(S_ap, S_an)`` of the triplets used (``None`` for pair losses). A batch without any usable tuple
returns ``embeddings.sum() * 0``, a zero that still backpropagates.

Statistics are always measured in cosine similarity, whatever measure the loss or miner uses:

* ``mean_pairwise_sim``: mean cosine over all off-diagonal pairs (the collapse indicator);
* triplet losses: ``hard_fraction`` (fraction of used triplets with S_an > S_ap), ``mean_s_ap``,
  ``mean_s_an``, ``active_fraction`` (fraction of used triplets whose term has non-zero
  gradient), ``num_triplets``;
* pair losses: ``mean_s_ap`` / ``mean_s_an`` over the used positive / negative pairs and
  ``active_fraction`` = pairs with non-zero gradient / all off-diagonal pairs of the batch.

Means over an empty set are NaN.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dml.config_checks import check_choice
from dml.distances import CosineSimilarity, Distance, get_distance
from dml.miners.all_pairs import AllPairsMiner
from dml.miners.base import PairMiner, TripletMiner

Reduction = Literal["mean", "mean_nonzero"]

_COSINE = CosineSimilarity()


def reduce_terms(terms: Tensor, reduction: Reduction) -> Tensor:
    """``"mean"``: the mean of ``terms``; ``"mean_nonzero"``: their sum over the number of
    non-zero terms (the "batch all ≠ 0" average of Hermans et al. 2017), 0 if all are zero."""
    if reduction == "mean":
        return terms.mean()
    if reduction == "mean_nonzero":
        return terms.sum() / (terms != 0).sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}")


def check_reduction(reduction: object) -> None:
    """:class:`~dml.errors.ConfigError` naming ``loss.reduction`` unless it is a
    :data:`Reduction`."""
    check_choice("loss.reduction", reduction, get_args(Reduction))


def mean_or_nan(values: Tensor) -> Tensor:
    """Detached float mean of ``values``, NaN when empty."""
    values = values.detach().float()
    return values.mean() if values.numel() else values.new_tensor(float("nan"))


def mean_offdiagonal_cosine(embeddings: Tensor) -> Tensor:
    """Mean cosine over the ``B(B-1)`` ordered pairs ``i != j``, in O(B d):
    ``(|Σ_i x̂_i|² - Σ_i |x̂_i|²) / (B(B-1))`` with ``x̂ = x / |x|``."""
    unit = F.normalize(embeddings.detach().double(), dim=1)
    batch = unit.shape[0]
    total = unit.sum(dim=0).square().sum() - unit.square().sum()
    return (total / max(batch * (batch - 1), 1)).float()


class DMLLoss(nn.Module, ABC):
    """A metric-learning loss ``L(embeddings, labels)`` that records per-batch statistics.

    Half-precision embeddings (float16/bfloat16, e.g. under autocast) are promoted to float32
    before any computation. Subclasses implement :meth:`compute` and add entries to
    ``self.stats``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, Tensor] = {}
        self.triplet_similarities: tuple[Tensor, Tensor] | None = None

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()  # exp(50 S), ulp-based validity: not in half precision
        self.stats = {"mean_pairwise_sim": mean_offdiagonal_cosine(embeddings)}
        self.triplet_similarities = None
        return self.compute(embeddings, labels)

    @abstractmethod
    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The loss value of a batch."""

    def record_triplets(self, s_ap: Tensor, s_an: Tensor) -> None:
        """Store the cosine ``(S_ap, S_an)`` of the triplets used and their statistics."""
        s_ap, s_an = s_ap.detach(), s_an.detach()
        self.triplet_similarities = (s_ap, s_an)
        self.stats.update(
            hard_fraction=mean_or_nan(s_an > s_ap),
            mean_s_ap=mean_or_nan(s_ap),
            mean_s_an=mean_or_nan(s_an),
            num_triplets=torch.tensor(float(s_ap.numel()), device=s_ap.device),
        )


class TripletLoss(DMLLoss):
    """Mean of a per-triplet term ``ℓ(m_ap, m_an)`` over the triplets chosen by ``miner``.

    ``m`` is the loss's own measure ``distance`` (the miner may use another one); mining is done
    without gradient on the miner's B×B matrix, then ``m_ap`` and ``m_an`` are computed for the
    chosen triplets only. Subclasses implement :meth:`triplet_terms` and may restrict the
    triplets in :meth:`valid` and change :meth:`reduce`.
    """

    def __init__(self, miner: TripletMiner, distance: str | Distance = "cosine") -> None:
        super().__init__()
        self.miner = miner
        self.distance = get_distance(distance, "loss.distance")

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        a, p, n = self.miner(embeddings, labels)
        m_ap, m_an = self.distance.select(embeddings, [(a, p), (a, n)])
        keep = self.valid(m_ap.detach(), m_an.detach())
        if keep is not None:
            a, p, n, m_ap, m_an = a[keep], p[keep], n[keep], m_ap[keep], m_an[keep]
        if self.distance == _COSINE:
            self.record_triplets(m_ap, m_an)
        else:
            with torch.no_grad():
                self.record_triplets(*_COSINE.select(embeddings, [(a, p), (a, n)]))
        if a.numel() == 0:
            self.stats["active_fraction"] = torch.tensor(float("nan"), device=embeddings.device)
            return embeddings.sum() * 0
        terms, active = self.triplet_terms(m_ap, m_an)
        self.stats["active_fraction"] = mean_or_nan(active)
        return self.reduce(terms)

    def valid(self, m_ap: Tensor, m_an: Tensor) -> Tensor | None:
        """Boolean mask of the mined triplets the loss uses (``None``: all of them)."""
        return None

    def reduce(self, terms: Tensor) -> Tensor:
        """Scalar from the per-triplet terms (the mean unless overridden)."""
        return terms.mean()

    @abstractmethod
    def triplet_terms(self, m_ap: Tensor, m_an: Tensor) -> tuple[Tensor, Tensor]:
        """Per-triplet loss terms and the boolean mask of terms with non-zero gradient."""


class PairLoss(DMLLoss):
    """Loss over the positive pairs ``(a1, p)`` and negative pairs ``(a2, n)`` from ``miner``
    (default: all pairs), in the loss's measure ``distance``. Subclasses implement
    :meth:`pair_loss`."""

    def __init__(self, miner: PairMiner | None, distance: str | Distance = "cosine") -> None:
        super().__init__()
        self.distance = get_distance(distance, "loss.distance")
        self.miner = miner if miner is not None else AllPairsMiner(self.distance)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        matrix = self.distance.pairwise(embeddings)
        if self.miner.distance == self.distance:
            a1, p, a2, n = self.miner.mine(matrix.detach(), labels)
        else:
            a1, p, a2, n = self.miner(embeddings, labels)
        with torch.no_grad():
            cosine = matrix if self.distance == _COSINE else _COSINE.pairwise(embeddings)
            self.stats.update(
                mean_s_ap=mean_or_nan(cosine[a1, p]), mean_s_an=mean_or_nan(cosine[a2, n])
            )
        if a1.numel() + a2.numel() == 0:
            self.stats["active_fraction"] = torch.tensor(0.0, device=embeddings.device)
            return embeddings.sum() * 0
        loss, active = self.pair_loss(matrix, a1, p, a2, n)
        batch = labels.numel()
        self.stats["active_fraction"] = active.detach().float() / max(batch * (batch - 1), 1)
        return loss

    @abstractmethod
    def pair_loss(
        self, matrix: Tensor, a1: Tensor, p: Tensor, a2: Tensor, n: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The loss from the B×B matrix and the pairs, and the number of pairs with non-zero
        gradient (a 0-d tensor)."""
