"""Triplet miners: all valid triplets, and one triplet per anchor by a positive/negative rule."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from dml.config_checks import check_choice
from dml.distances import Distance
from dml.miners.base import TripletMiner, Triplets, label_masks, masked_argmax

PositiveRule = Literal["hardest", "easiest", "random"]
NegativeRule = Literal["hardest", "semihard", "random"]


class AllTripletsMiner(TripletMiner):
    """Every valid triplet ``(a, p, n)``: ``y_a = y_p``, ``a != p``, ``y_n != y_a``.

    Returned in lexicographic order of ``(a, p, n)``; memory is O(B^3) booleans.
    """

    def mine(self, matrix: Tensor, labels: Tensor) -> Triplets:
        positive, negative = label_masks(labels)
        a, p, n = (positive[:, :, None] & negative[:, None, :]).nonzero(as_tuple=True)
        return a, p, n


class PerAnchorTripletMiner(TripletMiner):
    """One triplet per anchor, from a positive rule then a negative rule.

    With ``c`` the closeness of ``distance`` (similarity, or negated distance):

    * positive: ``"hardest"`` = argmin_p c(a, p); ``"easiest"`` = argmax_p c(a, p);
      ``"random"`` = uniform among the positives.
    * negative: ``"hardest"`` = argmax_n c(a, n); ``"random"`` = uniform among the negatives;
      ``"semihard"`` = argmax_n c(a, n) subject to c(a, n) <= c(a, p) for the chosen positive
      (the semi-hard selection of the SCT authors' code, Xuan et al. ECCV 2020: the hardest
      negative that is not closer than the positive, with no margin band).

    Ties go to the lowest index. ``exclude_duplicates`` removes near-duplicate positives
    (cosine > 0.9999, see :meth:`Distance.near_duplicate`) before choosing, as the SCT code does.
    Anchors without an admissible positive or negative yield no triplet.
    """

    def __init__(
        self,
        positive: PositiveRule,
        negative: NegativeRule,
        distance: str | Distance = "cosine",
        exclude_duplicates: bool = False,
    ) -> None:
        check_choice("loss.miner.positive", positive, get_args(PositiveRule))
        check_choice("loss.miner.negative", negative, get_args(NegativeRule))
        super().__init__(distance)
        self.positive = positive
        self.negative = negative
        self.exclude_duplicates = exclude_duplicates

    def mine(self, matrix: Tensor, labels: Tensor) -> Triplets:
        close = self.distance.closeness(matrix)
        positive, negative = label_masks(labels)
        if self.exclude_duplicates:
            positive &= ~self.distance.near_duplicate(matrix)
        if self.positive == "hardest":
            p_score = self.distance.farness(matrix)
        else:
            p_score = close if self.positive == "easiest" else torch.rand_like(close)
        p, has_p = masked_argmax(p_score, positive)
        if self.negative == "semihard":
            negative &= close <= close.gather(1, p[:, None])
        n_score = torch.rand_like(close) if self.negative == "random" else close
        n, has_n = masked_argmax(n_score, negative)
        keep = has_p & has_n
        return keep.nonzero().squeeze(1), p[keep], n[keep]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(positive={self.positive!r}, negative={self.negative!r}, "
            f"distance={self.distance}, exclude_duplicates={self.exclude_duplicates})"
        )


class BatchHardMiner(PerAnchorTripletMiner):
    """Batch-hard mining (Hermans et al. 2017): hardest positive and hardest negative per anchor."""

    def __init__(self, distance: str | Distance = "cosine", exclude_duplicates: bool = False):
        super().__init__("hardest", "hardest", distance, exclude_duplicates)


class EasyPositiveHardNegativeMiner(PerAnchorTripletMiner):
    """EPHN (Xuan et al. WACV 2020; the SCT paper's selection): per anchor the closest positive
    and the closest negative."""

    def __init__(self, distance: str | Distance = "cosine", exclude_duplicates: bool = False):
        super().__init__("easiest", "hardest", distance, exclude_duplicates)


class SemiHardNegativeMiner(PerAnchorTripletMiner):
    """SCT-repository semi-hard: per anchor the ``positive`` rule (default the closest positive),
    then the closest negative with c(a, n) <= c(a, p)."""

    def __init__(
        self,
        distance: str | Distance = "cosine",
        exclude_duplicates: bool = False,
        positive: PositiveRule = "easiest",
    ) -> None:
        super().__init__(positive, "semihard", distance, exclude_duplicates)


class RandomNegativeMiner(PerAnchorTripletMiner):
    """Per anchor the ``positive`` rule (default the closest positive) and a negative drawn
    uniformly among the anchor's negatives (``torch`` global RNG)."""

    def __init__(
        self,
        distance: str | Distance = "cosine",
        exclude_duplicates: bool = False,
        positive: PositiveRule = "easiest",
    ) -> None:
        super().__init__(positive, "random", distance, exclude_duplicates)
