"""The hardness-aware contrastive loss against an explicit loop over pairs and negatives (float64,
the authors' formula in linear space), values and gradients, with its edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dml.errors import ConfigError
from dml.losses import HardnessAwareContrastiveLoss


def reference(x: torch.Tensor, labels: list[int], temperature: float, beta: float,
              tau_plus: float) -> torch.Tensor:
    unit = F.normalize(x, dim=1)
    terms = []
    for i in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[i]]
        if not negatives:
            continue
        for p in range(len(labels)):
            if p == i or labels[p] != labels[i]:
                continue
            pos = torch.exp(unit[i] @ unit[p] / temperature)
            neg = torch.stack([torch.exp(unit[i] @ unit[n] / temperature) for n in negatives])
            imp = torch.exp(beta * torch.log(neg))  # the authors' code: imp = (β log neg).exp()
            count = len(negatives)
            reweighted = (imp * neg).sum() / imp.mean()
            ng = (-tau_plus * count * pos + reweighted) / (1 - tau_plus)
            ng = torch.clamp(ng, min=count * math.e ** (-1 / temperature))
            terms.append(-torch.log(pos / (pos + ng)))
    return torch.stack(terms).mean() if terms else x.sum() * 0


BATCHES = {
    "random": ([0, 0, 1, 1, 2, 2, 2], 0),
    "singleton": ([0, 0, 1, 2, 2, 3], 1),  # classes 1 and 3 have no positive
    "identical": ([0, 0, 1, 1], None),  # every embedding the same
}


@pytest.mark.parametrize("kind", list(BATCHES))
@pytest.mark.parametrize(("temperature", "beta", "tau_plus"),
                         [(0.1, 1.0, 0.0), (0.5, 0.0, 0.0), (0.2, 2.0, 0.1)])
def test_hcl_matches_the_reference(kind, temperature, beta, tau_plus):
    labels, seed = BATCHES[kind]
    if seed is None:
        x = torch.ones(len(labels), 5, dtype=torch.float64)
    else:
        x = torch.randn(len(labels), 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
    loss = HardnessAwareContrastiveLoss(temperature, beta, tau_plus)
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = loss(got_x, torch.tensor(labels))
    want = reference(want_x, labels, temperature, beta, tau_plus)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward()
    want.backward()
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-9, atol=1e-12)


def test_beta_weighs_the_harder_negatives_more():
    # anchor 0 with positive 1; negatives 2 (close) and 3 (far): a larger β gives the close one
    # more weight, so the loss grows
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.9, -0.43589], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2])
    values = [HardnessAwareContrastiveLoss(0.5, beta)(x, labels).item() for beta in (0, 1, 2)]
    assert values[0] < values[1] < values[2]


def test_a_batch_without_negatives_gives_a_differentiable_zero():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    value = HardnessAwareContrastiveLoss()(x, torch.zeros(4, dtype=torch.long))
    assert value.item() == 0 and value.requires_grad


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"loss\.tau_plus must be < 1"):
        HardnessAwareContrastiveLoss(tau_plus=1.0)
    with pytest.raises(ConfigError, match=r"loss\.temperature"):
        HardnessAwareContrastiveLoss(temperature=0)
