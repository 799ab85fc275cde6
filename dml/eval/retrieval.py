"""Retrieval metrics: Recall@K, MAP@R and R-precision, computed chunk by chunk.

Embeddings are compared by cosine similarity (rows are L2-normalised here; a zero row stays zero
and scores 0 against everything). For query ``i`` let ``R_i`` be the number of gallery items with
its label (itself excluded in the leave-one-out case) and ``rel_i(j)`` = 1 if the ``j``-th ranked
gallery item has the query's label. Ranking ties are broken by lower gallery index first (see
:mod:`dml.eval.knn`). Then, averaged over the queries with ``R_i > 0``:

* ``recall@K``    = 1 if ``rel_i(j) = 1`` for some ``j <= K``, else 0 (the DML "Recall@K" of
  Oh Song et al., CVPR 2016, i.e. hit rate at K);
* ``r_precision`` = ``(1/R_i) sum_{j<=R_i} rel_i(j)``;
* ``map@r``       = ``(1/R_i) sum_{j<=R_i} rel_i(j) * P_i(j)`` with ``P_i(j)`` the precision at
  ``j`` (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020, Sec. 3.2).

Only the top ``max_i R_i`` is ranked (torch backend): ``recall@K`` for a larger ``K`` is read from
the rank of the query's first relevant item, counted on the same score rows (one pass over the
rows that have no relevant item in their top ``max_i R_i``), so a Recall@1000 costs no top-1000.

Queries with ``R_i = 0`` have no defined value and are excluded from every metric; their count is
not in the denominator, and ``num_queries`` (a float) reports how many queries were evaluated. If
no query has ``R_i > 0`` every metric is NaN (with a warning) and ``num_queries`` is 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.eval.knn import (
    ArrayLike,
    Backend,
    as_embeddings,
    as_labels,
    iter_knn,
    rows_within_budget,
)


def positive_ks(ks: Sequence[int]) -> list[int]:
    """``ks`` as a list of ints, or a ValueError unless it is a non-empty list of positive ints."""
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, Integral) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    return [int(k) for k in ks]


def retrieval_metrics(
    query: ArrayLike,
    query_labels: ArrayLike,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    chunk_size: int | None = None,
    backend: Backend = "torch",
) -> dict[str, float]:
    """Recall@K for each K in ``ks``, MAP@R and R-precision of a cosine-similarity retrieval.

    Args:
        query: ``(Q, d)`` embeddings (need not be normalised).
        query_labels: ``(Q,)`` integer class ids.
        gallery: ``(N, d)`` embeddings searched; ``None`` = leave-one-out over ``query`` (each
            query searches all other query rows; itself excluded by index, duplicates count).
        gallery_labels: ``(N,)`` class ids; given iff ``gallery`` is.
        ks: the K of Recall@K (K larger than the gallery counts the whole gallery).
        chunk_size: queries per chunk (default from the memory budget of :mod:`dml.eval.knn`).
        backend: ``"torch"`` or ``"faiss"``, see :func:`dml.eval.knn.exact_knn`.

    Returns:
        ``{"recall@K": ..., "map@r": ..., "r_precision": ..., "num_queries": ...}``.
    """
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels must be given together")
    ks = positive_ks(ks)
    leave_one_out = gallery is None
    query = F.normalize(as_embeddings(query, "query"), dim=1)
    q_labels = as_labels(query_labels, query.shape[0], "query_labels", query.device)
    if leave_one_out:
        gallery, g_labels = query, q_labels
    else:
        gallery = F.normalize(as_embeddings(gallery, "gallery"), dim=1)
        g_labels = as_labels(gallery_labels, gallery.shape[0], "gallery_labels", query.device)
    available = gallery.shape[0] - int(leave_one_out)
    if available < 1:
        raise ValueError("leave-one-out retrieval needs at least 2 query embeddings")

    classes, ids = torch.unique(torch.cat([q_labels, g_labels]), return_inverse=True)
    q_ids, g_ids = ids[: q_labels.shape[0]], ids[q_labels.shape[0] :]
    r = torch.bincount(g_ids, minlength=classes.numel())[q_ids] - int(leave_one_out)
    n_valid = int((r > 0).sum())
    names = [f"recall@{cut}" for cut in ks] + ["map@r", "r_precision"]
    if n_valid == 0:
        warnings.warn("R = 0 for every query: metrics are NaN", RuntimeWarning, stacklevel=2)
        return {**dict.fromkeys(names, math.nan), "num_queries": 0.0}
    width = min(int(r.max()), available)
    # torch: the top-R_max ranked; a Recall@K beyond it comes from the first hit's rank, counted
    # on the chunk's score rows. faiss has no score rows: its top-k reaches the largest K.
    k = width if backend == "torch" else min(max(*ks, width), available)
    beyond = max(ks) > k  # some Recall@K needs the first hit's rank beyond the top-k
    members = _class_members(g_ids, classes.numel()) if beyond else None

    totals = torch.zeros(len(ks) + 2, dtype=torch.float64, device=query.device)
    for chunk in iter_knn(
        query, gallery, k, exclude_self=leave_one_out, chunk_size=chunk_size, backend=backend
    ):
        rows = slice(chunk.start, chunk.start + chunk.indices.shape[0])
        hits = g_ids[chunk.indices] == q_ids[rows, None]
        scores = chunk.scores if beyond else None
        first = _first_hit_rank(hits, r[rows], q_ids[rows], scores, members)
        totals += _chunk_sums(hits, first, r[rows], ks)
    means = (totals / n_valid).tolist()
    return {**dict(zip(names, means, strict=True)), "num_queries": float(n_valid)}


def _class_members(g_ids: Tensor, n_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gallery indices grouped by class: ``(order, first, count)``; class ``c``'s members are
    ``order[first[c] : first[c] + count[c]]``, ascending."""
    order = g_ids.argsort(stable=True)
    count = torch.bincount(g_ids, minlength=n_classes)
    return order, count.cumsum(0) - count, count


def _first_hit_rank(
    hits: Tensor,
    r: Tensor,
    q_ids: Tensor,
    scores: Tensor | None,
    members: tuple[Tensor, Tensor, Tensor] | None,
) -> Tensor:
    """0-based rank of each query's first relevant item in the (score desc, index asc) order.

    Within the top-k it is read from ``hits``. Otherwise (rows with ``r > 0``) it is counted on
    the full score rows: for the relevant item ``j*`` of largest score ``p`` (lowest index among
    equal ones), ``rank = #{j: s_j > p} + #{j < j*: s_j = p}``. Without ``scores`` (the faiss
    backend, or no K beyond the top-k) such rows get rank ``k``: the top-k reaches every K.
    """
    k = hits.shape[1]
    rank = torch.where(hits.any(dim=1), hits.to(torch.int8).argmax(dim=1), k)
    missed = ((rank == k) & (r > 0)).nonzero().squeeze(1)
    if scores is None or members is None or missed.numel() == 0:
        return rank
    order, first, count = members
    n = scores.shape[1]
    for part in missed.split(rows_within_budget(n)):
        cls = q_ids[part]
        offsets = torch.arange(int(count[cls].max()), device=part.device)
        inside = offsets < count[cls, None]
        cols = order[(first[cls, None] + offsets).masked_fill(~inside, 0)]
        s = scores[part]
        relevant = s.gather(1, cols).masked_fill(~inside, -math.inf)  # self is -inf already
        p = relevant.amax(dim=1, keepdim=True)
        j_star = cols.masked_fill(relevant != p, n).amin(dim=1, keepdim=True)
        before = torch.arange(n, device=s.device) < j_star
        above = (s > p).sum(dim=1, dtype=torch.int32)
        rank[part] = (above + ((s == p) & before).sum(dim=1, dtype=torch.int32)).to(rank.dtype)
    return rank


def _chunk_sums(hits: Tensor, first: Tensor, r: Tensor, ks: Sequence[int]) -> Tensor:
    """Per-metric sums over the rows with ``r > 0``: ``[recall@K for ks..., AP@R, R-precision]``.

    ``hits[i, j]`` is whether the ``j``-th neighbour of query ``i`` is relevant, ``first[i]`` the
    0-based rank of its first relevant item, ``r[i]`` its R.
    """
    valid = r > 0
    hits, first, r = hits[valid], first[valid], r[valid]
    recalls = [(first < k).sum() for k in ks]
    width = int(r.max()) if r.numel() else 0
    rank = torch.arange(1, width + 1, device=hits.device)
    relevant = hits[:, :width] & (rank <= r[:, None])
    precision = relevant.cumsum(dim=1, dtype=torch.float64) / rank
    r64 = r.to(torch.float64)
    ap = ((precision * relevant).sum(dim=1) / r64).sum()
    r_precision = (relevant.sum(dim=1) / r64).sum()
    return torch.stack([*(x.to(torch.float64) for x in recalls), ap, r_precision])
