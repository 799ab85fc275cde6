from collections import Counter

import pytest
import torch

from dml.data import DatasetError, PKBatchSampler


def labels_of(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])


def test_batches_are_p_distinct_classes_times_k():
    labels = labels_of([7, 4, 9, 4, 5, 12, 4, 6])
    sampler = PKBatchSampler(labels, p=3, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}


def test_epoch_covers_every_image_about_once():
    counts = [20] * 50
    labels = labels_of(counts)
    sampler = PKBatchSampler(labels, p=8, k=4, seed=0)
    seen = Counter(i for b in sampler for i in b)
    # 1000 images, 250 chunks of 4, 31 batches of 8 chunks: 992 drawn, each at most once
    assert sum(seen.values()) == len(sampler) * 32 == 992
    assert max(seen.values()) == 1


def test_same_seed_and_epoch_same_batches_other_epoch_differs():
    labels = labels_of([6] * 10)
    a, b = PKBatchSampler(labels, 4, 2, seed=3), PKBatchSampler(labels, 4, 2, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_undersized_classes_are_sampled_with_replacement_and_counted():
    labels = labels_of([1, 2, 5, 8])
    with pytest.warns(UserWarning, match="2 of 4 classes"):
        sampler = PKBatchSampler(labels, p=2, k=3, seed=0)
    assert sampler.undersized_classes == 2
    for batch in sampler:
        counts = Counter(labels[batch].tolist())
        assert set(counts.values()) == {3}


def test_k_larger_than_every_class_is_a_clear_error():
    with pytest.raises(DatasetError, match=r"K=9 .*data.batch_k"):
        PKBatchSampler(labels_of([3, 4, 5]), p=2, k=9)


def test_p_larger_than_classes_is_a_clear_error():
    with pytest.raises(DatasetError, match=r"P=5 .*only 3 classes"):
        PKBatchSampler(labels_of([3, 4, 5]), p=5, k=2)


def test_ranks_share_one_global_batch_without_overlap():
    labels = labels_of([8] * 12)
    world = 2
    shards = [
        list(PKBatchSampler(labels, 4, 2, seed=5, rank=r, world_size=world)) for r in range(world)
    ]
    single = list(PKBatchSampler(labels, 4, 2, seed=5))
    assert len(shards[0]) == len(shards[1]) == len(single)
    for step, global_batch in enumerate(single):
        parts = [shards[r][step] for r in range(world)]
        assert sorted(parts[0] + parts[1]) == sorted(global_batch)
        assert not set(labels[parts[0]].tolist()) & set(labels[parts[1]].tolist())


def test_p_not_divisible_by_world_size_is_rejected():
    with pytest.raises(DatasetError, match="divisible"):
        PKBatchSampler(labels_of([4] * 6), p=3, k=2, world_size=2)
