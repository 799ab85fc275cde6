"""CUB-200-2011 (Wah et al., Caltech-UCSD Birds 200-2011) as a zero-shot DML dataset.

Standard split (Oh Song et al., CVPR 2016): classes 1–100 (5,864 images) train, classes 101–200
(5,924 images) test.
"""

from __future__ import annotations

import os

from dml.data.listfile import read_rows, require_images, split_by_class_id, unique_ids
from dml.data.records import Record
from dml.data.source import DatasetSource, data_root

LAYOUT = (
    "<root>/images.txt ('<image_id> <class_folder>/<file>.jpg'), "
    "<root>/image_class_labels.txt ('<image_id> <class_id>'), <root>/classes.txt "
    "('<class_id> <class_name>') and <root>/images/<class_folder>/<file>.jpg: the "
    "CUB_200_2011/ folder of the official archive"
)
LAST_TRAIN_CLASS = 100


class CUB200(DatasetSource):
    """CUB-200-2011 read from the official files.

    Expected layout (the ``CUB_200_2011/`` folder of ``CUB_200_2011.tgz``)::

        <root>/images.txt               <image_id> <class_folder>/<file>.jpg
        <root>/image_class_labels.txt   <image_id> <class_id>        (1..200)
        <root>/classes.txt              <class_id> <class_name>
        <root>/images/<class_folder>/<file>.jpg

    Classes with id <= 100 train, the others test; a record's label is the class name. Every
    image needs exactly one label, every label a class, and every listed image must exist.
    ``root`` defaults to ``$DML_DATA_DIR/cub200``.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = data_root(root, "cub200")

    def splits(self) -> dict[str, list[Record]]:
        images = unique_ids(
            read_rows(self.root / "images.txt", ("image_id", "path"), LAYOUT), 0, "image_id"
        )
        labels = unique_ids(
            read_rows(
                self.root / "image_class_labels.txt", ("image_id", "class_id"), LAYOUT
            ),
            0,
            "image_id",
        )
        classes = unique_ids(
            read_rows(self.root / "classes.txt", ("class_id", "class_name"), LAYOUT),
            0,
            "class_id",
        )
        records, class_ids = [], []
        for image_id, row in images.items():
            label_row = labels.get(image_id)
            if label_row is None:
                raise row.error(f"image {image_id} has no line in image_class_labels.txt")
            class_id = label_row.int(1, "class_id")
            if class_id not in classes:
                raise label_row.error(f"class {class_id} is not in classes.txt")
            records.append(
                Record(str(self.root / "images" / row.fields[1]), classes[class_id].fields[1])
            )
            class_ids.append(class_id)
        unlabelled = labels.keys() - images.keys()
        if unlabelled:
            row = labels[min(unlabelled)]
            raise row.error(f"image {min(unlabelled)} is not in images.txt")
        require_images(records, self.root / "images.txt")
        return split_by_class_id(records, class_ids, LAST_TRAIN_CLASS)
