"""The evaluation preprocessing of a run as a JSON spec that code without ``dml`` can follow.

The spec describes :func:`dml.data.transforms.build_transform`'s evaluation pipeline step by
step (``steps``, applied in order to a decoded image file):

1. ``convert``: PIL ``Image.convert(mode)``, ``"L"`` (grey) or ``"RGB"``;
2. ``resize``: the shorter side to ``shorter_side`` pixels, the longer one to
   ``int(shorter_side * longer / shorter)`` (truncated), PIL ``Image.resize`` with
   ``Image.BILINEAR`` (PIL filters are antialiased);
3. ``center_crop``: a ``size`` × ``size`` window at top ``round((h - size) / 2)``, left
   ``round((w - size) / 2)`` (Python ``round`` of the float);
4. ``to_float``: ``uint8 → float32``, divided by 255, layout ``C×H×W``;
5. ``invert`` (if present): ``x → 1 − x``;
6. ``normalize``: per channel ``(x − mean) / std`` in float32.

The model's input is a float32 ``N×C×H×W`` batch of such images (any ``N``); its output
``N×dim`` rows are L2-normalised embeddings, so cosine similarity is a dot product.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dml.errors import CheckpointError

if TYPE_CHECKING:
    from dml.data.transforms import TransformParams

SPEC_VERSION = 1


def preprocessing_spec(params: TransformParams | None, embedding_dim: int) -> dict[str, Any]:
    """The JSON-ready spec of an evaluation transform (``params``: its ``.params``); a
    :class:`CheckpointError` for a transform not built by ``build_transform`` or a training one."""
    if params is None or params.train:
        raise CheckpointError(
            "the run's data.eval_transform is not dml.data.transforms.build_transform with "
            "train=false: its preprocessing cannot be described for export"
        )
    if params.resize < params.size:
        raise CheckpointError(
            f"the run's data.eval_transform resizes to {params.resize} px, below its crop of "
            f"{params.size} px (torchvision pads the crop): export needs resize >= size"
        )
    steps: list[dict[str, Any]] = [
        {"op": "convert", "mode": "L" if params.channels == 1 else "RGB"},
        {"op": "resize", "shorter_side": params.resize, "interpolation": "bilinear"},
        {"op": "center_crop", "size": params.size},
        {"op": "to_float", "divide_by": 255},
    ]
    if params.invert:
        steps.append({"op": "invert"})
    steps.append({"op": "normalize", "mean": list(params.mean), "std": list(params.std)})
    return {
        "version": SPEC_VERSION,
        "input": {
            "name": "images",
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["N", params.channels, params.size, params.size],
        },
        "output": {"name": "embeddings", "shape": ["N", embedding_dim], "l2_normalized": True},
        "steps": steps,
    }
