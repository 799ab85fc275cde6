"""The LightningDataModule: a dataset source + transforms + class-balanced P×K training batches."""

from __future__ import annotations

import functools
import numbers
import random
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dml.config_checks import check_int
from dml.data.batch_transforms import augment_batch, batch_generator, to_normalized
from dml.data.dataset import CachedDataset, DMLDataset
from dml.data.records import Record
from dml.data.sampler import PKBatchSampler
from dml.data.source import DatasetSource
from dml.data.tensor_cache import cached_images
from dml.data.transforms import TransformParams
from dml.distributed import rank_and_world_size
from dml.errors import ConfigError, DatasetError
from dml.progress import progress_shown

EVAL_SPLITS = ("val", "test", "query", "gallery")


def check_val_holdout(holdout: object) -> None:
    """``holdout`` is an int >= 0 (a count of groups) or a float in [0, 1) (a fraction of them);
    anything else, 1.0 included, is a :class:`ConfigError`."""
    is_count = isinstance(holdout, numbers.Integral) and not isinstance(holdout, bool)
    is_fraction = isinstance(holdout, float) and 0 <= holdout < 1
    if not (is_fraction or (is_count and holdout >= 0)):
        raise ConfigError(
            f"data.val_holdout must be an integer >= 0 or a float in [0, 1), got {holdout!r}: "
            "an integer is a count of groups, a float a fraction < 1 "
            "(data.val_holdout=1 holds out one group, 0.1 a tenth of them)"
        )


def carve_validation(
    records: list[Record], holdout: float | int, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Split training records class-disjointly: whole *groups* (e.g. Omniglot alphabets; the class
    itself when a source defines none) go to validation. ``holdout`` is a count of groups if it is
    an int, a fraction of them if it is a float in [0, 1). The choice depends only on ``seed``."""
    check_val_holdout(holdout)
    groups = sorted({r.group_key for r in records})
    n = int(holdout) if isinstance(holdout, numbers.Integral) else round(holdout * len(groups))
    if not 0 < n < len(groups):
        fix = f"a count from 1 to {len(groups) - 1}, or 0" if len(groups) > 1 else "0"
        raise DatasetError(
            f"data.val_holdout={holdout!r} holds out {n} of the {len(groups)} training groups, "
            f"but validation and training each need at least one: set data.val_holdout to {fix} "
            "for no validation"
        )
    val_groups = set(random.Random(seed).sample(groups, n))
    train = [r for r in records if r.group_key not in val_groups]
    return train, [r for r in records if r.group_key in val_groups]


def cacheable(key: str, transform: Callable) -> TransformParams:
    """The :class:`TransformParams` of ``transform`` if the tensor cache can stand in for it,
    else a :class:`ConfigError` naming ``key``."""
    params = getattr(transform, "params", None)
    if not isinstance(params, TransformParams):
        raise ConfigError(
            f"data.cache=true needs {key} built by dml.data.transforms.build_transform, got "
            f"{type(transform).__name__}: set data.cache=false"
        )
    if params.train and params.random_resized_crop:
        raise ConfigError(
            f"data.cache=true cannot cache {key}.random_resized_crop=true (its crop resizes "
            "each time): set data.cache=false"
        )
    return params


def class_folds(records: list[Record], folds: int, seed: int = 0) -> list[set]:
    """``folds`` class-disjoint folds of the training *groups* (Omniglot: alphabets; else the
    class itself), as in MLRC's cross-validation: the groups are shuffled by ``seed`` and dealt
    round-robin, so every group is in exactly one fold and fold sizes differ by at most one
    group."""
    groups = sorted({r.group_key for r in records})
    if not 2 <= folds <= len(groups):
        raise DatasetError(
            f"data.val_folds={folds} folds of {len(groups)} training groups: choose 2 to "
            f"{len(groups)} (or 0 for none)"
        )
    random.Random(seed).shuffle(groups)
    return [set(groups[i::folds]) for i in range(folds)]


class DMLDataModule(L.LightningDataModule):
    """Train loader: :class:`PKBatchSampler` batches of ``batch_p`` classes × ``batch_k`` images.
    Eval loaders (in dataset order): ``val`` if the source has one or ``val_holdout > 0`` carves it
    from the training classes; ``test``, or ``query`` and ``gallery`` (evaluated apart).
    With ``val_folds = k`` (MLRC's class-disjoint cross-validation), fold ``val_fold`` of
    :func:`class_folds` is the validation split instead of ``val_holdout``.
    Model selection uses ``val``, never ``test``; like test, ``val`` holds no made-up classes
    (:meth:`DatasetSource.is_synthetic`, e.g. Omniglot's rotations). The arguments are checked
    at construction (a :class:`ConfigError` names the ``data.*`` key), before any training.

    Distributed (``world_size`` ranks): the P×K sampler shards each global batch by class across
    ranks (``batch_p`` is the global P); each eval loader reads its rank's share of the split in
    order, padded to equal length (the module drops the duplicates when it gathers).

    ``cache=True`` (small images, e.g. Omniglot): every split is decoded and resized once into a
    uint8 tensor kept on disk (:mod:`dml.data.tensor_cache`); eval images are normalised per
    item, bit-equal to the PIL path; training batches arrive as uint8 and are augmented as a whole
    in :meth:`on_after_batch_transfer` (:mod:`dml.data.batch_transforms`). Both transforms must
    come from :func:`dml.data.transforms.build_transform` (without ``random_resized_crop``).
    ``cache=False``: the PIL path, each image decoded and transformed per item (workers allowed).
    ``progress``: progress bars (stderr, on a terminal) while a source unpacks its archives and
    while the tensor cache is built (:mod:`dml.progress`).
    """

    def __init__(
        self,
        source: DatasetSource,
        train_transform: Callable,
        eval_transform: Callable,
        batch_p: int = 32,
        batch_k: int = 4,
        val_holdout: float | int = 0,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        val_folds: int = 0,
        val_fold: int = 0,
        cache: bool = False,
        progress: bool = True,
    ) -> None:
        super().__init__()
        check_int("data.batch_p", batch_p, 1, "the classes per batch", 32)
        check_int("data.batch_k", batch_k, 1, "the images per class", 4)
        check_val_holdout(val_holdout)
        check_int("data.eval_batch_size", eval_batch_size, 1, "the images per eval batch", 256)
        check_int("data.num_workers", num_workers, 0, "the DataLoader worker processes", 0)
        check_int("data.val_folds", val_folds, 0, "the cross-validation folds (0: none)", 4)
        if val_folds:
            check_int("data.val_fold", val_fold, 0, "the validation fold", 0)
            if val_fold >= val_folds:
                raise ConfigError(f"data.val_fold={val_fold} must be < data.val_folds={val_folds}")
        self.val_folds, self.val_fold = val_folds, val_fold
        self.source = source
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_p, self.batch_k = batch_p, batch_k
        self.val_holdout, self.seed = val_holdout, seed
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        self.datasets: dict[str, DMLDataset] = {}
        if not isinstance(cache, bool):
            raise ConfigError(f"data.cache must be true or false, got {cache!r}")
        self.cache, self.progress = cache, progress
        self.train_params = self.eval_params = None
        if cache:
            self.train_params = cacheable("data.train_transform", train_transform)
            self.eval_params = cacheable("data.eval_transform", eval_transform)

    def split_records(self) -> dict[str, list[Record]]:
        with progress_shown(self.progress):  # a source may unpack its archives first
            splits = self.source.splits()
        if "train" not in splits:
            raise DatasetError(f"{type(self.source).__name__} provides no 'train' split")
        if self.val_folds and "val" in splits:
            raise ConfigError(
                f"data.val_folds={self.val_folds}: {type(self.source).__name__} has its own "
                "validation split; cross-validation folds need a dataset without one "
                "(set data.val_folds=0)"
            )
        if self.val_folds:
            val_groups = class_folds(splits["train"], self.val_folds, self.seed)[self.val_fold]
            records = splits["train"]
            splits["train"] = [r for r in records if r.group_key not in val_groups]
            splits["val"] = [r for r in records if r.group_key in val_groups]
        elif self.val_holdout and "val" not in splits:
            splits["train"], splits["val"] = carve_validation(
                splits["train"], self.val_holdout, self.seed
            )
        if "val" in splits:  # validate like test: no made-up classes (their groups stay held out)
            splits["val"] = [r for r in splits["val"] if not self.source.is_synthetic(r)]
        return splits

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self.split_records()
        shared = None  # query and gallery are compared label to label: one class index for both
        if "query" in splits:
            shared = sorted({r.label for s in ("query", "gallery") for r in splits.get(s, [])})
        for name, records in splits.items():
            transform = self.train_transform if name == "train" else self.eval_transform
            classes = shared if name in ("query", "gallery") else None
            if self.cache:
                params = self.train_params if name == "train" else self.eval_params
                with progress_shown(self.progress):
                    images = cached_images(self.source, name, records, params)
                normalize = (
                    None if name == "train" else functools.partial(to_normalized, params=params)
                )
                self.datasets[name] = CachedDataset(records, images, normalize, classes)
            else:
                self.datasets[name] = DMLDataset(records, self.source.load, transform, classes)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With the cache, a training batch arrives as uint8 images: augment and normalise it
        here, on the training device (a GPU does it for free; the transfer moved bytes, not
        floats), with :func:`~dml.data.batch_transforms.batch_generator`'s per-batch seed from
        ``(seed, epoch, the batch's dataset indices)``. Other batches pass unchanged."""
        x = batch[0] if isinstance(batch, (list, tuple)) else None
        if self.train_params is None or x is None or x.dtype != torch.uint8:
            return batch
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self.augment(batch, epoch)

    def augment(self, batch: Any, epoch: int) -> Any:
        """The training batch ``(uint8 images, labels, indices)`` of ``epoch`` with its images
        augmented and normalised (what :meth:`on_after_batch_transfer` does in training)."""
        x, *rest = batch
        g = batch_generator(self.seed, epoch, rest[-1])
        return [augment_batch(x, self.train_params, g), *rest]

    def _loader(self, dataset: DMLDataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            # workers restart every epoch, seeded from the epoch's RNG state (exact resume)
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = rank_and_world_size(self.trainer)
        sampler = PKBatchSampler(
            self.datasets["train"].labels, self.batch_p, self.batch_k, self.seed, rank, world
        )
        return self._loader(self.datasets["train"], batch_sampler=sampler)

    def _eval_loader(self, dataset: DMLDataset) -> DataLoader:
        rank, world = rank_and_world_size(self.trainer)
        sampler = None
        if world > 1:  # Lightning's automatic sampler is off (use_distributed_sampler: false)
            sampler = DistributedSampler(dataset, world, rank, shuffle=False, drop_last=False)
        return self._loader(dataset, batch_size=self.eval_batch_size, sampler=sampler)

    def _eval_loaders(self, names: tuple[str, ...]) -> list[DataLoader]:
        return [self._eval_loader(self.datasets[n]) for n in names if n in self.datasets]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(("val",))

    def test_dataloader(self) -> list[DataLoader]:
        if "query" in self.datasets:
            return self._eval_loaders(("query", "gallery"))
        return self._eval_loaders(("test",))

    def eval_dataloader(self, split: str) -> list[DataLoader]:
        """Loaders to evaluate ``split`` (``val``, ``test``, or ``query`` → query + gallery)."""
        if split == "train" and self.cache:
            raise DatasetError(
                "the cached training split holds raw images, augmented and normalised per "
                "training batch: evaluate it with data.cache=false"
            )
        needed = ("query", "gallery") if split in ("query", "gallery") else (split,)
        if not set(needed) <= set(self.datasets):
            raise DatasetError(
                f"no '{split}' split in this dataset; available: {', '.join(sorted(self.datasets))}"
                " (pass one with --split)"
            )
        return self._eval_loaders(needed)
