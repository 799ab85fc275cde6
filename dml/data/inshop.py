"""In-Shop Clothes Retrieval (DeepFashion, Liu et al., CVPR 2016) as a zero-shot DML dataset.

Standard split from ``list_eval_partition.txt``: 3,997 *train* items (25,882 images); the 3,985
test items are evaluated as *query* (14,218 images) → *gallery* (12,612 images), apart.
"""

from __future__ import annotations

import os
from pathlib import Path

from dml.data.listfile import Row, read_rows, require_images
from dml.data.records import Record
from dml.data.source import DatasetSource, data_root
from dml.errors import DatasetError

COLUMNS = ("image_name", "item_id", "evaluation_status")
STATUSES = ("train", "query", "gallery")
LIST_FILE = "list_eval_partition.txt"
LAYOUT = (
    f"<root>/Eval/{LIST_FILE} (line 1: the number of images, line 2: the header "
    "'image_name item_id evaluation_status', then one image per line) and <root>/Img/img/...: "
    f"the official Eval/ and Img/ folders (or {LIST_FILE} and img/ directly in <root>)"
)


class InShop(DatasetSource):
    """In-Shop Clothes read from the official evaluation partition.

    Expected layout (the benchmark's ``Eval/`` folder and ``Img/img.zip`` extracted in place)::

        <root>/Eval/list_eval_partition.txt   line 1: N; line 2: image_name item_id
                                               evaluation_status; then N rows
        <root>/Img/img/<GENDER>/<category>/<item_id>/<file>.jpg
                                               (image_name, e.g. img/WOMEN/..., relative to Img/)

    A flat copy (``<root>/list_eval_partition.txt`` and ``<root>/img/...``) is accepted too.
    Splits: ``train``, and ``query`` / ``gallery`` (evaluated apart: each query searches the
    gallery). A record's label is the item id; train items must not reappear in query/gallery.
    ``root`` defaults to ``$DML_DATA_DIR/inshop``.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = data_root(root, "inshop")

    def _list_file(self) -> Path:
        official = self.root / "Eval" / LIST_FILE
        flat = self.root / LIST_FILE
        return flat if flat.is_file() and not official.is_file() else official

    def splits(self) -> dict[str, list[Record]]:
        list_file = self._list_file()
        rows = read_rows(list_file, COLUMNS, LAYOUT, header=COLUMNS, skip=1)
        check_count(list_file, len(rows))
        image_root = self.root / "Img" if (self.root / "Img").is_dir() else self.root
        train_items = {row.fields[1] for row in rows if row.fields[2] == "train"}
        out: dict[str, list[Record]] = {s: [] for s in STATUSES}
        first_seen: dict[str, Row] = {}
        for row in rows:
            name, item, status = row.fields
            if status not in out:
                raise row.error(f"evaluation_status must be one of {STATUSES}, got {status!r}")
            if status != "train" and item in train_items:
                raise row.error(f"{status} item {item} is also a train item")
            if name in first_seen:
                raise row.error(f"image {name} repeats line {first_seen[name].line}")
            first_seen[name] = row
            out[status].append(Record(str(image_root / name), item))
        for status in STATUSES:
            if not out[status]:
                raise DatasetError(f"{list_file} has no '{status}' images; layout: {LAYOUT}")
        require_images([r for recs in out.values() for r in recs], list_file)
        return out


def check_count(list_file: Path, n_rows: int) -> None:
    """Line 1 of the partition file states the number of images; it must match the rows."""
    with open(list_file, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    if not first.isdigit() or int(first) != n_rows:
        raise DatasetError(
            f"{list_file}:1: expected the number of images ({n_rows} rows follow), got {first!r}"
        )
