"""Bridge to pytorch-metric-learning (PML), an optional dependency imported lazily."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from dml.losses.base import DMLLoss, LossResult, used_cosines


def _build(spec: nn.Module | Mapping[str, Any] | None) -> nn.Module | None:
    """An instance as is, or a Hydra ``_target_`` mapping instantiated once PML is known."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if importlib.util.find_spec("pytorch_metric_learning") is None:
        raise ImportError(
            "dml.losses.pml.PMLLoss needs pytorch-metric-learning: "
            "pip install pytorch-metric-learning (or the 'dev' extra)"
        )
    from hydra.utils import instantiate

    return instantiate(spec)


class PMLLoss(DMLLoss):
    """Any pytorch-metric-learning loss, optionally fed by a PML miner:
    ``loss(embeddings, labels, miner(embeddings, labels))``.

    ``loss`` and ``miner`` are PML objects or Hydra configs of them (``conf/loss/pml.yaml``
    passes configs with ``_recursive_: false`` so PML is only imported when used). Statistics:
    ``mean_pairwise_sim`` always; when the miner returns triplets also ``hard_fraction``,
    ``mean_s_ap``, ``mean_s_an``, ``num_triplets`` and ``triplet_similarities``. PML does not
    expose per-term losses, so ``active_fraction`` is not reported. Parameters of the PML loss
    (proxies, for instance) are parameters of this module.
    """

    mines_tuples: ClassVar[bool] = False  # a proxy loss, or a PML miner of its own: any batch

    def __init__(
        self,
        loss: nn.Module | Mapping[str, Any],
        miner: nn.Module | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.loss = _build(loss)
        self.miner = _build(miner)

    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: tuple[Tensor, ...] | None = None) -> Tensor:
        if indices is None and self.miner is not None:
            indices = self.miner(embeddings, labels)
        if indices is None:
            return self.loss(embeddings, labels)
        out.tuples = indices
        if len(indices) == 3:
            a, p, n = indices
            out.record_triplets(*used_cosines(embeddings, [(a, p), (a, n)]))
        return self.loss(embeddings, labels, indices)
