"""All positive and negative pairs of a batch."""

from __future__ import annotations

from torch import Tensor

from dml.miners.base import PairMiner, Pairs, label_masks


class AllPairsMiner(PairMiner):
    """Every positive pair (same label, ``a != p``) and every negative pair (other label)."""

    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Pairs:
        positive, negative = label_masks(labels, ref_labels, allowed)
        return (*positive.nonzero(as_tuple=True), *negative.nonzero(as_tuple=True))
