"""Helpers shared by protocols: seeded splits, conversion to [-1, 1] tensors at a target size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def seeded_split(n: int, fraction: float, seed: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random (first `fraction`, rest) split of range(n): a pure function of (n, fraction, seed, salt)."""
    rng = np.random.default_rng([seed, salt])
    perm = rng.permutation(n)
    k = int(round(fraction * n))
    return np.sort(perm[:k]), np.sort(perm[k:])


def to_unit_range(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """[0, max_value] -> [-1, 1], float32."""
    return (x.float() / max_value) * 2 - 1


def resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(N, C, h, w) -> (N, C, size, size); antialiased when shrinking."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    shrink = x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=shrink).clamp(-1, 1)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 1 and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")
