"""The images to embed: a folder, a CSV, or a split of a dataset config, as one list of items."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dml.data.folder import IMAGE_SUFFIXES
from dml.data.image_io import load_image
from dml.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class Collection:
    """``paths[i]`` (what the table shows) and ``labels[i]`` (``""`` when unknown) of each image;
    ``load(items[i])`` opens it."""

    items: Sequence[Any]
    paths: list[str]
    labels: list[str]
    load: Callable[[Any], Image.Image]

    def __len__(self) -> int:
        return len(self.items)


def _load_rgb(path: Any) -> Image.Image:
    return load_image(path, "RGB")  # the eval transform converts to its own channels


def from_folder(root: str | os.PathLike) -> Collection:
    """Every image file under ``root`` (recursively, sorted); the label of ``root/<c>/...`` is
    ``c``, of an image directly in ``root`` empty."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--images {root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and
                   p.is_file())
    if not files:
        raise DatasetError(
            f"--images {root}: no image files in it ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    paths = [str(p) for p in files]
    labels = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else ""
              for p in files]
    return Collection(paths, paths, labels, _load_rgb)


def from_csv(csv_path: str | os.PathLike) -> Collection:
    """The rows of a CSV with a ``path`` column (relative to the CSV's folder) and optionally a
    ``label`` column."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"--csv {csv_path}: file not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or ()):
            raise DatasetError(f"--csv {csv_path}:1: needs a path column, got {reader.fieldnames}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"--csv {csv_path}: no rows")
    paths = [str(p if (p := Path(r["path"])).is_absolute() else csv_path.parent / p)
             for r in rows]
    labels = [(r.get("label") or "").strip() for r in rows]
    return Collection(paths, paths, labels, _load_rgb)


def from_data_config(overrides: Sequence[str], split: str) -> Collection:
    """The ``split`` records of the dataset that ``data=<name>`` (composed from dml's ``conf/``,
    with the other overrides) names, opened by its source. Splits are the source's own: a
    validation split carved from the training classes by ``data.val_holdout`` is not one."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from dml.cli.train import CONFIG_DIR

    if not any(o.startswith("data=") for o in overrides):
        raise ConfigError("name the dataset with data=<name> (a config of conf/data)")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    source = instantiate(cfg.data.source)
    splits = source.splits()
    if split not in splits:
        raise ConfigError(f"--split {split}: the dataset has the splits {', '.join(splits)}")
    records = splits[split]
    paths = [str(r.item) for r in records]
    return Collection([r.item for r in records], paths, [r.label for r in records], source.load)
