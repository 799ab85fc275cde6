"""The per-epoch seed: pinned, because a run resumed from a checkpoint written before a change to
it would no longer replay its remaining epochs."""

import torch

from dml.data.sampler import PKBatchSampler
from dml.train.seeding import epoch_seed


def test_epoch_seed_is_pinned_and_distinct_across_seeds_and_epochs() -> None:
    assert epoch_seed(0, 0) == 0 and epoch_seed(3, 5) == 3_000_014
    assert len({epoch_seed(s, e) for s in range(20) for e in range(100)}) == 20 * 100


def test_the_sampler_orders_an_epoch_by_its_epoch_seed_alone() -> None:
    labels = torch.arange(60) % 10

    def batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = PKBatchSampler(labels, p=4, k=3, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(7, 4) == batches(0, epoch_seed(7, 4))  # epoch_seed(0, e) == e
    assert batches(7, 4) != batches(7, 5)


def test_any_seed_gives_an_epoch_seed_that_seed_everything_accepts() -> None:
    import lightning as L

    for seed in (4295, 10**9, -1):  # beyond 2**32 / 1_000_003, and negative
        value = epoch_seed(seed, 7)
        assert 0 <= value < 2**32
        assert L.seed_everything(value, verbose=False) == value
    assert epoch_seed(4294, 999) == 4294 * 1_000_003 + 999  # unchanged where it was valid


def test_a_run_with_a_large_seed_trains(tmp_path) -> None:
    from dml.train.run import train

    from .training_utils import tiny_config

    result = train(tiny_config(tmp_path, "seed=5000", "trainer.max_epochs=1", "test=false"))
    assert result["epochs"] == 1
