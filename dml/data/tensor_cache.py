"""A decoded tensor cache: each image of a split decoded and resized once into one uint8 tensor.

For datasets whose training images are small (Omniglot at 28 px: ~25 MB for all its splits), the
per-step PNG decode, resize and PIL augmentation cost more than the model. With ``data.cache=true``
:class:`dml.data.DMLDataModule` calls :func:`cached_images` per split: the deterministic head of
the transform (:meth:`TransformParams.decode`) runs once per image and the result, an
``N×C×H×W`` uint8 tensor, is saved under ``$DML_CACHE_DIR/tensors`` (default
``~/.cache/dml/tensors``; never in the data folder, which may be read-only).

A cache file's *name* is a hash of what the images are meant to be (source class and settings,
split, the records in order, the decode settings), so two configurations keep two files. Inside,
it also stores a *fingerprint* of the bytes behind them (:meth:`DatasetSource.fingerprint`: size
and modification time of every image file, the Omniglot archives' MD5): a file whose fingerprint
no longer matches (the dataset changed on disk) is stale and is rebuilt, never used. So is a
file that cannot be read (corrupt, truncated, foreign). Files are written atomically (temporary
sibling + rename) under a lock, so concurrent runs (DDP ranks, sweep jobs) build a cache once and
never read a half-written one. A corrupt or missing image fails the build with the one-line
:class:`DatasetError` naming it, exactly as the PIL path fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dml.data.records import Record
from dml.data.source import DatasetSource, cache_dir
from dml.data.transforms import TransformParams
from dml.errors import ConfigError
from dml.files import locked, write_atomic
from dml.progress import progress_bar

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the file layout or the decode semantics change


def describe(value: Any) -> Any:
    """``value`` as plain JSON data (paths and unknown objects as strings), for hashing."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return f"<{type(value).__qualname__}>"


def cache_identity(
    source: DatasetSource, split: str, records: Sequence[Record], params: TransformParams
) -> dict[str, Any]:
    """What the cached images are meant to be: source class and settings (its public,
    non-callable attributes), split, records (item and label, in order) and decode settings. Its
    hash names the cache file."""
    settings = {k: v for k, v in vars(source).items() if not k.startswith("_") and not callable(v)}
    records_hash = hashlib.sha256(
        json.dumps([[describe(r.item), r.label] for r in records]).encode()
    ).hexdigest()
    return {
        "format": FORMAT,
        "source": type(source).__module__ + "." + type(source).__qualname__,
        "settings": describe(settings),
        "split": split,
        "records": records_hash,
        "count": len(records),
        "decode": params.decode_spec(),
    }


def cache_path(identity: dict[str, Any], root: Path | None = None) -> Path:
    """``<root>/tensors/<Source>-<split>-<hash of identity>.pt`` (root: ``$DML_CACHE_DIR``)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    name = identity["source"].rsplit(".", 1)[-1]
    return (root or cache_dir()) / "tensors" / f"{name}-{identity['split']}-{digest}.pt"


def cached_images(
    source: DatasetSource,
    split: str,
    records: Sequence[Record],
    params: TransformParams,
    root: Path | None = None,
) -> torch.Tensor:
    """The ``N×C×H×W`` uint8 images of ``records`` decoded by ``params``: read from the cache if
    a file with the same identity and fingerprint is there, else decoded (through
    ``source.load``, so bad images raise its one-line errors) and saved atomically."""
    identity = cache_identity(source, split, records, params)
    path = cache_path(identity, root)
    fingerprint = describe(source.fingerprint(records))
    images = _read(path, identity, fingerprint)
    if images is not None:
        return images
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_name(f".{path.name}.lock")):
        images = _read(path, identity, fingerprint)  # another process may have built it
        if images is None:
            images = decode_all(source, records, params)
            payload = {"identity": identity, "fingerprint": fingerprint, "images": images}
            write_atomic(path, lambda tmp: torch.save(payload, tmp))
    return images


def decode_all(
    source: DatasetSource, records: Sequence[Record], params: TransformParams
) -> torch.Tensor:
    """Decode every record with ``source.load`` and ``params.decode`` into one uint8 tensor."""
    arrays = []
    for r in progress_bar(records, "tensor cache: decoding images", unit="img"):
        array = params.decode(source.load(r.item))
        if arrays and array.shape != arrays[0].shape:  # Resize(int) keeps the aspect ratio
            raise ConfigError(
                f"{r.item} is {tuple(array.shape)} after resizing, the images before it "
                f"{tuple(arrays[0].shape)}: the tensor cache needs images of one shape; set "
                "data.cache=false"
            )
        arrays.append(array)
    if not arrays:
        side = params.resize if params.train else params.size
        return torch.zeros((0, params.channels, side, side), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays))


def _read(path: Path, identity: dict[str, Any], fingerprint: Any) -> torch.Tensor | None:
    """The cached images if ``path`` holds this identity and fingerprint, else None (missing,
    stale or unreadable: the caller rebuilds it; the reason is logged)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        images = payload["images"]
        ok = (
            isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.dim() == 4
            and len(images) == identity["count"]
        )
    except Exception as e:
        log.warning(
            "tensor cache %s is unreadable (%s: %s): rebuilding it", path, type(e).__name__, e
        )
        return None
    if not ok or payload.get("identity") != identity:
        log.warning("tensor cache %s does not hold the expected images: rebuilding it", path)
        return None
    if payload.get("fingerprint") != fingerprint:
        changed = changed_files(payload.get("fingerprint"), fingerprint)
        log.warning(
            "tensor cache %s is stale (the dataset changed on disk: %s): rebuilding it",
            path,
            f"{changed[0]} and {len(changed) - 1} more file(s)" if changed else "its file list",
        )
        return None
    return images


def changed_files(old: Any, new: Any) -> list[str]:
    """The paths whose fingerprint entries (lists ``[path, ...]``, nested in lists as
    :meth:`DatasetSource.fingerprint` makes them) differ between ``old`` and ``new``, in order;
    empty where the two differ in shape (files added or removed), which names no one file."""
    if not isinstance(old, list) or not isinstance(new, list) or len(old) != len(new):
        return []
    if new and isinstance(new[0], str):  # one file's entry
        return [] if old == new else [new[0]]
    return [path for o, n in zip(old, new, strict=True) for path in changed_files(o, n)]
