"""Image → tensor pipelines, configured from Hydra (data.train_transform, data.eval_transform)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
) -> T.Compose:
    """Train: ``Resize(resize) → RandomCrop(size)`` (or ``RandomResizedCrop(size, crop_scale)``) →
    optional horizontal flip and random affine (``degrees``, ``translate`` fraction, ``scale``;
    uncovered pixels get ``fill``, e.g. 255 for white-background scans).
    Eval: ``Resize(resize) → CenterCrop(size)``. Both end with grey/RGB conversion to ``channels``,
    ``ToTensor``, optional inversion ``x → 1 − x`` (dark strokes become the signal), normalisation.
    ``resize`` defaults to ``size``.
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
    return T.Compose(steps)


def _to_rgb(img):  # a named function (not a lambda) so the transform pickles into workers
    return img.convert("RGB")


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x
