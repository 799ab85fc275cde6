"""One triplet per anchor, chosen by a positive rule then a negative rule (the base of the
batch-hard, EPHN, SCT semi-hard and random-negative miners)."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from dml.config_checks import check_choice
from dml.distances import Distance
from dml.miners.base import TripletMiner, Triplets, label_masks, masked_argmax

PositiveRule = Literal["hardest", "easiest", "random"]
NegativeRule = Literal["hardest", "semihard", "random"]


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

    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Triplets:
        close = self.distance.closeness(matrix)
        positive, negative = label_masks(labels, ref_labels, allowed)
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


class FixedNegativeMiner(PerAnchorTripletMiner):
    """A :class:`PerAnchorTripletMiner` whose subclass fixes the negative rule
    (``negative_rule``) and leaves the ``positive`` rule to the config (default the closest)."""

    negative_rule: ClassVar[NegativeRule]

    def __init__(
        self,
        distance: str | Distance = "cosine",
        exclude_duplicates: bool = False,
        positive: PositiveRule = "easiest",
    ) -> None:
        super().__init__(positive, self.negative_rule, distance, exclude_duplicates)
