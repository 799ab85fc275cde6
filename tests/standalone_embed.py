"""Embed image files with an exported model and its ``preprocessing.json``, as a user without
``dml`` would: plain PIL, numpy and torch (TorchScript) or onnxruntime (ONNX).

Run in a subprocess (``python -I tests/standalone_embed.py MODEL SPEC OUT.npy IMAGE...``): any
import of ``dml`` fails, so the export cannot lean on it. Writes ``{"all": (N, d) embeddings of
one batch of all images, "single": (1, d) of the first image alone}`` as ``.npz``."""

import importlib.abc
import json
import sys


class NoDml(importlib.abc.MetaPathFinder):
    """Refuses ``dml`` and its submodules (the venv has dml installed)."""

    def find_spec(self, name, path=None, target=None):
        if name == "dml" or name.startswith("dml."):
            raise ImportError(f"{name} must not be imported by an exported model's user")
        return None


sys.meta_path.insert(0, NoDml())

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def preprocess(path, steps):
    img = Image.open(path)
    x = None
    for step in steps:
        op = step["op"]
        if op == "convert":
            img = img.convert(step["mode"])
        elif op == "resize":
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = step["shorter_side"], int(step["shorter_side"] * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
            img = img.resize(size, Image.BILINEAR)
        elif op == "center_crop":
            s, (w, h) = step["size"], img.size
            top, left = round((h - s) / 2), round((w - s) / 2)
            img = img.crop((left, top, left + s, top + s))
        elif op == "to_float":
            a = np.asarray(img, dtype=np.uint8)
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            x = a.astype(np.float32) / np.float32(step["divide_by"])
        elif op == "invert":
            x = np.float32(1) - x
        elif op == "normalize":
            mean = np.asarray(step["mean"], np.float32)[:, None, None]
            std = np.asarray(step["std"], np.float32)[:, None, None]
            x = (x - mean) / std
        else:
            raise ValueError(f"unknown step {op}")
    return x


def main(model_path, spec_path, out_path, images):
    with open(spec_path) as f:
        spec = json.load(f)
    batch = np.stack([preprocess(p, spec["steps"]) for p in images])
    if model_path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])

        def run(x):
            return session.run([spec["output"]["name"]], {spec["input"]["name"]: x})[0]
    else:
        import torch

        model = torch.jit.load(model_path)

        def run(x):
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()

    single = run(batch[:1])  # another batch size than the export traced (2)
    np.savez(out_path, all=run(batch), single=single)
    assert not any(m == "dml" or m.startswith("dml.") for m in sys.modules)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
