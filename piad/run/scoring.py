"""Scoring users' image files with a trained run, and per-location anomaly maps as PNG overlays."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from piad.data import IMAGE_EXTENSIONS, expand_paths, open_image, read_image_files, to_mode
from piad.errors import ConfigError, DataError, PiadError
from piad.run.evaluation import AnomalyScorer
from piad.run.rundir import atomic_write_bytes, load_run_config, run_of_checkpoint
from piad.run.training import MAP_SCALE_IMAGES, MAP_SCALE_QUANTILE

COLORBAR_NAME = "colorbar.png"
MAP_MAX_SIDE = 2048  # anomaly maps of larger images are drawn reduced to this many pixels on the longer side


def score_paths(
    checkpoint, paths, device="cpu", maps_dir: str | None = None, batch_size: int = 64, overwrite: bool = True
) -> tuple[list[tuple[Path, float]], list[str]]:
    """[(path, score)] for every readable image under `paths`, and the unreadable files' messages.

    A checkpoint inside a run directory must belong to the run's config.json. With `maps_dir`, also writes one
    anomaly map per image (:func:`save_anomaly_maps`); without `overwrite`, existing map files are refused before
    anything is scored, and a map never replaces an input image."""
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
    names = None
    if maps_dir is not None:
        names = dict(zip(files, map_names(files), strict=True))
        check_map_files(Path(maps_dir), [*names.values(), Path(COLORBAR_NAME)], files, overwrite)
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
        save_anomaly_maps(scorer, x, ok, Path(maps_dir), batch_size, names=[names[p] for p in ok])
    return list(zip(ok, scores.tolist(), strict=True)), errors


def replaced_input(path, inputs):
    """The input that writing `path` would replace (the same file, also through a link), or None."""
    for p in inputs:
        try:
            if os.path.samefile(p, path):
                return p
        except OSError:
            continue
    return None


def check_map_files(out: Path, names, inputs, overwrite: bool) -> None:
    """PiadError if a map would replace one of the input images, or (without `overwrite`) an existing file."""
    existing = [out / n for n in names if os.path.lexists(out / n)]
    if not existing:
        return
    for path in existing:
        p = replaced_input(path, inputs)
        if p is not None:
            raise PiadError(
                f"--maps {str(out)!r}: the map {str(path)!r} would replace the input image {str(p)!r}; give "
                "another folder for the maps."
            )
    if not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PiadError(
            f"--maps {str(out)!r} already holds {str(existing[0])!r}{more}; pass --overwrite to replace the maps, "
            "or give another folder."
        )


def map_names(paths) -> list[Path]:
    """Unique relative names of the maps: each file's path relative to the folder common to all files, as
    `<stem>_map.png`; files that would share a name (a.png and a.jpg) are named after their whole file name instead
    (`a.png_map.png`, `a.jpg_map.png`), and any name still shared gets `_2`, `_3`, ... in the order of the paths.
    The same file given twice has one name."""
    full = [Path(os.path.abspath(p)) for p in paths]
    if not full:
        return []
    root = Path(os.path.commonpath([str(p.parent) for p in full]))
    distinct = sorted(set(full))
    name = {p: p.relative_to(root).with_name(f"{p.stem}_map.png") for p in distinct}
    shared = Counter(name.values())
    name = {p: n.with_name(f"{p.name}_map.png") if shared[n] > 1 else n for p, n in name.items()}
    seen: dict[Path, int] = {}
    for p in distinct:  # by construction distinct already, unless file names mimic other files' map names
        n = name[p]
        if n in seen:
            k = seen[n] + 1
            while n.with_name(f"{n.stem}_{k}.png") in seen:
                k += 1
            seen[n] = k
            n = name[p] = n.with_name(f"{n.stem}_{k}.png")
        seen[n] = 1
    return [name[p] for p in full]


def save_anomaly_maps(
    scorer: AnomalyScorer, x: torch.Tensor, paths, out: Path, batch_size: int = 64, names=None
) -> None:
    """For each image: the input image at its own size with its per-location perceptual error blended on top in
    jet colours (the scored centre square; the rest, not seen by the model, dimmed), as PNG under `out` (names:
    :func:`map_names`), and the colour bar `out/colorbar.png`.

    The colour scale is fixed by the model, so one image looks the same whatever else is scored: 0 (blue) to the
    99th percentile of the per-location errors over the model's training images (red; higher errors saturate)."""
    from matplotlib import colormaps
    from PIL import Image

    dev = next(scorer.encoder.parameters()).device
    hi = scorer.map_scale_top()
    cmap = colormaps["jet"]
    names = map_names(paths) if names is None else names
    for b, p_b, n_b in zip(x.split(batch_size), _split(paths, batch_size), _split(names, batch_size), strict=True):
        maps = scorer.anomaly_map(b.to(dev)).float().cpu()
        for m, p, name in zip(maps, p_b, n_b, strict=True):
            buf = io.BytesIO()
            Image.fromarray(overlay(m, open_image(p, str(p)), hi, cmap)).save(buf, format="png")
            atomic_write_bytes(out / name, buf.getvalue())
    save_colorbar(out / COLORBAR_NAME, hi, scorer)


def _split(items, n: int):
    items = list(items)
    return [items[i : i + n] for i in range(0, len(items), n)]


def overlay(m: torch.Tensor, img, hi: float, cmap) -> np.ndarray:
    """uint8 (H, W, 3): the PIL image `img` (at most MAP_MAX_SIDE pixels on its longer side) with the per-location
    map `m` of its centre square in jet colours from 0 to `hi` blended on top, the rest dimmed."""
    from PIL import Image

    if max(img.size) > MAP_MAX_SIDE:  # bounded memory: a huge image is drawn reduced
        scale = MAP_MAX_SIDE / max(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BILINEAR)
    rgb = np.asarray(to_mode(img, 3), dtype=np.uint8)
    h, w = rgb.shape[:2]
    c = min(h, w)
    left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))  # as piad.data._io.center_crop
    m = torch.nn.functional.interpolate(m[None, None], size=(c, c), mode="bilinear", align_corners=False)[0, 0]
    heat = cmap((m / hi).clamp(0, 1).numpy(), bytes=True)[..., :3]
    blend = (rgb * np.float32(0.35)).round().astype(np.uint8)
    centre = rgb[top : top + c, left : left + c].astype(np.float32) * 0.5 + heat.astype(np.float32) * 0.5
    blend[top : top + c, left : left + c] = centre.round().clip(0, 255).astype(np.uint8)
    return blend


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
