"""Forward + backward time of the LoOp triplet loss vs batch-hard triplet on the same batch.

B = 128 = P 32 classes × K 4 unit embeddings of d = 512, float32, CPU; both losses measured in
the same run, interleaved, median of ``--repeats`` after warm-up. LoOp-triplet (margin 0.2)
solves the arc-to-arc problem for every two positive pairs of different classes (192 pairs,
17,856 pairs of pairs); the peer is :class:`~dml.losses.MarginTripletLoss` with batch-hard
mining (Euclidean, margin 0.2). Also shown: the ``endpoints_only`` ablation and the other LoOp
losses. Ratio = LoOp time / batch-hard time (the bar: < 5).

Times are CPU time of this process (``time.process_time``; one intra-op thread), which does not
count the time the process waits while other processes use the cores; wall-clock medians are
printed too. Run: ``python benchmarks/bench_loop.py`` (``--threads N`` for more threads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from dml.losses import MarginTripletLoss
from dml.losses.loop import (
    LoOpContrastiveLoss,
    LoOpLiftedStructureLoss,
    LoOpMultiSimilarityLoss,
    LoOpTripletLoss,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def step(fn: LossFn, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one forward + backward."""
    x.grad = None
    cpu, wall = time.process_time(), time.perf_counter()
    fn(x, labels).backward()
    return time.process_time() - cpu, time.perf_counter() - wall


def median_ms(times: list[tuple[float, float]], which: int) -> float:
    return statistics.median(t[which] for t in times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: stable on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    batch = args.classes * args.per_class
    x = F.normalize(torch.randn(batch, args.dim), dim=1).requires_grad_()
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    peer = MarginTripletLoss(margin=0.2)  # batch-hard, Euclidean, mean over anchors
    contenders: dict[str, LossFn] = {
        "LoOp triplet": LoOpTripletLoss(margin=0.2),
        "LoOp triplet endpoints_only": LoOpTripletLoss(margin=0.2, endpoints_only=True),
        "LoOp contrastive": LoOpContrastiveLoss(),
        "LoOp multi-similarity": LoOpMultiSimilarityLoss(),
        "LoOp lifted structure": LoOpLiftedStructureLoss(),
    }
    print(
        f"B={batch} (P={args.classes} x K={args.per_class}) d={args.dim} float32 CPU "
        f"threads={torch.get_num_threads()} torch={torch.__version__}; "
        f"median of {args.repeats} forward+backward, interleaved with batch-hard triplet (ms)"
    )
    header = (
        f"{'loss':<28} {'CPU ms':>7} {'batch-hard':>10} {'ratio':>6}   {'wall ms':>7} {'ratio':>6}"
    )
    print(header)
    for name, loss in contenders.items():
        for _ in range(args.warmup):
            step(loss, x, labels)
            step(peer, x, labels)
        ours, base = [], []
        for _ in range(args.repeats):
            ours.append(step(loss, x, labels))
            base.append(step(peer, x, labels))
        cpu, cpu_peer = median_ms(ours, 0), median_ms(base, 0)
        wall, wall_peer = median_ms(ours, 1), median_ms(base, 1)
        print(
            f"{name:<28} {cpu:7.2f} {cpu_peer:10.2f} {cpu / cpu_peer:6.2f}   "
            f"{wall:7.2f} {wall / wall_peer:6.2f}"
        )


if __name__ == "__main__":
    main()
