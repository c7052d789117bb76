"""Scoring users' image files with a trained run, and per-location anomaly maps as PNG overlays."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from piad.evaluation import AnomalyScorer
from piad.data._files import expand_paths, read_image_files


def score_paths(checkpoint, paths, device="cpu", maps_dir: Optional[str] = None, batch_size: int = 64
                ) -> tuple[list[tuple[Path, float]], list[str]]:
    """[(path, score)] for every readable image under `paths`, and the unreadable files' messages."""
    scorer = AnomalyScorer.from_checkpoint(checkpoint, device)
    cfg = scorer.cfg
    x, ok, errors = read_image_files(expand_paths(paths), cfg.image_size, cfg.channels)
    if len(ok) == 0:
        return [], errors
    scores = scorer.score(x, batch_size)
    if maps_dir is not None:
        save_anomaly_maps(scorer, x, ok, Path(maps_dir), batch_size)
    return list(zip(ok, scores.tolist())), errors


def save_anomaly_maps(scorer: AnomalyScorer, x: torch.Tensor, paths, out: Path, batch_size: int = 64) -> None:
    """For each image: the image with its per-location perceptual error (jet colours) blended on top, as PNG."""
    from matplotlib import colormaps
    from PIL import Image
    out.mkdir(parents=True, exist_ok=True)
    dev = next(scorer.encoder.parameters()).device
    maps = torch.cat([scorer.anomaly_map(b.to(dev)).cpu() for b in x.split(batch_size)])
    hi = float(maps.max()) or 1.0
    cmap = colormaps["jet"]
    for img, m, p in zip(x, maps, paths):
        rgb = ((img.expand(3, -1, -1).permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
        heat = cmap((m / hi).clamp(0, 1).numpy())[..., :3]
        blend = (0.5 * rgb + 0.5 * heat) * 255
        Image.fromarray(blend.astype(np.uint8)).resize((img.shape[-1] * 4,) * 2, Image.NEAREST).save(
            out / f"{p.stem}_map.png")
