"""A map-style dataset of (image tensor, integer label) for one split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from dml.data.records import Record


class DMLDataset(Dataset):
    """Records of one split with contiguous integer labels ``0..C-1``: the index of each record's
    class in ``classes`` (default: the split's own classes, sorted). Splits evaluated against each
    other (query and gallery) must share one ``classes`` list.

    ``__getitem__`` returns ``(transform(image), label, index)``; the index lets distributed
    evaluation put gathered embeddings back in dataset order.
    """

    def __init__(
        self,
        records: Sequence[Record],
        load: Callable[[object], Image.Image],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.records = list(records)
        self.load = load
        self.transform = transform
        self.classes = list(classes) if classes is not None else sorted({r.label for r in records})
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = torch.tensor([index[r.label] for r in self.records], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = self.load(self.records[i].item)
        x = self.transform(image) if self.transform is not None else image
        return x, int(self.labels[i]), i


class CachedDataset(DMLDataset):
    """A :class:`DMLDataset` whose images come decoded from the tensor cache
    (:func:`dml.data.tensor_cache.cached_images`): ``images[i]`` is record ``i``'s uint8
    ``C×H×W`` image after the transform's deterministic head.

    ``normalize`` given (eval splits): ``__getitem__`` returns its float image, bit-equal to what
    the PIL eval transform gives. ``normalize=None`` (the training split): it returns the uint8
    image; the DataModule augments and normalises whole batches
    (:meth:`dml.data.DMLDataModule.on_after_batch_transfer`)."""

    def __init__(
        self,
        records: Sequence[Record],
        images: torch.Tensor,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(records, _no_loader, None, classes)
        if len(images) != len(self.records):
            raise ValueError(f"{len(images)} cached images for {len(self.records)} records")
        self.images = images
        self.normalize = normalize

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x = self.images[i]
        if self.normalize is not None:
            x = self.normalize(x[None])[0]
        return x, int(self.labels[i]), i


def _no_loader(item: object) -> Image.Image:
    raise RuntimeError("a CachedDataset reads its images from the tensor cache, not from files")
