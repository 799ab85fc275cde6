"""GPU speed options as config values, checked on CPU: channels-last, torch.compile of the
backbone and bf16 mixed precision give the float32 eager results within the tolerance their
arithmetic allows, and keep checkpoints interchangeable."""

from __future__ import annotations

import pytest
import torch

from dml.losses import SCTLoss
from dml.models.backbone import EmbeddingNet
from dml.train.run import train

from .training_utils import tiny_config

# Unit embeddings from the same float32 weights: convolutions summed in another order (NHWC
# kernels, compiled kernels) differ by a few ulps per accumulation of ~10^3 terms: 1e-5 bounds it.
FLOAT32_TOL = 1e-5


def nets(**option: bool) -> tuple[EmbeddingNet, EmbeddingNet]:
    torch.manual_seed(0)
    eager = EmbeddingNet("conv4", 32, in_chans=1)
    other = EmbeddingNet("conv4", 32, in_chans=1, **option)
    other.load_state_dict(eager.state_dict())  # same keys: checkpoints load either way
    assert list(other.state_dict()) == list(eager.state_dict())
    return eager, other


def assert_same_forward_and_backward(eager: EmbeddingNet, other: EmbeddingNet) -> None:
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(4).repeat_interleave(4)
    values = []
    for net in (eager, other):
        z = net(x)
        loss = SCTLoss()(z, labels)
        loss.backward()
        values.append((z.detach(), loss.detach(), net.head.weight.grad.clone()))
    (z0, l0, g0), (z1, l1, g1) = values
    torch.testing.assert_close(z1, z0, atol=FLOAT32_TOL, rtol=0)
    torch.testing.assert_close(l1, l0, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
    torch.testing.assert_close(g1, g0, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


def test_channels_last_gives_the_same_embeddings_and_gradients():
    eager, other = nets(channels_last=True)
    conv = next(m for m in other.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_forward_and_backward(eager, other)


def test_a_compiled_backbone_gives_the_same_embeddings_and_gradients():
    eager, other = nets(compile=True)
    assert other._compiled is not None
    assert_same_forward_and_backward(eager, other)


def test_bf16_mixed_precision_computes_the_loss_in_float32():
    torch.manual_seed(0)
    net = EmbeddingNet("conv4", 32, in_chans=1)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(4).repeat_interleave(4)
    loss = SCTLoss()
    reference = loss(net(x), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = net(x)
        assert z.dtype == torch.bfloat16
        value = loss(z, labels)
    assert value.dtype == torch.float32  # the loss promotes half-precision embeddings
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per value, compounded through the
    # backbone's layers): the loss agrees to a few percent, not to float32 precision
    assert value.item() == pytest.approx(reference.item(), rel=5e-2)


@pytest.mark.parametrize("options", [["trainer.precision=bf16-mixed"],
                                     ["model.channels_last=true"]])
def test_the_speed_options_train_through_the_real_entry_point(tmp_path, options):
    cfg = tiny_config(tmp_path, "trainer.max_epochs=1", "test=false", *options)
    result = train(cfg)
    assert all(v == v for v in result["val"].values())  # finite (not NaN)
