"""Fetching and unpacking dataset archives: atomic, checksummed, with offline-friendly errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import urllib.request
import zipfile
import zlib
from pathlib import Path

from dml.errors import DatasetError
from dml.files import locked, temporary_sibling, write_atomic
from dml.progress import progress_bar


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def archive_fingerprint(path: Path) -> list:
    """What identifies an archive's content: its path, size, modification time (ns) and MD5.
    Its unpacked copy (:func:`extract_once`) and the tensor cache built from it
    (:meth:`dml.data.omniglot.Omniglot.fingerprint`) are both keyed on it, so a changed archive
    gets a new unpacked folder and a new tensor cache, even if its size and time were kept."""
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns, md5sum(path)]


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
    """The folder holding the zip ``archive`` unpacked: ``dest.<key>``, named by the archive's
    fingerprint (:func:`extraction_key`), unpacked unless a finished unpacking is already there.

    Each fingerprint has its own folder, so unpacking a changed archive (or one a dml version
    fingerprints differently) never touches a tree that another process is reading; the older
    folders stay until someone deletes them. A folder is unpacked into a temporary sibling and
    renamed when complete, so an interrupted run never leaves a half-extracted folder that looks
    complete. Processes extracting into ``dest`` at once take turns on a lock file next to it:
    one unpacks, the others reuse its result."""
    stamp = json.dumps(archive_fingerprint(archive)) + "\n"
    target = dest.with_name(f"{dest.name}.{extraction_key(stamp)}")
    if is_extracted(target, stamp):
        return target
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.with_name(f".{dest.name}.lock")):
        if not is_extracted(target, stamp):  # another process may have finished meanwhile
            tmp = temporary_sibling(target)
            try:
                unzip(archive, tmp)
                (tmp / ".extracted").write_text(stamp)
                if target.exists():  # not a finished unpacking of this archive: no one reads it
                    shutil.rmtree(target)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def extraction_key(stamp: str) -> str:
    """The name of an archive's unpacked folder, from its fingerprint ``stamp``: 16 hex digits of
    its SHA-256."""
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def is_extracted(dest: Path, stamp: str) -> bool:
    """``dest`` holds a finished unpacking of the archive ``stamp`` describes."""
    marker = dest / ".extracted"
    return marker.is_file() and marker.read_text() == stamp


#: Bounds on unpacking an archive, so that a zip bomb cannot fill the disk: the total size of its
#: members, and each member's ratio of unpacked to compressed bytes (Omniglot's images: at most
#: 1.13); a member of up to ``SMALL_MEMBER`` bytes may compress better (a text file).
MAX_UNPACKED_BYTES = 64 * 2**30
MAX_RATIO = 100
SMALL_MEMBER = 1 << 20


def unzip(archive: Path, dest: Path) -> None:
    """Extract every member of ``archive`` into ``dest``, within the bounds above: checked on the
    central directory before anything is written, and again on the bytes as they are written (a
    header may lie). Member paths stay inside ``dest``. A corrupt archive (bad zip structure, a
    broken deflate stream, a CRC mismatch) or one beyond the bounds raises a
    :class:`DatasetError` naming it."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            allowed = member_bounds(archive, z)
            need, free = sum(allowed.values()), shutil.disk_usage(dest.parent).free
            if need > free:
                raise DatasetError(f"cannot unpack {archive}: it needs {need:,} bytes and "
                                   f"{dest.parent} has {free:,} free")
            dest.mkdir(parents=True)
            for info in progress_bar(z.infolist(), f"unpacking {archive.name}", unit="file"):
                target = dest.joinpath(*member_parts(info.filename))
                if target == dest:
                    continue
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    copy_member(archive, z, info, target, allowed[info.header_offset])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DatasetError(
            f"cannot unpack {archive}: {e} (the archive is corrupt; replace it)"
        ) from None


def member_parts(name: str) -> list[str]:
    """The path components a member is written to, relative to the destination: no absolute
    path, no ``..`` (as ``zipfile``'s own extraction does)."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]


def member_bounds(archive: Path, z: zipfile.ZipFile) -> dict[int, int]:
    """The most bytes each member (by header offset) may unpack to; a :class:`DatasetError`
    naming ``archive`` if its central directory declares more than the bounds allow. A member's
    compressed size is also bounded by where the next member starts in the file, so that a
    header overstating it does not buy a larger allowance."""
    infos = z.infolist()
    total = sum(i.file_size for i in infos)
    if total > MAX_UNPACKED_BYTES:
        raise DatasetError(
            f"refusing to unpack {archive}: its members unpack to {total:,} bytes, more than "
            f"the {MAX_UNPACKED_BYTES:,} that dml.data.archive.MAX_UNPACKED_BYTES allows"
        )
    starts = [*sorted({i.header_offset for i in infos}), archive.stat().st_size]
    room = {a: b - a for a, b in itertools.pairwise(starts)}
    allowed = {}
    for info in infos:
        packed = min(info.compress_size, room.get(info.header_offset, 0))
        allowed[info.header_offset] = max(MAX_RATIO * packed, SMALL_MEMBER)
        if info.file_size > allowed[info.header_offset]:
            raise DatasetError(
                f"refusing to unpack {archive}: member {info.filename} unpacks to "
                f"{info.file_size:,} bytes from {packed:,} (more than dml.data.archive.MAX_RATIO"
                f"={MAX_RATIO} times; a zip bomb?)"
            )
        allowed[info.header_offset] = min(allowed[info.header_offset], info.file_size)
    return allowed


def copy_member(
    archive: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, allowed: int
) -> None:
    """Unpack one member to ``target``, stopping with a :class:`DatasetError` as soon as it
    yields more than ``allowed`` bytes (:func:`member_bounds`). (CPython's ``zipfile`` itself
    stops at the declared size and then fails its CRC check; this bound does not rely on it.)"""
    written = 0
    with z.open(info) as src, open(target, "wb") as out:
        while block := src.read(1 << 20):
            written += len(block)
            if written > allowed:
                raise DatasetError(
                    f"refusing to unpack {archive}: member {info.filename} unpacks to more "
                    f"than the {allowed:,} bytes its header and size allow (a zip bomb?)"
                )
            out.write(block)
