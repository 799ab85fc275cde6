"""Fetching and unpacking dataset archives: atomic, checksummed, with offline-friendly errors."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from dml.errors import DatasetError


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
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {url} ({e}); if this machine is offline, copy the file to {dest} "
            "by hand"
        ) from None
    if md5 is not None and (got := md5sum(tmp)) != md5:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
    os.replace(tmp, dest)
    return dest


def extract_once(archive: Path, dest: Path) -> Path:
    """Unpack the zip ``archive`` into ``dest`` unless a finished unpacking of the same archive is
    already there. Unpacks into a temporary sibling and renames it, so an interrupted run never
    leaves a half-extracted folder that looks complete."""
    stamp = f"{archive.name} {archive.stat().st_size} {int(archive.stat().st_mtime)}\n"
    marker = dest / ".extracted"
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
    except (zipfile.BadZipFile, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(
            f"cannot unpack {archive}: {e} (the archive is corrupt; replace it)"
        ) from None
    (tmp / ".extracted").write_text(stamp)
    if dest.exists():
        shutil.rmtree(dest)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
