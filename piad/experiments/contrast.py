"""The contrast-robustness study (book: Experiments > Contrast robustness, spec-contrast-study).

The claim is about the *anomaly score*: an absolute error between an image and an equally good reconstruction grows
with the image's own contrast, the relative-perceptual-L1 much less. The study takes images x and a fixed-quality
"reconstruction" y (a 3x3 box blur of x), scales both about the mean of x,

    x_c = m + c (x - m),   y_c = m + c (y - m),

and reports median_i d(x_c, y_c) / median_i d(x, y) for every contrast factor c and distance d. A distance that is
robust to contrast keeps the ratio near 1. (Comparing d(x, x_c) measures something else and does not show it.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from piad.model.perceptual import PerceptualDistance
from piad.run.distance import build_distance

CONTRASTS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
STUDY_DISTANCES = ("l2", "perceptual_l2", "perceptual_l1", "relative_perceptual_l1")
LABELS = {
    "l2": "L2",
    "perceptual_l2": "perceptual L2",
    "perceptual_l1": "perceptual L1",
    "relative_perceptual_l1": "relative-perceptual-L1",
}


def box_blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 box blur (border pixels average the pixels that exist): a reconstruction of fixed quality."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def scale_contrast(x: torch.Tensor, c: float, mean: torch.Tensor | None = None) -> torch.Tensor:
    """m + c (x - m) with m the per-image mean of x over channels and pixels (or the given `mean`); no clipping."""
    m = x.mean(dim=(1, 2, 3), keepdim=True) if mean is None else mean
    return m + c * (x - m)


def make_study_distances(
    vgg_weights: str = "imagenet",
    feature_stats: str | None = "imagenet",
    layer: str = "relu4_2",
    kinds: Sequence[str] = STUDY_DISTANCES,
    seed: int = 0,
    device="cpu",
) -> dict[str, PerceptualDistance]:
    """The four distances of the ablation (book: spec-ablation-distances), sharing one VGG spec."""
    return {k: build_distance(k, vgg_weights, feature_stats, layer, seed=seed).to(device).eval() for k in kinds}


@torch.no_grad()
def distances_at(
    x: torch.Tensor, y: torch.Tensor, distances: dict[str, PerceptualDistance], c: float, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Per-image d(x_c, y_c) for every distance (both scaled about the mean of x)."""
    out: dict[str, list] = {k: [] for k in distances}
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        m = xb.mean(dim=(1, 2, 3), keepdim=True)
        xc, yc = scale_contrast(xb, c, m), scale_contrast(yb, c, m)
        for k, d in distances.items():
            dev = d.to_input.mean.device
            out[k].append(d(xc.to(dev), yc.to(dev)).double().cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


@torch.no_grad()
def contrast_study(
    images: torch.Tensor,
    distances: dict[str, PerceptualDistance],
    contrasts: Sequence[float] = CONTRASTS,
    reconstruct: Callable[[torch.Tensor], torch.Tensor] = box_blur,
    batch_size: int = 256,
) -> dict:
    """median d(x_c, y_c) / median d(x, y) per distance and contrast factor c.

    Returns {"contrasts": [...], "ratio": {name: [...]}, "median": {name: [...]}, "n_images": N}.
    """
    x = images.float()
    y = reconstruct(x)
    medians = {k: [] for k in distances}
    for c in contrasts:
        d = distances_at(x, y, distances, float(c), batch_size)
        for k, v in d.items():
            medians[k].append(float(np.median(v)))
    base = distances_at(x, y, distances, 1.0, batch_size)
    base_median = {k: float(np.median(v)) for k, v in base.items()}
    ratio = {k: [m / base_median[k] for m in medians[k]] for k in distances}
    return {"contrasts": [float(c) for c in contrasts], "ratio": ratio, "median": medians, "n_images": len(x)}


def study_table(result: dict) -> str:
    """Markdown table: one row per distance, one column per contrast factor (ratios)."""
    cs = result["contrasts"]
    head = "| distance | " + " | ".join(f"c = {c:g}" for c in cs) + " |"
    sep = "|---|" + "---|" * len(cs)
    rows = [f"| {LABELS.get(k, k)} | " + " | ".join(f"{v:.3g}" for v in r) + " |" for k, r in result["ratio"].items()]
    return "\n".join([head, sep, *rows])
