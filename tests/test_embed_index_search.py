"""dml-embed -> dml-index -> dml-search through the entry points: the index returns the exact
k-NN of the embeddings (brute force, and dml.eval.exact_knn, the k-NN of retrieval_metrics);
embedding is chunked and resumes after an interruption; bad inputs are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dml.cli.embed import main as dml_embed
from dml.cli.index import main as dml_index
from dml.cli.search import main as dml_search
from dml.eval import exact_knn

from .conftest import write_png
from .deploy_utils import untrained_checkpoint

# float32 embeddings of unit norm: a query re-embedded in another batch may differ by a few ulps
# per component, its scores by about sqrt(d)·2^-24 · a few; ranks may swap only within this.
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("collection")
    images = tmp / "images"
    for c in range(4):
        for i in range(5):
            write_png(images / f"class{c}" / f"{i}.png", seed=10 * c + i)
    ckpt = untrained_checkpoint(tmp / "model.ckpt", "data=synthetic")
    return {"tmp": tmp, "images": images, "ckpt": ckpt}


def one_line_error(capsys, command, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        command(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k of each row: score descending, then index ascending."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores))
    return order[:, :k]


def test_embed_index_search_returns_the_exact_knn(setup, capsys):
    tmp, ckpt = setup["tmp"], str(setup["ckpt"])
    dml_embed([ckpt, "--images", str(setup["images"]), "--out", str(tmp / "emb"),
               "--chunk-size", "6", "--batch-size", "4"])
    dml_index([str(tmp / "emb"), "--kind", "flat", "--out", str(tmp / "index")])
    capsys.readouterr()
    x = np.load(tmp / "emb" / "embeddings.npy")
    items = (tmp / "emb" / "items.csv").read_text().splitlines()[1:]
    paths = [row.split(",")[1] for row in items]
    assert x.shape == (20, 16) and x.dtype == np.float32
    assert [row.split(",")[2] for row in items] == [f"class{c}" for c in range(4) for _ in range(5)]
    queries, k = [0, 7, 13, 19], 6
    dml_search([str(tmp / "index"), *(paths[q] for q in queries), "-k", str(k)])
    result = json.loads(capsys.readouterr().out)
    got = np.array([[h["index"] for h in r["neighbours"]] for r in result])
    got_scores = np.array([[h["score"] for h in r["neighbours"]] for r in result])
    assert [[h["path"] for h in r["neighbours"]] for r in result] == [
        [paths[i] for i in row] for row in got]
    scores = x[queries] @ x.T
    brute = ranked(scores, k)
    _, knn = exact_knn(torch.from_numpy(x[queries]), torch.from_numpy(x), k)
    assert (got[:, 0] == queries).all()  # each query image finds itself first
    for reference in (brute, knn.numpy()):
        same = got == reference
        # a difference only where the reference scores of the two items are tied within noise
        tied = np.abs(np.take_along_axis(scores, got, 1) -
                      np.take_along_axis(scores, reference, 1)) <= SCORE_TOL
        assert (same | tied).all()
    assert np.abs(got_scores - np.take_along_axis(scores, got, 1)).max() <= SCORE_TOL


def test_embed_index_search_import_no_lightning(setup, tmp_path):
    """The deployment commands (a folder of images in, neighbours out) run without Lightning: a
    deployment environment pays neither its import time nor its dependencies."""
    image = setup["images"] / "class0" / "0.png"
    code = """
import sys
from dml.cli.embed import main as embed
from dml.cli.index import main as index
from dml.cli.search import main as search
ckpt, images, image, out = sys.argv[1:]
embed([ckpt, "--images", images, "--out", f"{out}/embeddings"])
index([f"{out}/embeddings", "--out", f"{out}/index"])
search([f"{out}/index", image, "-k", "3"])
import dml.deploy.export
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
assert not loaded, loaded[:3]
"""
    argv = [str(setup["ckpt"]), str(setup["images"]), str(image), str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits = json.loads(proc.stdout[proc.stdout.index("[\n"):])[0]["neighbours"]
    assert len(hits) == 3 and Path(hits[0]["path"]) == image  # the query finds itself


def test_embedding_resumes_after_an_image_that_does_not_decode(setup, capsys):
    tmp, ckpt = setup["tmp"], str(setup["ckpt"])
    images = tmp / "resume_images"
    for i in range(9):
        write_png(images / f"{i}.png", seed=i)
    (images / "7.png").write_bytes(b"not a png")
    out = tmp / "resume"
    argv = [ckpt, "--images", str(images), "--out", str(out), "--chunk-size", "3",
            "--batch-size", "3", "--dtype", "float16"]
    err = one_line_error(capsys, dml_embed, argv)
    assert "7.png" in err
    assert json.loads((out / "embed.json").read_text())["done"] == 6  # two chunks kept
    write_png(images / "7.png", seed=7)
    dml_embed(argv)  # continues at row 6
    dml_embed([*argv[:4], str(tmp / "fresh"), *argv[5:]])
    resumed, fresh = np.load(out / "embeddings.npy"), np.load(tmp / "fresh" / "embeddings.npy")
    assert resumed.dtype == np.float16 and np.array_equal(resumed, fresh)


def test_bad_inputs_are_one_line_errors(setup, capsys, tmp_path):
    tmp, ckpt = setup["tmp"], str(setup["ckpt"])
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, dml_embed, [ckpt, "--images", str(tmp_path / "empty"),
                                             "--out", str(tmp_path / "o")])
    assert "no image files" in err and not (tmp_path / "o").exists()
    not_ckpt = tmp_path / "model.safetensors"
    not_ckpt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    err = one_line_error(capsys, dml_embed, [str(not_ckpt), "--images", str(setup["images"]),
                                             "--out", str(tmp_path / "o")])
    assert str(not_ckpt) in err and not (tmp_path / "o").exists()
    if not (tmp / "index").exists():
        dml_embed([ckpt, "--images", str(setup["images"]), "--out", str(tmp / "emb")])
        dml_index([str(tmp / "emb"), "--out", str(tmp / "index")])
    other = untrained_checkpoint(tmp_path / "wide.ckpt", "data=synthetic",
                                 "model.embedding_dim=32")
    err = one_line_error(capsys, dml_search, [str(tmp / "index"), str(setup["images"] /
                         "class0" / "0.png"), "--checkpoint", str(other)])
    assert "32 dimensions" in err and "16" in err


def test_csv_and_data_config_inputs(setup, tmp_path):
    ckpt, images = str(setup["ckpt"]), setup["images"]
    rows = ["path,label", "class1/2.png,b", f"{images / 'class0' / '0.png'},a"]
    (images / "list.csv").write_text("\n".join(rows) + "\n")
    dml_embed([ckpt, "--csv", str(images / "list.csv"), "--out", str(tmp_path / "csv")])
    dml_embed([ckpt, "--images", str(images), "--out", str(tmp_path / "folder")])
    from_csv, from_folder = (np.load(tmp_path / d / "embeddings.npy") for d in ("csv", "folder"))
    assert np.abs(from_csv - from_folder[[7, 0]]).max() <= SCORE_TOL
    assert (tmp_path / "csv" / "items.csv").read_text().splitlines()[1].endswith(",b")
    dml_embed([ckpt, "data=synthetic", "--split", "test", "--out", str(tmp_path / "data")])
    meta = json.loads((tmp_path / "data" / "embed.json").read_text())
    assert meta["count"] == meta["done"] == 4 * 6  # test_classes × images_per_class


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_print_their_recall(kind, setup, tmp_path, capsys):
    tmp = setup["tmp"]
    if not (tmp / "emb").exists():
        dml_embed([str(setup["ckpt"]), "--images", str(setup["images"]), "--out", str(tmp / "emb")])
    # exhaustive settings: every cell probed / a beam wider than the collection: recall 1
    options = ["--nlist", "2", "--nprobe", "2"] if kind == "ivf" else ["--ef-search", "64"]
    dml_index([str(tmp / "emb"), "--kind", kind, "--out", str(tmp_path / kind),
               "--recall-k", "5", *options])
    info = json.loads(capsys.readouterr().out)
    assert info["recall@5"] == 1.0 and info["count"] == 20
    assert (tmp_path / kind / "index.faiss").is_file()
