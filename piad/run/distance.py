"""The perceptual distance of a run: its settings resolved to tensors (piad.run.resources) and handed to the model
(book: Method > Relative-perceptual-L1, spec-rpl1)."""

from __future__ import annotations

from piad.model.perceptual import PerceptualDistance
from piad.model.vgg import NORMALISED_DISTANCES, check_distance_settings, relu_channels
from piad.run.resources import resolve_feature_stats, resolve_vgg_state_dict


def build_distance(
    kind: str = "relative_perceptual_l1",
    vgg_weights: str = "imagenet",
    feature_stats: str | None = "imagenet",
    layer: str = "relu4_2",
    seed: int = 0,
    eps: float = 1e-8,
) -> PerceptualDistance:
    """The distance `kind` on VGG-19 features at `layer`.

    vgg_weights: "imagenet" (torchvision IMAGENET1K_V1), a path to a torchvision vgg19 state dict (partial files
    work for shallow layers), or "random" (drawn from `seed`; label every result made with it).
    feature_stats: "imagenet" (the authors' statistics, downloaded once and sha256-checked), a path, or None.
    Only what `kind` uses is resolved: "l2" reads no VGG, "perceptual_l2" no statistics.
    """
    check_distance_settings(kind, layer)
    if kind == "l2":
        return PerceptualDistance(kind, None, layer, None, eps=eps)
    sd, vgg_source = resolve_vgg_state_dict(vgg_weights, layer, seed)
    sources, stats = {"vgg_weights": vgg_source, "layer": layer}, None
    if kind in NORMALISED_DISTANCES:
        stats, sources["feature_stats"] = resolve_feature_stats(feature_stats, layer, relu_channels(layer))
    return PerceptualDistance(kind, sd, layer, stats, eps=eps, sources=sources)


def make_distance(cfg, seed: int = 0) -> PerceptualDistance:
    """The distance an ExperimentConfig asks for."""
    return build_distance(cfg.distance, cfg.vgg_weights, cfg.feature_stats, cfg.layer, seed=seed)
