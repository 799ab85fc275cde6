"""DDP on CPU (gloo): two processes mean the same as one process on the same global batch.

One 2-process gloo group (``torch.multiprocessing``; rendezvous through a file, so no port can
clash) runs every distributed check once; the test functions compare its results with the same
computations done here in a single process.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from dml.data import DMLDataModule, PKBatchSampler
from dml.data.synthetic import Synthetic
from dml.data.transforms import build_transform
from dml.distributed import (
    all_gather_cat,
    broadcast_object,
    gather_batch,
    gather_in_dataset_order,
    rank_and_world_size,
)
from dml.losses import DMLLoss, MarginTripletLoss, SCTLoss
from dml.losses.loop import LoOpTripletLoss
from dml.losses.wrappers.xbm import CrossBatchMemory
from dml.miners import BatchHardMiner
from dml.train.callbacks.triplet_diagram import TripletDiagram
from dml.train.module import DMLModule

WORLD = 2
P, K, SEED = 4, 3, 7  # the global batch: P classes × K images, split by class over the ranks
DIM_IN, DIM = 8, 6


class LearnedScale(DMLLoss):
    """``s · L(e, y)`` with a learned ``s``: a loss with parameters of its own, whose gradient
    DDP must not multiply by the world size."""

    def __init__(self, base: DMLLoss) -> None:
        super().__init__()
        self.base = base
        self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def compute(self, embeddings, labels, out, indices=None) -> torch.Tensor:
        return self.scale * self.base.compute(embeddings, labels, out, indices)


def batch_hard() -> MarginTripletLoss:
    return MarginTripletLoss(margin=0.2, miner=BatchHardMiner("euclidean"), distance="euclidean")


LOSSES = {
    "triplet_batchhard": batch_hard,
    "sct": SCTLoss,
    "loop_triplet": partial(LoOpTripletLoss, margin=0.2),
    "learned_scale": lambda: LearnedScale(batch_hard()),
}


class Embed(nn.Module):
    """A linear embedding, L2-normalised (no BatchNorm: per-rank statistics are another matter,
    handled by ``trainer.sync_batchnorm``)."""

    def __init__(self, dim_in: int = DIM_IN) -> None:
        super().__init__()
        self.backbone = nn.Identity()  # DMLModule's optimizer groups: backbone and head
        self.head = nn.Linear(dim_in, DIM, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(x.flatten(1).double()), dim=1)


class TrainingStep(nn.Module):
    """DDP's forward routed to ``training_step``, as Lightning's DDP wrapper does. The module is
    attached to a barebones Trainer (no fit): ``self.log`` is a no-op and the trainer's strategy
    answers the module's questions (one process, so its own answer)."""

    def __init__(self, module: DMLModule) -> None:
        super().__init__()
        self.module = module
        module.trainer = L.Trainer(barebones=True, accelerator="cpu", devices=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.module.training_step((x, y), 0)


def make_module(loss: str, cross_rank_mining: bool = True) -> DMLModule:
    torch.manual_seed(0)
    return DMLModule(
        net=Embed(),
        loss=LOSSES[loss](),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        cross_rank_mining=cross_rank_mining,
    )


def features() -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(7).repeat_interleave(6)
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(labels), DIM_IN, generator=g, dtype=torch.float64), labels


def first_batch(labels: torch.Tensor, rank: int = 0, world: int = 1) -> list[int]:
    return next(iter(PKBatchSampler(labels, P, K, SEED, rank, world)))


def memory_run(rank: int = 0, world: int = 1) -> tuple[list, dict[str, torch.Tensor]]:
    """Three steps of batch-hard triplet with a cross-batch memory of 24 (it wraps around on the
    third global batch of 12): each step's loss and gradients, and the memory after them."""
    torch.manual_seed(0)
    module = DMLModule(
        net=Embed(),
        loss=CrossBatchMemory(batch_hard(), size=24, embedding_dim=DIM).double(),
        optimizer=partial(torch.optim.SGD, lr=0.1),
    )
    step = TrainingStep(module)
    # no buffer broadcast (as DMLModule asks Lightning's DDP): identical memories by construction
    model = DistributedDataParallel(step, broadcast_buffers=False) if world > 1 else step
    x, labels = features()
    steps = []
    for _, shard in zip(range(3), PKBatchSampler(labels, P, K, SEED, rank, world), strict=False):
        module.zero_grad()
        steps.append(loss_and_grads(model, x[shard], labels[shard]))
    return steps, {k: v.clone() for k, v in module.loss.state_dict().items()}


def loss_and_grads(module: nn.Module, *batch: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    loss = module(*batch)["loss"]  # training_step's outputs
    loss.backward()
    params = module.module.parameters()
    return loss.item(), [p.grad.detach().clone() for p in params]


def evaluate(world_size: int) -> dict[str, dict[str, float]]:
    """Validation and test metrics of a fixed model, through Lightning and the DataModule; 15
    images per split, so 2 ranks read 8 each (one padding duplicate) in batches of 4."""
    transform = build_transform(size=8, channels=1, mean=[0.5], std=[0.25])
    datamodule = DMLDataModule(
        Synthetic(train_classes=8, test_classes=3, images_per_class=5, size=8),
        transform, transform, batch_p=2, batch_k=2, val_holdout=3, eval_batch_size=4,
    )
    datamodule.setup()
    torch.manual_seed(0)
    module = DMLModule(Embed(dim_in=64), batch_hard(), partial(torch.optim.SGD, lr=0.1), nmi=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=world_size, strategy="ddp" if world_size > 1 else "auto",
        precision="64-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
    )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.eval_metrics


class NumTriplets(Callback):
    """The ``num_triplets`` this rank's loss reported, step by step."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.counts.append(len(outputs["triplet_similarities"][0]))


def diagram_run(world_size: int, cross: bool, root: Path) -> tuple[float | None, list[int]]:
    """One epoch of 3 SCT steps (P = 4 classes × K = 3 images per global batch) through
    Lightning with the triplet diagram: its total count (rank 0; None on the others) and the
    ``num_triplets`` of this rank's loss per step."""
    transform = build_transform(size=8, channels=1, mean=[0.5], std=[0.25])
    datamodule = DMLDataModule(
        Synthetic(train_classes=8, test_classes=3, images_per_class=6, size=8),
        transform, transform, batch_p=4, batch_k=3,
    )
    torch.manual_seed(0)
    module = DMLModule(Embed(dim_in=64), SCTLoss(), partial(torch.optim.SGD, lr=0.1),
                       cross_rank_mining=cross)
    counter = NumTriplets()
    trainer = L.Trainer(
        accelerator="cpu", devices=world_size, strategy="ddp" if world_size > 1 else "auto",
        precision="64-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, max_epochs=1,
        limit_train_batches=3, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=root, callbacks=[TripletDiagram(bins=10), counter],
    )
    trainer.fit(module, datamodule=datamodule)
    if not trainer.is_global_zero:
        return None, counter.counts
    return float(np.load(root / "triplet_diagrams" / "epoch_000.npz")["hist"].sum()), counter.counts


def collectives(rank: int) -> dict[str, object]:
    """The primitives on uneven shards: rank r holds rows 10r .. 10r + 2 + r."""
    local = torch.arange(10 * rank, 10 * rank + 3 + rank, dtype=torch.float64)
    indices = torch.tensor([[0, 2, 4, 0], [1, 3, 3]][rank])  # rank 0 pads with 0, rank 1 with 3
    emb, lab = gather_in_dataset_order(indices[:, None] * 1.0, indices * 10, indices)
    return {
        "cat": all_gather_cat(local),
        "ordered": (emb, lab),
        "broadcast": broadcast_object({"from": rank}),
        "rank_world": rank_and_world_size(),
    }


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # 2 processes on a small machine; no OpenMP pool inherited by fork
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    x, labels = features()
    shard = first_batch(labels, rank, WORLD)
    results: dict[object, object] = {"collectives": collectives(rank)}
    for name in LOSSES:
        for cross in (True, False):
            ddp = DistributedDataParallel(TrainingStep(make_module(name, cross)))
            results[name, cross] = loss_and_grads(ddp, x[shard], labels[shard])
    results["memory"] = memory_run(rank, WORLD)
    # Lightning finds the process group ready and this process listed as its local rank.
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(WORLD))
    results["eval"] = evaluate(WORLD)
    for cross in (True, False):
        results["diagram", cross] = diagram_run(WORLD, cross, Path(out_dir) / f"diagram_{cross}")
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' results. Forked, not spawned: the workers start without re-importing Lightning
    (seconds instead of half a minute on two cores)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(out / "rendezvous"), str(out)), nprocs=WORLD, join=True,
                       start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def single_process(name: str, batch: list[int]) -> tuple[float, list[torch.Tensor]]:
    x, labels = features()
    return loss_and_grads(TrainingStep(make_module(name)), x[batch], labels[batch])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(LOSSES))
def test_cross_rank_mining_equals_one_process_on_the_global_batch(ranks, name):
    loss, grads = single_process(name, first_batch(features()[1]))
    assert loss > 0 and all(g.abs().sum() > 0 for g in grads)
    for result in ranks:
        ddp_loss, ddp_grads = result[name, True]
        assert ddp_loss == pytest.approx(loss, abs=1e-6)
        for got, want in zip(ddp_grads, grads, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_per_rank_mining_averages_the_shards_losses_gradients(ranks, name):
    labels = features()[1]
    shards = [single_process(name, first_batch(labels, r, WORLD)) for r in range(WORLD)]
    for result, (loss, _) in zip(ranks, shards, strict=True):
        assert result[name, False][0] == pytest.approx(loss, abs=1e-6)
    for i, got in enumerate(ranks[0][name, False][1]):
        want = sum(grads[i] for _, grads in shards) / WORLD
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    if name == "triplet_batchhard":  # the flag matters: hardest negatives come from other ranks
        assert ranks[0][name, False][0] != pytest.approx(ranks[0][name, True][0], abs=1e-3)


def test_a_memory_under_cross_rank_mining_equals_one_process_and_is_the_same_on_each_rank(
        ranks):
    """Loss and gradients of every step to 1e-6, and the memory holding the global batches:
    bitwise identical on both ranks, and the same entries as one process's (the global batch is
    gathered rank by rank, so the storage order differs from one process's batch order)."""
    single_steps, single_memory = memory_run()
    assert int(single_memory["memory_count"]) == 24 and single_steps[2][0] > 0
    for result in ranks:
        steps, memory = result["memory"]
        for (loss, grads), (want_loss, want_grads) in zip(steps, single_steps, strict=True):
            assert loss == pytest.approx(want_loss, abs=1e-6)
            for got, want in zip(grads, want_grads, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert int(memory["memory_count"]) == 24
        assert rows(memory) == pytest.approx(rows(single_memory), abs=1e-12)
    for key, value in ranks[0]["memory"][1].items():  # the ranks' memories: bitwise the same
        assert torch.equal(ranks[1]["memory"][1][key], value), key


def rows(memory: dict[str, torch.Tensor]) -> list[float]:
    """A memory's (label, embedding) rows, sorted, flattened."""
    entries = torch.cat([memory["memory_labels"][:, None].double(),
                         memory["memory_embeddings"]], dim=1)
    return [v for row in sorted(entries.tolist()) for v in row]


def test_two_process_evaluation_equals_one_process(ranks):
    single = evaluate(1)
    assert set(single) == {"val", "test"} and "nmi" in single["test"]
    for result in ranks:
        assert result["eval"].keys() == single.keys()
        for split, metrics in single.items():
            assert result["eval"][split] == pytest.approx(metrics, abs=1e-12), split


def test_triplet_diagram_counts_each_global_triplet_once(ranks, tmp_path):
    """Cross-rank mining: both ranks' losses use the same global triplets, which the diagram
    counts once (as one process on the same global batches does); per-rank mining: the ranks'
    own triplets, summed."""
    single_total, single_counts = diagram_run(1, True, tmp_path)
    (total, counts0), (_, counts1) = ranks[0]["diagram", True], ranks[1]["diagram", True]
    assert len(counts0) == 3 and counts0 == counts1 == single_counts and all(counts0)
    assert total == sum(counts0) == single_total == sum(single_counts)
    (total, counts0), (_, counts1) = ranks[0]["diagram", False], ranks[1]["diagram", False]
    assert all(counts0) and all(counts1)
    assert total == sum(counts0) + sum(counts1)


def test_collectives_on_uneven_shards(ranks):
    for rank, result in enumerate(ranks):
        c = result["collectives"]
        assert c["rank_world"] == (rank, WORLD)
        assert c["cat"].tolist() == [0, 1, 2, 10, 11, 12, 13]
        emb, lab = c["ordered"]
        assert emb[:, 0].tolist() == [0, 1, 2, 3, 4] and lab.tolist() == [0, 10, 20, 30, 40]
        assert c["broadcast"] == {"from": 0}


def test_single_process_is_the_identity():
    emb, labels = torch.randn(5, 3, requires_grad=True), torch.arange(5)
    batch, batch_labels = gather_batch(emb, labels)
    assert batch is emb and batch_labels is labels
    assert all_gather_cat(labels) is labels and broadcast_object([1]) == [1]
    out, lab = gather_in_dataset_order(emb, labels, torch.tensor([3, 0, 4, 1, 0]))
    torch.testing.assert_close(out, emb[[1, 3, 0, 2]])
    assert lab.tolist() == [1, 3, 0, 2]


def test_gradient_reaches_only_the_local_shard_scaled_by_world_size(monkeypatch):
    """The backward rule without a process group: rank 1 of 2 with shards of 2 and 3 rows."""
    from dml import distributed

    monkeypatch.setattr(distributed, "rank_and_world_size", lambda: (1, 2))
    monkeypatch.setattr(distributed, "_gather_shards", lambda x: [x[:2] * 0 + 7, x])
    local = torch.randn(3, 2, requires_grad=True)
    batch, _ = distributed.gather_batch(local, torch.arange(3))
    assert batch.shape == (5, 2)
    weights = torch.arange(10.0).view(5, 2)
    (batch * weights).sum().backward()
    torch.testing.assert_close(local.grad, 2 * weights[2:])


def test_datamodule_shards_train_and_eval_loaders_by_rank():
    transform = build_transform(size=8, channels=1, mean=[0.5], std=[0.25])
    dm = DMLDataModule(Synthetic(train_classes=8, test_classes=3, images_per_class=5, size=8),
                       transform, transform, batch_p=4, batch_k=2, val_holdout=2)
    dm.setup()
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    train = dm.train_dataloader().batch_sampler
    assert (train.rank, train.world_size) == (1, 2)
    (val,) = dm.val_dataloader()
    assert isinstance(val.sampler, DistributedSampler) and not val.sampler.shuffle
    assert list(val.sampler) == list(range(1, len(dm.datasets["val"]), 2))
    dm.trainer = None
    assert list(dm.val_dataloader()[0].sampler) == list(range(len(dm.datasets["val"])))


@pytest.mark.parametrize("world", [2, 4])
def test_pk_shards_partition_each_global_batch_every_epoch(world):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([2, 9, 4, 7, 3, 8, 5, 6])])
    with pytest.warns(UserWarning, match="fewer than K"):
        single = PKBatchSampler(labels, 4, 3, seed=2)
        shards = [PKBatchSampler(labels, 4, 3, seed=2, rank=r, world_size=world)
                  for r in range(world)]
    for epoch in range(3):
        for s in (single, *shards):
            s.set_epoch(epoch)
        steps = [list(s) for s in shards]
        assert {len(s) for s in steps} == {len(list(single))}
        for t, global_batch in enumerate(single):
            parts = [steps[r][t] for r in range(world)]
            assert sorted(i for part in parts for i in part) == sorted(global_batch)
            classes = [c for part in parts for c in set(labels[part].tolist())]
            assert len(classes) == len(set(classes)) == 4
            assert all(set(Counter(labels[p].tolist()).values()) == {3} for p in parts)
        assert steps == [list(s) for s in shards]  # the epoch replays identically
