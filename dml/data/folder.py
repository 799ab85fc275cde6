"""Generic DML datasets on disk: an image folder, or a CSV of ``path,label,split``."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from dml.data.listfile import require_images
from dml.data.records import Record
from dml.data.source import DatasetSource
from dml.errors import DatasetError

CSV_HINT = (
    "fix the paths, or set data.source.image_root=DIR to the folder relative paths start from; "
    "default: the CSV's folder"
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def scan_class_folders(root: Path) -> list[Record]:
    """Records of ``root/<class>/<image>``; an empty class folder is an error."""
    if not root.is_dir():
        raise DatasetError(
            f"image folder not found: {root} (expected <root>/<class>/<image>): "
            "set data.source.root=PATH"
        )
    records = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"empty class folder {cls}: add images or remove the folder")
        records += [Record(str(p), cls.name) for p in images]
    if not records:
        raise DatasetError(f"no class folders with images under {root}")
    return records


class ImageFolder(DatasetSource):
    """Images in class folders. Layout, either

    - ``root/train/<class>/<image>`` and ``root/test/<class>/<image>`` (optionally ``root/val``), or
    - ``root/<class>/<image>``: the sorted classes are split class-disjointly, the first
      ``1 - test_fraction`` of them for training and the rest for testing (the CUB/Cars convention).
    """

    def __init__(self, root: str | os.PathLike, test_fraction: float = 0.5) -> None:
        self.root = Path(root).expanduser()
        self.test_fraction = test_fraction

    def splits(self) -> dict[str, list[Record]]:
        named = {s: self.root / s for s in ("train", "val", "test") if (self.root / s).is_dir()}
        if "train" in named and "test" in named:
            return {s: scan_class_folders(p) for s, p in named.items()}
        records = scan_class_folders(self.root)
        classes = sorted({r.label for r in records})
        n_train = round(len(classes) * (1 - self.test_fraction))
        if not 0 < n_train < len(classes):
            raise DatasetError(
                f"{self.root}: {len(classes)} classes cannot be split with "
                f"data.source.test_fraction={self.test_fraction}: set it so that both train "
                "and test get at least one class"
            )
        train = set(classes[:n_train])
        return {
            "train": [r for r in records if r.label in train],
            "test": [r for r in records if r.label not in train],
        }


class CSVImages(DatasetSource):
    """A CSV file with header ``path,label,split`` (split in train/val/test/query/gallery); relative
    paths are resolved against ``image_root`` (default: the CSV's folder)."""

    SPLITS = frozenset({"train", "val", "test", "query", "gallery"})

    def __init__(self, csv_path: str | os.PathLike, image_root: str | os.PathLike | None = None):
        self.csv_path = Path(csv_path).expanduser()
        self.image_root = Path(image_root).expanduser() if image_root else self.csv_path.parent

    def splits(self) -> dict[str, list[Record]]:
        out = self._read()
        check_csv_splits(self.csv_path, out)
        require_images((r for records in out.values() for r in records), self.csv_path, CSV_HINT)
        return out

    def _read(self) -> dict[str, list[Record]]:
        if not self.csv_path.is_file():
            raise DatasetError(
                f"CSV not found: {self.csv_path} (expected columns path,label,split): "
                "set data.source.csv_path=FILE"
            )
        out: dict[str, list[Record]] = {}
        with open(self.csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if not {"path", "label", "split"} <= set(reader.fieldnames or ()):
                raise DatasetError(
                    f"{self.csv_path}:1: header must contain path,label,split; "
                    f"got {reader.fieldnames}"
                )
            for line, row in enumerate(reader, start=2):
                split = (row["split"] or "").strip()
                if split not in self.SPLITS or not row["path"] or not row["label"]:
                    raise DatasetError(
                        f"{self.csv_path}:{line}: bad row {row} (split must be one of "
                        f"{sorted(self.SPLITS)}, path and label non-empty)"
                    )
                path = Path(row["path"])
                path = path if path.is_absolute() else self.image_root / path
                out.setdefault(split, []).append(Record(str(path), row["label"].strip()))
        return out


def check_csv_splits(csv_path: Path, splits: dict[str, list[Record]]) -> None:
    """The CSV has train rows, and test rows or both query and gallery rows (a lone query or
    gallery split would silently be evaluated leave-one-out)."""
    if "train" not in splits:
        raise DatasetError(f"{csv_path}: no train rows: add rows with split train")
    if ("query" in splits) != ("gallery" in splits):
        present, absent = ("query", "gallery") if "query" in splits else ("gallery", "query")
        raise DatasetError(
            f"{csv_path}: {present} rows but no {absent} rows: add rows with split {absent}, "
            f"or make the {present} rows split test"
        )
    if "test" not in splits and "query" not in splits:
        raise DatasetError(
            f"{csv_path}: no test rows: add rows with split test, or query and gallery"
        )
