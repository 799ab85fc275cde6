"""Hard negative mixing (``synthesis=mochi``) against an explicit-loop reference that draws the
same random numbers (float64, values and gradients), and the references path it rests on: a loss
against the batch itself as references, the anchor disallowed, equals the loss on the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dml.errors import ConfigError
from dml.losses import LoOpTripletLoss, SCTLoss
from dml.losses.base import PairLoss, References, TripletLoss
from dml.losses.wrappers.mochi import HardNegativeMixing, draw_seed
from tests.test_losses_configs import WRAPPABLE_CONFIGS, load
from tests.test_memory import CASES, Ref

LABELS = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


def batch(seed: int = 0, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(LABELS), dim, generator=g, dtype=torch.float64), torch.tensor(LABELS)


@pytest.mark.parametrize("name", WRAPPABLE_CONFIGS)
def test_the_batch_as_references_without_the_anchor_equals_the_batch(name):
    """Every triplet and pair loss config (conf/loss/), values, gradients and statistics."""
    loss = load(name)
    assert isinstance(loss, TripletLoss | PairLoss)
    x, labels = batch()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    allowed = ~torch.eye(len(labels), dtype=torch.bool)
    torch.manual_seed(0)  # random miners draw the same numbers
    plain = loss.result(x1, labels)
    torch.manual_seed(0)
    against = loss.result(x2, labels, references=References(x2, labels, allowed))
    torch.testing.assert_close(against.value, plain.value, rtol=1e-10, atol=1e-12)
    plain.value.backward()
    against.value.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-9, atol=1e-12)
    for key, value in plain.stats.items():
        torch.testing.assert_close(against.stats[key], value, rtol=1e-9, atol=1e-12,
                                   equal_nan=True, msg=key)


def reference_points(x, labels, hardest, mixed, anchor_mixed, beta_max,
                     rng: torch.Generator) -> list[list[torch.Tensor]]:
    """Each anchor's synthetic negatives by explicit loops, drawing the random numbers in the
    wrapper's order from ``rng``: picks for n_i, picks for n_j (among the others), α, picks for
    the anchor mixes, β."""
    unit = [v.detach() / v.detach().norm() for v in x]
    b = len(labels)
    hard = []
    for a in range(b):
        negs = [j for j in range(b) if labels[j] != labels[a]]
        negs.sort(key=lambda j: -float(unit[a] @ unit[j]))
        hard.append(negs[:hardest])
    k = max(min(hardest, max(len(h) for h in hard)), 1)
    pick_i = torch.rand(b, mixed, dtype=torch.float32, generator=rng)
    pick_j = torch.rand(b, mixed, dtype=torch.float32, generator=rng)
    alpha = torch.rand(b, mixed, 1, dtype=torch.float64, generator=rng)
    pick_a = torch.rand(b, anchor_mixed, dtype=torch.float32, generator=rng)
    beta = beta_max * torch.rand(b, anchor_mixed, 1, dtype=torch.float64, generator=rng)

    points = []
    for a in range(b):
        mine, h = [], hard[a]
        if len(h) >= 2:
            for m in range(mixed):
                i = min(int(pick_i[a, m] * len(h)), k - 1)
                others = [r for r in range(len(h)) if r != i]  # the next ranks, wrapping
                others = others[i:] + others[:i]
                j = others[min(int(pick_j[a, m] * (len(h) - 1)), k - 1)]
                v = alpha[a, m, 0] * unit[h[i]] + (1 - alpha[a, m, 0]) * unit[h[j]]
                mine.append(v / v.norm())
        if h:
            for m in range(anchor_mixed):
                v = beta[a, m, 0] * unit[a] + (1 - beta[a, m, 0]) * unit[
                    h[min(int(pick_a[a, m] * len(h)), k - 1)]]
                mine.append(v / v.norm())
        points.append(mine)
    return points


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("hardest,mixed,anchor_mixed", [(3, 4, 2), (1, 2, 0), (50, 0, 3)])
def test_mixing_matches_the_reference(name, hardest, mixed, anchor_mixed):
    make_loss, ref = CASES[name]
    loss = HardNegativeMixing(make_loss(), hardest, mixed, anchor_mixed, beta_max=0.4)
    x, labels = batch(1)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(5)
    value = loss(x1, labels)
    rng = torch.Generator().manual_seed(draw_seed(5, 0))  # the first call after seeding
    points = reference_points(x2, LABELS, hardest, mixed, anchor_mixed, 0.4, rng)
    fresh = 100

    def refs_of(i: int) -> Ref:
        own = [(p, fresh) for p in points[i]]
        return [(x2[j], LABELS[j]) for j in range(len(LABELS)) if j != i] + own

    expected = ref(x2, LABELS, refs_of)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    value.backward()
    expected.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-12)


def test_synthetic_points_are_unit_hard_mixtures_owned_by_their_anchor():
    x, labels = batch(2)
    loss = HardNegativeMixing(SCTLoss(), hardest=2, mixed=3, anchor_mixed=3, beta_max=0.5)
    points, exists = loss.synthesize(x, labels)
    assert points.shape == (10, 6, 6) and exists.all() and not points.requires_grad
    torch.testing.assert_close(points.norm(dim=2), torch.ones(10, 6, dtype=x.dtype))
    unit = F.normalize(x, dim=1)
    for a in range(10):
        negs = [j for j in range(10) if LABELS[j] != LABELS[a]]
        two = sorted(negs, key=lambda j: -float(unit[a] @ unit[j]))[:2]
        basis = torch.stack([unit[j] for j in two] + [unit[a]])
        for m in range(6):  # each point lies in the span of the two hardest (and the anchor)
            coef = torch.linalg.lstsq(basis.T, points[a, m]).solution
            torch.testing.assert_close(basis.T @ coef, points[a, m], atol=1e-10, rtol=0)
            if m < 3:
                assert abs(coef[2].item()) < 1e-8  # no anchor in a mixture of two negatives
            else:
                assert 0 <= coef[2].item() <= coef[:2].sum().item() + 1e-12  # β <= 1/2


def test_an_anchor_without_negatives_gets_no_synthetic_point():
    x = torch.randn(4, 5, dtype=torch.float64)
    labels = torch.zeros(4, dtype=torch.long)
    loss = HardNegativeMixing(SCTLoss())
    assert loss(x, labels).item() == SCTLoss()(x, labels).item() == 0
    assert not loss.synthesize(x, labels)[1].any()


def test_an_anchor_with_one_negative_gets_anchor_mixes_only():
    x = torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    _, exists = HardNegativeMixing(SCTLoss(), mixed=2, anchor_mixed=3).synthesize(x, labels)
    assert exists[:3].tolist() == [[False] * 2 + [True] * 3] * 3  # one negative: no mixture
    assert exists[3].tolist() == [True] * 5


def test_statistics_count_synthetic_tuples():
    x, labels = batch(3)
    out = HardNegativeMixing(SCTLoss(), hardest=3, mixed=4, anchor_mixed=4).result(x, labels)
    a, p, n = out.tuples
    assert out.stats["synthetic_fraction"].item() == pytest.approx((n >= 10).double().mean().item())
    assert (p < 10).all()  # positives are real
    assert out.stats["num_triplets"].item() == len(a)
    assert out.stats["mean_pairwise_sim"].item() == pytest.approx(
        SCTLoss().result(x, labels).stats["mean_pairwise_sim"].item())


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: HardNegativeMixing(LoOpTripletLoss()),
         r"^synthesis=mochi wraps a triplet or pair loss .* got LoOpTripletLoss .*: choose"),
        (lambda: HardNegativeMixing(SCTLoss(), hardest=0),
         r"^synthesis.hardest must be an integer >= 1"),
        (lambda: HardNegativeMixing(SCTLoss(), beta_max=0.7),
         r"^synthesis.beta_max must be in \[0, 0.5\], got 0.7$"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(ConfigError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("synthesis", ["mochi", "embedding_expansion"])
def test_synthesis_trains_through_the_real_config(tmp_path, synthesis):
    """``synthesis=<name>`` wraps the configured loss in dml-train's module, and the share of
    synthetic tuples reaches the training log."""
    import csv

    from dml.train.run import train
    from tests.training_utils import tiny_config

    train(tiny_config(tmp_path, "loss=triplet_batchhard", f"synthesis={synthesis}",
                      "trainer.max_epochs=1", "trainer.log_every_n_steps=1"))
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        shares = [float(r["train/synthetic_fraction"]) for r in csv.DictReader(f)
                  if r.get("train/synthetic_fraction")]
    assert shares and max(shares) > 0


def test_draws_follow_the_torch_seed_and_the_call_count_not_the_global_rng():
    """What keeps the ranks of a cross-rank-mining DDP run in step, and resume exact."""
    x, labels = batch(4)

    def make() -> HardNegativeMixing:
        return HardNegativeMixing(SCTLoss(), hardest=3, mixed=4, anchor_mixed=2)

    loss = make()
    torch.manual_seed(9)
    first = loss(x, labels).item()
    torch.manual_seed(9)
    torch.rand(100)  # other code used the global RNG: no effect on the points
    assert make()(x, labels).item() == first
    state = torch.get_rng_state()
    second = loss(x, labels).item()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not consumed
    assert int(loss.calls) == 2 and second != first  # the next call draws new points
    resumed = make()
    resumed.load_state_dict(loss.state_dict())
    assert resumed(x, labels).item() == loss(x, labels).item()
