"""Embed a collection of images into files, in chunks of bounded memory, resumably.

``embed_collection(checkpoint, collection, out_dir)`` writes into ``out_dir``

* ``embeddings.npy``: ``(N, d)`` L2-normalised embeddings, float32 or float16, row ``i`` of
  image ``i``; written through a memory map, chunk by chunk, so memory stays at one chunk;
* ``items.csv``: ``index,path,label`` of every row;
* ``embed.json``: the checkpoint, dimension, dtype, count, and ``done``, the rows written so
  far (the chunk marker: updated after each chunk is flushed).

Run again with the same arguments, an interrupted run continues at ``done``; a finished one is
left as it is. An ``out_dir`` holding another collection's or checkpoint's embeddings is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dml.deploy.collection import Collection
from dml.errors import ConfigError
from dml.files import write_text_atomic

EMBEDDINGS, ITEMS, META = "embeddings.npy", "items.csv", "embed.json"
DTYPES = {"float32": np.float32, "float16": np.float16}


class _Images(Dataset):
    """Rows ``start..`` of a collection as ``(transformed image, row)``."""

    def __init__(self, collection: Collection, transform: Any, start: int) -> None:
        self.collection, self.transform, self.start = collection, transform, start

    def __len__(self) -> int:
        return len(self.collection) - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.start + i
        return self.transform(self.collection.load(self.collection.items[row])), row


def items_table(collection: Collection) -> str:
    """``items.csv``'s text: ``index,path,label`` per row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "path", "label"])
    writer.writerows(zip(range(len(collection)), collection.paths, collection.labels,
                         strict=True))
    return buf.getvalue()


def read_items(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(paths, labels)`` of an ``items.csv`` in ``folder``."""
    with open(Path(folder) / ITEMS, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["path"] for r in rows], [r["label"] for r in rows]


def embed_collection(
    checkpoint: str | os.PathLike,
    collection: Collection,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    chunk_size: int = 4096,
    batch_size: int = 256,
    workers: int = 0,
    device: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Write the collection's embeddings, table and marker into ``out_dir`` (see the module);
    returns ``out_dir``. ``progress``: a tqdm bar on stderr (default: when stderr is a TTY)."""
    from tqdm import tqdm

    from dml.inference import load_embedder

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for name, value in (("--chunk-size", chunk_size), ("--batch-size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    embedder = load_embedder(checkpoint, device=device, batch_size=batch_size)
    dim = int(embedder.net.embedding_dim)
    table = items_table(collection)
    meta = {
        "checkpoint": os.fspath(Path(checkpoint).resolve()),
        "dim": dim,
        "dtype": dtype,
        "count": len(collection),
        "items_sha256": hashlib.sha256(table.encode()).hexdigest(),
    }
    out = Path(out_dir)
    done = _resume_point(out, meta)
    if done == len(collection):
        return out
    if done == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / ITEMS, table)
        np.lib.format.open_memmap(out / EMBEDDINGS, "w+", DTYPES[dtype], (len(collection), dim))
        _mark(out, meta, 0)
    loader = DataLoader(_Images(collection, embedder.transform, done), batch_size=batch_size,
                        num_workers=workers)
    rows = np.lib.format.open_memmap(out / EMBEDDINGS, "r+")
    bar = tqdm(total=len(collection), initial=done, file=sys.stderr, unit="img",
               disable=not (sys.stderr.isatty() if progress is None else progress))
    pending = 0
    with torch.no_grad(), bar:
        for images, index in loader:
            z = embedder.net(images.to(embedder.device)).float().cpu().numpy()
            rows[int(index[0]) : int(index[-1]) + 1] = z
            pending += len(z)
            bar.update(len(z))
            if pending >= chunk_size or int(index[-1]) + 1 == len(collection):
                rows.flush()
                _mark(out, meta, int(index[-1]) + 1)
                pending = 0
    del rows
    return out


def _resume_point(out: Path, meta: dict[str, Any]) -> int:
    """Rows already written by an earlier run of the same job into ``out`` (0: none)."""
    if not (out / META).is_file():
        return 0
    old = json.loads((out / META).read_text())
    if {k: old.get(k) for k in meta} != meta:
        changed = ", ".join(k for k in meta if old.get(k) != meta[k])
        raise ConfigError(
            f"--out {out} holds embeddings of another job (differs in {changed}): pass another "
            "--out or delete the folder"
        )
    return int(old["done"])


def _mark(out: Path, meta: dict[str, Any], done: int) -> None:
    write_text_atomic(out / META, json.dumps({**meta, "done": done}, indent=2) + "\n")
