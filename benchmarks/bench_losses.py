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
from collections.abc import Callable

import torch
from _common import add_batch_args, interleaved_median_ms, unit_batch
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_batch_args(parser, batch=512, dim=512)
    args = parser.parse_args()
    x, labels = unit_batch(args)
    print(
        f"B={args.batch} d={args.dim} float32 CPU threads={torch.get_num_threads()} "
        f"torch={torch.__version__}; median of {args.repeats} forward+backward"
    )
    print(f"{'loss':<20} {'ours ms':>9} {'PML ms':>9} {'PML/ours':>9}")
    for name, (ours, theirs) in pairs().items():
        a, b = interleaved_median_ms([ours, theirs], x, labels, args.repeats, args.warmup)
        print(f"{name:<20} {a:9.2f} {b:9.2f} {b / a:9.2f}")


if __name__ == "__main__":
    main()
