"""Image loading with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

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
