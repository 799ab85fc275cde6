"""Checkpoints written atomically and read safely.

Writing (:class:`dml.train.checkpoint_io.SafeCheckpointIO`): a crash mid-write never leaves a
truncated ``last.ckpt`` (temporary file, then rename). Reading (here, without Lightning):
``torch.load(weights_only=True)`` only, so a checkpoint cannot run code when it is opened; a file
that is not a checkpoint, or is truncated, is one :class:`CheckpointError` that names it. Training
never writes a checkpoint with a non-finite tensor (:func:`first_non_finite`).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from typing import Any

import torch

from dml.errors import CheckpointError


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path``, loaded on the CPU with ``weights_only=True``: it can hold
    only tensors and plain containers, never code to run. Any failure is one CheckpointError."""
    if os.path.isdir(path):
        raise CheckpointError(
            f"{path} is a directory, not a checkpoint: pass a .ckpt file, "
            "e.g. <run_dir>/checkpoints/best.ckpt"
        )
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive (a text file is not one)
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint (not a torch.save archive): pass a "
            "complete .ckpt written by dml-train"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises EOFError, KeyError, RuntimeError... on foreign bytes
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            needs = re.search(r"GLOBAL (\S+)", str(e))
            what = f"it needs {needs.group(1)}" if needs else "it holds more than tensors"
            raise CheckpointError(
                f"{path} is not a safe dml checkpoint: {what} and could run arbitrary code, so it "
                "was not loaded (dml-train checkpoints hold only tensors and plain data)"
            ) from e
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint (torch.load failed: {type(e).__name__}): "
            "pass a complete .ckpt written by dml-train"
        ) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} is not a dml checkpoint (no state_dict): pass a .ckpt written by dml-train"
        )
    return ckpt


def first_non_finite(named: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor with a NaN or infinite entry, else None.

    Fast path, one device synchronisation however many tensors: a tensor's sum (accumulated in at
    least float32) is finite iff its entries are, barring an overflow of the sum itself, which
    needs entries of ~1e32 (float32) and is divergence too. Only then is each tensor checked.
    """
    tensors = [(n, t) for n, t in named if torch.is_tensor(t) and t.is_floating_point()]
    if not tensors:
        return None
    sums = [t.sum(dtype=torch.promote_types(t.dtype, torch.float32)).double() for _, t in tensors]
    finite_sums = torch.stack(sums).isfinite()
    if bool(finite_sums.all()):
        return None
    overflowed = tensors[int((~finite_sums).nonzero()[0, 0])][0]
    return next((n for n, t in tensors if not bool(torch.isfinite(t).all())), overflowed)
