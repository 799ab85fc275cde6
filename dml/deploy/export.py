"""Export a trained embedder (backbone, head, L2 normalisation) so that it runs without ``dml``.

``export(checkpoint, fmt, out_dir)`` writes into ``out_dir``

* ``model.pt`` (``torchscript``: ``torch.jit.trace``, loads with ``torch.jit.load``),
  ``model.onnx`` (``onnx``: input ``images``, output ``embeddings``, dynamic batch axis; needs
  the ``onnx`` extra) or ``model.safetensors`` (``safetensors``: the network's weights, with the
  backbone's timm name and the head's size in its metadata);
* ``preprocessing.json``: the evaluation preprocessing (:mod:`dml.deploy.preprocessing`).

The checkpoint is read by :func:`dml.load_embedder`, the checkpoint-safety path.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from dml.deploy.preprocessing import preprocessing_spec
from dml.errors import ConfigError
from dml.files import write_atomic, write_text_atomic

Format = Literal["torchscript", "onnx", "safetensors"]
MODEL_FILES: dict[str, str] = {
    "torchscript": "model.pt",
    "onnx": "model.onnx",
    "safetensors": "model.safetensors",
}
SPEC_FILE = "preprocessing.json"
ONNX_OPSET = 17


def export(checkpoint: str | os.PathLike, fmt: Format, out_dir: str | os.PathLike) -> list[Path]:
    """Write the model file of ``fmt`` and ``preprocessing.json`` into ``out_dir``; returns their
    paths. A :class:`dml.errors.UserError` (nothing written) for a bad checkpoint or format."""
    from dml.inference import load_embedder

    if fmt not in MODEL_FILES:
        raise ConfigError(f"--format must be one of {', '.join(MODEL_FILES)}, got {fmt!r}")
    if fmt == "onnx":
        _require_onnx()
    embedder = load_embedder(checkpoint, device="cpu")
    net = embedder.net.float().eval()
    spec = preprocessing_spec(getattr(embedder.transform, "params", None), embedding_dim(net))
    spec["source"] = {"checkpoint": os.fspath(checkpoint), **model_metadata(net)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILES[fmt]
    example = torch.zeros(2, *spec["input"]["shape"][1:])
    writers = {"torchscript": _torchscript, "onnx": _onnx, "safetensors": _safetensors}
    write_atomic(model_path, lambda tmp: writers[fmt](net, example, tmp, spec["source"]))
    write_text_atomic(out / SPEC_FILE, json.dumps(spec, indent=2) + "\n")
    return [model_path, out / SPEC_FILE]


def embedding_dim(net: torch.nn.Module) -> int:
    return int(net.embedding_dim)


def model_metadata(net: torch.nn.Module) -> dict[str, Any]:
    """What rebuilds the network from its weights: timm backbone name, head, normalisation."""
    backbone = net.backbone
    return {
        "backbone": getattr(backbone, "pretrained_cfg", {}).get("architecture"),
        "in_chans": int(_first_conv_in_channels(backbone)),
        "embedding_dim": embedding_dim(net),
        "head": not isinstance(net.head, torch.nn.Identity),
        "l2_normalized": bool(net.normalize),
    }


def _first_conv_in_channels(backbone: torch.nn.Module) -> int:
    conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.in_channels


@torch.no_grad()
def _torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path, _meta: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, path)


@torch.no_grad()
def _onnx(net: torch.nn.Module, example: torch.Tensor, path: Path, _meta: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,  # the dynamo exporter needs onnxscript; this one only onnx
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def _safetensors(net: torch.nn.Module, _example: torch.Tensor, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--format onnx needs the onnx package: pip install 'dml[onnx]' (or onnx onnxruntime)"
        ) from None
