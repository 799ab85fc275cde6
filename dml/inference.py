"""Use a trained model: rebuild it from a checkpoint and embed images."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from dml.errors import CheckpointError
from dml.models import EmbeddingNet
from dml.moved_targets import current_targets
from dml.progress import progress_bar
from dml.train.checkpointing import first_non_finite, load_checkpoint_file
from dml.trusted_targets import trusted_config

#: The parts of a run's config :func:`load_embedder` instantiates, and so the only ones whose
#: ``_target_``\ s it checks: checking the trainer's callbacks and loggers or the DataModule
#: would import Lightning, which using a trained model does not need.
EMBEDDER_PARTS = ("model", "data.eval_transform")


def load_checkpoint(
    path: str | os.PathLike, parts: Sequence[str] | None = None
) -> tuple[dict, DictConfig]:
    """The checkpoint dict and the resolved run config saved in it (code that has moved since it
    was saved named by its current ``_target_``: :mod:`dml.moved_targets`). Every ``_target_``
    in it is checked, or only those under the dotted keys ``parts`` (the parts the caller
    instantiates).

    Loads with ``weights_only=True`` (:func:`dml.train.checkpointing.load_checkpoint_file`). Raises
    :class:`CheckpointError` for a missing, truncated, foreign or unsafe file, and for NaN or inf
    weights.
    """
    ckpt = load_checkpoint_file(path)
    if not ckpt.get("dml_config"):
        raise CheckpointError(
            f"{path} is not a dml checkpoint (no dml config in it): pass a .ckpt written by "
            "dml-train"
        )
    name = first_non_finite(ckpt["state_dict"].items())
    if name is not None:
        raise CheckpointError(
            f"{path}: tensor {name} has NaN or inf values (the run diverged or the file is "
            "corrupted): use an earlier checkpoint"
        )
    # old checkpoints name moved code (dml.moved_targets): mapped before the trust check
    return ckpt, stored_config(path, current_targets(ckpt["dml_config"]), parts)


def stored_config(
    path: str | os.PathLike, stored: object, parts: Sequence[str] | None = None
) -> DictConfig:
    """The config stored in the checkpoint at ``path``, resolved, once every ``_target_`` in it
    (or in its dotted keys ``parts``; nested in dicts and lists, ``_partial_`` or not) is trusted
    (:mod:`dml.trusted_targets`): nothing in it is instantiated before. Anything else is one
    :class:`CheckpointError`."""
    return OmegaConf.create(trusted_config(
        stored, CheckpointError, f"{path}: its stored config", refused=", so nothing was loaded",
        hint=": pass a .ckpt written by dml-train", parts=parts))


def net_from_checkpoint(ckpt: dict, cfg: DictConfig) -> EmbeddingNet:
    """The embedding network with the checkpoint's weights (no pretrained download)."""
    net = instantiate(cfg.model, pretrained=False, pretrained_file=None)
    prefix = "net."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    return net.eval()


class Embedder:
    """Maps a list of PIL images to an ``(N, d)`` tensor of L2-normalised embeddings, applying the
    run's evaluation transform; batched, no gradients, a progress bar on a terminal."""

    def __init__(
        self,
        net: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        self.net, self.transform = net.to(device).eval(), transform
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for i in progress_bar(range(0, len(images), self.batch_size), "embedding", unit="batch"):
            x = torch.stack([self.transform(img) for img in images[i : i + self.batch_size]])
            out.append(self.net(x.to(self.device)).float().cpu())
        if not out:
            return torch.empty(0, getattr(self.net, "embedding_dim", 0))
        return torch.cat(out)


def load_embedder(
    checkpoint_path: str | os.PathLike,
    device: str | torch.device | None = None,
    batch_size: int = 256,
) -> Embedder:
    """``embed = dml.load_embedder("run/checkpoints/best.ckpt"); z = embed([img1, img2])``."""
    ckpt, cfg = load_checkpoint(checkpoint_path, EMBEDDER_PARTS)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Embedder(net_from_checkpoint(ckpt, cfg), instantiate(cfg.data.eval_transform), device,
                    batch_size)
