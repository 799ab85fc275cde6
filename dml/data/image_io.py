"""Image loading with errors that name the file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dml.data.records import Record
from dml.errors import DatasetError


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open ``path`` and convert it to ``mode`` ("RGB" or "L"); a corrupt or unreadable file raises
    a :class:`DatasetError` naming it."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"cannot read image {path}: {e.__class__.__name__}: {e} "
            "(the file is corrupt or not an image; replace or remove it)"
        ) from None


def check_headers(records: Iterable[Record]) -> None:
    """Every image file of ``records`` has a header an image reader accepts (PIL reads the header
    only, no pixels); else a :class:`DatasetError` naming the first bad files. Records whose item
    is not a file path (a synthetic index) are skipped; a ``(path, quarter_turns)`` item is its
    path."""
    bad, count = [], 0
    for record in records:
        item = record.item[0] if isinstance(record.item, tuple) else record.item
        if not isinstance(item, (str, Path)):
            continue
        try:
            with Image.open(item):
                pass
        except FileNotFoundError:
            reason = "not found"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            reason = type(e).__name__
        else:
            continue
        count += 1
        if len(bad) < 3:
            bad.append(f"{item} ({reason})")
    if bad:
        more = f" and {count - len(bad)} more" if count > len(bad) else ""
        raise DatasetError(f"{count} listed file(s) cannot be read as images: {', '.join(bad)}"
                           f"{more} (replace or remove them)")
