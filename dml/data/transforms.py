"""Image → tensor pipelines, configured from Hydra (data.train_transform, data.eval_transform)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from dml.errors import ConfigError


def build_transform(
    size: int,
    resize: int | None = None,
    train: bool = False,
    random_resized_crop: bool = False,
    crop_scale: Sequence[float] = (0.16, 1.0),
    flip: bool = False,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: Sequence[float] = (1.0, 1.0),
    fill: int = 0,
    channels: int = 3,
    invert: bool = False,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> ImageTransform:
    """Train: ``Resize(resize) → RandomCrop(size)`` (or ``RandomResizedCrop(size, crop_scale)``) →
    optional horizontal flip and random affine (``degrees``, ``translate`` fraction, ``scale``;
    uncovered pixels get ``fill``, e.g. 255 for white-background scans).
    Eval: ``Resize(resize) → CenterCrop(size)``. Both end with grey/RGB conversion to ``channels``,
    ``ToTensor``, optional inversion ``x → 1 − x`` (dark strokes become the signal), normalisation.
    ``resize`` defaults to ``size``.

    The result is a :class:`ImageTransform` (a ``Compose``) that also keeps its arguments in
    ``.params``, so the tensor cache (``data.cache=true``) can decode images once and apply the
    random part to whole batches (:mod:`dml.data.batch_transforms`).
    """
    if channels not in (1, 3):
        raise ConfigError(f"data.train_transform.channels must be 1 or 3, got {channels}")
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"data.train_transform.mean and .std need {channels} values for channels={channels}, "
            f"got {list(mean)} and {list(std)}"
        )
    steps: list = [T.Grayscale(1) if channels == 1 else T.Lambda(_to_rgb)]
    if train and random_resized_crop:
        steps.append(T.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True))
    else:
        steps.append(T.Resize(resize or size, antialias=True))
        steps.append(T.RandomCrop(size) if train else T.CenterCrop(size))
    if train and flip:
        steps.append(T.RandomHorizontalFlip())
    if train and (degrees or translate or tuple(scale) != (1.0, 1.0)):
        shift = (translate, translate) if translate else None
        steps.append(T.RandomAffine(degrees, translate=shift, scale=tuple(scale), fill=fill))
    steps.append(T.ToTensor())
    if invert:
        steps.append(T.Lambda(_invert))
    steps.append(T.Normalize(mean, std))
    params = TransformParams(
        size=size,
        resize=resize or size,
        train=train,
        random_resized_crop=random_resized_crop,
        flip=flip,
        degrees=float(degrees),
        translate=float(translate),
        scale=(float(scale[0]), float(scale[1])),
        fill=int(fill),
        channels=channels,
        invert=invert,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    return ImageTransform(steps, params)


@dataclass(frozen=True)
class TransformParams:
    """The arguments of :func:`build_transform` (``resize`` resolved), as the cache needs them."""

    size: int
    resize: int
    train: bool
    random_resized_crop: bool
    flip: bool
    degrees: float
    translate: float
    scale: tuple[float, float]
    fill: int
    channels: int
    invert: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def decode_spec(self) -> dict[str, object]:
        """What decides the cached (deterministic) part of the pipeline: the image mode, the
        resize and, for eval, the centre crop. Train keeps the resized image whole (its random
        crop, flip and affine run per batch); inversion and normalisation run on tensors."""
        return {
            "channels": self.channels,
            "resize": self.resize,
            "center_crop": None if self.train else self.size,
        }

    def decode(self, img: Image.Image) -> np.ndarray:
        """The deterministic head of the PIL pipeline, as a ``C×H×W`` uint8 array: the same PIL
        operations (grey/RGB conversion, ``Resize``, eval ``CenterCrop``) as :func:`build_transform`
        applies before its random steps, so cached pixels equal what the PIL path would see."""
        img = img.convert("L") if self.channels == 1 else img.convert("RGB")
        img = T.Resize(self.resize, antialias=True)(img)
        if not self.train:
            img = T.CenterCrop(self.size)(img)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class ImageTransform(T.Compose):
    """A ``torchvision`` ``Compose`` that remembers the :class:`TransformParams` it was built
    from (``.params``)."""

    def __init__(self, transforms: list, params: TransformParams) -> None:
        super().__init__(transforms)
        self.params = params


def _to_rgb(img):  # a named function (not a lambda) so the transform pickles into workers
    return img.convert("RGB")


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x
