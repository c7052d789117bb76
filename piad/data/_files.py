"""Users' loose image files (scoring, feature statistics): any size or mode -> [-1, 1] tensors."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from piad.data._io import decode_image, is_image_file, list_images
from piad.errors import DataError


def expand_paths(paths: Iterable) -> list[Path]:
    """Files given directly, plus the image files found recursively in given folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += list_images(p, recursive=True) if p.is_dir() else [p]
    return out


def read_image_files(paths: Iterable, size: int, channels: int) -> tuple[torch.Tensor, list[Path], list[str]]:
    """(N, channels, size, size) in [-1, 1] for the readable files (largest centred square, resized), their paths,
    and one message per unreadable file (reported, not fatal)."""
    arrays, ok, errors = [], [], []
    for p in paths:
        try:
            arrays.append(decode_image(p, size, channels, crop="square"))
            ok.append(Path(p))
        except DataError as e:
            errors.append(str(e))
    if not arrays:
        return torch.empty(0, channels, size, size), ok, errors
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1, ok, errors


__all__ = ["expand_paths", "read_image_files", "is_image_file"]
