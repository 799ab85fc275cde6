"""Cost of the per-step divergence check against the training step it guards.

The default experiment's model, loss and optimizer (``conf/config.yaml``: conv4 at 28 px, 128-d
embedding, multi-similarity, AdamW) on one ready-made P×K batch of 32 × 4 random images, CPU, one
intra-op thread. Peer: the training step itself (forward, loss, backward, AdamW step). Measured:
:func:`dml.train.checkpointing.first_non_finite` over the step's loss and embeddings and every
parameter and buffer, as :meth:`DMLModule.on_train_batch_end` runs it after every step; also the
entrywise check it replaced (one ``isfinite().all()`` per tensor). Median of ``--repeats``,
interleaved, after warm-up. Ratio = check time / step time. Run: ``python
benchmarks/bench_divergence_check.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from dml.train.checkpointing import first_non_finite

CONF = Path(__file__).resolve().parents[1] / "conf"


def entrywise(named: list[tuple[str, torch.Tensor]]) -> bool:
    """The replaced check: one ``isfinite().all()`` per floating tensor, stacked."""
    flags = [torch.isfinite(t).all() for _, t in named if t.is_floating_point()]
    return bool(torch.stack(flags).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
    net, loss_fn = instantiate(cfg.model), instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    x = torch.randn(128, 1, 28, 28)
    y = torch.arange(32).repeat_interleave(4)
    state: dict[str, torch.Tensor] = {}

    def train_step() -> None:
        embeddings = net(x)
        loss = loss_fn(embeddings, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.update(loss=loss.detach(), embeddings=embeddings.detach())

    def named() -> list[tuple[str, torch.Tensor]]:
        return [*state.items(), *net.named_parameters(), *net.named_buffers()]

    timed = {
        "training step (peer)": train_step,
        "first_non_finite": lambda: first_non_finite(named()),
        "entrywise isfinite": lambda: entrywise(named()),
    }
    for fn in timed.values():  # warm-up
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.repeats):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    step = statistics.median(times["training step (peer)"])
    print(f"{len(named())} tensors checked per step")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:24s} {median * 1e3:8.2f} ms   ratio to the step {median / step:.4f}")


if __name__ == "__main__":
    main()
