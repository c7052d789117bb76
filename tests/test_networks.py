"""Architecture (book: Method > Model, spec-parameter-counts): parameter counts equal the authors' networks; output
shapes for every benchmark."""

import pytest
import torch

from piad.errors import ConfigError
from piad.model.networks import AvgPool2x2, MinibatchStdDev, PIADNetworks, count_parameters
from piad.run.config import BENCHMARK_CONFIGS, make_config

REFERENCE_COUNTS = {
    "mnist": {"generator": 90_433, "encoder": 73_280, "image_critic": 72_769, "latent_critic": 20_865},
    "cifar10": {"generator": 2_897_539, "encoder": 2_338_304, "image_critic": 571_137, "latent_critic": 1_313_793},
}


@pytest.mark.parametrize("benchmark", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_reference(benchmark):
    nets = PIADNetworks(make_config(benchmark))
    for name, expected in REFERENCE_COUNTS[benchmark].items():
        assert count_parameters(getattr(nets, name)) == expected, name


@pytest.mark.parametrize("benchmark", sorted(BENCHMARK_CONFIGS))
def test_output_shapes(benchmark):
    cfg = make_config(benchmark)
    torch.manual_seed(0)
    nets = PIADNetworks(cfg)
    x = torch.rand(2, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
    z = torch.randn(2, cfg.latent_dim, cfg.latent_size, cfg.latent_size)
    with torch.no_grad():
        assert nets.encoder(x).shape == z.shape
        assert nets.generator(z).shape == x.shape
        assert nets.image_critic(x).shape == (2, 1)
        assert nets.latent_critic(z).shape == (2, 1)
        assert nets.reconstruct(x).shape == x.shape


def test_lsun_latent_is_spatial():
    cfg = make_config("lsun")
    assert (cfg.latent_dim, cfg.latent_size) == (32, 4)
    assert PIADNetworks(cfg).latent_critic.model[0].in_features == 32 * 4 * 4


def test_generator_output_is_linear():
    """No tanh: outputs can leave [-1, 1] (the authors' generator ends with a linear 1x1 conv)."""
    nets = PIADNetworks(make_config("mnist"))
    last = nets.generator.model[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.kernel_size == (1, 1)
    with torch.no_grad():
        last.bias.fill_(5.0)
        assert nets.generator(torch.randn(2, 32, 1, 1)).max() > 1


def test_minibatch_stddev_channel():
    x = torch.randn(4, 3, 4, 4)
    y = MinibatchStdDev()(x)
    assert y.shape == (4, 4, 4, 4)
    expected = torch.sqrt(x.var(0, unbiased=False) + 1e-8).mean()
    assert torch.allclose(y[:, 3], expected.expand(4, 4, 4))
    assert torch.equal(y[:, :3], x)


def test_wrong_widths_are_refused():
    with pytest.raises(ConfigError, match=r"'g_widths' = \(32, 32\) is not allowed: expected 4 positive widths"):
        make_config("mnist", {"g_widths": (32, 32)})


@pytest.mark.parametrize("channels_last", [False, True])
def test_avg_pool_2x2_equals_avg_pool2d_through_double_backward(channels_last):
    """The CPU depthwise-convolution pooling is the paper's 2x2 average pooling: values, gradients and the
    second-order gradients that the gradient penalty needs agree with F.avg_pool2d."""
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8, 6, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 5, 3, 3, dtype=torch.float64, requires_grad=True)

    def penalty(pool):
        xi = x.clone().requires_grad_(True)
        out = pool(torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(xi, w, padding=1), 0.2))
        (g,) = torch.autograd.grad((out**2).sum(), xi, create_graph=True)
        (gw,) = torch.autograd.grad(g.norm(), w)
        return out, g, gw

    ours, ref = penalty(AvgPool2x2()), penalty(lambda t: torch.nn.functional.avg_pool2d(t, 2))
    assert ours[0].shape == (4, 5, 4, 3)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_both_pooling_implementations_train_alike(tmp_path):
    """POOL_IMPL's choice per device is a speed choice only: three training iterations with the depthwise
    convolution and with F.avg_pool2d give the same weights up to float rounding."""
    from piad.model import networks
    from piad.run.training import Trainer

    cfg = make_config("synthetic", {"policy_every": 2, "weight_decay": 1e-2})
    weights = {}
    for impl in ("conv", "avg_pool2d"):
        (tmp_path / impl).mkdir()
        t = Trainer(cfg, tmp_path / impl, progress=False)
        pools = [m for m in t.nets.modules() if isinstance(m, networks.AvgPool2x2)]
        assert pools and all(p.impl is None for p in pools) and networks.POOL_IMPL["cpu"] in ("conv", "avg_pool2d")
        for p in pools:
            p.impl = impl
        for _ in range(3):
            t.train_iteration()
        weights[impl] = [p.detach().clone() for p in t.nets.parameters()]
    diffs = [(a - b).abs().max().item() for a, b in zip(weights["conv"], weights["avg_pool2d"], strict=True)]
    assert max(diffs) < 1e-4
