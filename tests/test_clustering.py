"""NMI of k-means clusters against an explicit entropy-based reference."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from dml.eval import nmi


def ref_nmi(labels: list[int], clusters: list[int]) -> float:
    """I(Y; C) / ((H(Y) + H(C)) / 2) from explicit counts."""
    n = len(labels)
    p_y, p_c = Counter(labels), Counter(clusters)
    p_yc = Counter(zip(labels, clusters, strict=True))
    mi = sum(c / n * math.log(c * n / (p_y[y] * p_c[k])) for (y, k), c in p_yc.items())
    h_y = -sum(c / n * math.log(c / n) for c in p_y.values())
    h_c = -sum(c / n * math.log(c / n) for c in p_c.values())
    return 1.0 if h_y == h_c == 0 else mi / ((h_y + h_c) / 2)


def blobs(centres: np.ndarray, sizes: list[int], rng: np.random.Generator) -> np.ndarray:
    """Tight clusters around the given directions, with random positive row norms."""
    points = np.concatenate(
        [c + 0.01 * rng.normal(size=(s, len(c))) for c, s in zip(centres, sizes, strict=True)]
    )
    return points * rng.uniform(0.1, 100.0, size=(len(points), 1))


def test_nmi_matches_reference_on_explicit_assignment():
    # Four well-separated directions: k-means (k = 4 classes) must find exactly these clusters,
    # while the labels mix them, so the expected NMI is that of this explicit assignment.
    rng = np.random.default_rng(0)
    x = blobs(np.eye(4), [5, 5, 5, 5], rng)
    clusters = np.repeat(np.arange(4), 5).tolist()
    labels = [0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 2, 2, 2, 3, 3, 3, 3, 3, 0, 1]
    expected = ref_nmi(labels, clusters)
    assert 0.2 < expected < 0.9
    assert expected == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert nmi(torch.tensor(x), torch.tensor(labels)) == pytest.approx(expected, abs=1e-12)


def test_nmi_is_one_on_separable_clusters_with_any_label_ids():
    rng = np.random.default_rng(1)
    x = blobs(np.eye(6)[:3] - np.eye(6)[3:], [7, 3, 12], rng)  # unequal sizes, raw norms vary
    labels = np.repeat([42, -1, 7], [7, 3, 12])
    assert nmi(x, labels) == pytest.approx(1.0)


def test_nmi_normalises_embeddings():
    # Same directions, norms 1 vs 100: un-normalised k-means would split by norm, not direction.
    direction = np.array([[1.0, 0.0], [0.0, 1.0]])
    x = np.concatenate([direction[[0, 0, 1, 1]], 100 * direction[[0, 0, 1, 1]]])
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    assert nmi(x, labels) == pytest.approx(1.0)


def test_nmi_single_class_and_seed_determinism():
    x = np.random.default_rng(2).normal(size=(30, 5))
    assert nmi(x, np.zeros(30, dtype=int)) == pytest.approx(1.0)
    labels = np.arange(30) % 4
    assert nmi(x, labels, seed=3) == nmi(x, labels, seed=3)


@pytest.mark.parametrize(
    ("embeddings", "labels", "message"),
    [
        (torch.full((3, 2), math.nan), torch.zeros(3, dtype=torch.int64), "NaN"),
        (torch.ones(3, 2), torch.zeros(4, dtype=torch.int64), "labels"),
        (torch.ones(0, 2), torch.zeros(0, dtype=torch.int64), "empty"),
        (torch.ones(3), torch.zeros(3, dtype=torch.int64), "2-D"),
    ],
)
def test_nmi_rejects_bad_input(embeddings, labels, message):
    with pytest.raises(ValueError, match=message):
        nmi(embeddings, labels)
