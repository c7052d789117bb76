"""Training-free controls: what a run's distance d scores without PIAD's training (book: Experiments > Controls).

    mean image   s(x) = d(x, x_bar),          x_bar = the mean normal training image (pixels, [-1, 1])
    nearest      s(x) = min_{y in R} d(x, y),  R = normal training images (all, or a seeded subset of n_reference)

Both use the run's own d (relative-perceptual-L1 or an ablation variant), VGG weights, layer and statistics, and
the run's data. The nearest neighbour is searched by squared L2 in d's feature space (one matrix product), then the
`candidates` closest are re-ranked by d itself: exact for the two squared-error distances, and exact for the L1
distances whenever `candidates` >= |R| (otherwise the L1-nearest of the L2-closest candidates).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from piad.model.perceptual import PerceptualDistance

CONTROLS = ("mean_image", "nearest")


@dataclass(frozen=True)
class ControlSettings:
    n_reference: int = 1000  # nearest: normal training images searched (0: all of them)
    candidates: int = 16  # nearest: L2-closest candidates re-ranked by d
    seed: int = 0  # nearest: which subset of the training images is searched
    batch_size: int = 256

    def __post_init__(self):
        if self.n_reference < 0 or self.candidates < 1 or self.batch_size < 1:
            raise ValueError(f"control settings out of range: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def features(distance: PerceptualDistance, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """f(x) of d for every image, flattened to [N, D], on the distance's device."""
    dev = distance.to_input.mean.device
    return torch.cat([distance.features(b.to(dev)).flatten(1) for b in images.split(batch_size)])


def _distance_of_difference(distance: PerceptualDistance, diff: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
    """d(x, y) for [B, k] pairs from diff = f(y) - f(x) [B, k, D] and f(x) [B, D], as PerceptualDistance.compare
    computes it (same error and relative division), without materialising f(x) k times (diff is overwritten)."""
    err = diff.abs_() if distance.kind in ("relative_perceptual_l1", "perceptual_l1") else diff.square_()
    d = err.mean(-1)
    if distance.kind == "relative_perceptual_l1":
        d = d / (fx.abs().mean(1, keepdim=True) + distance.eps)
    return d


def _compare(distance: PerceptualDistance, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """d from flattened features (fx [B, D], fy [B, D]): the spatial layout does not change a mean over c, h, w."""
    return distance.compare(fx.unsqueeze(-1).unsqueeze(-1), fy.unsqueeze(-1).unsqueeze(-1))


@torch.no_grad()
def mean_image_scores(
    distance: PerceptualDistance, train: torch.Tensor, test_features: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """d(x, x_bar) for every test image, given f(test) [N, D] from :func:`features`."""
    x_bar = train.mean(0, keepdim=True)
    f_bar = features(distance, x_bar)
    return torch.cat([_compare(distance, f, f_bar.expand_as(f)) for f in test_features.split(batch_size)]).cpu()


def reference_indices(n_train: int, settings: ControlSettings) -> torch.Tensor:
    """The training images the nearest-neighbour control searches: all, or a seeded subset (sorted)."""
    if settings.n_reference == 0 or settings.n_reference >= n_train:
        return torch.arange(n_train)
    g = torch.Generator().manual_seed(settings.seed)
    return torch.randperm(n_train, generator=g)[: settings.n_reference].sort().values


@torch.no_grad()
def nearest_scores(
    distance: PerceptualDistance,
    reference_features: torch.Tensor,
    test_features: torch.Tensor,
    candidates: int = 16,
    batch_size: int = 256,
) -> torch.Tensor:
    """min over the reference images of d(x, y), for every test image (see the module docstring)."""
    ref = reference_features
    k = min(candidates, ref.shape[0])
    ref_sq = (ref * ref).sum(1)
    out = []
    for f in test_features.split(max(1, batch_size // 8)):  # [B, k, D] candidate features held at once
        l2 = (f * f).sum(1, keepdim=True) - 2 * f @ ref.T + ref_sq  # squared L2 up to rounding
        idx = l2.topk(k, dim=1, largest=False).indices  # [B, k]
        diff = ref[idx].sub_(f.unsqueeze(1))  # f(y) - f(x), a fresh copy: in place
        out.append(_distance_of_difference(distance, diff, f).min(1).values)
    return torch.cat(out).cpu()


def control_scores(
    distance: PerceptualDistance, train: torch.Tensor, test_features: torch.Tensor, settings: ControlSettings
) -> tuple[dict[str, torch.Tensor], dict]:
    """Scores of both controls for one class, and what was computed (counts, seconds)."""
    t0 = time.perf_counter()
    scores = {"mean_image": mean_image_scores(distance, train, test_features, settings.batch_size)}
    t1 = time.perf_counter()
    ref_idx = reference_indices(train.shape[0], settings)
    ref_f = features(distance, train[ref_idx], settings.batch_size)
    scores["nearest"] = nearest_scores(distance, ref_f, test_features, settings.candidates, settings.batch_size)
    info = {
        "n_train": int(train.shape[0]),
        "n_reference": int(ref_idx.numel()),
        "seconds": {"mean_image": round(t1 - t0, 3), "nearest": round(time.perf_counter() - t1, 3)},
    }
    return scores, info
