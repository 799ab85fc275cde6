"""Exact k-nearest-neighbour search by inner product, in query chunks of bounded memory.

For each query row ``q_i`` and gallery rows ``g_j`` the score is ``s_ij = <q_i, g_j>`` (cosine
similarity when both are L2-normalised). :func:`exact_knn` returns, per query, the ``k`` gallery
items of largest score, ordered by

    (s_ij descending, j ascending)

i.e. among equal scores the gallery item with the lower index ranks first, including at the k-th
place (a tie straddling the top-k cut keeps the lowest indices). "Equal" means bit-equal scores as
computed by the matrix product.

Algorithm (torch backend), per chunk of ``c`` queries:

1. ``S = Q_c G^T`` (``N'`` = ``N`` padded to a multiple of ``b``), computed as ``S^T = G Q_c^T``
   into a reused ``N' x c`` buffer and used through its transposed view: the gallery-major product
   ran 1.4x faster than ``Q_c G^T`` with MKL on an AMD EPYC (c = 1,024-8,192, N = 60,502, d = 512;
   ``benchmarks/bench_retrieval_sop.py``); the padding and, with ``exclude_self``, the query's own
   column are set to ``-inf``.
2. Top-``K`` with ``K = k + 1`` (one extra to see a tie across the cut) by *block maxima*: the
   columns are split into ``m = N'/b`` strided blocks ``{j, j+m, ..., j+(b-1)m}``; only the ``K``
   blocks with the largest maxima can hold the top-``K`` values (any ``K`` blocks whose maxima are
   ``>= M`` hold ``>= K`` values ``>= M``), so the exact top-``K`` values are found among their
   ``K*b`` members. ``b ~ sqrt(N/K)`` minimises the work; ``b = 1`` is a plain top-``K``.
3. Tie rule: rows whose ``K`` values contain no equal neighbours are final (fast path). Otherwise
   the ``K`` entries are re-sorted by (value desc, index asc); if the k-th and (k+1)-th values are
   equal (tie across the cut), the row is re-selected on its full scores, taking every value above
   the k-th value plus the lowest-index members of the tie.

The chunk size is chosen so the ``c x N'`` block stays under :data:`DEFAULT_MEMORY_BUDGET` bytes.
The faiss backend (``faiss.IndexFlatIP``, CPU, float32) replaces steps 1-2 and applies the same
tie rule, re-scoring with torch the rows that have a tie across the cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes allowed for one query-chunk x gallery similarity block."""

Backend = Literal["torch", "faiss"]
ArrayLike = Tensor | np.ndarray


class KnnChunk(NamedTuple):
    """Rows ``start : start + len(indices)`` of a k-NN result (see :func:`iter_knn`).

    ``scores`` holds the chunk's complete ``(rows, N)`` score rows (the query's own column
    ``-inf`` with ``exclude_self``) with the torch backend, bit-equal to the scores ranked, so a
    caller can rank beyond the top-``k``; it is a view of a reused buffer, valid until the next
    chunk. The faiss backend has no score rows: ``None``.
    """

    start: int
    similarities: Tensor
    indices: Tensor
    scores: Tensor | None


def as_embeddings(x: ArrayLike, name: str) -> Tensor:
    """Return ``x`` (detached) as a finite, non-empty 2-D float tensor, or raise ``ValueError``."""
    x = torch.as_tensor(x).detach()
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):  # sum: fast
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def as_labels(y: ArrayLike, n: int, name: str, device: torch.device) -> Tensor:
    """Return ``y`` as a 1-D integer tensor of length ``n`` on ``device``, else ``ValueError``."""
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} must be integer class ids, got {y.dtype}")
    return y.to(device)


def exact_knn(
    query: Tensor,
    gallery: Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    backend: Backend = "torch",
) -> tuple[Tensor, Tensor]:
    """Exact inner-product top-``k`` of each query row among the gallery rows.

    Args:
        query: ``(Q, d)`` floating-point tensor (CPU or CUDA).
        gallery: ``(N, d)`` tensor on the same device.
        k: neighbours per query, ``1 <= k <= N`` (``N - 1`` with ``exclude_self``).
        exclude_self: query ``i`` is gallery item ``i`` (requires ``Q == N``) and is skipped, by
            index: a duplicate of the query at another index is still a neighbour.
        chunk_size: queries per chunk; default from :data:`DEFAULT_MEMORY_BUDGET`.
        backend: ``"torch"`` (any device) or ``"faiss"`` (``IndexFlatIP`` on CPU, float32).

    Returns:
        ``(similarities, indices)``, both ``(Q, k)``, on the query's device, ordered by
        (similarity desc, gallery index asc); see the module docstring for the tie rule.
    """
    chunks = list(
        iter_knn(
            query, gallery, k, exclude_self=exclude_self, chunk_size=chunk_size, backend=backend
        )
    )
    return torch.cat([c.similarities for c in chunks]), torch.cat([c.indices for c in chunks])


def iter_knn(
    query: Tensor,
    gallery: Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    backend: Backend = "torch",
) -> Iterator[KnnChunk]:
    """Chunked :func:`exact_knn`: yields a :class:`KnnChunk` per query chunk.

    The rows ``start : start + len(indices)`` of the full result; memory stays bounded by one
    chunk, so callers can reduce results on the fly.
    """
    query = as_embeddings(query, "query")
    gallery = query if gallery is query else as_embeddings(gallery, "gallery")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {query.shape[1]} != gallery dim {gallery.shape[1]}")
    if query.device != gallery.device:
        raise ValueError(f"query on {query.device} but gallery on {gallery.device}")
    if exclude_self and query.shape[0] != gallery.shape[0]:
        raise ValueError(
            f"exclude_self needs query and gallery of equal length, got "
            f"{query.shape[0]} and {gallery.shape[0]}"
        )
    available = gallery.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}], got {k}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    query, gallery = query.to(dtype), gallery.to(dtype)
    if backend == "torch":
        yield from _torch_chunks(query, gallery, k, exclude_self, chunk_size)
    elif backend == "faiss":
        yield from _faiss_chunks(query, gallery, k, exclude_self, chunk_size)
    else:
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")


def rows_within_budget(n: int) -> int:
    """Rows of ``n`` scores that a pass needing ~16 bytes per score (a gathered float row plus
    its temporaries) can take at once within :data:`DEFAULT_MEMORY_BUDGET`; at least 1."""
    return max(1, DEFAULT_MEMORY_BUDGET // (16 * n))


def _rows_per_chunk(chunk_size: int | None, n_queries: int, row_bytes: int) -> int:
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_MEMORY_BUDGET // row_bytes)
    return min(chunk_size, n_queries)


def _block_size(n: int, kk: int) -> int:
    """Block size ``b`` minimising ``N/b + K*b`` (block maxima + candidates); 1 = no blocking."""
    b = math.isqrt(n // kk)
    return b if b >= 2 else 1


def _torch_chunks(
    query: Tensor, gallery: Tensor, k: int, exclude_self: bool, chunk_size: int | None
) -> Iterator[KnnChunk]:
    n = gallery.shape[0]
    kk = min(k + 1, n - int(exclude_self))
    b = _block_size(n, kk)
    n_pad = -(-n // b) * b
    if n_pad > n:
        gallery = torch.cat([gallery, gallery.new_zeros(n_pad - n, gallery.shape[1])])
    rows = _rows_per_chunk(chunk_size, query.shape[0], n_pad * gallery.element_size())
    if chunk_size is None and 16 <= rows < query.shape[0]:
        rows = rows // 16 * 16  # the buffer's rows 64-byte aligned: 1.2-1.3x faster mm
    buffer = query.new_empty(rows * n_pad)
    for start in range(0, query.shape[0], rows):
        q = query[start : start + rows]
        sims_t = buffer[: n_pad * q.shape[0]].view(n_pad, q.shape[0])
        torch.mm(gallery, q.T, out=sims_t)
        sims = sims_t.T
        sims[:, n:] = -math.inf
        if exclude_self:
            _mask_self(sims, start)
        vals, idx = _block_topk(sims, kk, b) if b > 1 else sims.topk(kk, dim=1)
        vals, idx = _apply_tie_rule(vals, idx, k, n, lambda r, s=sims: s[r, :n])
        yield KnnChunk(start, vals, idx, sims[:, :n])


def _mask_self(sims: Tensor, start: int) -> None:
    """Set ``sims[i, start + i] = -inf`` (query ``start + i`` is gallery item ``start + i``)."""
    r = torch.arange(sims.shape[0], device=sims.device)
    sims[r, r + start] = -math.inf


def _block_topk(sims: Tensor, kk: int, b: int) -> tuple[Tensor, Tensor]:
    """Top-``kk`` values per row (sorted desc) via the ``kk`` strided blocks of largest maximum."""
    r, n_pad = sims.shape
    m = n_pad // b
    block_max = sims.T.reshape(b, m, r).amax(dim=0).T  # scores are gallery-major: slabs
    blocks = block_max.topk(kk, dim=1, sorted=False).indices
    offsets = torch.arange(0, n_pad, m, device=sims.device)
    cols = (blocks.unsqueeze(2) + offsets).view(r, kk * b)
    vals, pos = sims.gather(1, cols).topk(kk, dim=1)
    return vals, cols.gather(1, pos)


def _apply_tie_rule(
    vals: Tensor, idx: Tensor, k: int, n: int, full_rows: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Make a top-``K`` (``K`` in {k, k+1}, values sorted desc) obey the tie rule; keep ``k``.

    ``full_rows(r)`` returns the complete ``(len(r), n)`` score rows ``r`` (self already
    ``-inf``); it is only called for rows with a tie across the k-th place, a few at a time.
    """
    equal_next = vals[:, 1:] == vals[:, :-1]
    if bool(equal_next.any()):
        rows = equal_next.any(dim=1).nonzero().squeeze(1)
        equal_next = equal_next[rows]
        # Runs of equal values get increasing ids; sorting the keys (run id, index) puts each
        # run's indices in ascending order and leaves the values where they are.
        run = F.pad(equal_next.logical_not().cumsum(dim=1), (1, 0))
        idx[rows] = torch.add(idx[rows], run, alpha=n).sort(dim=1).values % n
        rows = rows[equal_next[:, k - 1]] if vals.shape[1] > k else rows[:0]
        if rows.numel():
            for part in rows.split(rows_within_budget(n)):
                part_vals, part_idx = _lowest_index_topk(full_rows(part), k)
                vals[part, :k], idx[part, :k] = part_vals, part_idx
    return vals[:, :k], idx[:, :k]


def _lowest_index_topk(sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` of full score rows obeying the tie rule, by explicit selection of tied indices."""
    kth = sims.topk(k, dim=1).values[:, -1:]
    above = sims > kth
    at = sims == kth
    need = k - above.sum(dim=1, keepdim=True)
    take = above | (at & (at.cumsum(dim=1, dtype=torch.int32) <= need))
    cols = take.nonzero()[:, 1].view(-1, k)
    vals, order = sims.gather(1, cols).sort(dim=1, descending=True, stable=True)
    return vals, cols.gather(1, order)


def _faiss_chunks(
    query: Tensor, gallery: Tensor, k: int, exclude_self: bool, chunk_size: int | None
) -> Iterator[KnnChunk]:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "backend='faiss' needs faiss: pip install faiss-cpu (or use backend='torch')"
        ) from err
    device = query.device
    query, gallery = query.to("cpu", torch.float32), gallery.to("cpu", torch.float32)
    n = gallery.shape[0]
    kk = min(k + 1, n - int(exclude_self))
    searched = min(kk + int(exclude_self), n)
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery.contiguous().numpy())
    rows = _rows_per_chunk(chunk_size, query.shape[0], n * gallery.element_size())

    def full_rows(r: Tensor, q: Tensor, start: int) -> Tensor:
        sims = q[r] @ gallery.T
        if exclude_self:
            sims[torch.arange(r.numel()), start + r] = -math.inf
        return sims

    for start in range(0, query.shape[0], rows):
        q = query[start : start + rows]
        vals, idx = (torch.from_numpy(a) for a in index.search(q.contiguous().numpy(), searched))
        if exclude_self:
            is_self = idx == torch.arange(start, start + q.shape[0]).unsqueeze(1)
            keep = is_self.to(torch.int8).argsort(dim=1, stable=True)[:, :kk]
            vals, idx = vals.gather(1, keep), idx.gather(1, keep)
        vals, idx = _apply_tie_rule(
            vals, idx, k, n, lambda r, q=q, start=start: full_rows(r, q, start)
        )
        yield KnnChunk(start, vals.to(device), idx.to(device), None)
