"""A random negative per anchor (the uninformed baseline of hard-negative selection)."""

from __future__ import annotations

from dml.miners.per_anchor import FixedNegativeMiner


class RandomNegativeMiner(FixedNegativeMiner):
    """Per anchor the ``positive`` rule (default the closest positive) and a negative drawn
    uniformly among the anchor's negatives (``torch`` global RNG)."""

    negative_rule = "random"
