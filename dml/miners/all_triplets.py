"""All valid triplets of a batch ("batch all", Hermans et al. 2017)."""

from __future__ import annotations

from torch import Tensor

from dml.miners.base import TripletMiner, Triplets, label_masks


class AllTripletsMiner(TripletMiner):
    """Every valid triplet ``(a, p, n)``: ``y_a = y_p``, ``a != p``, ``y_n != y_a``.

    Returned in lexicographic order of ``(a, p, n)``; memory is O(B^3) booleans.
    """

    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Triplets:
        positive, negative = label_masks(labels, ref_labels, allowed)
        a, p, n = (positive[:, :, None] & negative[:, None, :]).nonzero(as_tuple=True)
        return a, p, n
