"""Semi-hard negative mining, both variants: FaceNet's (Schroff et al. CVPR 2015, Sec. 3.2: per
positive pair, the closest negative inside a margin band beyond the positive) and the SCT
repository's (Xuan et al. ECCV 2020: per anchor, the closest negative not closer than its
positive; used by ``loss=nca_semihard``)."""

from __future__ import annotations

from torch import Tensor

from dml.config_checks import check_range
from dml.distances import Distance
from dml.miners.base import TripletMiner, Triplets, label_masks, masked_argmax
from dml.miners.per_anchor import FixedNegativeMiner


class FaceNetSemiHardMiner(TripletMiner):
    """For every positive pair ``(a, p)``, the closest negative still farther than ``p``:

        n* = argmax_n c(a, n)  subject to  c(a, p) - margin < c(a, n) < c(a, p),

    with ``c`` the closeness of ``distance`` (for a distance: d_ap < d_an < d_ap + margin).
    ``margin = None`` drops the band (any negative farther than the positive); a margin must be
    > 0 (the band is empty at 0). Pairs without such a negative yield no triplet; ties go to the
    lowest index. Memory O(P·B) for P pairs.
    """

    def __init__(self, margin: float | None = 0.2, distance: str | Distance = "cosine") -> None:
        check_range("loss.miner.margin", margin, 0, strict=True, nullable=True)
        super().__init__(distance)
        self.margin = margin

    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Triplets:
        close = self.distance.closeness(matrix)
        positive, negative = label_masks(labels, ref_labels, allowed)
        a, p = positive.nonzero(as_tuple=True)
        row = close[a]
        c_ap = close[a, p][:, None]
        band = negative[a] & (row < c_ap)
        if self.margin is not None:
            band &= row > c_ap - self.margin
        n, found = masked_argmax(row, band)
        return a[found], p[found], n[found]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(margin={self.margin}, distance={self.distance})"


class SemiHardNegativeMiner(FixedNegativeMiner):
    """SCT-repository semi-hard: per anchor the ``positive`` rule (default the closest positive),
    then the closest negative with c(a, n) <= c(a, p)."""

    negative_rule = "semihard"
