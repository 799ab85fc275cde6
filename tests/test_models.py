import itertools

import pytest
import torch

from dml.models import ConfigError, EmbeddingNet
from dml.train.optim import warmup_cosine


def test_embeddings_are_unit_norm_with_the_configured_size():
    net = EmbeddingNet("conv4", embedding_dim=24, in_chans=1)
    z = net(torch.randn(5, 1, 28, 28))
    assert z.shape == (5, 24)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet_18'.*did you mean .*resnet18"):
        EmbeddingNet("resnet_18")


def test_pretrained_file_loads_local_weights(tmp_path):
    source = EmbeddingNet("conv4", 8, in_chans=1)
    path = tmp_path / "w.pth"
    torch.save(source.backbone.state_dict(), path)
    loaded = EmbeddingNet("conv4", 8, in_chans=1, pretrained_file=str(path))
    for (k, a), b in zip(
        source.backbone.state_dict().items(), loaded.backbone.state_dict().values(), strict=False
    ):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="pretrained_file not found"):
        EmbeddingNet("conv4", 8, pretrained_file=str(tmp_path / "missing.pth"))


def test_pretrained_download_offline_is_a_clear_error(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(ConfigError, match=r"could not load pretrained weights.*pretrained_file"):
        EmbeddingNet("resnet10t", 8, pretrained=True)


def test_freeze_bn_keeps_backbone_batchnorm_fixed():
    net = EmbeddingNet("conv4", 8, in_chans=1, freeze_bn=True).train()
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    net(torch.randn(4, 1, 28, 28) + 3)
    assert all(not bn.training and not bn.weight.requires_grad for bn in bns)
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns, strict=False))
    assert net.head.weight.requires_grad


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1, final_factor=0.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5)  # halfway through the cosine part
    assert lrs[-1] < 0.001 and all(a >= b for a, b in itertools.pairwise(lrs[9:]))
