"""dml-export: TorchScript and ONNX exports run in a process where dml cannot be imported,
preprocess images by preprocessing.json alone, and give dml.load_embedder's embeddings.

Tolerance, from the float32 arithmetic: both sides compute the same network on bit-identical
inputs (the spec's steps are the same float32 operations as the transform), only in another
order of summation (other convolution kernels, ONNX Runtime's fused BatchNorm). A dot product of
n float32 terms summed in two orders differs by about sqrt(n)·u·Σ|a_i b_i| (u = 2^-24, random
rounding errors); across L layers these add, so an L2-normalised embedding differs by about
L·sqrt(n_max)·u per component: conv4 (L = 5, n_max = 3·3·128) 1.0e-5, ResNet-50 (L = 54,
n_max = 3·3·512) 2.2e-4. We allow 4× that (:func:`tolerance`). Nearest neighbours then agree
except where two cosine scores are within 2·sqrt(d)·tol (ties, stated): checked on the ranking
of every query by the exported model's scores.
"""

from __future__ import annotations

import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dml
from dml.cli.export import main as dml_export
from dml.deploy.export import MODEL_FILES

from .conftest import real_data_dir
from .deploy_utils import untrained_checkpoint

CONSUMER = Path(__file__).with_name("standalone_embed.py")
U = 2.0**-24


def tolerance(layers: int, n_max: int) -> float:
    return 4 * layers * math.sqrt(n_max) * U


def omniglot_images(folder: Path, n: int = 40) -> list[Path]:
    """The first ``n`` images of the real Omniglot evaluation set (two characters, 20 drawers)."""
    base = real_data_dir()
    if base is None:
        pytest.skip("needs the real Omniglot zips in $DML_DATA_DIR")
    with zipfile.ZipFile(base / "omniglot" / "images_evaluation.zip") as z:
        names = sorted(m for m in z.namelist() if m.endswith(".png"))[:n]
        z.extractall(folder, members=names)
    return [folder / m for m in names]


def synthetic_images(folder: Path, n: int = 3) -> list[Path]:
    """RGB noise images of several non-square sizes (exercises resize and crop)."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(300, 240), (240, 320), (256, 256)][:n]):
        path = folder / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def standalone(model: Path, images: list[Path], out: Path) -> dict[str, np.ndarray]:
    """Embeddings from :data:`CONSUMER` in an isolated interpreter that refuses ``dml``."""
    cmd = [sys.executable, "-I", str(CONSUMER), str(model), str(model.parent /
           "preprocessing.json"), str(out), *map(str, images)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(np.load(out))


class Case:
    """A checkpoint, image files and ``dml.load_embedder``'s embeddings of them."""

    def __init__(self, ckpt: Path, images: list[Path], tol: float) -> None:
        self.ckpt, self.images, self.tol = ckpt, images, tol
        self.want = dml.load_embedder(ckpt, device="cpu")([Image.open(p) for p in images]).numpy()


@pytest.fixture(scope="module")
def conv4_omniglot(tmp_path_factory) -> Case:
    tmp = tmp_path_factory.mktemp("conv4")
    images = omniglot_images(tmp / "images")
    ckpt = untrained_checkpoint(tmp / "conv4.ckpt", "data=omniglot", "model.backbone=conv4",
                                "model.embedding_dim=128")
    return Case(ckpt, images, tolerance(5, 3 * 3 * 128))


@pytest.fixture(scope="module")
def resnet50_224(tmp_path_factory) -> Case:
    tmp = tmp_path_factory.mktemp("resnet50")
    ckpt = untrained_checkpoint(tmp / "r50.ckpt", "data=folder", "data.source.root=unused",
                                "model.backbone=resnet50", "model.embedding_dim=512")
    return Case(ckpt, synthetic_images(tmp, 2), tolerance(54, 3 * 3 * 512))


def exported_embeddings(case: Case, fmt: str, tmp: Path) -> np.ndarray:
    """The standalone embeddings of ``dml-export``'s ``fmt`` file, checked against the case's
    reference within its tolerance, in one batch and one image at a time (dynamic batch)."""
    out_dir = tmp / fmt
    dml_export([str(case.ckpt), "--format", fmt, "--out", str(out_dir)])
    got = standalone(out_dir / MODEL_FILES[fmt], case.images, tmp / f"{fmt}.npz")
    assert got["all"].shape == case.want.shape and got["all"].dtype == np.float32
    err = np.abs(got["all"] - case.want).max()
    assert err <= case.tol, f"{fmt}: max abs difference {err:.2e} > {case.tol:.2e}"
    single = len(got["single"])
    assert np.abs(got["single"] - got["all"][:single]).max() <= case.tol
    return got["all"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_conv4_matches_load_embedder_on_real_omniglot(fmt, conv4_omniglot, tmp_path):
    got, want = exported_embeddings(conv4_omniglot, fmt, tmp_path), conv4_omniglot.want
    # nearest neighbours: the same, except within the score noise (2·sqrt(d)·tol) of a tie
    s_got, s_want = got @ got.T, want @ want.T
    np.fill_diagonal(s_got, -np.inf)
    np.fill_diagonal(s_want, -np.inf)
    slack = 2 * math.sqrt(got.shape[1]) * conv4_omniglot.tol
    top_got, top_want = s_got.argmax(axis=1), s_want.argmax(axis=1)
    tied = s_want[np.arange(len(got)), top_got] >= s_want.max(axis=1) - slack
    assert ((top_got == top_want) | tied).all()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_resnet50_at_224_matches_load_embedder(fmt, resnet50_224, tmp_path):
    exported_embeddings(resnet50_224, fmt, tmp_path)


def test_safetensors_export_rebuilds_the_network_with_timm(tmp_path):
    import json as json_

    import timm
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    ckpt = untrained_checkpoint(tmp_path / "model.ckpt", "data=synthetic")
    dml_export([str(ckpt), "--format", "safetensors", "--out", str(tmp_path / "st")])
    path = tmp_path / "st" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = {k: json_.loads(v) for k, v in f.metadata().items()}
    assert meta["backbone"] == "resnet10t" and meta["embedding_dim"] == 16
    state = load_file(str(path))
    backbone = timm.create_model(meta["backbone"], num_classes=0, in_chans=meta["in_chans"])
    head = torch.nn.Linear(backbone.num_features, meta["embedding_dim"])
    backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})
    head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    x = torch.randn(3, meta["in_chans"], 16, 16)
    want = dml.load_embedder(ckpt, device="cpu").net(x)
    with torch.no_grad():
        got = torch.nn.functional.normalize(head(backbone.eval()(x)), dim=1)
    assert torch.allclose(got, want, atol=tolerance(12, 3 * 3 * 512))


def test_onnx_without_the_extra_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(SystemExit) as info:
        dml_export([str(tmp_path / "any.ckpt"), "--format", "onnx", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --format onnx needs the onnx package: pip install 'dml[onnx]' (or onnx "
        "onnxruntime)"
    )
    assert not (tmp_path / "o").exists()
