"""``make gpu-check`` cannot rot: its CPU dry run (every protocol, loss family and precision,
and the 2-process DDP check on gloo) passes here, and a non-finite case fails it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dml.cli import gpu_check

from .training_utils import REPO


def test_the_dry_run_passes_every_case_and_the_ddp_check():
    proc = subprocess.run([sys.executable, "-m", "dml.cli.gpu_check", "--dry-run"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len([line for line in lines if " / " in line]) == len(gpu_check.cases(False, True))
    assert "DDP cross-rank mining (gloo, 2 processes) vs 1 process" in proc.stdout
    assert lines[-1] == "gpu-check: all passed"


def test_a_non_finite_case_fails_the_check(monkeypatch, capsys):
    from dml.losses import SCTLoss

    monkeypatch.setattr(gpu_check, "PROTOCOLS", ("fair_omniglot",))
    monkeypatch.setattr(gpu_check, "LOSS_FAMILIES", ("sct", "triplet_batchhard"))
    monkeypatch.setattr(gpu_check, "ddp_check", lambda backend, tmp: 0.0)
    monkeypatch.setattr(SCTLoss, "compute",
                        lambda self, z, labels, out, indices=None: z.sum() * float("nan"))
    assert gpu_check.main(["--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "fair_omniglot / sct / 32-true" in out and "FAILED: FloatingPointError" in out
    assert "fair_omniglot / triplet_batchhard / 32-true" in out.replace("FAILED", "")
    assert out.splitlines()[-1] == "gpu-check: 1 failed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_the_real_check_says_how_to_run(capsys):
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
