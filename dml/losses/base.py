"""Base classes of the losses: the call contract, per-batch statistics and triplet plumbing.

Contract: ``loss(embeddings [B, d], labels [B], indices=None) -> scalar``, and
``loss.result(...)`` -> :class:`LossResult`: the value, the tuples used, their statistics
(detached 0-d tensors) and the cosine ``(S_ap, S_an)`` of the triplets used (``None`` for pair
losses); the LightningModule logs from it and callbacks read it from the step's outputs. The loss
computes its B×B matrix once, in its own measure, and hands it to its miner
(``miner.mine(matrix, labels)``; a miner with another measure computes its own). ``indices``
(triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)`` mined elsewhere: a memory, another rank)
replaces the miner, as pytorch-metric-learning's ``indices_tuple``. A batch without any usable
tuple returns ``embeddings.sum() * 0``, a zero that still backpropagates.

Triplet and pair losses also take ``references`` (:class:`References`: embeddings and labels of
a cross-batch memory, see :mod:`dml.losses.wrappers.xbm`): the matrix is then B×N, anchors are the
batch's rows, positives and negatives the references (``ref_emb``/``ref_labels`` of
pytorch-metric-learning), and tuple members index the references.

Statistics are always measured in cosine similarity, whatever measure the loss or miner uses:

* ``mean_pairwise_sim``: mean cosine over all off-diagonal pairs (the collapse indicator);
* triplet losses: ``hard_fraction`` (fraction of used triplets with S_an > S_ap), ``mean_s_ap``,
  ``mean_s_an``, ``active_fraction`` (fraction of used triplets whose term has non-zero
  gradient), ``num_triplets``;
* pair losses: ``mean_s_ap`` / ``mean_s_an`` over the used positive / negative pairs and
  ``active_fraction`` = pairs with non-zero gradient / all off-diagonal pairs of the batch.

Means over an empty set are NaN.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dml.config_checks import check_choice
from dml.distances import CosineSimilarity, Distance, get_distance
from dml.errors import ConfigError
from dml.miners.all_pairs import AllPairsMiner
from dml.miners.all_triplets import AllTripletsMiner
from dml.miners.base import Miner, PairMiner, Pairs, TripletMiner, Triplets

Reduction = Literal["mean", "mean_nonzero"]

_COSINE = CosineSimilarity()


def reduce_terms(terms: Tensor, reduction: Reduction) -> Tensor:
    """``"mean"``: the mean of ``terms``; ``"mean_nonzero"``: their sum over the number of
    non-zero terms (the "batch all ≠ 0" average of Hermans et al. 2017), 0 if all are zero."""
    if reduction == "mean":
        return terms.mean()
    if reduction == "mean_nonzero":
        return terms.sum() / (terms != 0).sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}")


def check_reduction(reduction: object) -> None:
    """:class:`~dml.errors.ConfigError` naming ``loss.reduction`` unless it is a
    :data:`Reduction`."""
    check_choice("loss.reduction", reduction, get_args(Reduction))


def mean_or_nan(values: Tensor) -> Tensor:
    """Detached float mean of ``values``, NaN when empty."""
    values = values.detach().float()
    return values.mean() if values.numel() else values.new_tensor(float("nan"))


def mean_offdiagonal_cosine(embeddings: Tensor) -> Tensor:
    """Mean cosine over the ``B(B-1)`` ordered pairs ``i != j``, in O(B d):
    ``(|Σ_i x̂_i|² - Σ_i |x̂_i|²) / (B(B-1))`` with ``x̂ = x / |x|``."""
    unit = F.normalize(embeddings.detach().double(), dim=1)
    batch = unit.shape[0]
    total = unit.sum(dim=0).square().sum() - unit.square().sum()
    return (total / max(batch * (batch - 1), 1)).float()


class References(NamedTuple):
    """Reference embeddings ``[N, d]`` and labels ``[N]`` the anchors of a batch are compared
    with instead of the batch itself, and ``allowed`` ``[B, N]``: which references each anchor
    may use (``None``: all of them; a reference that is the anchor itself must be disallowed)."""

    embeddings: Tensor
    labels: Tensor
    allowed: Tensor | None = None


@dataclass
class LossResult:
    """What a loss computed on a batch: ``value`` (the scalar to minimise), ``tuples`` (the
    indices it used: triplets, pairs, or ``None``), ``stats`` (detached 0-d tensors, logged as
    ``train/<name>``) and ``triplet_similarities`` (cosine ``(S_ap, S_an)`` of the triplets used,
    for the triplet diagram; ``None`` for pair losses)."""

    value: Tensor | None = None
    tuples: Triplets | Pairs | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)
    triplet_similarities: tuple[Tensor, Tensor] | None = None

    def adopt(self, inner: LossResult) -> None:
        """Take a wrapped loss's tuples and statistics, keeping this result's collapse indicator
        (``mean_pairwise_sim``: over the real batch, whatever the wrapped loss saw)."""
        self.tuples, self.triplet_similarities = inner.tuples, inner.triplet_similarities
        self.stats.update({k: v for k, v in inner.stats.items() if k != "mean_pairwise_sim"})

    def record_triplets(self, s_ap: Tensor, s_an: Tensor) -> None:
        """Keep the cosine ``(S_ap, S_an)`` of the triplets used and their statistics."""
        s_ap, s_an = s_ap.detach(), s_an.detach()
        self.triplet_similarities = (s_ap, s_an)
        self.stats.update(
            hard_fraction=mean_or_nan(s_an > s_ap),
            mean_s_ap=mean_or_nan(s_ap),
            mean_s_an=mean_or_nan(s_an),
            num_triplets=torch.tensor(float(s_ap.numel()), device=s_ap.device),
        )


def check_miner(miner: object, kind: type, name: str) -> None:
    """:class:`~dml.errors.ConfigError` unless ``miner`` returns the tuples the loss needs."""
    if not isinstance(miner, kind):
        raise ConfigError(
            f"loss.miner is a {type(miner).__name__}, but this loss needs a {name} miner: "
            f"choose one with loss/miner=<name> (conf/loss/miner/)"
        )


def check_wrappable(loss: object, option: str, references: bool = True) -> None:
    """:class:`~dml.errors.ConfigError` unless ``loss`` is a triplet or pair loss that takes
    ``references`` (what ``memory=`` and ``synthesis=`` wrap); ``option`` names the wrapper.
    With ``references`` (a B×N matrix), the all-triplets miner (B·N² candidates) is refused."""
    if references and isinstance(getattr(loss, "miner", None), AllTripletsMiner):
        raise ConfigError(
            f"{option} with loss/miner=all_triplets would hold B×N×N candidate triplets against "
            f"its N extra points: choose another miner (e.g. loss/miner=batch_hard)"
        )
    if not (isinstance(loss, DMLLoss) and loss.takes_references):
        raise ConfigError(
            f"{option} wraps a triplet or pair loss whose miner picks tuples among extra points, "
            f"got {type(loss).__name__} (LoOp forms pairs of pairs inside the batch, pml has no "
            f"tuples of its own): choose e.g. loss=triplet_batchhard, loss=sct, "
            f"loss=contrastive or loss=multisimilarity, or drop {option.split('=')[0]}="
        )


class DMLLoss(nn.Module, ABC):
    """A metric-learning loss ``L(embeddings, labels)`` with per-batch statistics
    (:class:`LossResult`).

    Half-precision embeddings (float16/bfloat16, e.g. under autocast) are promoted to float32
    before any computation. Subclasses implement :meth:`compute`, which adds its statistics to
    the result it is given; those whose ``compute`` takes ``references`` (triplet and pair
    losses) set ``takes_references``. A loss with a schedule (a memory's warm-up) overrides
    :meth:`set_epoch`, which the LightningModule calls at the start of every training epoch.

    What the run and the LightningModule ask of a loss, instead of its class:
    :attr:`mines_tuples` and :attr:`buffers_from_global_batch`.
    """

    takes_references: ClassVar[bool] = False
    #: True if the loss forms its tuples within the batch, so a batch needs P >= 2 classes of
    #: K >= 2 images each (checked before training); False for one that trains on any batch.
    mines_tuples: ClassVar[bool] = True
    #: True if this module's own buffers (not its children's) are built from the global batch of
    #: all ranks (a memory that enqueues it): identical on every rank under cross-rank mining, so
    #: DDP does not broadcast them, and refused under DDP without cross-rank mining.
    buffers_from_global_batch: ClassVar[bool] = False

    def forward(self, embeddings: Tensor, labels: Tensor,
                indices: Triplets | Pairs | None = None) -> Tensor:
        return self.result(embeddings, labels, indices).value

    def result(self, embeddings: Tensor, labels: Tensor,
               indices: Triplets | Pairs | None = None,
               references: References | None = None) -> LossResult:
        """The loss of a batch with its tuples and statistics (``indices``: tuples mined
        elsewhere instead of the loss's own miner; ``references``: compare the batch with these
        instead of itself, for losses that :attr:`takes_references`)."""
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()  # exp(50 S), ulp-based validity: not in half precision
        out = LossResult(stats={"mean_pairwise_sim": mean_offdiagonal_cosine(embeddings)})
        if references is None:
            out.value = self.compute(embeddings, labels, out, indices)
        elif self.takes_references:
            refs = references._replace(embeddings=references.embeddings.to(embeddings.dtype))
            out.value = self.compute(embeddings, labels, out, indices, refs)
        else:
            raise ConfigError(f"{type(self).__name__} compares a batch with itself only: it "
                              "cannot take references (a memory)")
        return out

    def set_epoch(self, epoch: int) -> None:
        """Called with the training epoch before it starts (no-op unless overridden)."""

    @abstractmethod
    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: Triplets | Pairs | None = None) -> Tensor:
        """The loss value of a batch; records the tuples and statistics in ``out``."""


class TripletLoss(DMLLoss):
    """Mean of a per-triplet term ``ℓ(m_ap, m_an)`` over the triplets chosen by ``miner``.

    ``m`` is the loss's own measure ``distance``: its B×B matrix is computed once and the miner
    mines on it (without gradient) when it shares the measure; a miner with another measure
    computes its own. ``m_ap`` and ``m_an`` are then read from the matrix. Subclasses implement
    :meth:`triplet_terms` and may restrict the triplets in :meth:`valid` and change
    :meth:`reduce`.
    """

    takes_references = True

    def __init__(self, miner: TripletMiner, distance: str | Distance = "cosine") -> None:
        super().__init__()
        check_miner(miner, TripletMiner, "triplet")
        self.miner = miner
        self.distance = get_distance(distance, "loss.distance")

    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: Triplets | None = None,
                references: References | None = None) -> Tensor:
        refs = _as_references(embeddings, references)
        matrix = self.distance.pairwise(embeddings, refs.embeddings)
        if indices is None:
            indices = mine(self.miner, self.distance, matrix, embeddings, labels, references)
        a, p, n = indices
        m_ap, m_an = matrix[a, p], matrix[a, n]
        keep = self.valid(m_ap.detach(), m_an.detach())
        if keep is not None:
            a, p, n, m_ap, m_an = a[keep], p[keep], n[keep], m_ap[keep], m_an[keep]
        out.tuples = (a, p, n)
        if self.distance == _COSINE:
            out.record_triplets(m_ap, m_an)
        else:
            out.record_triplets(*used_cosines(embeddings, [(a, p), (a, n)], refs.embeddings))
        if a.numel() == 0:
            out.stats["active_fraction"] = torch.tensor(float("nan"), device=embeddings.device)
            return embeddings.sum() * 0
        terms, active = self.triplet_terms(m_ap, m_an)
        out.stats["active_fraction"] = mean_or_nan(active)
        return self.reduce(terms)

    def valid(self, m_ap: Tensor, m_an: Tensor) -> Tensor | None:
        """Boolean mask of the mined triplets the loss uses (``None``: all of them)."""
        return None

    def reduce(self, terms: Tensor) -> Tensor:
        """Scalar from the per-triplet terms (the mean unless overridden)."""
        return terms.mean()

    @abstractmethod
    def triplet_terms(self, m_ap: Tensor, m_an: Tensor) -> tuple[Tensor, Tensor]:
        """Per-triplet loss terms and the boolean mask of terms with non-zero gradient."""


def used_cosines(embeddings: Tensor, pairs: list[tuple[Tensor, Tensor]],
                 columns: Tensor | None = None) -> list[Tensor]:
    """Detached cosines of the used index pairs ``(r, c)`` only, ``O(T d)`` (the statistics of a
    loss in another measure: no second matrix); ``c`` indexes ``columns`` (default the batch)."""
    columns = embeddings if columns is None else columns
    with torch.no_grad():
        return [_COSINE.paired(embeddings[r], columns[c]) for r, c in pairs]


def _as_references(embeddings: Tensor, references: References | None) -> References:
    """The columns of the loss's matrix: ``references``, or the batch itself (labels unused)."""
    return references if references is not None else References(embeddings, None)


def mine(miner: Miner, distance: Distance, matrix: Tensor, embeddings: Tensor,
         labels: Tensor, references: References | None = None) -> Triplets | Pairs:
    """The miner's tuples: on the loss's ``matrix`` (detached) when the miner uses the loss's
    ``distance``, else from the miner's own matrix (against ``references`` if given)."""
    same_measure = miner.distance == distance
    if references is None:  # the batch against itself (miners written for B×B only still work)
        return miner.mine(matrix.detach(), labels) if same_measure else miner(embeddings, labels)
    if same_measure:
        return miner.mine(matrix.detach(), labels, references.labels, references.allowed)
    return miner(embeddings, labels, *references)


class PairLoss(DMLLoss):
    """Loss over the positive pairs ``(a1, p)`` and negative pairs ``(a2, n)`` from ``miner``
    (default: all pairs), in the loss's measure ``distance``. Subclasses implement
    :meth:`pair_loss`."""

    takes_references = True

    def __init__(self, miner: PairMiner | None, distance: str | Distance = "cosine") -> None:
        super().__init__()
        self.distance = get_distance(distance, "loss.distance")
        self.miner = miner if miner is not None else AllPairsMiner(self.distance)
        check_miner(self.miner, PairMiner, "pair")

    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: Pairs | None = None, references: References | None = None) -> Tensor:
        refs = _as_references(embeddings, references)
        matrix = self.distance.pairwise(embeddings, refs.embeddings)
        if indices is None:
            indices = mine(self.miner, self.distance, matrix, embeddings, labels, references)
        a1, p, a2, n = out.tuples = indices
        with torch.no_grad():
            if self.distance == _COSINE:
                s_ap, s_an = matrix[a1, p], matrix[a2, n]
            else:
                s_ap, s_an = used_cosines(embeddings, [(a1, p), (a2, n)], refs.embeddings)
            out.stats.update(mean_s_ap=mean_or_nan(s_ap), mean_s_an=mean_or_nan(s_an))
        if a1.numel() + a2.numel() == 0:
            out.stats["active_fraction"] = torch.tensor(0.0, device=embeddings.device)
            return embeddings.sum() * 0
        loss, active = self.pair_loss(matrix, a1, p, a2, n)
        out.stats["active_fraction"] = active.detach().float() / candidate_pairs(matrix, references)
        return loss

    @abstractmethod
    def pair_loss(
        self, matrix: Tensor, a1: Tensor, p: Tensor, a2: Tensor, n: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The loss from the B×B (or B×N) matrix and the pairs, and the number of pairs with
        non-zero gradient (a 0-d tensor)."""


def candidate_pairs(matrix: Tensor, references: References | None) -> int:
    """How many pairs a pair loss could use: ``B(B-1)`` off the diagonal of a batch against
    itself, else the allowed ones of ``B·N`` against ``N`` references (at least 1)."""
    rows, cols = matrix.shape
    if references is None:
        return max(rows * (rows - 1), 1)
    if references.allowed is None:
        return max(rows * cols, 1)
    return max(int(references.allowed.sum()), 1)
