"""Generated images for tests: normals are smooth blobs, anomalies are high-frequency noise (far from normals)."""

from __future__ import annotations

import torch

from piad.data import OneClassData, register


def blobs(n: int, size: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth Gaussian blobs at random positions on a dark background, in [-1, 1]."""
    ax = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    centre = torch.rand(n, 2, generator=generator) - 0.5
    r2 = (xx[None] - centre[:, 0, None, None]) ** 2 + (yy[None] - centre[:, 1, None, None]) ** 2
    img = torch.exp(-r2 / 0.15) * 2 - 1
    return img[:, None].repeat(1, channels, 1, 1).float()


def noise(n: int, size: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, channels, size, size, generator=generator) * 2 - 1).float()


@register("synthetic", num_classes=1, description="generated blobs (normal) vs noise (anomalous), for tests")
def load_synthetic(
    normal_class: int,
    *,
    data_root=None,
    split_seed: int = 0,
    download: bool = True,
    image_size=None,
    channels=None,
    n_train: int = 64,
    n_test: int = 32,
) -> OneClassData:
    g = torch.Generator().manual_seed(split_seed)
    size, ch = image_size or 16, channels or 1
    test = torch.cat([blobs(n_test, size, ch, g), noise(n_test, size, ch, g)])
    labels = torch.cat([torch.zeros(n_test, dtype=torch.int64), torch.ones(n_test, dtype=torch.int64)])
    return OneClassData(
        "synthetic",
        normal_class,
        blobs(n_train, size, ch, g),
        test,
        labels,
        source="generated (piad.data.synthetic)",
        test_groups=["normal"] * n_test + ["noise"] * n_test,
        class_name="blobs",
    )
