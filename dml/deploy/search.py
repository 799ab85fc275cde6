"""Query a ``dml-index`` folder with images: their ``k`` nearest items, with paths, labels and
cosine similarities.

``searcher = Searcher("index_dir")`` embeds queries with the index's checkpoint (read by
:func:`dml.load_embedder`), or another one of the same dimension;
``searcher.search(["a.jpg"], k=10)`` returns one list of :class:`Hit` per query, best first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dml.data.image_io import load_image
from dml.deploy.embed import read_items
from dml.deploy.index import INDEX, INDEX_META, faiss_module
from dml.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class Hit:
    """One neighbour: its row in the index's ``items.csv``, path, label, cosine similarity."""

    index: int
    path: str
    label: str
    score: float


class Searcher:
    """A saved faiss index with its items table, and the embedder that makes its queries."""

    def __init__(
        self,
        index_dir: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        device: str | None = None,
    ) -> None:
        from dml.inference import load_embedder

        folder = Path(index_dir)
        if not (folder / INDEX_META).is_file():
            raise DatasetError(f"{folder} is not a dml-index output folder (no {INDEX_META})")
        self.info = json.loads((folder / INDEX_META).read_text())
        self.index = faiss_module().read_index(str(folder / INDEX))
        self.paths, self.labels = read_items(folder)
        checkpoint = checkpoint or self.info["checkpoint"]
        self.embedder = load_embedder(checkpoint, device=device)
        dim = int(self.embedder.net.embedding_dim)
        if dim != self.index.d:
            raise ConfigError(
                f"{checkpoint} embeds in {dim} dimensions but the index {folder} holds "
                f"{self.index.d}: query with the checkpoint the index was built from"
            )

    def search(self, images: Sequence[str | os.PathLike], k: int = 10) -> list[list[Hit]]:
        """The ``k`` nearest items of each query image file, best first."""
        if not images:
            raise ConfigError("no query images given")
        z = self.embedder([load_image(p) for p in images]).numpy()
        return self.search_embeddings(z, k)

    def search_embeddings(self, z: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The ``k`` nearest items of each row of ``z`` (``(Q, d)``, L2-normalised)."""
        if not 1 <= k <= self.index.ntotal:
            raise ConfigError(f"-k must be in [1, {self.index.ntotal}] (the index), got {k}")
        scores, ids = self.index.search(np.ascontiguousarray(z, dtype=np.float32), k)
        return [
            [Hit(int(i), self.paths[i], self.labels[i], float(s))
             for s, i in zip(row_s, row_i, strict=True) if i >= 0]
            for row_s, row_i in zip(scores.tolist(), ids.tolist(), strict=True)
        ]
