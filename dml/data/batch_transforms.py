"""The random part of a training transform, applied to a whole batch of cached uint8 images.

:func:`augment_batch` reproduces :func:`dml.data.transforms.build_transform`'s training steps after
the (cached) resize: ``RandomCrop(size)`` → optional ``RandomHorizontalFlip`` → ``RandomAffine``
→ ``ToTensor`` → optional inversion → ``Normalize``, with each sample's parameters drawn from the
same distributions as torchvision's (angle ~ U(−degrees, degrees); translation = round(U(−t·W,
t·W)) whole pixels, likewise for H; scale ~ U(scale); flip with p = 1/2; crop offsets uniform).
The affine runs as one ``affine_grid`` + ``grid_sample`` for the batch, with nearest-neighbour
sampling (torchvision's default for ``RandomAffine``) and ``fill`` for uncovered pixels. It follows
torchvision's *tensor* implementation of ``affine`` exactly; the PIL implementation rounds
sample positions slightly differently, so a few pixels on stroke edges can differ between the
two paths for the same parameters (tested: the images agree on ≥ 97 % of pixels).

Parameters come from an explicit :class:`torch.Generator`, never from the global RNG:
:func:`batch_generator` seeds one per batch from ``(seed, epoch, the batch's dataset indices)``,
so a batch's augmentation depends on nothing else (not on the step count, the rank or what ran
before), which keeps same-seed runs identical and resumed runs bit-identical.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from dml.data.transforms import TransformParams


def batch_generator(seed: int, epoch: int, indices: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded from the run's ``seed``, the ``epoch`` and the batch's dataset
    ``indices`` (a 63-bit BLAKE2 hash of the three)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{int(seed)}:{int(epoch)}:".encode())
    h.update(indices.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return torch.Generator().manual_seed(int.from_bytes(h.digest(), "little") >> 1)


def sample_affine(
    n: int, params: TransformParams, height: int, width: int, g: torch.Generator
) -> dict[str, torch.Tensor]:
    """Per-sample ``angle`` (degrees), integer ``tx``, ``ty`` (pixels) and ``scale``, drawn as
    ``torchvision.transforms.RandomAffine.get_params`` draws them."""
    u = torch.rand(4, n, generator=g, dtype=torch.float64)
    lo, hi = params.scale
    max_dx, max_dy = params.translate * width, params.translate * height
    return {
        "angle": -params.degrees + 2 * params.degrees * u[0],
        "tx": torch.round(-max_dx + 2 * max_dx * u[1]),
        "ty": torch.round(-max_dy + 2 * max_dy * u[2]),
        "scale": lo + (hi - lo) * u[3],
    }


def affine_theta(
    angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """``N×2×3`` ``affine_grid`` matrices (normalised coordinates, ``align_corners=False``) of
    torchvision's inverse affine map about the image centre (rotation by ``angle`` degrees,
    translation ``(tx, ty)`` pixels, ``scale``; no shear)."""
    rot = angle * (math.pi / 180)
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    # torchvision's _get_inverse_affine_matrix (centre 0, shear 0), in pixels
    m = torch.stack([cos, sin, -cos * tx - sin * ty, -sin, cos, sin * tx - cos * ty], 1)
    theta = torch.stack(
        [
            m[:, 0],
            m[:, 1] * (h / w),
            m[:, 2] * (2 / w),
            m[:, 3] * (w / h),
            m[:, 4],
            m[:, 5] * (2 / h),
        ],
        1,
    )
    return theta.view(-1, 2, 3)


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A ``size``×``size`` crop of each image at a uniform random offset (``RandomCrop``)."""
    n, _, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}×{size} from {h}×{w} images")
    top = torch.randint(0, h - size + 1, (n,), generator=g).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=g).tolist()
    return torch.stack(
        [
            x[i, :, t : t + size, c : c + size]
            for i, (t, c) in enumerate(zip(top, left, strict=True))
        ]
    )


def to_normalized(x: torch.Tensor, params: TransformParams) -> torch.Tensor:
    """Pixel values in 0..255 (uint8, or float holding whole numbers) → ``ToTensor``'s [0, 1],
    optional inversion, ``Normalize``: the same float operations in the same order as the PIL
    path's tail, so equal pixels give bit-equal tensors."""
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    x = x.div(255)
    if params.invert:
        x = 1.0 - x
    mean = torch.as_tensor(params.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(params.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub(mean).div(std)


def affine_batch(
    x: torch.Tensor,
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    scale: torch.Tensor,
    fill: float,
) -> torch.Tensor:
    """Each image of the float ``N×C×H×W`` batch ``x`` rotated by ``angle[i]`` degrees about its
    centre, scaled by ``scale[i]`` and shifted by ``(tx[i], ty[i])`` pixels, nearest-neighbour,
    uncovered pixels ``fill``: torchvision's ``affine`` (tensor path) for a whole batch, as one
    ``affine_grid`` + ``grid_sample``."""
    n, c, h, w = x.shape
    theta = affine_theta(angle, tx, ty, scale, h, w)
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, c, h, w], align_corners=False)
    # sampling (x − fill) with zero padding, then adding fill back, pads with fill; on whole
    # pixel values both steps are exact
    out = F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out + fill


def augment_batch(x: torch.Tensor, params: TransformParams, g: torch.Generator) -> torch.Tensor:
    """Training augmentation of an ``N×C×H×W`` uint8 batch (on any device) with per-sample
    parameters from ``g``; returns normalised float images of ``params.size``."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(
            f"augment_batch takes an N×C×H×W uint8 batch, got {x.dtype} {tuple(x.shape)}"
        )
    x = random_crop(x, params.size, g)
    n, _, h, w = x.shape
    x = x.to(torch.get_default_dtype())  # whole pixel values: nearest sampling copies them exactly
    if params.flip:
        flip = (torch.rand(n, generator=g) < 0.5).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    if params.degrees or params.translate or params.scale != (1.0, 1.0):
        p = sample_affine(n, params, h, w, g)
        x = affine_batch(x, p["angle"], p["tx"], p["ty"], p["scale"], params.fill)
    return to_normalized(x, params)
