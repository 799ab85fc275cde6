"""SOP-sized retrieval: ours vs faiss-cpu IndexFlatIP vs pytorch-metric-learning AccuracyCalculator.

60,502 x 512 clustered synthetic embeddings, 11,316 classes of 2-12 images (the Stanford Online
Products test split's shape), leave-one-out, Recall@1/10/100/1000 + MAP@R (+ R-precision).
Each contender runs in its own process (time and peak RSS growth above the loaded embeddings):

* ours:  ``dml.eval.retrieval_metrics`` (torch backend, exact, lowest-index tie rule): it ranks
  only the top max R (11 here) and reads Recall@K beyond it from each query's first relevant
  item's rank, counted on the same scores, so it needs no top-1000;
* faiss: ``IndexFlatIP.search`` with the k a faiss-based evaluator needs for these metrics (1000
  neighbours + the query itself), k-NN only (the metrics themselves not computed);
* PML:   ``AccuracyCalculator(k=1000)`` computing the same metrics (faiss k-NN inside).

Bars: time <= 1.0x faiss, faster than PML, peak <= 2 GB. Usage:
``python benchmarks/bench_retrieval_sop.py [--repeats 2] [--scale 1.0]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _common
import numpy as np
import torch

KS = (1, 10, 100, 1000)
N_IMAGES, N_CLASSES, DIM = 60_502, 11_316, 512


def class_sizes(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n_classes`` sizes in [2, 12] summing to ``n`` (skewed towards small, like SOP)."""
    sizes = 2 + rng.binomial(10, (n / n_classes - 2) / 10, size=n_classes)
    while (gap := n - sizes.sum()) != 0:
        step = np.sign(gap)
        movable = np.flatnonzero((sizes + step >= 2) & (sizes + step <= 12))
        chosen = rng.choice(movable, size=min(abs(gap), len(movable)), replace=False)
        sizes[chosen] += step
    return sizes


def make_data(folder: Path, scale: float, seed: int = 0) -> tuple[Path, Path]:
    """Clustered embeddings: class centre on the sphere + isotropic noise; shuffled order."""
    rng = np.random.default_rng(seed)
    n, n_classes = int(N_IMAGES * scale), int(N_CLASSES * scale)
    labels = np.repeat(np.arange(n_classes), class_sizes(n, n_classes, rng))
    centres = rng.normal(size=(n_classes, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + rng.normal(scale=0.1, size=(n, DIM)).astype(np.float32)
    order = rng.permutation(n)
    np.save(folder / "x.npy", x[order])
    np.save(folder / "y.npy", labels[order])
    return folder / "x.npy", folder / "y.npy"


def load(x_path: Path, y_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.load(x_path)), torch.from_numpy(np.load(y_path))


def load_ours(x_path: Path, y_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import dml.eval  # noqa: F401  (imports happen before the measurement starts)

    return load(x_path, y_path)


def load_faiss(x_path: Path, y_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss  # noqa: F401

    return load(x_path, y_path)


def run_ours(data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    from dml.eval import retrieval_metrics  # imported by load_ours, before the measurement

    return retrieval_metrics(*data, ks=KS)


def run_faiss(data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    import faiss

    x = data[0].numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, idx = index.search(x, max(KS) + 1)
    return {"knn_rows": float(idx.shape[0])}


def load_pml(x_path: Path, y_path: Path) -> tuple[object, torch.Tensor, torch.Tensor]:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    class WithRecall(AccuracyCalculator):
        """Adds ``recall_at_K`` (hit rate in the top K) for the benchmark's K > 1."""

        def requires_knn(self) -> list[str]:
            return [*super().requires_knn(), *(f"recall_at_{k}" for k in KS[1:])]

    def recall_at(k: int):
        def metric(self, knn_labels, query_labels, not_lone_query_mask, **kwargs) -> float:
            hits = (knn_labels[:, :k] == query_labels[:, None]).any(dim=1)
            return hits[not_lone_query_mask].float().mean().item()

        return metric

    for k in KS[1:]:
        setattr(WithRecall, f"calculate_recall_at_{k}", recall_at(k))
    calculator = WithRecall(
        include=(
            "precision_at_1",
            "mean_average_precision_at_r",
            "r_precision",
            *(f"recall_at_{k}" for k in KS[1:]),
        ),
        k=max(KS),
        device=torch.device("cpu"),
    )
    return (calculator, *load(x_path, y_path))


def run_pml(state: tuple[object, torch.Tensor, torch.Tensor]) -> dict[str, float]:
    calculator, x, y = state
    x = torch.nn.functional.normalize(x, dim=1)
    return calculator.get_accuracy(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender (min time)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the SOP size")
    parser.add_argument("--no-pml", action="store_true", help="ours and faiss only (PML is slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_data(Path(tmp), args.scale)
        x = np.load(paths[0], mmap_mode="r")
        print(
            f"SOP-sized: {x.shape[0]} x {x.shape[1]} float32 ({x.nbytes / 2**20:.0f} MB), "
            f"{int(np.load(paths[1]).max()) + 1} classes, torch threads "
            f"{torch.get_num_threads()}, repeats {args.repeats} (min time, max peak)"
        )
        runs: dict[str, list[_common.Measurement]] = {"ours": [], "faiss": [], "pml": []}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            runs["ours"].append(_common.measure(load_ours, run_ours, *paths))
            runs["faiss"].append(_common.measure(load_faiss, run_faiss, *paths))
            if not args.no_pml:
                runs["pml"].append(_common.measure(load_pml, run_pml, *paths))
    ours, faiss_ = _common.best(runs["ours"]), _common.best(runs["faiss"])
    _common.report("faiss IndexFlatIP (k-NN only)", faiss_)
    _common.report("ours retrieval_metrics", ours, faiss_, "faiss")
    print("ours:", {k: round(v, 4) for k, v in ours.result.items()})
    bars = {
        "time <= 1.0x faiss": ours.seconds <= faiss_.seconds,
        "peak <= 2 GB above the embeddings": ours.peak_bytes <= 2 * 2**30,
    }
    if runs["pml"]:
        pml = _common.best(runs["pml"])
        _common.report("PML AccuracyCalculator", pml)
        _common.report("ours retrieval_metrics", ours, pml, "PML")
        print("PML: ", {k: round(v, 4) for k, v in pml.result.items()})
        bars["faster than PML"] = ours.seconds < pml.seconds
    for bar, ok in bars.items():
        print(f"bar {bar}: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
