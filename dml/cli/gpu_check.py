"""``make gpu-check`` (``python -m dml.cli.gpu_check``): the check to run on a CUDA machine before a
long cluster job, in a few minutes.

For each paper protocol's backbone at its real input size (the experiments' own configs:
``fair_omniglot``: conv4 at 28 px; ``sct_cub200``: ResNet-50 at 256; ``fair_cub200``: ResNet-50
at 224; ``loop_cub200``: the LoOp stand-in Inception-v3 at 227), a few dozen training steps on
synthetic images in float32 and bf16-mixed (with channels-last, and ``torch.compile`` with
``--compile``), each loss family once (on the first protocol), and, with 2 or more GPUs, a
2-process DDP check that cross-rank mining gives the single-process loss and gradients. Prints
images/s and peak GPU memory per case; exits 1 on any failure or non-finite value.

``--dry-run`` (what the test suite runs on CPU): 2 steps per case at reduced sizes, the DDP check
on 2 CPU processes (gloo); nothing is timed for real. The DDP check runs the backbone in eval
mode: BatchNorm's per-rank batch statistics are not the global batch's (SyncBatchNorm is)."""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from dml.cli.train import CONFIG_DIR
from dml.distributed import gather_batch

PROTOCOLS = ("fair_omniglot", "sct_cub200", "fair_cub200", "loop_cub200")
LOSS_FAMILIES = ("triplet_batchhard", "sct", "contrastive", "multisimilarity", "loop_triplet")
DRY_SIZE = {"conv4": 28, "inception_v3.tv_in1k": 75}  # Inception-v3's smallest input


@dataclass(frozen=True)
class Case:
    protocol: str
    loss: str
    precision: str
    channels_last: bool
    compile: bool

    @property
    def name(self) -> str:
        extra = "".join((" channels-last" if self.channels_last else "",
                         " compiled" if self.compile else ""))
        return f"{self.protocol} / {self.loss or 'its loss'} / {self.precision}{extra}"


def protocol_config(protocol: str, loss: str):
    """The experiment's config (its own loss unless ``loss``), without hub weights."""
    overrides = [f"experiment={protocol}", "model.pretrained=false"]
    overrides += [f"loss={loss}"] if loss else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def run_case(case: Case, steps: int, dry_run: bool, device: torch.device) -> tuple[float, float]:
    """``steps`` training steps; returns (images/s, peak GPU memory in GiB, NaN on CPU)."""
    cfg = protocol_config(case.protocol, case.loss)
    net = instantiate(cfg.model, channels_last=case.channels_last, compile=case.compile)
    net = net.to(device).train()
    loss = instantiate(cfg.loss).to(device)
    optimizer = torch.optim.AdamW([*net.parameters(), *loss.parameters()], lr=1e-4)
    size = cfg.data.train_transform.size
    p, k = cfg.data.batch_p, cfg.data.batch_k
    if dry_run:
        size, p, k = DRY_SIZE.get(cfg.model.backbone, 32), 2, 2
    channels = cfg.model.in_chans
    labels = torch.arange(p, device=device).repeat_interleave(k)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(p * k, channels, size, size, device=device, generator=generator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = None
    for step in range(steps + 1):  # step 0 warms up (and compiles)
        if step == 1:
            _synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=case.precision == "bf16-mixed"):
            value = loss(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        if not math.isfinite(value.item()):
            raise FloatingPointError(f"loss is {value.item()} at step {step}")
    _synchronize(device)
    elapsed = time.perf_counter() - start
    params = [p for p in net.parameters() if not torch.isfinite(p).all()]
    if params:
        raise FloatingPointError("a parameter is not finite after the steps")
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    return steps * p * k / elapsed, memory


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cases(compile: bool, dry_run: bool) -> list[Case]:
    """Each protocol with its own loss in both precisions (bf16 with channels-last, and compiled
    with ``compile``), plus every loss family once on the first protocol."""
    result = []
    for protocol in PROTOCOLS:
        for precision in ("32-true", "bf16-mixed"):
            fast = precision == "bf16-mixed"
            result.append(Case(protocol, "", precision, fast, fast and compile))
    result += [Case(PROTOCOLS[0], loss, "32-true", False, False) for loss in LOSS_FAMILIES]
    return result


# -- DDP: cross-rank mining equals one process on the global batch ------------------------------
def _ddp_worker(rank: int, world: int, port: int, backend: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    net, loss, images, labels = _ddp_problem(device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[rank] if backend == "nccl" else None
    )
    shard = slice(rank * len(labels) // world, (rank + 1) * len(labels) // world)
    value = loss(*gather_batch(ddp(images[shard]), labels[shard]))
    value.backward()
    if rank == 0:
        torch.save({"loss": value.detach().cpu(),
                    "grads": [p.grad.cpu() for p in net.parameters()]}, out)
    dist.destroy_process_group()


def _ddp_problem(device: torch.device):
    from dml.losses import SCTLoss
    from dml.models.backbone import EmbeddingNet

    torch.manual_seed(0)  # eval: BatchNorm's statistics are not those of a shard
    net = EmbeddingNet("conv4", 32, in_chans=1).double().to(device).eval()
    images = torch.randn(16, 1, 28, 28, dtype=torch.float64, generator=torch.Generator()
                         .manual_seed(1)).to(device)
    return net, SCTLoss(), images, torch.arange(4).repeat_interleave(4).to(device)


def ddp_check(backend: str, tmp: Path) -> float:
    """The largest difference between the 2-process cross-rank loss/gradients and one process
    on the same global batch (float64; 0 up to summation order)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp / "ddp_rank0.pt")
    mp.spawn(_ddp_worker, args=(2, port, backend, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    device = torch.device("cuda:0") if backend == "nccl" else torch.device("cpu")
    net, loss, images, labels = _ddp_problem(device)
    value = loss(net(images), labels)
    value.backward()
    diffs = [(got["loss"] - value.detach().cpu()).abs().max()]
    diffs += [(g - p.grad.cpu()).abs().max() for g, p in zip(got["grads"], net.parameters(),
                                                            strict=True)]
    return float(max(diffs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the backbone")
    parser.add_argument("--dry-run", action="store_true", help="CPU smoke run (the test suite's)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("error: no CUDA device: run on a GPU machine (or --dry-run for a CPU smoke run)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    steps = 1 if args.dry_run else args.steps
    failures = 0
    print(f"{'case':70} {'images/s':>9} {'peak GiB':>9}")
    for case in cases(args.compile, args.dry_run):
        try:
            speed, memory = run_case(case, steps, args.dry_run, device)
            print(f"{case.name:70} {speed:9.1f} {memory:9.2f}")
        except Exception as e:  # report every case, then fail
            failures += 1
            print(f"{case.name:70} FAILED: {type(e).__name__}: {str(e).splitlines()[0]}")
    gpus = torch.cuda.device_count()
    if gpus >= 2 or args.dry_run:
        backend = "nccl" if gpus >= 2 else "gloo"
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            diff = ddp_check(backend, Path(tmp))
        ok = diff <= 1e-9  # float64, only summation order differs
        failures += not ok
        print(f"DDP cross-rank mining ({backend}, 2 processes) vs 1 process: max difference "
              f"{diff:.1e} {'ok' if ok else 'FAILED'}")
    print("gpu-check: " + ("all passed" if not failures else f"{failures} failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
