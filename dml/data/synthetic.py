"""A tiny procedurally generated dataset for fast tests: no files, learnable, class-disjoint."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dml.data.records import Record
from dml.data.source import DatasetSource


class Synthetic(DatasetSource):
    """Each class is a random smooth grey pattern; an image is its class pattern, randomly shifted
    by up to 2 px, plus Gaussian noise (std ``noise``). Classes ``0..train_classes-1`` train,
    the next ``test_classes`` test. Fully determined by ``seed``."""

    image_mode = "L"

    def __init__(
        self,
        train_classes: int = 8,
        test_classes: int = 4,
        images_per_class: int = 6,
        size: int = 16,
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.train_classes, self.test_classes = train_classes, test_classes
        self.images_per_class, self.size, self.noise, self.seed = (
            images_per_class,
            size,
            noise,
            seed,
        )

    def splits(self) -> dict[str, list[Record]]:
        def records(classes: range) -> list[Record]:
            return [
                Record((c, i), f"class{c:03d}")
                for c in classes
                for i in range(self.images_per_class)
            ]

        n = self.train_classes
        return {"train": records(range(n)), "test": records(range(n, n + self.test_classes))}

    def fingerprint(self, records) -> list:
        """Nothing on disk: the images are a function of the settings (part of the cache key)."""
        return []

    def load(self, item: tuple[int, int]) -> Image.Image:
        cls, idx = item
        s = self.size
        pattern_rng = np.random.default_rng([self.seed, cls])
        coarse = pattern_rng.random((4, 4))
        pattern = np.kron(coarse, np.ones((s // 4 + 1, s // 4 + 1)))[: s + 4, : s + 4]
        pattern = np.pad(pattern, ((0, max(0, s + 4 - pattern.shape[0])),) * 2, mode="edge")
        rng = np.random.default_rng([self.seed, cls, idx, 1])
        dy, dx = rng.integers(0, 5, size=2)
        img = pattern[dy : dy + s, dx : dx + s] + rng.normal(0, self.noise, (s, s))
        return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L")
