"""Triplet-diagram callback: files, histogram orientation and content, W&B hand-off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from dml.losses import SCTLoss
from dml.train.callbacks.triplet_diagram import TripletDiagram, render_triplet_diagram
from dml.train.wandb_image import log_image_to_wandb


class ToyModule(LightningModule):
    """Linear embedding trained with SCT; records every batch's triplet similarities."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(6, 4)
        self.loss = SCTLoss()
        self.seen: dict[int, list[np.ndarray]] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.loss.result(torch.nn.functional.normalize(self.net(x), dim=1), y)
        s_ap, s_an = out.triplet_similarities
        self.seen.setdefault(self.current_epoch, []).append(np.stack([s_an.numpy(), s_ap.numpy()]))
        return {"loss": out.value, "triplet_similarities": out.triplet_similarities}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, callback: TripletDiagram, epochs: int = 3) -> ToyModule:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 6, generator=g), torch.arange(64) % 8)
    module = ToyModule()
    trainer = Trainer(
        max_epochs=epochs,
        default_root_dir=tmp_path,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=16, shuffle=False))
    return module


def test_writes_the_configured_epochs_with_the_selected_triplets(tmp_path: Path) -> None:
    module = fit(tmp_path, TripletDiagram(epochs=[0, 2], bins=20))
    out = tmp_path / "triplet_diagrams"
    assert sorted(p.name for p in out.iterdir()) == [
        "epoch_000.npz",
        "epoch_000.png",
        "epoch_002.npz",
        "epoch_002.png",
    ]
    for epoch in (0, 2):
        saved = np.load(out / f"epoch_{epoch:03d}.npz")
        s_an, s_ap = np.concatenate(module.seen[epoch], axis=1)
        want = np.histogram2d(s_an, s_ap, bins=20, range=[[-1, 1], [-1, 1]])[0]
        assert saved["hist"].sum() == len(s_an) > 0
        np.testing.assert_array_equal(saved["hist"], want)
        assert int(saved["epoch"]) == epoch
        assert (out / f"epoch_{epoch:03d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_axes_are_x_s_an_and_y_s_ap(tmp_path: Path) -> None:
    class Fixed(ToyModule):
        def training_step(self, batch, batch_idx):
            outputs = super().training_step(batch, batch_idx)
            outputs["triplet_similarities"] = (torch.tensor([0.55]), torch.tensor([-0.45]))
            return outputs

    callback = TripletDiagram(bins=4)
    module = Fixed()
    trainer = Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    data = TensorDataset(torch.randn(32, 6), torch.arange(32) % 4)
    trainer.fit(module, DataLoader(data, batch_size=16))
    hist = np.load(tmp_path / "triplet_diagrams" / "epoch_000.npz")["hist"]
    # S_an = -0.45 -> x bin 1 of [-1,-.5,0,.5,1]; S_ap = 0.55 -> y bin 3; two batches
    expected = np.zeros((4, 4))
    expected[1, 3] = 2
    np.testing.assert_array_equal(hist, expected)


def test_render_handles_an_empty_histogram() -> None:
    edges = np.linspace(-1, 1, 11)
    fig = render_triplet_diagram(np.zeros((10, 10)), edges, "empty")
    assert fig.axes[0].get_xlabel().startswith("S_an")


def test_logs_image_only_to_wandb_loggers(tmp_path: Path) -> None:
    class FakeWandb(WandbLogger):
        def __init__(self) -> None:  # no run, no network
            self.calls: list[tuple] = []

        def log_image(self, key, images, step=None, **kwargs) -> None:
            self.calls.append((key, images, step))

    class Other:
        def log_image(self, *args, **kwargs) -> None:
            raise AssertionError("only W&B loggers receive the image")

    wandb = FakeWandb()
    log_image_to_wandb([Other(), wandb], tmp_path / "x.png", step=7, key="triplet_diagram")
    assert wandb.calls == [("triplet_diagram", [str(tmp_path / "x.png")], 7)]
    log_image_to_wandb([], tmp_path / "x.png", step=7, key="triplet_diagram")  # no logger: no-op


@pytest.mark.parametrize("epochs", [None, [1]])
def test_epoch_selection(tmp_path: Path, epochs) -> None:
    fit(tmp_path, TripletDiagram(epochs=epochs, bins=5), epochs=2)
    names = sorted(p.stem for p in (tmp_path / "triplet_diagrams").glob("*.png"))
    assert names == (["epoch_000", "epoch_001"] if epochs is None else ["epoch_001"])
