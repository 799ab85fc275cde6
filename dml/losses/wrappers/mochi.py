"""Hard negative mixing (MoCHi) around any triplet or pair loss, in the supervised setting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.config_checks import check_int, check_range
from dml.errors import ConfigError
from dml.losses.base import DMLLoss, LossResult, References, check_wrappable
from dml.losses.wrappers.embedding_expansion import synthetic_fraction


def draw_seed(torch_seed: int, calls: int) -> int:
    """The seed of the synthetic points' generator at a call count (a 63-bit mix of both)."""
    return (torch_seed * 0x9E3779B97F4A7C15 + calls) % 2**63


class HardNegativeMixing(DMLLoss):
    """Hard negative mixing (MoCHi; Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus, "Hard
    Negative Mixing for Contrastive Learning", NeurIPS 2020, Sec. 4) around a triplet or pair
    ``loss``, with labels.

    For each anchor ``a`` of the batch, with ``Ñ_a`` its ``hardest`` negatives (the other-class
    points of the batch of highest cosine; all of them if fewer) and unit embeddings ``x̂``:

        h_k  = (α_k n_i + (1 - α_k) n_j) / |·|,    n_i ~ U(Ñ_a), n_j ~ U(Ñ_a - {n_i}),
               α_k ~ U(0, 1),  k = 1..s   (``mixed``: mixtures of two distinct hard
               negatives; none for an anchor with a single negative),
        h'_k = (β_k x̂_a + (1 - β_k) n_j) / |·|,   n_j ~ U(Ñ_a),  β_k ~ U(0, β_max),
               k = 1..s'  (``anchor_mixed``: harder ones, mixed with the anchor; β_max < 0.5
               keeps the negative's share the larger, as the paper's β ∈ (0, 0.5)),

    drawn from a generator seeded by :func:`draw_seed` from the torch seed (set per epoch by the
    training module, the same on every rank) and the count of training calls (a buffer, so
    resume continues the sequence): the draws never depend on how much of the global RNG other
    code used, so every rank of a cross-rank-mining DDP run builds the same points. The synthetic
    points are detached (targets to push away, not features to train, like the queue negatives
    they are mixed from in MoCHi) and are negatives of their own anchor only. The loss is then
    ``L(B, B ∪ H)``: anchors are the batch; references the batch (the anchor itself excluded,
    so without synthetic points this is ``L(B, B)``) and the anchor's own synthetic negatives;
    the loss's miner mines over real and synthetic negatives alike. The paper's ImageNet setting
    is (N, s, s') = (1024, 512, 256) over a queue of 16k; the defaults here are scaled to a P×K
    batch.

    Statistics: those of ``loss`` over the tuples it used (synthetic negatives index the
    references at ``>= B``), ``mean_pairwise_sim`` over the real batch, and
    ``synthetic_fraction``: the share of used tuples with a synthetic member.
    """

    def __init__(self, loss: DMLLoss, hardest: int = 32, mixed: int = 16, anchor_mixed: int = 8,
                 beta_max: float = 0.5) -> None:
        check_wrappable(loss, "synthesis=mochi")
        check_int("synthesis.hardest", hardest, 1, "hard negatives to mix from", 32)
        check_int("synthesis.mixed", mixed, 0, "mixtures of two negatives per anchor", 16)
        check_int("synthesis.anchor_mixed", anchor_mixed, 0,
                  "mixtures of the anchor and a negative per anchor", 8)
        check_range("synthesis.beta_max", beta_max, 0, 0.5)
        super().__init__()
        self.loss, self.hardest = loss, hardest
        self.mixed, self.anchor_mixed, self.beta_max = mixed, anchor_mixed, beta_max
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # training calls so far

    def synthesize(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per anchor its ``mixed + anchor_mixed`` synthetic negatives ``[B, S, d]`` (unit,
        detached) and which of them exist ``[B, S]`` (mixtures need two negatives, anchor
        mixes one)."""
        with torch.no_grad():
            unit = F.normalize(embeddings.detach(), dim=1)
            negative = labels[:, None] != labels[None, :]
            count = negative.sum(dim=1)
            k = max(min(self.hardest, int(count.max())), 1)
            hard = (unit @ unit.T).masked_fill(~negative, -torch.inf).topk(k, dim=1).indices
            available = count.clamp(max=k)[:, None]

            rng = torch.Generator(device=unit.device)
            rng.manual_seed(draw_seed(torch.initial_seed(), int(self.calls)))

            def uniform(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
                return torch.rand(*shape, generator=rng, device=unit.device, dtype=dtype)

            def pick(n: int, among: Tensor) -> Tensor:  # n uniform ranks in [0, among)
                return (uniform(len(labels), n) * among).long().clamp(max=k - 1)

            first = pick(self.mixed, available)
            second = (first + 1 + pick(self.mixed, available - 1)) % available.clamp(min=1)
            alpha = uniform(len(labels), self.mixed, 1, dtype=unit.dtype)
            n_i, n_j = unit[hard.gather(1, first)], unit[hard.gather(1, second)]
            n_a = unit[hard.gather(1, pick(self.anchor_mixed, available))]
            beta = self.beta_max * uniform(len(labels), self.anchor_mixed, 1, dtype=unit.dtype)
            points = torch.cat([alpha * n_i + (1 - alpha) * n_j,
                                beta * unit[:, None] + (1 - beta) * n_a], dim=1)
            exists = torch.cat([(available >= 2).expand(-1, self.mixed),
                                (available >= 1).expand(-1, self.anchor_mixed)], dim=1)
            return F.normalize(points, dim=2), exists

    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: tuple[Tensor, ...] | None = None) -> Tensor:
        if indices is not None:
            raise ConfigError(
                "HardNegativeMixing mines its own tuples over real and synthetic negatives and "
                "takes no indices: drop synthesis= to use tuples mined elsewhere"
            )
        batch = len(labels)
        points, exists = self.synthesize(embeddings, labels)
        if self.training:
            self.calls += 1
        per_anchor = points.shape[1]
        rows = torch.arange(batch, device=labels.device)
        owner = rows.repeat_interleave(per_anchor)
        allowed = torch.cat([rows[:, None] != rows[None, :],
                             (rows[:, None] == owner[None, :]) & exists.flatten()[None, :]], dim=1)
        fresh = labels.max() + 1 + torch.arange(batch * per_anchor, device=labels.device)
        references = References(torch.cat([embeddings, points.flatten(0, 1).to(embeddings)]),
                                torch.cat([labels, fresh]), allowed)
        inner = self.loss.result(embeddings, labels, references=references)
        out.adopt(inner)
        out.stats["synthetic_fraction"] = synthetic_fraction(inner.tuples, batch,
                                                             embeddings.device)
        return inner.value

    def extra_repr(self) -> str:
        return (f"hardest={self.hardest}, mixed={self.mixed}, anchor_mixed={self.anchor_mixed}, "
                f"beta_max={self.beta_max}")
