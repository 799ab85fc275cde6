"""Benchmark helpers: run a function in a fresh process; report wall time and peak RSS growth.

Peak memory of torch code is invisible to ``tracemalloc``, so each measurement runs in its own
spawned process: ``setup(*args)`` loads the data (not measured), then the peak resident set size
is reset (Linux ``/proc/self/clear_refs``) and ``run(state)`` is timed; the reported peak is
``VmHWM - VmRSS`` at the start of ``run``, i.e. the extra memory ``run`` needed beyond its inputs.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Measurement:
    """Wall time (s) and peak RSS growth (bytes) of one ``run``, with what it returned."""

    seconds: float
    peak_bytes: int
    result: Any
    peak_exact: bool

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def measure(setup: Callable[..., Any], run: Callable[[Any], Any], *args: Any) -> Measurement:
    """Run ``run(setup(*args))`` in a spawned process (``setup``/``run``: top-level functions)."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, setup, run, args))
    process.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = RuntimeError("benchmark process died without a result")
    process.join()
    if isinstance(outcome, BaseException):
        message = f"benchmark {run.__name__} failed (exit code {process.exitcode})"
        raise RuntimeError(message) from outcome
    return outcome


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(conn: Any, setup: Callable[..., Any], run: Callable[[Any], Any], args: tuple) -> None:
    try:
        state = setup(*args)
        gc.collect()
        base = _status_kb("VmRSS")
        exact = _reset_peak()
        start = time.perf_counter()
        result = run(state)
        seconds = time.perf_counter() - start
        peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(Measurement(seconds, (peak - base) * 1024, result, exact))
    except BaseException as err:  # report, do not hang the parent
        conn.send(RuntimeError(f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def best(measurements: list[Measurement]) -> Measurement:
    """Fastest of repeated runs, reported with the largest peak seen over them."""
    fastest = min(measurements, key=lambda m: m.seconds)
    peak = max(m.peak_bytes for m in measurements)
    return Measurement(fastest.seconds, peak, fastest.result, fastest.peak_exact)


def report(name: str, m: Measurement, ref: Measurement | None = None, ref_name: str = "") -> None:
    """Print one line: time, peak growth and, if given, the ratios against ``ref``."""
    line = f"{name:<34} {m.seconds:8.2f} s   peak +{m.peak_mb:8.1f} MB"
    if not m.peak_exact:
        line += " (peak not resettable: upper bound)"
    if ref is not None:
        line += (
            f"   time x{m.seconds / ref.seconds:.2f}, peak x{m.peak_mb / max(ref.peak_mb, 1):.2f}"
            f" vs {ref_name}"
        )
    print(line, flush=True)


def add_batch_args(parser: argparse.ArgumentParser, batch: int, dim: int) -> None:
    """``--batch``, ``--dim``, ``--per-class`` and the timing options."""
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--dim", type=int, default=dim)
    parser.add_argument("--per-class", type=int, default=4)
    add_timing_args(parser)


def unit_batch(args: argparse.Namespace) -> tuple[Any, Any]:
    """Sets the thread count and seed 0; a batch of ``args.batch`` unit embeddings (float32,
    requiring grad) of ``args.dim``, ``args.per_class`` per class."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = F.normalize(torch.randn(args.batch, args.dim), dim=1).requires_grad_()
    return x, torch.arange(args.batch) // args.per_class


def add_timing_args(parser: argparse.ArgumentParser, repeats: int = 30, warmup: int = 3) -> None:
    """``--repeats``, ``--warmup`` and ``--threads`` (intra-op threads, default 1)."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: stable on a shared machine)"
    )


def interleaved_median_ms(fns: list[Callable[[Any, Any], Any]], x: Any, labels: Any,
                          repeats: int, warmup: int) -> list[float]:
    """Median milliseconds of a forward + backward of each ``fn(x, labels)``, the functions
    interleaved (so that machine noise hits all alike), after ``warmup`` rounds."""
    def once(fn: Callable[[Any, Any], Any]) -> float:
        x.grad = None
        start = time.perf_counter()
        fn(x, labels).backward()
        return time.perf_counter() - start

    for _ in range(warmup):
        for fn in fns:
            once(fn)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            t.append(once(fn))
    return [statistics.median(t) * 1e3 for t in times]
