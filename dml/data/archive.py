"""Fetching and unpacking dataset archives: atomic, checksummed, with offline-friendly errors."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
import zlib
from pathlib import Path

from dml.errors import DatasetError
from dml.files import locked, temporary_sibling, write_atomic


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (via a temporary file renamed into place) and check its MD5.

    Without network access this raises a :class:`DatasetError` that says where to put the file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)

    def fetch(tmp: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise DatasetError(
                f"could not download {url} ({e}); if this machine is offline, copy the file to "
                f"{dest} by hand"
            ) from None
        if md5 is not None and (got := md5sum(tmp)) != md5:
            raise DatasetError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")

    write_atomic(dest, fetch)  # a failed or partial download never takes dest's name
    return dest


def extract_once(archive: Path, dest: Path) -> Path:
    """Unpack the zip ``archive`` into ``dest`` unless a finished unpacking of the same archive is
    already there. Unpacks into a temporary sibling and renames it, so an interrupted run never
    leaves a half-extracted folder that looks complete. Processes extracting the same ``dest``
    at once take turns on a lock file next to it: one unpacks, the others reuse its result."""
    stamp = f"{archive.name} {archive.stat().st_size} {int(archive.stat().st_mtime)}\n"
    if is_extracted(dest, stamp):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.with_name(f".{dest.name}.lock")):
        if not is_extracted(dest, stamp):  # another process may have finished meanwhile
            tmp = temporary_sibling(dest)
            try:
                unzip(archive, tmp)
                (tmp / ".extracted").write_text(stamp)
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def is_extracted(dest: Path, stamp: str) -> bool:
    """``dest`` holds a finished unpacking of the archive ``stamp`` describes."""
    marker = dest / ".extracted"
    return marker.is_file() and marker.read_text() == stamp


def unzip(archive: Path, dest: Path) -> None:
    """Extract every member of ``archive`` into ``dest``; a corrupt archive (bad zip structure,
    a broken deflate stream, a CRC mismatch) raises a :class:`DatasetError` naming it."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DatasetError(
            f"cannot unpack {archive}: {e} (the archive is corrupt; replace it)"
        ) from None
