"""Scoring users' image files with a trained run, and per-location anomaly maps as PNG overlays."""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from piad.data import IMAGE_EXTENSIONS, expand_paths, read_image_files, to_mode
from piad.errors import ConfigError, DataError, PiadError
from piad.run.evaluation import AnomalyScorer
from piad.run.rundir import atomic_write_bytes, load_run_config, run_of_checkpoint
from piad.run.training import MAP_SCALE_IMAGES, MAP_SCALE_QUANTILE

COLORBAR_NAME = "colorbar.png"


def score_paths(
    checkpoint, paths, device="cpu", maps_dir: str | None = None, batch_size: int = 64
) -> tuple[list[tuple[Path, float]], list[str]]:
    """[(path, score)] for every readable image under `paths`, and the unreadable files' messages.

    A checkpoint inside a run directory must belong to the run's config.json. With `maps_dir`, also writes one
    anomaly map per image (:func:`save_anomaly_maps`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected a positive number of images scored at once, e.g. 64.")
    if maps_dir is not None and Path(maps_dir).exists() and not Path(maps_dir).is_dir():
        raise PiadError(
            f"--maps {str(maps_dir)!r} is a file; give a folder for the anomaly maps (it is created if missing)."
        )
    files = expand_paths(paths)
    if not files:
        raise DataError(
            f"no image files found in {[str(p) for p in paths]} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            "recursively in folders); pass image files or folders holding them."
        )
    run = run_of_checkpoint(checkpoint)
    scorer = AnomalyScorer.from_checkpoint(
        checkpoint, device, expected_config=load_run_config(run) if run is not None else None
    )
    cfg = scorer.cfg
    x, ok, errors = read_image_files(files, cfg.image_size, cfg.channels)
    if len(ok) == 0:
        return [], errors
    scores = scorer.score(x, batch_size)
    if maps_dir is not None:
        save_anomaly_maps(scorer, x, ok, Path(maps_dir), batch_size)
    return list(zip(ok, scores.tolist(), strict=True)), errors


def map_names(paths) -> list[Path]:
    """Unique relative names of the maps: each file's path relative to the folder common to all files, as
    `<stem>_map.png`; files that would still share a name (a.png and a.jpg) get 8 hex digits of a hash of their
    absolute path."""
    full = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in full]))
    names = [p.relative_to(root).with_name(f"{p.stem}_map.png") for p in full]
    owners = Counter(n for n, _ in set(zip(names, full, strict=True)))  # distinct files per name
    return [
        n.with_name(f"{p.stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:8]}_map.png") if owners[n] > 1 else n
        for n, p in zip(names, full, strict=True)
    ]


def save_anomaly_maps(scorer: AnomalyScorer, x: torch.Tensor, paths, out: Path, batch_size: int = 64) -> None:
    """For each image: the input image at its own size with its per-location perceptual error blended on top in
    jet colours (the scored centre square; the rest, not seen by the model, dimmed), as PNG under `out` (names:
    :func:`map_names`), and the colour bar `out/colorbar.png`.

    The colour scale is fixed by the model, so one image looks the same whatever else is scored: 0 (blue) to the
    99th percentile of the per-location errors over the model's training images (red; higher errors saturate)."""
    from matplotlib import colormaps
    from PIL import Image

    dev = next(scorer.encoder.parameters()).device
    maps = torch.cat([scorer.anomaly_map(b.to(dev)).float().cpu() for b in x.split(batch_size)])
    hi = scorer.map_scale_top()
    cmap = colormaps["jet"]
    for m, p, name in zip(maps, paths, map_names(paths), strict=True):
        with Image.open(p) as img:
            rgb = np.asarray(to_mode(img, 3), dtype=np.float32)
        h, w = rgb.shape[:2]
        c = min(h, w)
        left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))  # as piad.data._io.center_crop
        m = torch.nn.functional.interpolate(m[None, None], size=(c, c), mode="bilinear", align_corners=False)[0, 0]
        heat = cmap((m / hi).clamp(0, 1).numpy(), bytes=True)[..., :3].astype(np.float32)
        blend = rgb * 0.35
        blend[top : top + c, left : left + c] = 0.5 * rgb[top : top + c, left : left + c] + 0.5 * heat
        buf = io.BytesIO()
        Image.fromarray(blend.round().clip(0, 255).astype(np.uint8)).save(buf, format="png")
        atomic_write_bytes(out / name, buf.getvalue())
    save_colorbar(out / COLORBAR_NAME, hi, scorer)


def save_colorbar(path: Path, hi: float, scorer: AnomalyScorer) -> None:
    """The colour bar of the maps: per-location error from 0 to `hi` (the model's fixed scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.9, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.1, 0.05, 0.15, 0.9])
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, hi), "jet"), cax=ax, extend="max")
    n = (scorer.map_scale or {}).get("n_images", MAP_SCALE_IMAGES)
    q = (scorer.map_scale or {}).get("quantile", MAP_SCALE_QUANTILE)
    bar.set_label(
        f"per-location error ({scorer.cfg.distance}); top: {100 * q:g}th percentile over {n} training images",
        fontsize=6,
    )
    bar.ax.tick_params(labelsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
