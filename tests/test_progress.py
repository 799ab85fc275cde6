"""Progress bars on stderr for the long silent steps (dml.progress): unpacking an archive,
building the tensor cache, embedding images; shown on a terminal, quiet with
``trainer.enable_progress_bar=false`` or when stderr is not a terminal."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from dml.cli.data import main as dml_data
from dml.inference import Embedder

from .training_utils import REPO


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def prepare_omniglot(overrides: list[str]) -> None:
    """What dml-data does (unpacks the archives), then the DataModule's setup (builds the
    tensor cache), for the Omniglot config."""
    dml_data(["data=omniglot", *overrides])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data=omniglot", *overrides])
    instantiate(cfg.data).setup("fit")


@pytest.mark.parametrize(("stderr", "overrides", "shown"), [
    (Terminal(), [], True),
    (Terminal(), ["trainer.enable_progress_bar=false"], False),
    (io.StringIO(), [], False),  # not a terminal (a log file, a pipe)
], ids=["terminal", "disabled", "not-a-terminal"])
def test_unpacking_and_the_tensor_cache_show_progress_on_a_terminal(
    omniglot_root: Path, monkeypatch, stderr: io.StringIO, overrides: list[str], shown: bool
):
    monkeypatch.setattr(sys, "stderr", stderr)
    prepare_omniglot(overrides)
    text = stderr.getvalue()
    for bar in ("unpacking images_background.zip:   0%|          | 0/48 [",  # 48 files
                "unpacking images_evaluation.zip:   0%|          | 0/16 [",
                "tensor cache: decoding images:   0%|          | 0/16 ["):  # the test images
        assert (bar in text) is shown, text
    assert (omniglot_root.parent.parent / "cache" / "tensors").is_dir()  # built, either way


@pytest.mark.parametrize("stderr", [Terminal(), io.StringIO()], ids=["terminal", "not"])
def test_embedding_images_shows_progress_on_a_terminal(monkeypatch, stderr: io.StringIO):
    monkeypatch.setattr(sys, "stderr", stderr)
    embed = Embedder(torch.nn.Flatten(), lambda img: torch.zeros(1, 2, 2), batch_size=2)
    assert embed([Image.new("L", (2, 2))] * 6).shape == (6, 4)
    shown = "embedding:   0%|          | 0/3 [" in stderr.getvalue()  # 3 batches
    assert shown is isinstance(stderr, Terminal)
