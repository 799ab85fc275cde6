"""Published Recall@1 to put beside a sweep's results (``dml-report --paper``).

Source: Xuan et al., "Hard negative examples are hard, but useful", ECCV 2020 — the numbers of the
authors' released code, which produced their published results, as quoted in this project's
issue 4 (R@1 in %). They hold for the SCT protocol (``experiment=sct_<dataset>`` and its
``_semihard`` / ``_hardest`` baselines); beside any other protocol they are only a reference.
"""

from __future__ import annotations

SOURCE = "Xuan et al., ECCV 2020 (authors' released code), R@1 in % with the SCT protocol"

#: (loss config name, data config name) -> published R@1 in %.
RECALL_AT_1: dict[tuple[str, str], float] = {
    ("sct", "cub200"): 57.7,
    ("sct", "cars196"): 73.4,
    ("sct", "sop"): 81.9,
    ("sct", "inshop"): 90.9,
    ("nca_semihard", "cub200"): 56.7,
    ("nca_semihard", "cars196"): 67.9,
    ("nca_semihard", "sop"): 81.1,
    ("nca_semihard", "inshop"): 90.6,
}
#: Reported to collapse (training fails), so no number: hardest negatives on CUB and Cars.
COLLAPSED = frozenset({("nca_hardest", "cub200"), ("nca_hardest", "cars196")})


def published_recall_at_1(strategy: str, dataset: str) -> float | str | None:
    """The published R@1 (%) of a loss on a dataset, ``"collapse"``, or None if unpublished."""
    if (strategy, dataset) in COLLAPSED:
        return "collapse"
    return RECALL_AT_1.get((strategy, dataset))
