"""timm backbone → linear embedding head → L2 normalisation."""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from dml.errors import ConfigError


def create_backbone(
    name: str,
    in_chans: int = 3,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A timm model without classifier (``num_classes=0``: it returns pooled features).

    ``pretrained`` loads timm's published weights (needs internet or a filled hub cache);
    ``pretrained_file`` loads a local weights file instead (offline clusters). Other keyword
    arguments go to the timm model (e.g. ``drop_path_rate``).
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(
            f"unknown backbone '{name}' (model.backbone): not a timm model"
            + (f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()")
        )
    kwargs = {**kwargs, "num_classes": 0, "in_chans": in_chans}
    if pretrained_file:
        if not os.path.isfile(pretrained_file):
            raise ConfigError(f"model.pretrained_file not found: {pretrained_file}")
        kwargs["pretrained_cfg_overlay"] = {"file": os.fspath(pretrained_file)}
    try:
        return timm.create_model(name, pretrained=pretrained or bool(pretrained_file), **kwargs)
    except (OSError, RuntimeError) as e:
        if pretrained and not pretrained_file:
            raise ConfigError(
                f"could not load pretrained weights for '{name}' ({e.__class__.__name__}: {e}); "
                "offline? download them once elsewhere and set model.pretrained_file=PATH, "
                "or set model.pretrained=false"
            ) from None
        raise


class EmbeddingNet(nn.Module):
    """``f(x) = W·g(x) / ‖W·g(x)‖₂`` — a timm feature extractor ``g`` followed by a linear map to
    ``embedding_dim`` and L2 normalisation (so cosine similarity is a dot product).

    ``freeze_bn``: keep the backbone's BatchNorm layers in eval mode with frozen affine parameters,
    as in the protocol of "A Metric Learning Reality Check" (Musgrave et al., ECCV 2020).
    ``embedding_dim=0`` uses the backbone features directly (no head); ``backbone_kwargs`` go to
    timm's ``create_model``.

    GPU speed options (results equal within floating-point tolerance, tested on CPU):
    ``channels_last`` keeps weights and inputs in NHWC memory format (faster convolutions with
    tensor cores); ``compile`` runs the backbone through ``torch.compile`` (the module and its
    ``state_dict`` stay those of the eager backbone, so checkpoints load either way).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        embedding_dim: int = 128,
        in_chans: int = 3,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        freeze_bn: bool = False,
        normalize: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(
            backbone, in_chans, pretrained, pretrained_file, **(backbone_kwargs or {})
        )
        features = self.backbone.num_features
        self.head = nn.Linear(features, embedding_dim) if embedding_dim else nn.Identity()
        self.embedding_dim = embedding_dim or features
        self.freeze_bn = freeze_bn
        self.normalize = normalize
        if freeze_bn:
            for m in self._batchnorms():
                m.requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # a compiled function, not a module: the state_dict keeps the eager backbone's keys
        self._compiled = torch.compile(self.backbone.forward) if compile else None

    def _batchnorms(self):
        return (
            m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        )

    def train(self, mode: bool = True) -> EmbeddingNet:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self._batchnorms():
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.head((self._compiled or self.backbone)(x))
        return F.normalize(z, dim=-1) if self.normalize else z
