"""Reading users' image files into [-1, 1] tensors at a model's resolution (any size or mode)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class UnreadableImage(Exception):
    pass


def list_images(paths: Iterable) -> list[Path]:
    """Files given directly, plus image files found recursively in given folders (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def read_image(path, size: int, channels: int) -> torch.Tensor:
    """(channels, size, size) float32 in [-1, 1]; centre-cropped to a square, then resized (antialiased)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UnreadableImage(f"{path}: {e}") from None
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        im = im.resize((size, size), Image.BILINEAR if s < size else Image.LANCZOS)
    a = np.asarray(im, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a / 127.5 - 1)


def read_images(paths, size: int, channels: int) -> tuple[torch.Tensor, list[Path], list[str]]:
    """Stack of the readable images, their paths, and one message per unreadable file."""
    ok, tensors, errors = [], [], []
    for p in paths:
        try:
            tensors.append(read_image(p, size, channels))
            ok.append(Path(p))
        except UnreadableImage as e:
            errors.append(str(e))
    x = torch.stack(tensors) if tensors else torch.empty(0, channels, size, size)
    return x, ok, errors
