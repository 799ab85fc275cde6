"""The seed of a training epoch, shared by everything that must repeat an epoch exactly."""

from __future__ import annotations


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed of epoch ``epoch`` (0-based) of a run seeded ``seed``:
    ``(seed * 1_000_003 + epoch) mod 2**32``, a function of the pair only, so an epoch replays
    identically when a run resumes at its start, and distinct for distinct pairs while
    ``epoch < 1_000_003`` and ``0 <= seed <= 4294``.

    Used by :class:`dml.data.sampler.PKBatchSampler` (the epoch's batch order) and
    :class:`dml.train.module.DMLModule` (every global RNG at the epoch's start, through
    Lightning's ``seed_everything``, which accepts ``[0, 2**32)`` only: the modulus keeps any
    ``seed`` valid, and changes nothing below 4295)."""
    return (seed * 1_000_003 + epoch) % 2**32
