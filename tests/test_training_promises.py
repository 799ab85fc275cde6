"""The training loop's promises, tested where users meet them: through ``dml.training.train`` (the
function behind ``dml-train``) with a real Lightning ``Trainer``."""

import json
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate

from dml.data import PKBatchSampler

from .training_utils import tiny_config


class RecordBatches(L.Callback):
    """Appends ``[epoch, batch_idx, dataset indices]`` of every training batch to a JSON-lines file;
    raises at ``crash_at`` = ``[epoch, batch_idx]`` (a simulated kill)."""

    def __init__(self, path: str, crash_at: list[int] | None = None) -> None:
        self.path, self.crash_at = Path(path), crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if [trainer.current_epoch, batch_idx] == self.crash_at:
            raise RuntimeError("simulated crash")
        with self.path.open("a") as f:
            f.write(json.dumps([trainer.current_epoch, batch_idx, batch[2].tolist()]) + "\n")


def recorded(path: Path) -> dict[int, list[list[int]]]:
    epochs: dict[int, list[list[int]]] = {}
    for line in path.read_text().splitlines():
        epoch, batch_idx, indices = json.loads(line)
        assert batch_idx == len(epochs.setdefault(epoch, []))
        epochs[epoch].append(indices)
    return epochs


def expected_batches(cfg, epochs: int) -> dict[int, list[list[int]]]:
    """What :class:`PKBatchSampler` gives for (seed, epoch) on the run's training split."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    labels = datamodule.datasets["train"].labels
    sampler = PKBatchSampler(labels, cfg.data.batch_p, cfg.data.batch_k, cfg.seed)
    out = {}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out[epoch] = list(sampler)
    return out


def record_overrides(log: Path, crash_at: str | None = None) -> list[str]:
    out = [
        "+callbacks.record._target_=tests.test_training_promises.RecordBatches",
        f"+callbacks.record.path={log}",
    ]
    return [*out, f"+callbacks.record.crash_at={crash_at}"] if crash_at else out


def test_every_epoch_draws_the_samplers_batches_for_that_epoch(tmp_path):
    from dml.training import train

    log = tmp_path / "batches.jsonl"
    run = tmp_path / "run"
    cfg = tiny_config(run, "trainer.max_epochs=3", "test=false", *record_overrides(log))
    train(cfg)
    seen, expected = recorded(log), expected_batches(cfg, 3)
    assert seen == expected
    assert seen[0] != seen[1] != seen[2] != seen[0]  # new batches every epoch


def test_a_resumed_run_continues_with_the_right_epochs_batches(tmp_path):
    from dml.training import train

    log = tmp_path / "batches.jsonl"
    run = tmp_path / "run"
    crash = tiny_config(run, "trainer.max_epochs=3", "test=false", *record_overrides(log, "[1,2]"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crash)
    log.write_text("")  # what the resumed run draws
    train(tiny_config(run, "trainer.max_epochs=3", "test=false", "ckpt_path=last",
                      *record_overrides(log)))
    expected = expected_batches(crash, 3)
    assert recorded(log) == {1: expected[1], 2: expected[2]}
