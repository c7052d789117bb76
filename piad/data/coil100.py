"""COIL-100 (book: Experiments > Datasets and protocol): 100 objects x 72 poses, rescaled to 32x32 (x0.25 of the
original 128x128).

normal_class k (0..29) is the k-th of the 30 normal objects used by the authors (NORMAL_OBJECTS). Per object a
seeded 80/20 split; train = 80% of the normal object; test = its 20% plus equally many images drawn (seeded) from the
other objects' 20% parts (anomaly group "other_objects"; the drawn objects' numbers are in `info["test_objects"]`).
Images are downscaled as the authors did: scikit-image's `rescale(img, 0.25)` (Gaussian anti-aliasing blur, then
bilinear) and `* 255` truncated to uint8 (:func:`piad.data._io.skimage_rescale`; book: Datasets). Images already at
the benchmark resolution are kept as they are (some copies hold downsized images).

Sources: `data_root` / `$PIAD_DATA` holding (up to 3 folder levels down) `obj<k>__<angle>.png` files, or an archive
(.zip/.tar.gz, name containing "coil") of them (e.g. Kaggle's `coil-100/coil-100/obj1__0.png` layout), or the archive
itself. torchvision has no COIL-100 download.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from piad.data import OneClassData, register
from piad.data._cache import fingerprint_file, fingerprint_files, get_pool, get_split, to_one_class
from piad.data._io import decode_many, natural_key
from piad.data._sources import Located, Search, locate, user_roots
from piad.data._util import seeded_split
from piad.errors import DataError

VERSION = 2  # 2: scikit-image's rescale + truncation, as the authors (was PIL's resize, rounded)
NORMAL_OBJECTS = [
    79,
    48,
    65,
    98,
    73,
    13,
    14,
    39,
    57,
    28,
    42,
    75,
    44,
    24,
    82,
    56,
    7,
    47,
    68,
    30,
    33,
    90,
    70,
    87,
    12,
    91,
    4,
    22,
    71,
    55,
]
_NAME = re.compile(r"^obj(\d+)__(\d+)\.png$", re.IGNORECASE)
HOW = (
    "COIL-100 is not downloadable through torchvision. Get coil-100.zip from "
    "https://www.cs.columbia.edu/CAVE/software/softlib/coil-100.php (or Kaggle's 'coil100' dataset) and pass "
    "data_root=<the archive, or a folder holding it or the extracted obj<k>__<angle>.png files> "
    "(or set $PIAD_DATA)."
)
WHAT = "obj<k>__<angle>.png files"


def _files(d: Path) -> list[tuple[Path, int, int]]:
    """[(path, object, angle)] of the COIL images directly in `d`, sorted by (object, angle)."""
    try:
        with os.scandir(d) as it:
            hits = [(Path(e.path), _NAME.match(e.name)) for e in it if e.is_file()]
    except OSError:
        return []
    out = [(p, int(m.group(1)), int(m.group(2))) for p, m in hits if m]
    return sorted(out, key=lambda t: (t[1], t[2], natural_key(t[0].name)))


def _match(d: Path) -> bool:
    try:
        with os.scandir(d) as it:
            return any(_NAME.match(e.name) for e in it)
    except OSError:
        return False


def resolve(data_root) -> Located:
    search = Search("coil100", HOW)
    for root, origin in user_roots(data_root, search):
        hit = locate(root, origin, _match, ("coil",), search, WHAT)
        if hit:
            return hit
        if origin == "data_root":
            raise search.error()
    search.note("torchvision", "has no COIL-100 download")
    raise search.error()


def _pool(data_root, size: int, channels: int) -> tuple[dict, str]:
    loc = resolve(data_root)
    identity = (
        fingerprint_file(loc.path)
        if loc.archive
        else fingerprint_files([p for p, _, _ in _files(loc.path)], root=loc.path)
    )

    def build():
        folder = loc.folder(_match, WHAT)
        items = _files(folder)
        images = decode_many(
            ((str(p), str(p)) for p, _, _ in items), size, channels, count=len(items), resample="skimage"
        )
        return {
            "images": images,
            "objects": torch.tensor([o for _, o, _ in items], dtype=torch.int64),
            "angles": torch.tensor([a for _, _, a in items], dtype=torch.int64),
            "layout": str(folder),
        }

    pool = get_pool("coil100", identity, VERSION, size, channels, build)
    n_obj = len(torch.unique(pool["objects"]))
    desc = f"COIL-100, {len(pool['objects'])} images of {n_obj} objects in {pool['layout']}"
    source = desc + (f" extracted from {loc.describe()}" if loc.archive else f" (from {loc.origin})")
    return pool, source


@register(
    "coil100",
    num_classes=len(NORMAL_OBJECTS),
    description="COIL-100: the authors' 30 normal objects; seeded 80/20 split per object; balanced test; 32x32",
)
def load_coil100(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    size, ch = image_size or 32, channels or 3
    pool, source = _pool(data_root, size, ch)
    obj = NORMAL_OBJECTS[normal_class]
    objects = pool["objects"].numpy()
    if not np.any(objects == obj):
        raise DataError(
            f"coil100: normal_class={normal_class} is object {obj}, which has no images in the source "
            f"({source}). Use a complete COIL-100 copy."
        )

    def build():
        train_idx = normal_test = None
        others = []
        for o in np.unique(objects):
            idx = np.flatnonzero(objects == o)
            a, b = seeded_split(len(idx), 0.8, split_seed, salt=int(o))
            if o == obj:
                train_idx, normal_test = idx[a], idx[b]
            else:
                others.append(idx[b])
        others = np.concatenate(others)
        rng = np.random.default_rng([split_seed, 100_000 + obj])
        n = min(len(normal_test), len(others))
        drawn = np.sort(rng.choice(others, size=n, replace=False))
        test_idx = np.concatenate([normal_test, drawn])
        return {
            "train_idx": train_idx,
            "test_idx": test_idx,
            "test_labels": np.concatenate([np.zeros(len(normal_test), np.int64), np.ones(n, np.int64)]),
            "test_groups": ["normal"] * len(normal_test) + ["other_objects"] * n,
        }

    split = get_split("coil100", pool, normal_class, split_seed, VERSION, build)
    missing = sorted(set(range(1, 101)) - set(np.unique(objects).tolist()))
    per_obj = np.bincount(objects, minlength=101)[1:]
    info = {
        "split_seed": split_seed,
        "object": obj,
        "test_objects": objects[split["test_idx"].numpy()].tolist(),
        "source_images": int(len(objects)),
        "objects_missing": missing,
        "objects_incomplete": [i + 1 for i, c in enumerate(per_obj) if 0 < c < 72],
    }
    return to_one_class("coil100", normal_class, pool, split, source, class_name=f"obj{obj}", info=info)
