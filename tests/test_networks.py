"""Architecture (book: Method > Model, spec-parameter-counts): parameter counts equal the authors' networks; output
shapes for every benchmark."""

import re

import pytest
import torch
from conftest import book_value

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


@pytest.mark.parametrize("benchmark", sorted(BENCHMARK_CONFIGS))
def test_every_conv_3_and_conv_1_keeps_the_size_and_the_conv_4s_map_1_and_4(benchmark):
    """spec-blocks: convolutions are padded to keep the size (conv 3: padding 1), except the generator's conv 4
    (1x1 -> 4x4, padding 3: spec-generator) and the encoder's (4x4 -> 1x1, none: spec-encoder); the final shapes
    alone cannot tell (a stem padded by 2 makes 34, 17, 8, 4 of a 32-pixel image, the same 4 as 32, 16, 8, 4)."""
    cfg = make_config(benchmark)
    nets, seen = PIADNetworks(cfg), []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((m.kernel_size[0], i[0].shape[-1], o.shape[-1])))
        for m in nets.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    x = torch.rand(2, cfg.channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        nets.generator(nets.encoder(x)), nets.image_critic(x)
    for h in hooks:
        h.remove()
    assert {k for k, _, _ in seen} <= {1, 3, 4} and len(seen) > 10
    for k, size_in, size_out in seen:
        assert size_out == {4: {1: 4, 4: 1}.get(size_in)}.get(k, size_in), (k, size_in, size_out)


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


def test_minibatch_stddev_of_identical_samples_is_the_square_root_of_its_epsilon():
    """sqrt(0 + 1e-8) = 1e-4: the epsilon keeps the channel finite (and its gradient too) when a batch collapses."""
    y = MinibatchStdDev()(torch.ones(4, 3, 2, 2))
    assert torch.allclose(y[:, 3], torch.full((4, 2, 2), 1e-4), rtol=1e-4, atol=0)


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


@pytest.mark.parametrize("n_widths", [3, 5])
def test_the_networks_themselves_refuse_one_width_too_few_or_too_many(n_widths):
    """An image of 32 to a latent of 1 takes four widths, as the config says (the module's own check, for networks
    built without a config)."""
    from piad.model.networks import Encoder, Generator

    Encoder(32, 1, 8, 1, [16] * 4), Generator(32, 1, 8, 1, [16] * 4)
    for net in (Encoder, Generator):
        with pytest.raises(ValueError, match=re.escape(f"needs 4 widths, got {[16] * n_widths}")):
            net(32, 1, 8, 1, [16] * n_widths)
        with pytest.raises(ValueError, match="needs 2 widths"):  # 18 is no power-of-two multiple of 8: log2(4.5)
            net(18, 1, 8, 8, [16] * 2)


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


def test_an_encoder_with_growing_widths_ends_on_its_last_width():
    """Widths that differ block to block (the benchmarks' are mostly equal): each conv takes the width before it."""
    from piad.model.networks import Encoder

    for latent_size in (1, 4):  # a vector latent (4x4 conv) and a spatial one (a last residual block, as LSUN's)
        enc = Encoder(32, 3, 8, latent_size, (4, 8, 16, 32))
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 8, latent_size, latent_size)
        assert enc.model[-1].in_channels == 32


def test_a_generator_with_shrinking_widths_starts_on_its_first_width():
    """G's first layer maps z to widths[0] channels, and each up-block takes the width before it."""
    from piad.model.networks import Generator

    for latent_size in (1, 4):  # a vector latent (4x4 transposed start) and a spatial one (a first residual block)
        gen = Generator(32, 3, 8, latent_size, (32, 16, 8, 4))
        assert gen(torch.randn(2, 8, latent_size, latent_size)).shape == (2, 3, 32, 32)
        first = next(m for m in gen.model[0].modules() if isinstance(m, torch.nn.Conv2d))
        assert first.out_channels == 32


def test_the_image_critic_takes_the_stddev_channel_on_top_of_odd_widths():
    """D_X's minibatch-stddev adds one channel before its last block: w + 1 inputs, also for an odd w."""
    from piad.model.networks import ImageCritic

    critic = ImageCritic(32, 3, (3, 5, 7, 9))
    assert critic(torch.randn(4, 3, 32, 32)).shape[0] == 4


def test_a_block_of_equal_widths_has_an_identity_skip_also_for_widths_built_at_run_time():
    """cin == cout compares values: 512 read from a config is not the same int object as another 512."""
    from piad.model.networks import preact_block

    block = preact_block(int("512"), int("512"))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in block.skip.modules()) == 0
    assert sum(isinstance(m, torch.nn.Conv2d) for m in preact_block(int("8"), int("16")).skip.modules()) == 1


def test_the_pooling_runs_the_implementation_it_names(monkeypatch):
    calls = []
    real = torch.nn.functional.avg_pool2d
    monkeypatch.setattr(torch.nn.functional, "avg_pool2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(1, 2, 4, 4)
    for impl, expected in (("conv", []), ("".join(["avg_", "pool2d"]), [1])):
        calls.clear()
        pool = AvgPool2x2()
        pool.impl = impl
        pool(x)
        assert calls == expected, impl


def test_the_latent_critics_init_is_xavier_with_the_lrelu_gain_except_the_output_layer():
    """Xavier-uniform bounds gain * sqrt(6 / (fan_in + fan_out)): the LeakyReLU gain on hidden layers, 1 on the
    output layer; with thousands of weights the largest lies within 3% of its bound."""
    from piad.model.networks import LRELU, LatentCritic

    torch.manual_seed(0)
    linears = [m for m in LatentCritic(64, (128, 128)).model if isinstance(m, torch.nn.Linear)]
    lrelu = torch.nn.init.calculate_gain("leaky_relu", LRELU)
    for m, gain in zip(linears, (lrelu, lrelu, 1.0), strict=True):
        fan_out, fan_in = m.weight.shape
        bound = gain * (6 / (fan_in + fan_out)) ** 0.5
        top = m.weight.abs().max().item()
        assert bound * (0.97 if m.weight.numel() > 1000 else 0.75) < top <= bound


@pytest.mark.parametrize("benchmark", sorted(BENCHMARK_CONFIGS))
def test_every_activation_is_the_method_chapters_leaky_relu_and_there_is_no_normalisation(benchmark):
    slope = float(book_value("method/model.md", r"LeakyReLU with negative slope ([\d.]+)"))
    nets = PIADNetworks(make_config(benchmark))
    kinds = {type(m).__name__ for m in nets.modules()}
    assert not {k for k in kinds if "Norm" in k}  # "No network uses a normalisation layer"
    acts = [m for m in nets.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and all(m.negative_slope == slope for m in acts)
    assert not kinds & {"ReLU", "ELU", "GELU", "SiLU", "Tanh", "Sigmoid"}


def test_a_residual_block_is_its_skip_plus_its_body():
    """y = s(x) + b(x) (book: Method > Model, building blocks), for every block of the CIFAR-10 networks."""
    from piad.model.networks import _Residual

    torch.manual_seed(0)
    nets = PIADNetworks(make_config("cifar10"))
    blocks = [m for m in nets.modules() if isinstance(m, _Residual)]
    assert blocks
    with torch.no_grad():
        for block in blocks:
            cin = next(p for p in block.parameters() if p.dim() == 4).shape[1]
            x = torch.randn(2, cin, 8, 8)
            y, s, b = block(x), block.skip(x), block.body(x)
            assert b.abs().mean() > 1e-3 and torch.allclose(y, s + b, atol=1e-6)


def test_the_latent_critic_chains_its_hidden_widths_to_one_output():
    """D_Z: d -> h_1 -> h_2 -> 1 (book: Method > Model), also with hidden widths that differ."""
    from piad.model.networks import LatentCritic

    critic = LatentCritic(10, (12, 7))
    shapes = [tuple(m.weight.shape) for m in critic.model if isinstance(m, torch.nn.Linear)]
    assert shapes == [(12, 10), (7, 12), (1, 7)]
    assert critic(torch.randn(3, 10)).shape[0] == 3


def test_every_convolution_of_e_g_and_dx_starts_kaiming_normal_in_fan_out_mode():
    """spec-init: N(0, 2 / ((1 + a^2) k^2 c_out)) with the book's slope a. PyTorch's default (uniform, fan-in) has a
    different spread on every layer here, and fan-in mode a spread sqrt(2) off wherever the width doubles or halves;
    the std of thousands of draws lies within 8% of the target, and about 4.6% of normal draws lie beyond 2 std."""
    slope = float(book_value("method/model.md", r"LeakyReLU of\s+slope ([\d.]+) in fan-out mode"))
    torch.manual_seed(0)
    nets = PIADNetworks(make_config("cifar10"))
    checked, squares, count = 0, 0.0, 0
    for net in (nets.encoder, nets.generator, nets.image_critic):
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 2000:
                c_out, _, kh, kw = m.weight.shape
                target = (2 / ((1 + slope**2) * kh * kw * c_out)) ** 0.5
                w = m.weight.detach().double().flatten()
                assert abs(w.std().item() / target - 1) < 0.08, (m, w.std().item(), target)
                assert abs(w.mean().item()) < 4 * target / w.numel() ** 0.5
                assert 0.03 < (w.abs() > 2 * target).double().mean().item() < 0.065
                checked, squares, count = checked + 1, squares + (w**2).sum().item() / target**2, count + w.numel()
    assert checked >= 10
    # pooled over millions of draws, w^2 / target^2 averages 1 to well within 1% (a slope of 0 would give 1.04)
    assert abs(squares / count - 1) < 0.01


def test_large_images_build_and_keep_their_shapes():
    """A 512-pixel image (a folder of photographs) down to a latent of 1 and back: 8 widths each way. Sizes above 256
    are where an identity test in place of a comparison (`is not` on ints CPython does not cache) would loop."""
    from piad.model.networks import Encoder, Generator

    torch.manual_seed(0)
    e, g = Encoder(512, 1, 2, 1, [1] * 8), Generator(512, 1, 2, 1, [1] * 8)
    with torch.no_grad():
        z = e(torch.randn(1, 1, 512, 512))
        assert z.shape == (1, 2, 1, 1) and g(z).shape == (1, 1, 512, 512)
