"""Forward + backward time of batch-hard triplet with a cross-batch memory: ours
(``memory=xbm``: :class:`~dml.losses.wrappers.xbm.CrossBatchMemory`) vs pytorch-metric-learning's
``CrossBatchMemory``, on the same inputs, and the memory each keeps, in bytes.

B = 128 unit embeddings of d = 128 (32 classes × 4) against a full memory of 8,192 × 128 (labels
of 2,048 classes), float32, CPU; both sides measured in the same run, interleaved, median of
``--repeats`` after warm-up. Both enqueue the batch at every step. Ours computes
``L(B, B) + L(B, M)`` (the XBM paper's loss, M the past steps); PML computes ``L(B, M ∪ B)``
(the batch enqueued first, self-comparisons removed), one matrix of 128 × 8,192. Both:
Euclidean margin 0.2 triplet, batch-hard mining.

Ratio = PML time / our time (> 1: we are faster). Run: ``python benchmarks/bench_memory.py``
(``--threads N`` for more intra-op threads).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import add_batch_args, interleaved_median_ms, unit_batch
from pytorch_metric_learning import distances, losses, miners

from dml.losses import MarginTripletLoss
from dml.losses.wrappers.xbm import CrossBatchMemory
from dml.miners import BatchHardMiner


def ours(memory: torch.Tensor, memory_labels: torch.Tensor) -> CrossBatchMemory:
    loss = CrossBatchMemory(
        MarginTripletLoss(0.2, BatchHardMiner("euclidean"), "euclidean"),
        size=len(memory), embedding_dim=memory.shape[1], warmup_epochs=0,
    )
    loss.memory_embeddings.copy_(memory)
    loss.memory_labels.copy_(memory_labels)
    loss.memory_count.fill_(len(memory))
    return loss


def pml(memory: torch.Tensor, memory_labels: torch.Tensor) -> torch.nn.Module:
    lp = distances.LpDistance(normalize_embeddings=False)
    loss = losses.CrossBatchMemory(
        losses.TripletMarginLoss(margin=0.2, distance=lp), embedding_size=memory.shape[1],
        memory_size=len(memory), miner=miners.BatchHardMiner(distance=lp),
    )
    loss.embedding_memory.copy_(memory)
    loss.label_memory = memory_labels.clone()
    loss.has_been_filled = True
    return loss


def memory_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.buffers()) or [module.embedding_memory, module.label_memory]
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_batch_args(parser, batch=128, dim=128)
    parser.add_argument("--memory", type=int, default=8192)
    args = parser.parse_args()
    x, labels = unit_batch(args)
    memory = F.normalize(torch.randn(args.memory, args.dim), dim=1)
    memory_labels = torch.randint(0, args.memory // 4, (args.memory,))
    a, b = ours(memory, memory_labels), pml(memory, memory_labels)
    print(
        f"B={args.batch} d={args.dim} memory={args.memory} float32 CPU "
        f"threads={torch.get_num_threads()} torch={torch.__version__}; median of {args.repeats} "
        "forward+backward (batch-hard triplet, memory full)"
    )
    ms_ours, ms_pml = interleaved_median_ms([a, b], x, labels, args.repeats, args.warmup)
    print(f"{'':<22} {'ours':>10} {'PML':>10} {'PML/ours':>9}")
    print(f"{'time (ms)':<22} {ms_ours:10.2f} {ms_pml:10.2f} {ms_pml / ms_ours:9.2f}")
    bytes_ours, bytes_pml = memory_bytes(a), memory_bytes(b)
    print(f"{'memory (bytes)':<22} {bytes_ours:10d} {bytes_pml:10d} {bytes_pml / bytes_ours:9.2f}")


if __name__ == "__main__":
    main()
