"""Cross-batch memory (``memory=xbm``) against a slow reference: a Python list as the FIFO queue and
explicit loops over (anchor, reference) for mining and loss (float64, values and gradients),
through empty, partly filled and wrapped-around memories, an anchor's own earlier embeddings,
classes present only in the memory, duplicates and identical embeddings."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

from dml.errors import ConfigError
from dml.losses import (
    ContrastiveLoss,
    DMLLoss,
    LoOpTripletLoss,
    MarginTripletLoss,
    MultiSimilarityLoss,
    SCTLoss,
)
from dml.losses.base import References
from dml.losses.wrappers.xbm import CrossBatchMemory

Ref = list[tuple[torch.Tensor, int]]  # (embedding, label) pairs an anchor is compared with
RefsOf = Callable[[int], Ref]  # anchor index -> its references


# ----------------------------------------------------------------------------- references
def cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum() / (u.norm() * v.norm())


def dist(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u - v).sum() * 0 if torch.equal(u, v) else ((u - v) ** 2).sum().sqrt()


def candidates(labels, refs: Ref, i: int):
    """Indices of anchor i's positives and negatives among its references."""
    pos = [j for j, (_, y) in enumerate(refs) if y == labels[i]]
    neg = [j for j, (_, y) in enumerate(refs) if y != labels[i]]
    return pos, neg


def batch_refs(x, labels) -> RefsOf:
    """The batch, the anchor itself left out (index order kept)."""
    return lambda i: [(x[j], labels[j]) for j in range(len(labels)) if j != i]


def same_refs(refs: Ref) -> RefsOf:
    return lambda i: refs


def first_best(indices: list[int], score) -> int:
    best = indices[0]
    for j in indices[1:]:
        if score(j) > score(best):
            best = j
    return best


def ref_margin_batch_hard(x, labels, refs_of: RefsOf) -> torch.Tensor:
    """Margin 0.2, Euclidean, hardest positive and negative per anchor; mean."""
    terms = []
    for i in range(len(labels)):
        refs = refs_of(i)
        pos, neg = candidates(labels, refs, i)
        if not pos or not neg:
            continue
        d = {j: dist(x[i], refs[j][0]).item() for j in pos + neg}
        closeness = {j: -v for j, v in d.items()}
        p, n = first_best(pos, d.get), first_best(neg, closeness.get)
        terms.append(torch.relu(dist(x[i], refs[p][0]) - dist(x[i], refs[n][0]) + 0.2))
    return sum(terms) / len(terms) if terms else x.sum() * 0


def ref_sct(x, labels, refs_of: RefsOf) -> torch.Tensor:
    """SCT defaults: closest positive (no near-duplicates), closest negative, |S| < 1 valid,
    hard if S_an > S_ap or S_an > 0.8 (term S_an), else softplus((S_an - S_ap)/0.1)."""
    bound = 1 - 16 * 2.0**-52
    terms = []
    for i in range(len(labels)):
        refs = refs_of(i)
        pos, neg = candidates(labels, refs, i)
        pos = [j for j in pos if cos(x[i], refs[j][0]).item() <= 0.9999]
        if not pos or not neg:
            continue
        sim = {j: cos(x[i], refs[j][0]).item() for j in pos + neg}
        p, n = first_best(pos, sim.get), first_best(neg, sim.get)
        s_ap, s_an = cos(x[i], refs[p][0]), cos(x[i], refs[n][0])
        if abs(s_ap.item()) >= bound or abs(s_an.item()) >= bound:
            continue
        hard = s_an.item() > s_ap.item() or s_an.item() > 0.8
        terms.append(s_an if hard else torch.log1p(torch.exp((s_an - s_ap) / 0.1)))
    return sum(terms) / len(terms) if terms else x.sum() * 0


def ref_multisimilarity(x, labels, refs_of: RefsOf) -> torch.Tensor:
    """MS mining (ε = 0.1) and loss (α = 2, β = 50, λ = 0.5), mean over the B anchors."""
    total = x.sum() * 0
    for i in range(len(labels)):
        refs = refs_of(i)
        pos, neg = candidates(labels, refs, i)
        s = {j: cos(x[i], refs[j][0]) for j in pos + neg}
        if pos and neg:
            hardest_pos = min(s[j].item() for j in pos)
            hardest_neg = max(s[j].item() for j in neg)
            kept_pos = [j for j in pos if s[j].item() - 0.1 < hardest_neg]
            kept_neg = [j for j in neg if s[j].item() + 0.1 > hardest_pos]
            zero = x.sum() * 0
            total = total + torch.log(1 + sum((torch.exp(-2 * (s[j] - 0.5)) for j in kept_pos),
                                              zero)) / 2
            total = total + torch.log(1 + sum((torch.exp(50 * (s[j] - 0.5)) for j in kept_neg),
                                              zero)) / 50
    return total / len(labels)


def ref_contrastive(x, labels, refs_of: RefsOf) -> torch.Tensor:
    """Euclidean, margins 0 (positives) and 1 (negatives), each hinge averaged over its non-zero
    terms, over all pairs."""
    pos_terms, neg_terms = [], []
    for i in range(len(labels)):
        refs = refs_of(i)
        pos, neg = candidates(labels, refs, i)
        pos_terms += [torch.relu(dist(x[i], refs[j][0])) for j in pos]
        neg_terms += [torch.relu(1 - dist(x[i], refs[j][0])) for j in neg]
    total = x.sum() * 0
    for terms in (pos_terms, neg_terms):
        if terms:
            total = total + sum(terms) / max(sum(1 for t in terms if t.item() != 0), 1)
    return total


CASES = {
    "margin_batch_hard": (lambda: MarginTripletLoss(0.2), ref_margin_batch_hard),
    "sct": (SCTLoss, ref_sct),
    "multisimilarity": (MultiSimilarityLoss, ref_multisimilarity),
    "contrastive": (ContrastiveLoss, ref_contrastive),
}


class ReferenceMemory:
    """XBM by the book: L(B, B) + λ L(B, M), M a list of the last `size` past embeddings."""

    def __init__(self, ref, size: int, weight: float, warmup_steps: int) -> None:
        self.ref, self.size, self.weight, self.warmup = ref, size, weight, warmup_steps
        self.memory: Ref = []
        self.steps = 0

    def __call__(self, x: torch.Tensor, labels: list[int]) -> torch.Tensor:
        batch = [(x[i], labels[i]) for i in range(len(labels))]
        value = self.ref(x, labels, batch_refs(x, labels))
        warm = self.steps >= self.warmup
        if warm and self.memory:
            value = value + self.weight * self.ref(x, labels, same_refs(self.memory))
        self.steps += 1
        if warm:
            self.memory = (self.memory + [(e.detach().clone(), y) for e, y in batch])[-self.size:]
        return value


def batches(dim: int = 5) -> list[tuple[torch.Tensor, list[int]]]:
    """Steps of a stream: new classes (present only in the memory later), an anchor's own
    earlier embeddings again, duplicates in a batch, then identical embeddings."""
    g = torch.Generator().manual_seed(3)
    first = torch.randn(8, dim, generator=g, dtype=torch.float64)
    dup = torch.randn(8, dim, generator=g, dtype=torch.float64)
    dup[1] = dup[0]  # a duplicate pair of the same class
    dup[5] = dup[2]  # a duplicate across classes
    steps = [
        (first, [0, 0, 1, 1, 2, 2, 3, 3]),
        (torch.randn(8, dim, generator=g, dtype=torch.float64), [4, 4, 5, 5, 0, 0, 6, 6]),
        (first.clone(), [0, 0, 1, 1, 2, 2, 3, 3]),  # the anchors' own earlier embeddings
        (dup, [7, 7, 1, 1, 8, 8, 4, 4]),
        (torch.randn(8, dim, generator=g, dtype=torch.float64), [9, 9, 9, 9, 0, 0, 5, 5]),
        (torch.ones(8, dim, dtype=torch.float64), [1, 1, 2, 2, 3, 3, 4, 4]),
    ]
    return steps


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("size,warmup", [(12, 0), (40, 0), (12, 2)])
def test_memory_matches_the_reference_through_a_stream(name, size, warmup):
    """Values and gradients at every step: empty memory first (and during warm-up), then
    partly filled, wrapped around (size 12 < 2 batches of 8) or holding everything."""
    make_loss, ref = CASES[name]
    loss = CrossBatchMemory(make_loss(), size=size, embedding_dim=5, weight=0.7,
                            warmup_steps=warmup).double()
    reference = ReferenceMemory(ref, size, 0.7, warmup)
    for step, (x, labels) in enumerate(batches()):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        value = loss(x1, torch.tensor(labels))
        expected = reference(x2, labels)
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12, msg=f"step {step}")
        value.backward()
        expected.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-12, msg=f"step {step}")
        assert int(loss.memory_count) == len(reference.memory)


def test_an_empty_memory_leaves_the_loss_unchanged():
    x = torch.randn(8, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    base = SCTLoss()
    wrapped = CrossBatchMemory(SCTLoss(), size=16, embedding_dim=5).double()
    assert wrapped(x, labels).item() == base(x, labels).item()
    assert int(wrapped.memory_count) == 8
    assert wrapped(x, labels).item() != base(x, labels).item()  # now the memory counts


def test_the_memory_is_a_fifo_in_storage_order():
    loss = CrossBatchMemory(MarginTripletLoss(), size=10, embedding_dim=2)
    for step in range(3):
        loss(torch.full((4, 2), float(step)), torch.tensor([step] * 4))
    # 12 entries through 10 slots: step 2 overwrote slots 8, 9, 0, 1
    assert loss.memory_labels.tolist() == [2, 2, 0, 0, 1, 1, 1, 1, 2, 2]
    assert int(loss.memory_count) == 10 and int(loss.memory_next) == 2
    refs = loss.memory()
    assert refs.embeddings[:, 0].tolist() == [2, 2, 0, 0, 1, 1, 1, 1, 2, 2]


def test_statistics_count_the_memory_tuples():
    """Triplet stats over the batch's and the memory's triplets together; memory_fraction by
    brute force; the collapse indicator stays over the batch."""
    x0, x1 = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = CrossBatchMemory(SCTLoss(), size=16, embedding_dim=5)
    loss(x0, labels)
    out = loss.result(x1, labels)
    batch = SCTLoss().result(x1, labels)
    mem = SCTLoss().result(x1, labels, references=References(x0, labels))
    s_ap = torch.cat([batch.triplet_similarities[0], mem.triplet_similarities[0]])
    s_an = torch.cat([batch.triplet_similarities[1], mem.triplet_similarities[1]])
    assert out.stats["num_triplets"].item() == len(s_ap) == 16
    assert out.stats["hard_fraction"].item() == pytest.approx((s_an > s_ap).double().mean().item())
    assert out.stats["mean_s_an"].item() == pytest.approx(s_an.mean().item())
    assert out.stats["memory_fraction"].item() == pytest.approx(8 / 16)
    assert out.stats["memory_size"].item() == 8
    assert out.stats["mean_pairwise_sim"].item() == pytest.approx(
        batch.stats["mean_pairwise_sim"].item())
    torch.testing.assert_close(out.triplet_similarities[0], s_ap)


def test_pair_statistics_are_weighted_by_pairs():
    x0, x1 = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = CrossBatchMemory(ContrastiveLoss(distance="cosine", pos_margin=0.9, neg_margin=0.1),
                            size=16, embedding_dim=5)
    loss(x0, labels)
    out = loss.result(x1, labels)
    u0, u1 = torch.nn.functional.normalize(x0), torch.nn.functional.normalize(x1)
    same = labels[:, None] == labels[None, :]
    batch_s, mem_s = u1 @ u1.T, u1 @ u0.T
    off = ~torch.eye(8, dtype=torch.bool)
    pos = torch.cat([batch_s[same & off], mem_s[same]])
    neg = torch.cat([batch_s[~same], mem_s[~same]])
    assert out.stats["mean_s_ap"].item() == pytest.approx(pos.mean().item(), rel=1e-5)
    assert out.stats["mean_s_an"].item() == pytest.approx(neg.mean().item(), rel=1e-5)
    active = ((pos < 0.9).sum() + (neg > 0.1).sum()).item()
    assert out.stats["active_fraction"].item() == pytest.approx(active / (8 * 7 + 8 * 8))
    assert out.stats["memory_fraction"].item() == pytest.approx(64 / (56 + 64))


def test_warmup_epochs_hold_the_memory_back():
    loss = CrossBatchMemory(SCTLoss(), size=16, embedding_dim=5, warmup_epochs=1)
    x, labels = torch.randn(8, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = loss.result(x, labels)
    assert int(loss.memory_count) == 0
    assert out.stats["memory_fraction"].item() == 0
    torch.testing.assert_close(out.triplet_similarities, SCTLoss().result(x, labels)
                               .triplet_similarities)  # the diagram still gets the batch's
    loss.set_epoch(1)
    loss(x, labels)
    assert int(loss.memory_count) == 8


def test_outside_training_the_memory_is_neither_used_nor_changed():
    loss = CrossBatchMemory(SCTLoss(), size=16, embedding_dim=5)
    x, labels = torch.randn(8, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss(x, labels)
    loss.eval()
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    assert loss(x, labels).item() == SCTLoss()(x, labels).item()
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_memory_is_in_the_state_dict():
    loss = CrossBatchMemory(MarginTripletLoss(), size=16, embedding_dim=5)
    loss(torch.randn(8, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    copy = CrossBatchMemory(MarginTripletLoss(), size=16, embedding_dim=5)
    copy.load_state_dict(loss.state_dict())
    x, labels = torch.randn(8, 5), torch.tensor([4, 4, 1, 1, 2, 2, 3, 3])
    assert copy(x, labels).item() == loss(x, labels).item()
    assert {"memory_embeddings", "memory_labels", "memory_count", "memory_next", "steps"} <= set(
        loss.state_dict())
    loss(torch.randn(8, 5), torch.tensor([5, 5, 1, 1, 2, 2, 3, 3]))  # wraps: next slot 8 % 16 = 8
    copy.load_state_dict(loss.state_dict())
    assert int(copy.memory_next) == int(loss.memory_next) == 8
    x, labels = torch.randn(8, 5), torch.tensor([6, 6, 1, 1, 2, 2, 3, 3])
    assert copy(x, labels).item() == loss(x, labels).item()
    torch.testing.assert_close(copy.memory_embeddings, loss.memory_embeddings, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: CrossBatchMemory(SCTLoss(), size=4, embedding_dim=5),
         r"^memory.size=4 is smaller than the batch \(8 embeddings.*set memory.size >= 8$"),
        (lambda: CrossBatchMemory(SCTLoss(), weight=-1.0),
         r"^memory.weight must be >= 0, got -1.0$"),
        (lambda: CrossBatchMemory(LoOpTripletLoss()),
         r"^memory=xbm wraps a triplet or pair loss .* got LoOpTripletLoss .* drop memory=$"),
        (lambda: CrossBatchMemory(SCTLoss(), size=0),
         r"^memory.size must be an integer >= 1"),
    ],
)
def test_bad_memory_settings_are_one_line_errors(make, message):
    with pytest.raises(ConfigError, match=message) as error:
        make()(torch.randn(8, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert "\n" not in str(error.value)


def test_a_loss_without_references_refuses_them_in_one_line():
    class Plain(DMLLoss):
        def compute(self, embeddings, labels, out, indices=None):
            return embeddings.sum()

    with pytest.raises(ConfigError, match=r"^Plain compares a batch with itself only"):
        Plain().result(torch.randn(4, 3), torch.arange(4),
                       references=References(torch.randn(2, 3), torch.arange(2)))


def test_memory_bytes_follow_the_documented_formula():
    loss = CrossBatchMemory(SCTLoss(), size=8192, embedding_dim=128)
    buffers = sum(b.numel() * b.element_size() for b in loss.buffers())
    assert buffers == 8192 * (128 * 4 + 8) + 3 * 8  # + count, next slot and step counters


# ----------------------------------------------------------------------------- end to end
def memory_log(run_dir) -> dict[int, float]:
    """Per epoch, the largest ``train/memory_size`` logged."""
    import csv

    sizes: dict[int, float] = {}
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/memory_size"):
                epoch = int(row["epoch"])
                sizes[epoch] = max(sizes.get(epoch, 0.0), float(row["train/memory_size"]))
    return sizes


def test_memory_xbm_trains_through_the_real_config_with_its_warmup(tmp_path):
    """``memory=xbm`` wraps the configured loss; the module tells it the epoch, so with one warm-up
    epoch the memory stays empty in epoch 0 and fills in epoch 1."""
    from dml.train.run import train
    from tests.training_utils import tiny_config

    cfg = tiny_config(tmp_path, "loss=sct", "memory=xbm", "memory.size=64",
                      "trainer.log_every_n_steps=1")
    assert cfg.memory.embedding_dim == 16  # follows model.embedding_dim
    train(cfg)
    sizes = memory_log(tmp_path)
    assert sizes[0] == 0 and sizes[1] > 0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["loss.memory_count"]) > 0


def test_a_killed_run_with_a_memory_resumes_bit_identically(tmp_path):
    from dml.train.run import train
    from tests.training_utils import tiny_config

    overrides = ("loss=triplet_batchhard", "memory=xbm", "memory.size=24",
                 "trainer.max_epochs=3")  # warm-up epoch 0: the resumed run must know its epoch
    full_dir, crash_dir = tmp_path / "full", tmp_path / "crash"
    train(tiny_config(full_dir, *overrides))
    crash = tiny_config(crash_dir, *overrides,
                        "+callbacks.crash._target_=tests.test_training.StopAfter",
                        "+callbacks.crash.epoch=2", "+callbacks.crash.batch=1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crash)
    state = torch.load(crash_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["loss.memory_count"]) > 0  # killed with a non-empty memory
    train(tiny_config(crash_dir, *overrides, "ckpt_path=last"))
    full = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(crash_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert full.keys() == resumed.keys()
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


def test_a_memory_under_ddp_without_cross_rank_mining_is_a_one_line_error():
    from types import SimpleNamespace

    from dml.models.backbone import EmbeddingNet
    from dml.train.module import DMLModule

    module = DMLModule(EmbeddingNet("conv4", embedding_dim=8, in_chans=1),
                       CrossBatchMemory(SCTLoss(), size=16, embedding_dim=8),
                       torch.optim.SGD, cross_rank_mining=False)
    module._trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ConfigError, match=r"^memory=xbm under DDP .*module.cross_rank_mining=true"):
        module.on_fit_start()
    module._trainer = SimpleNamespace(world_size=1)
    module.on_fit_start()  # one process: its memory is the global one
    module.cross_rank_mining, module._trainer = True, SimpleNamespace(world_size=2)
    module.on_fit_start()


def test_ddp_does_not_broadcast_the_memory():
    from dml.models.backbone import EmbeddingNet
    from dml.train.module import DMLModule

    module = DMLModule(EmbeddingNet("conv4", embedding_dim=8, in_chans=1),
                       CrossBatchMemory(SCTLoss(), size=16, embedding_dim=8), torch.optim.SGD)
    ignored = set(module._ddp_params_and_buffers_to_ignore)
    assert ignored == {n for n, _ in module.named_buffers() if n.startswith("loss.")}
    assert "loss.memory_embeddings" in ignored
    plain = DMLModule(EmbeddingNet("conv4", embedding_dim=8, in_chans=1), SCTLoss(),
                      torch.optim.SGD)
    assert plain._ddp_params_and_buffers_to_ignore == []


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("memory=xbm", "synthesis=mochi"), r"^memory= and synthesis= cannot be combined yet"),
        (("synthesis=embedding_expansion", "+model.normalize=false"),
         r"^synthesis= makes unit-norm points: set model.normalize=true"),
        (("loss=triplet_all", "memory=xbm"),
         r"^memory=xbm with loss/miner=all_triplets .* choose another miner"),
        (("loss=triplet_all", "synthesis=mochi"), r"^synthesis=mochi with loss/miner=all_triplets"),
    ],
)
def test_impossible_wrapper_configs_are_one_line_errors(tmp_path, overrides, message):
    from dml.train.run import build_module
    from tests.training_utils import tiny_config

    with pytest.raises(ConfigError, match=message) as error:
        build_module(tiny_config(tmp_path, *overrides))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("override", "message"), [
    ("memory.size=3", "memory.size=3 is smaller than the batch (8 embeddings"),
    ("memory.embedding_dim=7", "memory.embedding_dim=7 differs from the model's embedding size 16"),
])
def test_a_memory_that_does_not_fit_is_refused_before_the_run_writes_anything(
    tmp_path, override, message
):
    from dml.errors import ConfigError
    from dml.train.run import train
    from tests.training_utils import tiny_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        train(tiny_config(tmp_path, "loss=triplet_batchhard", "memory=xbm", override))
    assert [p.name for p in tmp_path.iterdir()] == [".dml.lock"]  # a retry may use it


def test_a_memory_bigger_than_the_machine_is_one_line_before_allocating(tmp_path):
    from dml.errors import ConfigError
    from dml.train.run import train
    from tests.training_utils import tiny_config

    with pytest.raises(ConfigError, match=r"^memory.size=100000000000 needs 6705.5 GiB .* more "
                                          r"than this machine's [\d.]+ GiB: set a smaller"):
        train(tiny_config(tmp_path, "loss=triplet_batchhard", "memory=xbm",
                          "memory.size=100000000000"))


def test_the_module_asks_the_loss_contract_not_its_class():
    """Any loss declaring ``buffers_from_global_batch`` (not only CrossBatchMemory) has its own
    buffers kept out of DDP's broadcast; the PML bridge does not mine tuples from the batch."""
    from dml.losses.pml import PMLLoss
    from dml.models.backbone import EmbeddingNet
    from dml.train.module import DMLModule

    class Queue(SCTLoss):
        buffers_from_global_batch = True

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("queue", torch.zeros(4))

    module = DMLModule(EmbeddingNet("conv4", embedding_dim=8, in_chans=1), Queue(),
                       torch.optim.SGD)
    assert module._ddp_params_and_buffers_to_ignore == ["loss.queue"]
    assert SCTLoss.mines_tuples and CrossBatchMemory.mines_tuples and not PMLLoss.mines_tuples
