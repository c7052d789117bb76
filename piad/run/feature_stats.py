"""Per-channel statistics (mu_c, sigma_c) of VGG-19 ReLU features, in the format of the authors' ImageNet file.

The file maps 'r11', 'r12', ... (every ReLU layer up to the chosen one) to (mean, std), each (1, C, 1, 1), so any
network or layer can be normalised the way the authors normalised theirs
(book: Method > Relative-perceptual-L1, spec-feature-stats).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from piad.errors import DataError
from piad.model.perceptual import ImageNetInput, VGGFeatures
from piad.model.vgg import VGG_RELU_INDEX, stats_key
from piad.run.resources import resolve_vgg_state_dict
from piad.run.rundir import atomic_torch_save


@torch.no_grad()
def compute_feature_stats(
    batches: Iterable[torch.Tensor], vgg_weights: str, layer: str, device="cpu", seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and (population) std per channel over images, height and width, for every ReLU up to `layer`."""
    sd, _ = resolve_vgg_state_dict(vgg_weights, layer, seed)
    vgg = VGGFeatures(sd, layer).to(device)
    to_input = ImageNetInput().to(device)
    relus = {idx: name for name, idx in VGG_RELU_INDEX.items() if idx <= VGG_RELU_INDEX[layer]}
    sums: dict[str, list] = {}
    n_images = 0
    for x in batches:
        h = to_input(x.to(device))
        n_images += x.shape[0]
        for i, module in enumerate(vgg.net):
            h = module(h)
            if i in relus:
                k = stats_key(relus[i])
                hd = h.double()
                s = sums.setdefault(k, [0.0, 0.0, 0])
                s[0] = s[0] + hd.sum((0, 2, 3))
                s[1] = s[1] + (hd**2).sum((0, 2, 3))
                s[2] += hd.shape[0] * hd.shape[2] * hd.shape[3]
    if n_images == 0:
        raise DataError("no readable images to compute statistics from.")
    out = {}
    for k, (s1, s2, n) in sums.items():
        mean = s1 / n
        std = (s2 / n - mean**2).clamp(min=0).sqrt()
        # channels that never fire get std 1 so that normalisation stays finite
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        out[k] = (mean.float().view(1, -1, 1, 1).cpu(), std.float().view(1, -1, 1, 1).cpu())
    return out


def check_feature_memory(image_size: int, batch_size: int, layer: str, device) -> None:
    """ConfigError in one line if one batch of VGG features up to `layer` cannot fit in `device`'s memory."""
    from piad.errors import ConfigError
    from piad.run.memory import device_memory, format_bytes

    # the widest activations (64 channels at full size, VGG's first block), with their float64 sums, per image
    need = batch_size * (3 + 6 * 64) * image_size**2 * 4
    total, where = device_memory(device)
    if total is not None and need > total:
        raise ConfigError(
            f"--image-size {image_size} with --batch-size {batch_size} needs at least {format_bytes(need)} of memory "
            f"for the VGG features, but {where} has {format_bytes(total)}; lower --image-size or --batch-size."
        )


def save_feature_stats(path, stats: dict) -> None:
    atomic_torch_save(path, stats)
