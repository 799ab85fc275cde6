"""One-shot N-way classification within an alphabet: Omniglot's check of Lake et al. (Science 2015).

An *episode* of the N-way task:

1. pick a group (an Omniglot alphabet) uniformly among those that can hold an episode;
2. pick an ordered pair of distinct drawers ``d1 != d2`` uniformly among the pairs that both drew
   at least N of the group's classes (characters);
3. pick N distinct classes uniformly among the group's classes drawn by both ``d1`` and ``d2``.

The *support* set is the N classes' images by ``d1``, the *queries* their images by ``d2``, in
the same (random) class order. Each query is classified as the class of its most cosine-similar
support image; among equal similarities the lower support index wins (as in :mod:`dml.eval.knn`);
"equal" is exact, since each similarity is computed the same way (float64 products summed per
pair). Accuracy = correct queries / (episodes × N). A group with fewer than N classes is never
used.

This is a seeded re-sampling of Lake's protocol, not the official 20 fixed runs of
``all_runs.zip`` (not part of the dataset archives): it averages many more episodes (``dml-eval
--episodes``, default 1000, i.e. 20,000 trials for 20-way), so its number is comparable to, but
not the same measurement as, the published 20-way accuracies (e.g. 92% for the Siamese networks of
Koch et al. 2015).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.errors import DatasetError
from dml.eval.knn import ArrayLike, as_embeddings

#: Episodes whose similarities are computed at once (bounds memory: E × N × N × dim floats).
EPISODE_CHUNK = 64


def sample_episodes(
    labels: Sequence[str],
    groups: Sequence[str],
    drawers: Sequence[str],
    n_way: int,
    episodes: int,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Draw ``episodes`` N-way episodes (module docstring) from the items ``i`` with class
    ``labels[i]`` of group ``groups[i]`` drawn by ``drawers[i]``.

    Deterministic for a seed (a local :class:`random.Random`; the global RNGs are untouched) and
    independent of the items' order. Returns ``(support, query)``, two ``(episodes, n_way)`` long
    tensors of item indices; ``support[e, j]`` and ``query[e, j]`` are the same class. A
    :class:`DatasetError` if no group has ``n_way`` classes drawn by two common drawers, or if a
    drawer drew a class twice.
    """
    if not len(labels) == len(groups) == len(drawers):
        raise ValueError(f"{len(labels)} labels, {len(groups)} groups, {len(drawers)} drawers")
    if n_way < 2 or episodes < 1:
        raise ValueError(f"need n_way >= 2 and episodes >= 1, got {n_way} and {episodes}")
    item: dict[tuple[str, str], int] = {}  # (class, drawer) -> item index
    by_drawer: dict[str, dict[str, set[str]]] = {}  # group -> drawer -> classes
    for i, (label, group, drawer) in enumerate(zip(labels, groups, drawers, strict=True)):
        if (label, drawer) in item:
            raise DatasetError(f"class {label} has two images by drawer {drawer}: keep one")
        item[label, drawer] = i
        by_drawer.setdefault(group, {}).setdefault(drawer, set()).add(label)
    candidates: dict[str, list[tuple[str, str, list[str]]]] = {}  # group -> (d1, d2, classes)
    most = 0
    for group in sorted(by_drawer):
        for d1, d2 in permutations(sorted(by_drawer[group]), 2):
            common = sorted(by_drawer[group][d1] & by_drawer[group][d2])
            most = max(most, len(common))
            if len(common) >= n_way:
                candidates.setdefault(group, []).append((d1, d2, common))
    if not candidates:
        raise DatasetError(
            f"one-shot {n_way}-way needs a group (alphabet) with {n_way} classes drawn by two "
            f"common drawers; this split has at most {most}: choose a smaller N"
        )
    rng = random.Random(seed)
    names = list(candidates)
    support, query = [], []
    for _ in range(episodes):
        d1, d2, classes = rng.choice(candidates[rng.choice(names)])
        chosen = rng.sample(classes, n_way)
        support.append([item[c, d1] for c in chosen])
        query.append([item[c, d2] for c in chosen])
    return torch.tensor(support), torch.tensor(query)


def one_shot_accuracy(embeddings: ArrayLike, support: Tensor, query: Tensor) -> float:
    """The fraction of queries whose most cosine-similar support image (lowest support index
    among equals) is their own class, over all episodes: ``support``/``query`` as returned by
    :func:`sample_episodes` (column ``j`` of both is one class), indexing rows of
    ``embeddings`` ``(items, dim)``."""
    z = F.normalize(as_embeddings(embeddings, "embeddings").to(torch.float64), dim=1)
    if support.shape != query.shape or support.dim() != 2:
        raise ValueError(
            f"support {tuple(support.shape)} and query {tuple(query.shape)}: need (E, N) each"
        )
    support, query = support.to(z.device), query.to(z.device)
    own_class = torch.arange(support.shape[1], device=z.device)
    correct = 0
    for s, q in zip(support.split(EPISODE_CHUNK), query.split(EPISODE_CHUNK), strict=True):
        # sims[e, i, j] = <query i, support j> of episode e; an elementwise product and a sum
        # (not a matmul) give bit-equal values for equal support embeddings.
        sims = (z[q].unsqueeze(2) * z[s].unsqueeze(1)).sum(dim=3)
        predicted = sims.argmax(dim=2)  # the first of equal maxima
        correct += int((predicted == own_class).sum())
    return correct / support.numel()
