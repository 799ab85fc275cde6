"""Embedding expansion (EE): synthetic points between positive pairs, fed to any triplet or pair
loss."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.config_checks import check_choice, check_int
from dml.errors import ConfigError
from dml.losses.base import DMLLoss, LossResult, check_wrappable, mean_or_nan
from dml.miners.base import Pairs, Triplets

PairRule = Literal["disjoint", "all"]


def positive_pairs(labels: Tensor, rule: PairRule) -> tuple[Tensor, Tensor]:
    """The expanded positive pairs ``(i, j)``, ``i < j``, sorted by ``(i, j)``.

    ``"all"``: every same-class pair. ``"disjoint"``: each class's samples, in batch order, paired
    1st-2nd, 3rd-4th, ... (a last odd sample stays unpaired), the pairs of the authors' code.
    """
    same = labels[:, None] == labels[None, :]
    if rule == "all":
        return torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    rank = torch.tril(same, diagonal=-1).sum(dim=1)  # position of each sample within its class
    partner = same & (rank[None, :] == rank[:, None] + 1) & (rank[:, None] % 2 == 0)
    return partner.nonzero(as_tuple=True)


def synthetic_points(embeddings: Tensor, labels: Tensor, first: Tensor, second: Tensor,
                     points: int, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """``points`` points per pair ``(i, j)`` = ``(first[q], second[q])``:
    ``x_i + m/(points+1) (x_j - x_i)``, ``m = 1..points`` (L2-normalised if ``normalize``), pair
    by pair, with the pair's label. Differentiable in ``x_i`` and ``x_j``."""
    t = torch.arange(1, points + 1, device=embeddings.device, dtype=embeddings.dtype)
    t = t / (points + 1)
    start, step = embeddings[first], embeddings[second] - embeddings[first]
    inner = (start[:, None, :] + t[None, :, None] * step[:, None, :]).flatten(0, 1)
    if normalize:
        inner = F.normalize(inner, dim=1)
    return inner, labels[first].repeat_interleave(points)


def synthetic_fraction(tuples: Triplets | Pairs | None, real: int, device: torch.device) -> Tensor:
    """Fraction of the tuples (triplets, or positive and negative pairs together) with at least
    one index ``>= real`` (a synthetic point); NaN without tuples."""
    if tuples is None:
        return torch.tensor(float("nan"), device=device)
    if len(tuples) == 3:
        synthetic = torch.stack(tuples).ge(real).any(dim=0)
    else:
        a1, p, a2, n = tuples
        synthetic = torch.cat(((a1 >= real) | (p >= real), (a2 >= real) | (n >= real)))
    return mean_or_nan(synthetic)


class EmbeddingExpansion(DMLLoss):
    """Embedding expansion (Ko & Gu, "Embedding Expansion: Augmentation in Embedding Space for
    Deep Metric Learning", CVPR 2020) around a triplet or pair ``loss``.

    For each expanded positive pair ``(i, j)`` (same label, ``i < j``; ``pairs="disjoint"``: the
    1st-2nd, 3rd-4th, ... samples of each class in batch order, as the authors' code, or
    ``"all"`` same-class pairs) it makes ``k = points`` synthetic points dividing the segment
    into ``k + 1`` equal parts,

        x̄_ij^m = (x_i + t_m (x_j - x_i)) / |x_i + t_m (x_j - x_i)|,   t_m = m / (k + 1),
        m = 1..k,

    (not normalised if ``normalize=False``) with the label of ``i`` and ``j``; gradients flow
    through them to ``x_i`` and ``x_j``. Each unordered pair is expanded once: the authors' code
    builds the points from both orders of a pair, which gives the same set twice. ``loss`` is
    then computed on the batch of the ``B`` real points followed by the synthetic ones, pair by
    pair: its miner mines over real and synthetic points alike (hard negatives among both) and
    every point is an anchor. (The authors' HPHN triplet loss keeps real anchors and real
    hardest positives and takes the hardest negative over the anchor and its pair's synthetic
    points; a generic wrapper keeps the wrapped loss and its miner as they are.) The embeddings
    are assumed L2-normalised, as the model's head makes them. Paper / code defaults: ``k = 2``,
    L2 normalisation on.

    Statistics: those of ``loss``, on the tuples it used over real + synthetic points (indices
    ``>= B`` are synthetic in ``tuples``), except ``mean_pairwise_sim``, over the ``B`` real
    embeddings only; plus ``synthetic_fraction``: the fraction of the used tuples (triplets, or
    positive and negative pairs) with at least one synthetic point, NaN without tuples.

    Only triplet and pair losses (:class:`TripletLoss`, :class:`PairLoss`) can be wrapped: the
    LoOp losses search between points themselves and report no tuples, and the
    pytorch-metric-learning bridge reports none without a miner. Tuples from outside
    (``indices``) are refused: they index the real batch and would leave the synthetic points
    unused.
    """

    def __init__(self, loss: DMLLoss, points: int = 2, pairs: PairRule = "disjoint",
                 normalize: bool = True) -> None:
        check_wrappable(loss, "synthesis=embedding_expansion", references=False)
        check_int("synthesis.points", points, 1, "synthetic points per positive pair", 2)
        check_choice("synthesis.pairs", pairs, get_args(PairRule))
        if not isinstance(normalize, bool):
            raise ConfigError(f"synthesis.normalize must be true or false, got {normalize!r}")
        super().__init__()
        self.loss = loss
        self.points = points
        self.pairs = pairs
        self.normalize = normalize

    def expand(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The real embeddings followed by the synthetic points, and their labels."""
        first, second = positive_pairs(labels, self.pairs)
        inner, inner_labels = synthetic_points(embeddings, labels, first, second, self.points,
                                               self.normalize)
        return torch.cat((embeddings, inner)), torch.cat((labels, inner_labels))

    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: Triplets | Pairs | None = None) -> Tensor:
        if indices is not None:
            raise ConfigError(
                "EmbeddingExpansion mines its own tuples over real and synthetic points and "
                "takes no indices: drop synthesis= to use tuples mined elsewhere"
            )
        expanded, expanded_labels = self.expand(embeddings, labels)
        inner = self.loss.result(expanded, expanded_labels)
        out.adopt(inner)
        out.stats["synthetic_fraction"] = synthetic_fraction(inner.tuples, len(labels),
                                                             embeddings.device)
        return inner.value
