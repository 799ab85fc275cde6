"""A faiss index of ``dml-embed``'s embeddings, saved with its ids (rows of ``items.csv``).

Kinds, all by inner product (cosine similarity of the L2-normalised embeddings):

* ``flat``: ``IndexFlatIP``, exact;
* ``ivf``: ``IndexIVFFlat`` with ``nlist`` k-means cells (trained on the embeddings), searching
  ``nprobe`` of them;
* ``hnsw``: ``IndexHNSWFlat`` with ``m`` links per node, ``ef_construction`` and ``ef_search``.

``build_index(embed_dir, kind, out_dir)`` writes ``index.faiss``, ``items.csv`` (a copy of the
embedding's table: id ``i`` is its row ``i``) and ``index.json`` (kind, parameters, dimension,
count, the checkpoint of the embeddings). For ``ivf`` and ``hnsw`` it measures recall@k against
exact search (:func:`dml.eval.exact_knn`) on ``recall_queries`` rows of the collection.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dml.deploy.embed import EMBEDDINGS, ITEMS, META
from dml.errors import ConfigError, DatasetError
from dml.files import write_atomic, write_text_atomic

INDEX, INDEX_META = "index.faiss", "index.json"
KINDS = ("flat", "ivf", "hnsw")
ADD_CHUNK = 65_536


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError("dml-index needs faiss: pip install 'dml[faiss]'") from None
    return faiss


def load_embeddings(embed_dir: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """The embeddings (memory-mapped) and ``embed.json`` of a finished ``dml-embed`` folder."""
    folder = Path(embed_dir)
    if not (folder / META).is_file():
        raise DatasetError(f"{folder} is not a dml-embed output folder (no {META} in it)")
    meta = json.loads((folder / META).read_text())
    if meta["done"] != meta["count"]:
        raise DatasetError(
            f"{folder}: embedding stopped at {meta['done']} of {meta['count']} images: run the "
            "same dml-embed command again to finish it"
        )
    return np.load(folder / EMBEDDINGS, mmap_mode="r"), meta


def build_index(
    embed_dir: str | os.PathLike,
    kind: str,
    out_dir: str | os.PathLike,
    nlist: int = 1024,
    nprobe: int = 16,
    m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
    recall_k: int = 10,
    recall_queries: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Build, save and describe the index (see the module); returns ``index.json``'s content,
    with ``recall@k`` for the approximate kinds."""
    faiss = faiss_module()
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    x, meta = load_embeddings(embed_dir)
    n, dim = x.shape
    params: dict[str, int] = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        if not 1 <= nlist <= n:
            raise ConfigError(f"--nlist must be in [1, {n}] (the embeddings), got {nlist}")
        params = {"nlist": nlist, "nprobe": nprobe}
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, 256 * nlist), replace=False))
        index.train(np.ascontiguousarray(x[sample], dtype=np.float32))
        index.nprobe = nprobe
    else:
        params = {"m": m, "ef_construction": ef_construction, "ef_search": ef_search}
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    for start in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(x[start : start + ADD_CHUNK], dtype=np.float32))
    info = {"kind": kind, **params, "dim": dim, "count": n, "checkpoint": meta["checkpoint"],
            "embeddings": os.fspath(Path(embed_dir).resolve())}
    if kind != "flat":
        info[f"recall@{recall_k}"] = recall_at_k(index, x, recall_k, recall_queries, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / INDEX, lambda tmp: faiss.write_index(index, str(tmp)))
    shutil.copyfile(Path(embed_dir) / ITEMS, out / ITEMS)
    write_text_atomic(out / INDEX_META, json.dumps(info, indent=2) + "\n")
    return info


def recall_at_k(index: Any, x: np.ndarray, k: int, queries: int, seed: int = 0) -> float:
    """Mean fraction of the exact top-``k`` (inner product, :func:`dml.eval.exact_knn`) that
    ``index`` returns, over ``queries`` random rows of ``x`` searched against all of ``x``."""
    from dml.eval.knn import exact_knn

    n = x.shape[0]
    k = min(k, n)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))
    q = np.ascontiguousarray(x[rows], dtype=np.float32)
    _, approx = index.search(q, k)
    _, exact = exact_knn(torch.from_numpy(q), torch.from_numpy(np.array(x, np.float32)), k)
    hits = [len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]
    return sum(hits) / (k * len(rows))
