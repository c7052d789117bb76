"""Relative-perceptual-L1 and its ablation variants (book: Method > Relative-perceptual-L1, spec-rpl1).

    f(x) = (phi(x) - mu) / sigma,   phi = VGG-19 features at `layer` (default relu4_2)
    L_rpl1(x, y) = mean_{c,h,w} |f(x) - f(y)| / mean_{c,h,w} |f(x)|     (per sample; denominator detached)

Images are in [-1, 1], 1 or 3 channels; they are mapped to ImageNet-normalised RGB, never resized.
"""

from __future__ import annotations

import torch
from torch import nn

from piad.model.vgg import NORMALISED_DISTANCES, VGG19_LAYOUT, VGG_RELU_INDEX, check_distance_settings, relu_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features_upto(layer: str) -> nn.Sequential:
    """The layers of torchvision's `vgg19().features` up to and including `layer`, same indices, no weights loaded.

    Built directly (not by slicing a full `vgg19()`), so the 100M-parameter classifier is never allocated.
    """
    layers, cin, last = [], 3, VGG_RELU_INDEX[layer]
    for v in VGG19_LAYOUT:
        if len(layers) > last:
            break
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers[: last + 1])


class ImageNetInput(nn.Module):
    """[-1, 1] grey or RGB -> ImageNet-normalised RGB, as torchvision's VGG expects."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(x.shape)}")
        return ((x + 1) / 2 - self.mean) / self.std


class VGGFeatures(nn.Module):
    """phi: frozen VGG-19 up to `layer`, always in eval mode, no gradients stored for its weights."""

    def __init__(self, state_dict: dict, layer: str):
        super().__init__()
        self.layer = layer
        self.net = vgg19_features_upto(layer)
        self.net.load_state_dict(state_dict, strict=True)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x_imagenet):
        return self.net(x_imagenet)


class PerceptualDistance(nn.Module):
    """d(x, y) -> one distance per sample, shape [B].

    kind: "relative_perceptual_l1" (PIAD), "perceptual_l1" (|f(x)-f(y)| mean), "perceptual_l2" (MSE of raw phi),
    "l2" (MSE of ImageNet-normalised images, no VGG).
    vgg_state_dict: the tensors of `vgg19().features` up to `layer` (keys like '0.weight'); None only for "l2".
    feature_stats: (mean, std), each (1, C, 1, 1), standardising phi for the two L1 kinds; None for none.
    sources: where the tensors came from, reported with the results (piad.run.distance fills it).
    """

    def __init__(
        self,
        kind: str = "relative_perceptual_l1",
        vgg_state_dict: dict | None = None,
        layer: str = "relu4_2",
        feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        eps: float = 1e-8,
        sources: dict | None = None,
    ):
        super().__init__()
        check_distance_settings(kind, layer)
        if (kind == "l2") != (vgg_state_dict is None):
            raise ValueError(
                f"distance kind={kind!r} "
                + ("uses no VGG: pass vgg_state_dict=None" if kind == "l2" else "needs vgg_state_dict")
            )
        if feature_stats is not None and kind not in NORMALISED_DISTANCES:
            raise ValueError(f"distance kind={kind!r} uses no feature statistics: pass feature_stats=None")
        self.kind, self.layer, self.eps = kind, layer, eps
        self.to_input = ImageNetInput()
        self.sources = {"distance": kind, **(sources or {})}
        self.vgg: VGGFeatures | None = None
        self.register_buffer("stats_mean", None)
        self.register_buffer("stats_std", None)
        if kind == "l2":
            return
        self.vgg = VGGFeatures(vgg_state_dict, layer)
        if feature_stats is not None:
            mean, std = feature_stats
            shape = (1, relu_channels(layer), 1, 1)
            if tuple(mean.shape) != shape or tuple(std.shape) != shape:
                raise ValueError(
                    f"feature_stats for layer {layer!r} must be (mean, std) of shape {shape}, got "
                    f"{tuple(mean.shape)} and {tuple(std.shape)}"
                )
            self.stats_mean, self.stats_std = mean, std

    @property
    def uses_vgg(self) -> bool:
        return self.vgg is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The representation the distance compares: f(x) (normalised phi), raw phi, or the VGG input for L2."""
        z = self.to_input(x)
        if self.vgg is None:
            return z
        phi = self.vgg(z)
        if self.stats_mean is not None:
            phi = (phi - self.stats_mean) / self.stats_std
        return phi

    def error_map(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """Per-location error [B, h, w] whose spatial mean is the distance (before the relative division)."""
        diff = fx - fy
        return (diff.abs() if self.kind in ("relative_perceptual_l1", "perceptual_l1") else diff**2).mean(1)

    def compare(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """d(x, y) from f(x) and f(y) (the relative variant divides by the detached mean |f(x)|)."""
        d = self.error_map(fx, fy).flatten(1).mean(1)
        if self.kind == "relative_perceptual_l1":
            d = d / (fx.detach().abs().flatten(1).mean(1) + self.eps)
        return d

    def from_features(self, fx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d(x, y) given precomputed f(x) (training caches f of the real images)."""
        return self.compare(fx, self.features(y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.from_features(self.features(x), y)

    def anomaly_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-location error upsampled to the image size [B, H, W] (relative variant divided like the score)."""
        fx, fy = self.features(x), self.features(y)
        m = self.error_map(fx, fy)
        if self.kind == "relative_perceptual_l1":
            m = m / (fx.abs().flatten(1).mean(1) + self.eps).view(-1, 1, 1)
        return nn.functional.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
