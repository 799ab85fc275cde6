"""Omniglot (Lake et al., Science 2015) as a zero-shot DML dataset.

Train on the 964 *background* classes (30 alphabets), test on the 659 unseen *evaluation* classes
(20 alphabets). A class is ``alphabet/character``; its group (used to carve validation classes) is
the alphabet, so validation alphabets are disjoint from training alphabets.

Expected layout: ``<root>/images_background.zip`` and ``<root>/images_evaluation.zip``, the
official archives (``images_background/<Alphabet>/<characterNN>/<id>_<drawer>.png``). They are
unpacked once into ``$DML_CACHE_DIR/omniglot``, one folder per archive fingerprint
(:func:`dml.data.archive.extract_once`).

``merge_characters=M`` builds a high intra-class-variance variant: each class is the union of M
characters from M different alphabets of the same split (so train and test stay class-disjoint);
characters left over when fewer than M alphabets remain are dropped.

``train_rotations=4`` adds each training character rotated by 90°, 180° and 270° as three new
classes (the class augmentation of Vinyals et al. 2016 and Snell et al. 2017); validation
(carved from training by alphabet) and test classes are never rotated.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image

from dml.data.archive import archive_fingerprint, download, extract_once
from dml.data.image_io import load_image
from dml.data.records import Record
from dml.data.source import DatasetSource, cache_dir, data_root
from dml.errors import DatasetError

URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{}.zip"
MD5 = {  # official archives
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
SPLITS = {"train": "images_background", "test": "images_evaluation"}


class Omniglot(DatasetSource):
    image_mode = "L"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        download: bool = False,
        merge_characters: int = 1,
        merge_seed: int = 0,
        train_rotations: int = 1,
    ) -> None:
        if merge_characters < 1:
            raise DatasetError(
                f"data.source.merge_characters must be >= 1, got {merge_characters}: "
                "set it to 1 for the original classes"
            )
        if train_rotations not in (1, 2, 4):
            raise DatasetError(
                f"data.source.train_rotations must be 1, 2 or 4, got {train_rotations}: "
                "set it to 1 for no rotated classes"
            )
        self.root = data_root(root, "omniglot")
        self.download = download
        self.merge_characters = merge_characters
        self.merge_seed = merge_seed
        self.train_rotations = train_rotations

    def _archive(self, stem: str) -> Path:
        path = self.root / f"{stem}.zip"
        if path.is_file():
            return path
        if self.download:
            return download(URL.format(stem), path, MD5[stem])
        raise DatasetError(
            f"Omniglot archive not found: {path}: put images_background.zip and "
            "images_evaluation.zip there, set data.source.root=PATH to the folder that holds "
            "them (or DML_DATA_DIR=DIR with them in DIR/omniglot), or pass "
            "data.source.download=true on a machine with internet"
        )

    def _records(self, stem: str) -> list[Record]:
        folder = extract_once(self._archive(stem), cache_dir() / "omniglot" / stem) / stem
        if not folder.is_dir():
            raise DatasetError(f"{self.root / (stem + '.zip')} does not contain '{stem}/'")
        records = []
        for alphabet in sorted(p for p in folder.iterdir() if p.is_dir()):
            for char in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                images = sorted(char.glob("*.png"))
                if not images:
                    raise DatasetError(
                        f"empty class folder {char}: remove it or restore its images"
                    )
                label = f"{alphabet.name}/{char.name}"
                records += [Record(str(p), label, alphabet.name) for p in images]
        return records

    def splits(self) -> dict[str, list[Record]]:
        out = {split: self._records(stem) for split, stem in SPLITS.items()}
        if self.merge_characters > 1:
            out = {
                s: merge_classes(r, self.merge_characters, self.merge_seed) for s, r in out.items()
            }
        if self.train_rotations > 1:
            quarter_turns = range(0, 4, 4 // self.train_rotations)
            out["train"] = [
                Record((r.item, q), f"{r.label}@{90 * q}", r.group)
                for q in quarter_turns
                for r in out["train"]
            ]
        return out

    def fingerprint(self, records: list[Record]) -> list:
        """The extracted files' sizes and times (:meth:`DatasetSource.fingerprint`) and each
        archive's size, modification time and MD5: a changed archive invalidates the tensor cache
        (its new unpacking has new paths too)."""
        archives = []
        for stem in SPLITS.values():
            path = self.root / f"{stem}.zip"
            if path.is_file():
                archives.append(archive_fingerprint(path))
        return [archives, super().fingerprint(records)]

    def load(self, item: str | tuple[str, int]) -> Image.Image:
        """A file path, or ``(path, quarter_turns)`` for a rotated training class."""
        if isinstance(item, tuple):
            path, quarter_turns = item
            return load_image(path, self.image_mode).rotate(90 * quarter_turns)
        return load_image(item, self.image_mode)

    def is_synthetic(self, record: Record) -> bool:
        """A rotated character (``(path, quarter_turns)`` with turns > 0): a training class only."""
        return isinstance(record.item, tuple) and record.item[1] != 0

    @staticmethod
    def drawer(record: Record) -> str | None:
        """Who drew ``record``'s image (``"01"`` to ``"20"``): the ``<drawer>`` of its file name
        ``<id>_<drawer>.png``. None when its class is not one character drawn once per drawer:
        a merged class (no group) or a split with rotated classes (a tuple item, also for the
        unrotated copy). Used by the one-shot check
        (:mod:`dml.eval.oneshot`)."""
        if record.group is None or not isinstance(record.item, str):
            return None
        return Path(record.item).stem.rpartition("_")[2]


def merge_classes(records: list[Record], m: int, seed: int) -> list[Record]:
    """Relabel ``records`` so each new class unites ``m`` old classes from ``m`` distinct groups.

    Deterministic for a seed: repeatedly take one class from each of the ``m`` groups with the most
    classes left (random tie-break), which uses up groups evenly.
    """
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for r in records:
        pool = pools.setdefault(r.group_key, [])
        if r.label not in pool:
            pool.append(r.label)
    for pool in pools.values():
        rng.shuffle(pool)
    new_label: dict[str, str] = {}
    while True:
        ranked = sorted(pools, key=lambda g: (-len(pools[g]), rng.random()))
        chosen = [g for g in ranked[:m] if pools[g]]
        if len(chosen) < m:
            break
        members = [pools[g].pop() for g in chosen]
        name = "+".join(sorted(members))
        new_label.update({c: name for c in members})
    return [Record(r.item, new_label[r.label], None) for r in records if r.label in new_label]
