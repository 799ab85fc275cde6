"""Exact k-NN and retrieval metrics against a brute-force reference (full stable sort per query).

Tie-heavy data uses embeddings whose cosine similarities are exact in floating point (rows with
1, 4 or 16 entries equal to +-1, scaled by small integers: the norms are exact, the normalised
entries are powers of two), so chunked and brute-force scores are bit-equal and the tie rule can
be checked exactly, in float32 and float64.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

from dml.eval import exact_knn, retrieval_metrics
from dml.eval.knn import _block_size

HAS_FAISS = importlib.util.find_spec("faiss") is not None
BACKENDS = [
    "torch",
    pytest.param("faiss", marks=pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")),
]


# ---------------------------------------------------------------- brute-force reference


def ref_scores(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix in float64 (zero rows stay zero)."""

    def normalise(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return normalise(query) @ normalise(gallery).T


def ref_ranking(scores: np.ndarray, i: int, exclude_self: bool) -> list[int]:
    """All gallery indices for query ``i`` by (score desc, index asc): a full stable sort."""
    candidates = [j for j in range(scores.shape[1]) if not (exclude_self and j == i)]
    return sorted(candidates, key=lambda j: (-scores[i, j], j))


def ref_metrics(query, query_labels, gallery, gallery_labels, ks) -> dict[str, float]:
    """Recall@K, MAP@R, R-precision by explicit loops over queries and ranks."""
    loo = gallery is None
    if loo:
        gallery, gallery_labels = query, query_labels
    scores = ref_scores(query, gallery)
    sums = dict.fromkeys([*(f"recall@{k}" for k in ks), "map@r", "r_precision"], 0.0)
    n = 0
    for i in range(len(query)):
        rel = [gallery_labels[j] == query_labels[i] for j in ref_ranking(scores, i, loo)]
        r = sum(rel)
        if r == 0:
            continue
        n += 1
        for k in ks:
            sums[f"recall@{k}"] += float(any(rel[:k]))
        sums["r_precision"] += sum(rel[:r]) / r
        sums["map@r"] += sum(sum(rel[: j + 1]) / (j + 1) for j in range(r) if rel[j]) / r
    return {**{key: v / n for key, v in sums.items()}, "num_queries": float(n)}


# ---------------------------------------------------------------- data


def tied_embeddings(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Rows with 1, 4 or 16 entries +-1 (exact norms), integer scales, duplicates, a zero row."""
    x = np.zeros((n, d))
    for row in x:
        m = rng.choice([1, 4, 16])
        row[rng.choice(d, m, replace=False)] = rng.choice([-1.0, 1.0], m)
        row *= rng.choice([1, 2, 3, 5])
    dup = rng.choice(n, n // 4, replace=False)
    x[dup] = x[rng.choice(n, n // 4)]
    x[rng.integers(n)] = 0.0
    return x


def skewed_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unequal class sizes, including singletons."""
    sizes = rng.geometric(0.15, size=n)
    return np.repeat(np.arange(n), sizes)[:n][rng.permutation(n)]


# ---------------------------------------------------------------- exact_knn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_exact_knn_matches_stable_sort_with_ties(backend, dtype, exclude_self, chunk_size):
    rng = np.random.default_rng(0)
    n = 203  # prime: the blocked search needs padding
    gallery = tied_embeddings(n, 16, rng)
    query = gallery if exclude_self else tied_embeddings(40, 16, rng)
    scores = ref_scores(query, gallery)
    q, g = (
        torch.nn.functional.normalize(torch.tensor(a, dtype=dtype), dim=1) for a in (query, gallery)
    )
    for k in (1, 5, 30, n - int(exclude_self)):
        sims, idx = exact_knn(
            q, g, k, exclude_self=exclude_self, chunk_size=chunk_size, backend=backend
        )
        for i in range(0, len(query), 3 if exclude_self else 1):
            expected = ref_ranking(scores, i, exclude_self)[:k]
            assert idx[i].tolist() == expected, (k, i)
            assert sims[i].tolist() == scores[i, expected].tolist(), (k, i)


def test_block_path_and_plain_path_are_both_exercised():
    assert _block_size(203, 2) > 1 and _block_size(203, 31) > 1
    assert _block_size(203, 203) == 1


@pytest.mark.parametrize("exclude_self", [False, True])
def test_exact_knn_random_float64(exclude_self):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 8))
    query = x if exclude_self else rng.normal(size=(60, 8))
    scores = ref_scores(query, x)
    q = torch.nn.functional.normalize(torch.tensor(query), dim=1)
    g = torch.nn.functional.normalize(torch.tensor(x), dim=1)
    sims, idx = exact_knn(q, g, 12, exclude_self=exclude_self, chunk_size=16)
    for i in range(len(query)):
        expected = ref_ranking(scores, i, exclude_self)[:12]
        assert idx[i].tolist() == expected
        np.testing.assert_allclose(sims[i].numpy(), scores[i, expected], rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [13, 50, 101])
def test_exact_knn_all_negative_scores(n):
    # Every score is negative, so any padding column scored 0 would wrongly win.
    rng = np.random.default_rng(n)
    gallery = -np.abs(rng.normal(size=(n, 4)))
    query = np.abs(rng.normal(size=(5, 4)))
    scores = query @ gallery.T
    assert _block_size(n, 2) > 1
    sims, idx = exact_knn(torch.tensor(query), torch.tensor(gallery), 1)
    assert idx.flatten().tolist() == scores.argmax(1).tolist()
    assert (sims < 0).all()


def test_tie_across_the_cut_keeps_lowest_indices():
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    assert exact_knn(query, gallery, 2)[1].tolist() == [[1, 3]]
    assert exact_knn(query, gallery, 4)[1].tolist() == [[1, 3, 4, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_identical_embeddings_rank_by_index_without_self(backend):
    x = torch.ones(9, 3)
    _, idx = exact_knn(x, x, 3, exclude_self=True, chunk_size=4, backend=backend)
    expected = [[j for j in range(9) if j != i][:3] for i in range(9)]
    assert idx.tolist() == expected


def test_duplicate_of_query_counts_in_leave_one_out():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    _, idx = exact_knn(x, x, 1, exclude_self=True)
    assert idx.flatten().tolist() == [2, 0, 0]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.ones(3), torch.ones(4, 3), 1), {}, "2-D"),
        ((torch.ones(0, 3), torch.ones(4, 3), 1), {}, "empty"),
        ((torch.ones(2, 3), torch.ones(4, 2), 1), {}, "dim"),
        ((torch.full((2, 3), math.nan), torch.ones(4, 3), 1), {}, "NaN"),
        ((torch.ones(2, 3, dtype=torch.int64), torch.ones(4, 3), 1), {}, "floating"),
        ((torch.ones(2, 3), torch.ones(4, 3), 5), {}, "k must be"),
        ((torch.ones(4, 3), torch.ones(4, 3), 4), {"exclude_self": True}, "k must be"),
        ((torch.ones(2, 3), torch.ones(4, 3), 1), {"exclude_self": True}, "equal length"),
        ((torch.ones(2, 3), torch.ones(4, 3), 1), {"backend": "annoy"}, "backend"),
        ((torch.ones(2, 3), torch.ones(4, 3), 1), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_exact_knn_rejects_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        exact_knn(*args, **kwargs)


def test_faiss_backend_missing_raises_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="faiss-cpu"):
        exact_knn(torch.ones(2, 3), torch.ones(4, 3), 1, backend="faiss")


# ---------------------------------------------------------------- retrieval_metrics


KS = (1, 2, 4, 8, 1000)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("chunk_size", [3, None])
def test_metrics_match_reference_with_ties(backend, dtype, leave_one_out, chunk_size):
    rng = np.random.default_rng(2)
    query, q_labels = tied_embeddings(120, 16, rng), skewed_labels(120, rng)
    gallery, g_labels = (
        (None, None)
        if leave_one_out
        else (
            tied_embeddings(90, 16, rng),
            skewed_labels(90, rng) + 2,  # classes 0, 1: no gallery
        )
    )
    expected = ref_metrics(query, q_labels, gallery, g_labels, KS)
    as_t = lambda a: None if a is None else torch.tensor(a, dtype=dtype)  # noqa: E731
    got = retrieval_metrics(
        as_t(query),
        torch.tensor(q_labels),
        as_t(gallery),
        None if g_labels is None else torch.tensor(g_labels),
        ks=KS,
        chunk_size=chunk_size,
        backend=backend,
    )
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert 0 < got["num_queries"] < 120  # singletons / absent classes are excluded


@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("chunk_size", [5, None])
def test_recall_beyond_r_max_counts_the_first_hit_rank_with_ties(leave_one_out, chunk_size):
    # Small classes (R_max << K): Recall@20/60 come from the first relevant item's rank, counted
    # on the score rows, where tied scores are everywhere; must equal the full stable sort.
    rng = np.random.default_rng(5)
    query, q_labels = tied_embeddings(150, 16, rng), rng.integers(0, 60, 150)
    gallery, g_labels = (
        (None, None) if leave_one_out else (tied_embeddings(110, 16, rng), rng.integers(0, 60, 110))
    )
    ks = (1, 2, 5, 20, 60, 1000)
    as_t = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    got = retrieval_metrics(
        as_t(query), as_t(q_labels), as_t(gallery), as_t(g_labels), ks=ks, chunk_size=chunk_size
    )
    expected = ref_metrics(query, q_labels, gallery, g_labels, ks)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert expected["recall@5"] < expected["recall@20"] < expected["recall@60"] < 1


def test_metrics_match_reference_random_float64_numpy_input():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 6)), rng.integers(0, 12, 200)
    assert retrieval_metrics(x, y, ks=np.array([1, 3, 10])) == pytest.approx(
        ref_metrics(x, y, None, None, (1, 3, 10)), rel=1e-12
    )


def test_metrics_hand_computed_example():
    # Query at angle 0; gallery at increasing angles, so the ranking is the gallery order.
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    gallery = torch.stack([angles.cos(), angles.sin()], dim=1)
    g_labels = torch.tensor([1, 0, 1, 0, 0, 1])  # relevant at ranks 1, 3, 6; R = 3
    m = retrieval_metrics(
        torch.tensor([[1.0, 0.0]]), torch.tensor([1]), gallery, g_labels, ks=(1, 2)
    )
    assert m["recall@1"] == 1.0 and m["recall@2"] == 1.0
    assert m["r_precision"] == pytest.approx(2 / 3)
    assert m["map@r"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    m = retrieval_metrics(
        torch.tensor([[1.0, 0.0]]), torch.tensor([0]), gallery, g_labels, ks=(1, 2)
    )
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0
    assert m["map@r"] == pytest.approx((1 / 2) / 3)


def test_all_identical_embeddings_and_scale_invariance():
    labels = torch.tensor([0, 1, 0, 1, 1, 2])
    m = retrieval_metrics(torch.ones(6, 4), labels, ks=(1,))
    expected = ref_metrics(np.ones((6, 4)), labels.numpy(), None, None, (1,))
    assert m == pytest.approx(expected)
    assert m["num_queries"] == 5.0  # class 2 has one sample: R = 0, excluded
    scaled = torch.ones(6, 4) * torch.tensor([[1.0], [7.0], [0.5], [3.0], [2.0], [9.0]])
    assert retrieval_metrics(scaled, labels, ks=(1,)) == m


def test_no_query_with_a_relevant_item_gives_nan():
    with pytest.warns(RuntimeWarning, match="R = 0"):
        m = retrieval_metrics(torch.randn(4, 2), torch.arange(4), ks=(1, 2))
    assert set(m) == {"recall@1", "recall@2", "map@r", "r_precision", "num_queries"}
    assert m["num_queries"] == 0.0
    assert all(math.isnan(v) for key, v in m.items() if key != "num_queries")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.ones(4, 2), torch.ones(3, dtype=torch.int64)), {}, "query_labels"),
        ((torch.ones(4, 2), torch.ones(4)), {}, "integer"),
        ((torch.ones(4, 2), torch.zeros(4, dtype=torch.int64), torch.ones(3, 2)), {}, "together"),
        ((torch.ones(1, 2), torch.zeros(1, dtype=torch.int64)), {}, "at least 2"),
        ((torch.ones(4, 2), torch.zeros(4, dtype=torch.int64)), {"ks": ()}, "ks"),
        ((torch.ones(4, 2), torch.zeros(4, dtype=torch.int64)), {"ks": (0,)}, "ks"),
        (
            (
                torch.ones(4, 2),
                torch.zeros(4, dtype=torch.int64),
                torch.ones(3, 2),
                torch.zeros(2, dtype=torch.int64),
            ),
            {},
            "gallery_labels",
        ),
    ],
)
def test_metrics_reject_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(*args, **kwargs)


@pytest.mark.parametrize("rows", [15, 17, 33])
def test_chunks_cut_by_the_memory_budget_give_the_reference(rows, monkeypatch):
    # The budget decides the chunk rows (rounded down to a multiple of 16 from 16 on): chunks of
    # 15, 16 and 32 rows over 150 queries must not change a neighbour or a metric.
    import dml.eval.knn as knn

    rng = np.random.default_rng(6)
    x, y = tied_embeddings(150, 16, rng), rng.integers(0, 60, 150)
    n_pad = -(-150 // knn._block_size(150, 3)) * knn._block_size(150, 3)
    monkeypatch.setattr(knn, "DEFAULT_MEMORY_BUDGET", rows * n_pad * 8)
    scores = ref_scores(x, x)
    unit = torch.nn.functional.normalize(torch.tensor(x), dim=1)  # exact: see the module doc
    _, idx = exact_knn(unit, unit, 2, exclude_self=True)
    assert idx.tolist() == [ref_ranking(scores, i, True)[:2] for i in range(150)]
    ks = (1, 2, 5, 20, 60)
    got = retrieval_metrics(torch.tensor(x), torch.tensor(y), ks=ks)
    assert got == pytest.approx(ref_metrics(x, y, None, None, ks), rel=1e-12, abs=1e-12)
