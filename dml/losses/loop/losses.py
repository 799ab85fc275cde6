"""The LoOp losses: triplet, contrastive, multi-similarity and lifted structure with the LoOp
distance ``D*`` (:mod:`dml.losses.loop.solver`) in place of the negative pair's distance.

The tuples: every same-class pair of the P×K batch is a positive pair, and its negative pairs
are all the same-class pairs of the other classes (the authors' code splits each class into
disjoint consecutive pairs); see :class:`LoOpLoss`."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.config_checks import check_range
from dml.losses.base import (
    DMLLoss,
    LossResult,
    Reduction,
    check_reduction,
    mean_or_nan,
    reduce_terms,
)
from dml.losses.loop.candidates import _chord, _safe_sqrt
from dml.losses.loop.solver import (
    PairsOfPairs,
    _gram_dtype,
    _unit_geometry,
    loop_cosines,
    pairs_of_pairs,
)
from dml.losses.multisimilarity import check_ms_parameters
from dml.losses.terms import contrastive_hinges, log1p_sum_exp
from dml.miners.base import label_masks
from dml.miners.multisimilarity import ms_pair_masks


class LoOpTuples(NamedTuple):
    """What every LoOp loss needs from a batch (``P`` positive pairs)."""

    gram: Tensor
    """``[B, B]`` inner products of the L2-normalised embeddings (float64 but on MPS)."""
    squared: Tensor
    """``[B, B]`` their squared distances (accurate near 0, see :func:`_unit_geometry`)."""
    labels: Tensor
    pairs: PairsOfPairs
    loop_cos: Tensor
    """``[P, P]`` LoOp cosines ``S*_kl = <p*, q*>`` (valid where ``pairs.negative``)."""

    def positive_cos(self) -> Tensor:
        """``[P]`` cosine ``S_k`` of each positive pair."""
        return self.gram[self.pairs.first, self.pairs.second]

    def positive_distance(self) -> Tensor:
        """``[P]`` distance ``d_k = |x^_i - x^_j|`` of each positive pair ``k = (i, j)``, from
        the squared distances (not ``sqrt(2 - 2 S_k)``, which cancels); gradient 0 at 0."""
        return _safe_sqrt(self.squared[self.pairs.first, self.pairs.second])


class LoOpLoss(DMLLoss):
    """Base of the LoOp losses: embeddings are L2-normalised, the tuples are the positive pairs
    ``k = (i, j)`` (every same-class pair ``i < j``; a class with one sample forms none and its
    sample is not used) and, for each, the *negative pairs* ``l``: the positive pairs of the
    other classes. The LoOp distance ``D*_kl`` and cosine ``S*_kl = 1 - D*_kl^2 / 2`` are those
    of the closest points of the two arcs (:func:`loop_cosines`; ``endpoints_only`` replaces them
    by the closest endpoints, the ablation without the arc search).

    This is the construction of the authors' code, except that it pairs the ``K`` samples of a
    class into ``K / 2`` disjoint pairs and we use all ``K (K - 1) / 2`` pairs. A batch with fewer
    than two classes having a pair has no tuple and gives ``embeddings.sum() * 0``.
    Subclasses implement :meth:`loop_loss`.
    """

    records_triplets = False

    def __init__(self, endpoints_only: bool = False) -> None:
        super().__init__()
        self.endpoints_only = endpoints_only

    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: None = None) -> Tensor:
        if indices is not None:
            raise ValueError(f"{type(self).__name__} forms its own pairs of pairs from the batch: "
                             "it takes no indices")
        pairs = pairs_of_pairs(labels)
        if pairs.row.numel() == 0:
            empty = embeddings.new_zeros(0)
            if self.records_triplets:
                out.record_triplets(empty, empty)
            else:
                out.stats.update(mean_s_ap=mean_or_nan(empty), mean_s_an=mean_or_nan(empty))
            out.stats["active_fraction"] = mean_or_nan(empty)
            return embeddings.sum() * 0
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        gram, squared = _unit_geometry(embeddings.to(_gram_dtype(embeddings)))
        loop_cos = loop_cosines(gram, pairs, self.endpoints_only, dtype)
        tuples = LoOpTuples(gram, squared, labels, pairs, loop_cos)
        return self.loop_loss(tuples, out).to(embeddings.dtype)

    @abstractmethod
    def loop_loss(self, t: LoOpTuples, out: LossResult) -> Tensor:
        """The loss from the batch's LoOp tuples; records its statistics in ``out``."""

    @staticmethod
    def record_pair_stats(out: LossResult, t: LoOpTuples, positive_cos: Tensor,
                          active: Tensor) -> None:
        """Pair-loss statistics: mean cosine of the positive pairs and of the LoOp negatives
        (every pair of pairs of different classes once) and the fraction ``active``."""
        out.stats.update(
            mean_s_ap=mean_or_nan(positive_cos),
            mean_s_an=mean_or_nan(t.loop_cos.detach()[t.pairs.row, t.pairs.col]),
            active_fraction=active.detach().float().mean(),
        )


class LoOpTripletLoss(LoOpLoss):
    """LoOp triplet loss (Vasudeva et al. ICCV 2021, the triplet loss of Sec. 3.3 with LoOp's
    optimal hard negatives; "HPHN" variant of the authors' code), per positive pair ``k = (i, j)``:

        ℓ_k = max(0, d⁺_k - min_{l ∈ N(k)} D*_kl + margin),   d⁺_k = max(h_i, h_j),

    ``h_i = max_{y_p = y_i, p ≠ i} |x_i - x_p|`` the hardest positive distance of sample ``i``
    and ``N(k)`` the pairs of the other classes; ``reduction`` over the pairs (``"mean"`` or
    ``"mean_nonzero"``). ``triplet_similarities`` are the cosines ``(1 - d⁺²/2, S*)`` of the
    hardest positive and of the LoOp optimum ``(p*, q*)`` used by each term.
    """

    records_triplets = True

    def __init__(
        self, margin: float = 0.2, reduction: Reduction = "mean", endpoints_only: bool = False
    ) -> None:
        check_range("loss.margin", margin, 0)
        check_reduction(reduction)
        super().__init__(endpoints_only)
        self.margin = margin
        self.reduction = reduction

    def loop_loss(self, t: LoOpTuples, out: LossResult) -> Tensor:
        positive, _ = label_masks(t.labels)
        hardest = _safe_sqrt(t.squared.masked_fill(~positive, -math.inf).max(dim=1).values)
        d_ap = torch.maximum(hardest[t.pairs.first], hardest[t.pairs.second])
        s_an = t.loop_cos.masked_fill(~t.pairs.negative, -math.inf).max(dim=1).values
        terms = F.relu(d_ap - _chord(s_an) + self.margin)
        out.record_triplets((1 - d_ap.detach() ** 2 / 2).float(), s_an.detach().float())
        out.stats["active_fraction"] = mean_or_nan(terms > 0)
        return reduce_terms(terms, self.reduction)


class LoOpContrastiveLoss(LoOpLoss):
    """Contrastive loss (Hadsell et al. CVPR 2006, hinge form with two margins) with LoOp
    negatives:

        L = R_k max(0, d_k - m_pos) + R_{k < l, y_k ≠ y_l} max(0, m_neg - D*_kl)

    ``d_k = |x_i - x_j|`` for each positive pair ``k = (i, j)``, every two pairs of different
    classes once, ``R`` the ``reduction`` of each sum (``"mean_nonzero"`` by default, as
    :class:`~dml.losses.ContrastiveLoss`). Not in the LoOp paper: the LoOp distance simply takes
    the place of the negative pair distance.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        reduction: Reduction = "mean_nonzero",
        endpoints_only: bool = False,
    ) -> None:
        check_range("loss.pos_margin", pos_margin, 0)
        check_range("loss.neg_margin", neg_margin, 0)
        check_reduction(reduction)
        super().__init__(endpoints_only)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.reduction = reduction

    def loop_loss(self, t: LoOpTuples, out: LossResult) -> Tensor:
        s_pos = t.positive_cos()
        pos, neg = contrastive_hinges(t.positive_distance(), self.pos_margin,
                                      _chord(t.loop_cos[t.pairs.row, t.pairs.col]), self.neg_margin)
        self.record_pair_stats(out, t, s_pos, torch.cat((pos, neg)) > 0)
        return reduce_terms(pos, self.reduction) + reduce_terms(neg, self.reduction)


class LoOpMultiSimilarityLoss(LoOpLoss):
    """Multi-similarity loss (Wang et al. CVPR 2019, Eq. 10, with the pair mining of Eq. 7-8)
    with LoOp negatives as cosines, as the authors' ``MSloss`` (which converts ``D*`` to
    ``S* = 1 - D*²/2``). The anchor is a positive pair ``k = (i, j)`` with similarity ``S_k``:

        L = 1/P Σ_k [ 1/α log(1 + [S_k - ε < max_l S*_kl] exp(-α (S_k - λ)))
                      + 1/β log(1 + Σ_{l ∈ N(k), S*_kl + ε > S_k} exp(β (S*_kl - λ))) ]

    ``N(k)``: the pairs of the other classes. Defaults α = 2, β = 50, λ = ``base`` = 0.5,
    ε = ``epsilon`` = 0.1, as the paper and the authors' code.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        endpoints_only: bool = False,
    ) -> None:
        check_ms_parameters(alpha, beta, base)
        check_range("loss.epsilon", epsilon, 0)
        super().__init__(endpoints_only)
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.epsilon = epsilon

    def loop_loss(self, t: LoOpTuples, out: LossResult) -> Tensor:
        s_pos, s_neg = t.positive_cos(), t.loop_cos
        with torch.no_grad():  # the anchor's only positive is the pair itself
            keep_pos, keep_neg = ms_pair_masks(
                s_pos[:, None], torch.ones_like(s_pos[:, None], dtype=torch.bool), s_neg,
                t.pairs.negative, self.epsilon,
            )
            keep_pos = keep_pos.squeeze(1)
        pos = torch.where(keep_pos, F.softplus(-self.alpha * (s_pos - self.base)), 0.0)
        neg = log1p_sum_exp(self.beta * (s_neg - self.base), keep_neg)
        terms = pos / self.alpha + neg / self.beta
        self.record_pair_stats(out, t, s_pos, torch.cat((keep_pos, keep_neg[t.pairs.negative])))
        return terms.mean()


class LoOpLiftedStructureLoss(LoOpLoss):
    """Lifted structure loss (Oh Song et al. CVPR 2016, Eq. 4) with LoOp negatives, in the
    hinge (not squared) form of the authors' ``LiftedStructureLoss``; per positive pair
    ``k = (i, j)``:

        ℓ_k = max(0, d_k + log Σ_{l ∈ N(k)} exp(margin - D*_kl)),   L = 1/P Σ_k ℓ_k,

    ``d_k = |x_i - x_j|``. The negatives of both anchors ``i`` and ``j`` of the original loss are
    the LoOp optima against every pair ``l`` of another class. The authors' code uses the hardest
    positive distance of the pair for ``d_k``; as we enumerate all same-class pairs, each pair's
    own distance is the original lifted structure term.
    """

    def __init__(self, margin: float = 1.0, endpoints_only: bool = False) -> None:
        check_range("loss.margin", margin, 0)
        super().__init__(endpoints_only)
        self.margin = margin

    def loop_loss(self, t: LoOpTuples, out: LossResult) -> Tensor:
        s_pos = t.positive_cos()
        logits = (self.margin - _chord(t.loop_cos)).masked_fill(~t.pairs.negative, -math.inf)
        terms = F.relu(t.positive_distance() + torch.logsumexp(logits, dim=1))
        self.record_pair_stats(out, t, s_pos, terms > 0)
        return terms.mean()
