"""Learning-rate schedules that need the run length (the module passes ``total_steps``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, final_factor: float = 0.0
) -> LambdaLR:
    """LR factor: linear warm-up from 0 over the first ``warmup_fraction`` of the steps, then
    cosine decay ``f + (1 − f)·(1 + cos(π·t))/2`` to ``final_factor`` f at the last step."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)
