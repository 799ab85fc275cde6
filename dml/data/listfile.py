"""The list files of the benchmark datasets: whitespace-separated columns, errors naming file:line.

Shared by the CUB-200-2011, Cars196, Stanford Online Products and In-Shop sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dml.data.records import Record
from dml.errors import DatasetError

MAX_LISTED_MISSING = 3
ROOT_HINT = "incomplete extraction, or data.source.root points at the wrong folder?"


def require_file(path: Path, layout: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetError` naming it and the expected layout."""
    if not path.is_file():
        raise DatasetError(f"missing file {path}; expected layout: {layout}")
    return path


@dataclass(frozen=True)
class Row:
    """One non-empty line of a list file: its fields and where it came from."""

    path: Path
    line: int
    fields: tuple[str, ...]

    def error(self, message: str) -> DatasetError:
        return DatasetError(f"{self.path}:{self.line}: {message}")

    def int(self, column: int, name: str) -> int:
        """Field ``column`` as an integer (``name`` is the column's name, for the error)."""
        try:
            return int(self.fields[column])
        except ValueError:
            raise self.error(f"{name} must be an integer, got {self.fields[column]!r}") from None


def read_rows(
    path: Path,
    columns: Sequence[str],
    layout: str,
    header: Sequence[str] | None = None,
    skip: int = 0,
) -> list[Row]:
    """The rows of a whitespace-separated list file with the given ``columns``.

    The first ``skip`` lines are ignored; ``header``: the exact fields expected on the next line
    (None: no header line). Blank lines are skipped; a line with another number of fields raises
    ``path:line: ...``.
    """
    require_file(path, layout)
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, start=1):
            fields = tuple(text.split())
            if number <= skip:
                continue
            if number == skip + 1 and header is not None:
                if fields != tuple(header):
                    raise DatasetError(
                        f"{path}:{number}: expected the header '{' '.join(header)}', "
                        f"got {text.strip()!r}"
                    )
                continue
            if not fields:
                continue
            if len(fields) != len(columns):
                raise DatasetError(
                    f"{path}:{number}: expected {len(columns)} fields ({' '.join(columns)}), "
                    f"got {len(fields)}: {text.strip()!r}"
                )
            rows.append(Row(path, number, fields))
    if not rows:
        raise DatasetError(f"{path} lists no images; expected layout: {layout}")
    return rows


def unique_ids(rows: Iterable[Row], column: int, name: str) -> dict[int, Row]:
    """``{id: row}`` of an integer id column; a repeated id raises at its second occurrence."""
    out: dict[int, Row] = {}
    for row in rows:
        key = row.int(column, name)
        if key in out:
            raise row.error(f"{name} {key} repeats line {out[key].line}")
        out[key] = row
    return out


def require_images(records: Iterable[Record], listed_in: Path, hint: str = ROOT_HINT) -> None:
    """Every record's image file exists; else one error counting the missing ones, naming a few
    and the list file that names them, then ``hint`` (the likely cause or the fix)."""
    missing = [r.item for r in records if not Path(r.item).is_file()]
    if missing:
        shown = ", ".join(str(m) for m in missing[:MAX_LISTED_MISSING])
        rest = len(missing) - MAX_LISTED_MISSING
        more = f" and {rest} more" if rest > 0 else ""
        raise DatasetError(
            f"{len(missing)} image(s) listed in {listed_in} not found: {shown}{more} ({hint})"
        )


def split_by_class_id(
    records: Sequence[Record], class_ids: Sequence[int], last_train_id: int
) -> dict[str, list[Record]]:
    """The zero-shot convention of CUB-200-2011 and Cars196: classes with id ``<= last_train_id``
    train, the others test. ``class_ids[i]`` is the class id of ``records[i]``."""
    return {
        "train": [r for r, c in zip(records, class_ids, strict=True) if c <= last_train_id],
        "test": [r for r, c in zip(records, class_ids, strict=True) if c > last_train_id],
    }
