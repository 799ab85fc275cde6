"""Small VGG-style ConvNets for low-resolution images, registered in timm's model registry.

``conv4`` is the "Conv-4" embedding of Matching/Prototypical Networks (Vinyals et al. 2016;
Snell et al. 2017, Sec. 3.1) made a little wider: four blocks of
``Conv3×3 → BatchNorm → ReLU → MaxPool2×2`` with widths (64, 64, 128, 128), then global average
pooling. On 28×28 Omniglot characters it keeps spatial detail that an ImageNet ResNet stem
(stride 4 before the first block) throws away, at a fraction of the compute.
Importing :mod:`dml.models` registers it, so ``model.backbone=conv4`` works like any timm name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn


class ConvNet(nn.Module):
    """``len(widths)`` blocks ``x ↦ MaxPool2(ReLU(BN(Conv3×3(x))))``, global average pooling, and an
    optional linear classifier (``num_classes=0``: none, the pooled features are the output)."""

    def __init__(
        self,
        widths: Sequence[int] = (64, 64, 128, 128),
        in_chans: int = 3,
        num_classes: int = 0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        blocks, prev = [], in_chans
        for w in widths:
            blocks += [
                nn.Conv2d(prev, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = w
        self.features = nn.Sequential(*blocks)
        self.num_features = prev
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(prev, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        "conv4.untrained": {
            "input_size": (1, 28, 28),
            "num_classes": 0,
            "first_conv": "features.0",
            "classifier": "head",
            "mean": (0.5,),
            "std": (0.5,),
        }
    }
)


@register_model
def conv4(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Conv-4, widths (64, 64, 128, 128)."""
    return build_model_with_cfg(ConvNet, "conv4", pretrained, **kwargs)
