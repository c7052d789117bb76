"""The four PIAD networks: encoder E, generator G, image critic D_X, latent critic D_Z (book: Method > Model,
spec-model).

Pre-activation residual blocks without normalisation, LeakyReLU(0.2), Kaiming-normal (fan_out) init for E, G, D_X.
Parameter counts equal the authors' implementation (tests/test_networks.py).
"""

from __future__ import annotations

import torch
from torch import nn

LRELU = 0.2


def _act() -> nn.Module:
    return nn.LeakyReLU(LRELU)


def _conv(cin: int, cout: int, k: int, pad: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, 1, pad)


class _Residual(nn.Module):
    """y = skip(x) + body(x)."""

    def __init__(self, body: nn.Module, skip: nn.Module):
        super().__init__()
        self.body, self.skip = body, skip

    def forward(self, x):
        return self.skip(x) + self.body(x)


# How AvgPool2x2 pools, per device type: "conv" (a depthwise convolution with weights 1/4) or "avg_pool2d". Same
# math (bit-equal values on CPU; tests/test_networks.py), different speed: measured for one training iteration of
# the CPU grid by benchmarks/pool_speed.py (book: Performance); a device type not listed uses avg_pool2d.
POOL_IMPL = {"cpu": "conv"}


class AvgPool2x2(nn.Module):
    """2x2 average pooling, stride 2, implemented per device type as POOL_IMPL says (`impl` overrides it)."""

    impl: str | None = None

    def forward(self, x):
        impl = self.impl or POOL_IMPL.get(x.device.type, "avg_pool2d")
        if impl == "avg_pool2d":
            return nn.functional.avg_pool2d(x, 2)
        c = x.shape[-3]
        return nn.functional.conv2d(x, x.new_full((c, 1, 2, 2), 0.25), stride=2, groups=c)


def _skip(cin: int, cout: int, resample: list[nn.Module]) -> nn.Module:
    return nn.Sequential(*resample, *([_conv(cin, cout, 1, 0)] if cin != cout else []))


def preact_block(cin: int, cout: int) -> nn.Module:
    """LReLU, conv3x3, LReLU, conv3x3 (+ identity or 1x1 skip)."""
    return _Residual(
        nn.Sequential(_act(), _conv(cin, cout, 3, 1), _act(), _conv(cout, cout, 3, 1)), _skip(cin, cout, [])
    )


def down_block(cin: int, cout: int) -> nn.Module:
    """Pre-activation block followed by 2x2 average pooling; skip = pool (+1x1 conv)."""
    return _Residual(
        nn.Sequential(_act(), _conv(cin, cout, 3, 1), _act(), _conv(cout, cout, 3, 1), AvgPool2x2()),
        _skip(cin, cout, [AvgPool2x2()]),
    )


def up_block(cin: int, cout: int) -> nn.Module:
    """LReLU, nearest x2, conv3x3, LReLU, conv3x3; skip = upsample (+1x1 conv)."""
    return _Residual(
        nn.Sequential(
            _act(), nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout, 3, 1), _act(), _conv(cout, cout, 3, 1)
        ),
        _skip(cin, cout, [nn.Upsample(scale_factor=2, mode="nearest")]),
    )


def plain_res_block(cin: int, cout: int) -> nn.Module:
    """conv3x3, LReLU, conv3x3 (+ skip): the LSUN generator's first block at the latent resolution."""
    return _Residual(nn.Sequential(_conv(cin, cout, 3, 1), _act(), _conv(cout, cout, 3, 1)), _skip(cin, cout, []))


class MinibatchStdDev(nn.Module):
    """Appends one channel holding a single scalar: the mean over features of the batch standard deviation."""

    def forward(self, x):
        std = torch.sqrt(((x - x.mean(0, keepdim=True)) ** 2).mean(0) + 1e-8).mean()
        return torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:])], 1)


def _kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=LRELU, mode="fan_out", nonlinearity="leaky_relu")


def _check_widths(name, widths, image_size, latent_size):
    import math

    n = math.log2(image_size * 2 / max(latent_size, 4))
    if len(widths) != n:
        raise ValueError(
            f"{name}: image_size={image_size}, latent_size={latent_size} needs {int(n)} widths, got {list(widths)}"
        )


class Generator(nn.Module):
    """G: latent z of shape (B, d, r, r) -> image (B, C, S, S), linear output."""

    def __init__(self, image_size: int, channels: int, latent_dim: int, latent_size: int, widths):
        super().__init__()
        _check_widths("Generator", widths, image_size, latent_size)
        if latent_size == 1:
            layers, res = [_conv(latent_dim, widths[0], 4, 3)], 4
        else:
            layers, res = [plain_res_block(latent_dim, widths[0])], latent_size
        i = 0
        while res < image_size:
            layers.append(up_block(widths[i], widths[i + 1]))
            i, res = i + 1, res * 2
        layers += [preact_block(widths[i], widths[i]), _act(), _conv(widths[i], channels, 1, 0)]
        self.model = nn.Sequential(*layers)
        _kaiming_init(self)

    def forward(self, z):
        return self.model(z)


class Encoder(nn.Module):
    """E: image (B, C, S, S) -> latent (B, d, r, r). With `minibatch_stddev` and d=1 it is the image critic D_X."""

    def __init__(
        self, image_size: int, channels: int, latent_dim: int, latent_size: int, widths, minibatch_stddev: bool = False
    ):
        super().__init__()
        _check_widths("Encoder", widths, image_size, latent_size)
        w = [widths[0], *widths]
        layers, res, i = [_conv(channels, w[0], 3, 1)], image_size, 0
        while res > max(4, latent_size):
            layers.append(down_block(w[i], w[i + 1]))
            i, res = i + 1, res // 2
        if minibatch_stddev:
            layers.append(MinibatchStdDev())
        prev = w[i] + int(minibatch_stddev)
        if latent_size == 1:
            layers += [_act(), _conv(prev, w[i + 1], 4, 0), _act()]
        else:
            layers += [preact_block(prev, w[i + 1]), _act()]
        layers.append(_conv(w[i + 1], latent_dim, 1, 0))
        self.model = nn.Sequential(*layers)
        _kaiming_init(self)

    def forward(self, x):
        return self.model(x)


class ImageCritic(Encoder):
    """D_X: an encoder with a minibatch-stddev channel at 4x4 and one output per image."""

    def __init__(self, image_size: int, channels: int, widths):
        super().__init__(image_size, channels, 1, 1, widths, minibatch_stddev=True)

    def forward(self, x):
        return self.model(x).flatten(1)


class LatentCritic(nn.Module):
    """D_Z: MLP on the flattened latent, d -> h -> ... -> 1 with LeakyReLU (Xavier-uniform init as the authors)."""

    def __init__(self, in_features: int, hidden):
        super().__init__()
        dims, layers = [in_features, *hidden], []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), _act()]
        layers.append(nn.Linear(dims[-1], 1))
        self.model = nn.Sequential(*layers)
        gain = nn.init.calculate_gain("leaky_relu", LRELU)
        linears = [m for m in self.model if isinstance(m, nn.Linear)]
        for m in linears:
            nn.init.xavier_uniform_(m.weight, gain=gain if m is not linears[-1] else 1.0)

    def forward(self, z):
        return self.model(z.flatten(1))


class PIADNetworks(nn.Module):
    """Container of E, G, D_X, D_Z built from an ExperimentConfig-like object."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = Encoder(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.e_widths)
        self.generator = Generator(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.g_widths)
        self.image_critic = ImageCritic(cfg.image_size, cfg.channels, cfg.dx_widths)
        self.latent_critic = LatentCritic(cfg.latent_dim * cfg.latent_size**2, cfg.dz_hidden)
        self.latent_shape = (cfg.latent_dim, cfg.latent_size, cfg.latent_size)

    def reconstruct(self, x):
        """G(E(x)): the closest generated image, used for the anomaly score."""
        return self.generator(self.encoder(x))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
