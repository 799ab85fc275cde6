"""Stanford Online Products (Oh Song et al., CVPR 2016) as a zero-shot DML dataset.

Standard split: ``Ebay_train.txt`` (11,318 classes, 59,551 images) trains, ``Ebay_test.txt``
(11,316 classes, 60,502 images) tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from dml.data.listfile import Row, read_rows, require_images, unique_ids
from dml.data.records import Record
from dml.data.source import DatasetSource, data_root
from dml.errors import DatasetError

COLUMNS = ("image_id", "class_id", "super_class_id", "path")
LAYOUT = (
    "<root>/Ebay_train.txt and <root>/Ebay_test.txt (header 'image_id class_id super_class_id "
    "path', then one image per line, path relative to <root>) and the image folders such as "
    "<root>/bicycle_final/: the Stanford_Online_Products/ folder of the official archive"
)
LIST_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}


class StanfordOnlineProducts(DatasetSource):
    """Stanford Online Products read from the official files.

    Expected layout (the ``Stanford_Online_Products/`` folder of the official zip)::

        <root>/Ebay_train.txt   image_id class_id super_class_id path   (header line, then rows)
        <root>/Ebay_test.txt    same columns
        <root>/<category>_final/<file>.JPG   (the ``path`` column, relative to <root>)

    A record's label is ``class_id``; train and test classes must be disjoint.
    ``root`` defaults to ``$DML_DATA_DIR/sop``.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = data_root(root, "sop")

    def _records(self, list_file: Path) -> tuple[list[Record], dict[str, Row]]:
        rows = unique_ids(read_rows(list_file, COLUMNS, LAYOUT, header=COLUMNS), 0, "image_id")
        records, first_row = [], {}
        for row in rows.values():
            label = str(row.int(1, "class_id"))
            row.int(2, "super_class_id")  # validated only: classes are the unit of the split
            first_row.setdefault(label, row)
            records.append(Record(str(self.root / row.fields[3]), label))
        require_images(records, list_file)
        return records, first_row

    def splits(self) -> dict[str, list[Record]]:
        (train, train_classes), (test, test_classes) = (
            self._records(self.root / LIST_FILES[s]) for s in ("train", "test")
        )
        shared = train_classes.keys() & test_classes.keys()
        if shared:
            row = test_classes[min(shared, key=int)]
            raise DatasetError(
                f"{row.path}:{row.line}: class {row.fields[1]} is also in {LIST_FILES['train']} "
                f"({len(shared)} shared classes): train and test classes must be disjoint"
            )
        return {"train": train, "test": test}
