"""A dataset source: knows a dataset's on-disk layout and lists its records per split."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from dml.data.image_io import load_image
from dml.data.records import Record
from dml.errors import DatasetError

DATA_DIR_ENV = "DML_DATA_DIR"
CACHE_DIR_ENV = "DML_CACHE_DIR"


def data_root(root: str | os.PathLike | None, name: str) -> Path:
    """The folder of dataset ``name``: ``root`` if given, else ``$DML_DATA_DIR/<name>``."""
    if root not in (None, ""):
        return Path(root).expanduser()
    base = os.environ.get(DATA_DIR_ENV)
    if not base:
        raise DatasetError(
            f"no location for dataset '{name}': set data.source.root=PATH or the environment "
            f"variable {DATA_DIR_ENV} (the folder that holds '{name}/')"
        )
    return Path(base).expanduser() / name


def cache_dir() -> Path:
    """Where derived files (extracted archives) go: ``$DML_CACHE_DIR`` or ``~/.cache/dml``,
    created if needed; one that is not a writable folder is a :class:`DatasetError`."""
    path = Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "dml")).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cache folder {path} cannot be created ({type(e).__name__}): set "
                           f"{CACHE_DIR_ENV} to a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DatasetError(f"cache folder {path} is not writable: set {CACHE_DIR_ENV} to a "
                           "writable folder")
    return path


class DatasetSource(ABC):
    """Lists the :class:`Record` s of each split of one dataset and opens their images.

    Subclasses implement :meth:`splits`. Split names: ``train``, optionally ``val``, and either
    ``test`` or the pair ``query``/``gallery`` (evaluated with query and gallery apart).
    """

    #: "RGB" or "L"; the transforms convert anyway, this only saves work for grey datasets.
    image_mode: str = "RGB"

    @abstractmethod
    def splits(self) -> dict[str, list[Record]]:
        """All records of every split this source provides."""

    def load(self, item: Any) -> Image.Image:
        """Open one record's image (default: ``item`` is a file path)."""
        return load_image(item, self.image_mode)

    def is_synthetic(self, record: Record) -> bool:
        """True for a record this source made up as an extra training class (Omniglot's rotated
        characters): validation carved from training keeps only the real ones, as test has."""
        return False

    def fingerprint(self, records: Sequence[Record]) -> list:
        """What changes when the bytes behind ``records`` change, for the tensor cache
        (:mod:`dml.data.tensor_cache`): ``[path, size, mtime_ns, inode, ctime_ns]`` of every file
        a record's item names (a path, or the paths inside a tuple item; inode and ctime catch a
        same-size file put in place with its old mtime, as ``cp -p`` or ``rsync -a`` do); a
        missing file gives ``[path, None, None, None, None]``, so the cache is rebuilt and the
        build names the file. Sources whose images are not files override this."""
        out = []
        for r in records:
            for path in item_paths(r.item):
                try:
                    st = os.stat(path)
                    out.append([path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns])
                except OSError:
                    out.append([path, None, None, None, None])
        return out


def item_paths(item: Any) -> list[str]:
    """The file paths a record item names: itself if it is a path, its path members if a tuple."""
    if isinstance(item, (str, os.PathLike)):
        return [os.fspath(item)]
    if isinstance(item, tuple):
        return [p for member in item for p in item_paths(member)]
    return []
