"""Forward + backward time of our losses vs their pytorch-metric-learning (PML) equivalents.

B = 512 unit embeddings of d = 512 (128 classes × 4), float32, CPU, both sides measured in the
same run, interleaved, median of ``--repeats`` after warm-up. Pairs compared:

* batch-hard margin triplet (Euclidean, margin 0.2, average over non-zero terms) vs PML
  TripletMarginLoss + BatchHardMiner, configured to compute the same function;
* SCT (EPHN) vs PML's nearest equivalent, TripletMarginLoss(margin 0, smooth_loss) +
  BatchEasyHardMiner(easy positive, hard negative) in cosine (= our NCA at τ = 1 with EPHN);
* multi-similarity (+ its miner) vs PML MultiSimilarityLoss + MultiSimilarityMiner.

Ratio = PML time / our time (> 1: we are faster). Run: ``python benchmarks/bench_losses.py``
(``--threads N`` for more intra-op threads; the default 1 keeps shared machines from distorting
both sides).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners

from dml.losses import MarginTripletLoss, MultiSimilarityLoss, SCTLoss
from dml.miners import BatchHardMiner

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pml_with_miner(loss: torch.nn.Module, miner: torch.nn.Module) -> LossFn:
    return lambda x, labels: loss(x, labels, miner(x, labels))


def pairs() -> dict[str, tuple[LossFn, LossFn]]:
    lp = distances.LpDistance(normalize_embeddings=False)
    cos = distances.CosineSimilarity()
    return {
        "batch-hard triplet": (
            MarginTripletLoss(0.2, BatchHardMiner("euclidean"), "euclidean", "mean_nonzero"),
            pml_with_miner(
                losses.TripletMarginLoss(margin=0.2, distance=lp),
                miners.BatchHardMiner(distance=lp),
            ),
        ),
        "SCT": (
            SCTLoss(),
            pml_with_miner(
                losses.TripletMarginLoss(margin=0.0, smooth_loss=True, distance=cos),
                miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="hard", distance=cos),
            ),
        ),
        "multi-similarity": (
            MultiSimilarityLoss(),
            pml_with_miner(losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(0.1)),
        ),
    }


def step(fn: LossFn, x: torch.Tensor, labels: torch.Tensor) -> float:
    x.grad = None
    start = time.perf_counter()
    fn(x, labels).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: stable on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = F.normalize(torch.randn(args.batch, args.dim), dim=1).requires_grad_()
    labels = torch.arange(args.batch) // args.per_class
    print(
        f"B={args.batch} d={args.dim} float32 CPU threads={torch.get_num_threads()} "
        f"torch={torch.__version__}; median of {args.repeats} forward+backward"
    )
    print(f"{'loss':<20} {'ours ms':>9} {'PML ms':>9} {'PML/ours':>9}")
    for name, (ours, theirs) in pairs().items():
        for _ in range(args.warmup):
            step(ours, x, labels)
            step(theirs, x, labels)
        t_ours, t_pml = [], []
        for _ in range(args.repeats):
            t_ours.append(step(ours, x, labels))
            t_pml.append(step(theirs, x, labels))
        a, b = statistics.median(t_ours) * 1e3, statistics.median(t_pml) * 1e3
        print(f"{name:<20} {a:9.2f} {b:9.2f} {b / a:9.2f}")


if __name__ == "__main__":
    main()
