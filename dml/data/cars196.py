"""Cars196 (Krause et al., Stanford Cars, 3DRR 2013) as a zero-shot DML dataset.

Standard split (Oh Song et al., CVPR 2016): classes 1–98 (8,054 images) train, classes 99–196
(8,131 images) test; the dataset's own train/test flag is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dml.data.listfile import require_file, require_images, split_by_class_id
from dml.data.records import Record
from dml.data.source import DatasetSource, data_root
from dml.errors import DatasetError

LAYOUT = (
    "<root>/cars_annos.mat (struct array 'annotations' with fields relative_im_path and class) "
    "and <root>/car_ims/<file>.jpg, as in the official car_ims.tgz + cars_annos.mat"
)
LAST_TRAIN_CLASS = 98
FIELDS = ("relative_im_path", "class")


def load_annotations(path: Path) -> list[tuple[str, int]]:
    """``(relative_im_path, class)`` of every entry of ``annotations`` in ``cars_annos.mat``;
    a malformed entry raises ``<file>: annotation <n>: ...`` (n counts from 1, as in MATLAB)."""
    from scipy.io import loadmat  # lazy: only this dataset needs scipy.io

    require_file(path, LAYOUT)
    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises ValueError, MatReadError, OSError... for bad files
        raise DatasetError(f"{path}: not a readable MATLAB file ({e}); layout: {LAYOUT}") from None
    if "annotations" not in mat:
        raise DatasetError(f"{path}: no variable 'annotations'; layout: {LAYOUT}")
    annotations = np.atleast_1d(mat["annotations"])
    names = annotations.dtype.names or ()
    missing = [f for f in FIELDS if f not in names]
    if missing:
        raise DatasetError(f"{path}: 'annotations' lacks field(s) {missing}; has {list(names)}")
    out = []
    for n, entry in enumerate(annotations, start=1):
        image, label = entry["relative_im_path"], entry["class"]
        where = f"{path}: annotation {n}"
        if not isinstance(image, str) or not image:
            raise DatasetError(f"{where}: relative_im_path is not a path: {image!r}")
        if not isinstance(label, (int, np.integer)) or label < 1:
            raise DatasetError(f"{where}: class is not a positive integer: {label!r}")
        out.append((image, int(label)))
    if not out:
        raise DatasetError(f"{path}: 'annotations' is empty; layout: {LAYOUT}")
    return out


class Cars196(DatasetSource):
    """Cars196 read from the official files.

    Expected layout::

        <root>/cars_annos.mat     struct array ``annotations`` (relative_im_path, class, ...)
        <root>/car_ims/<file>.jpg  (relative_im_path is relative to <root>: car_ims/000001.jpg)

    Classes with id <= 98 train, the others test; a record's label is the class id.
    ``root`` defaults to ``$DML_DATA_DIR/cars196``.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = data_root(root, "cars196")

    def splits(self) -> dict[str, list[Record]]:
        annotations = load_annotations(self.root / "cars_annos.mat")
        records = [Record(str(self.root / image), f"{c:03d}") for image, c in annotations]
        require_images(records, self.root / "cars_annos.mat")
        return split_by_class_id(records, [c for _, c in annotations], LAST_TRAIN_CLASS)
