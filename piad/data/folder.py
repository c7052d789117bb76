"""A user's own images: `<root>/train/` (normal images only), `<root>/test/normal/`, `<root>/test/<name>/` (anomalies,
group = the folder name; one or more such folders).

Images of any size and mode (grey, palette, RGBA, 16-bit, ...) are converted to `channels` (default 3), centre-cropped
to their largest square (this project's choice: it keeps the aspect ratio) and resized to `image_size` (default 32),
bilinear. Files are found recursively below each folder; hidden files and non-image extensions are ignored. `root` is
`data_root` (or `$PIAD_DATA`): the folder itself, a folder holding it up to 2 levels down, or a .zip/.tar.gz of it.
There is no randomness: `split_seed` is unused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piad.data import OneClassData, register
from piad.data._cache import fingerprint_file, fingerprint_files, get_pool, get_split, to_one_class
from piad.data._io import IMAGE_EXTENSIONS, decode_many, is_archive, list_images
from piad.data._sources import Located, Search, find_dir, user_roots
from piad.errors import DataError

VERSION = 1
HOW = (
    "pass data_root=<folder> with train/ (normal images), test/normal/ and test/<anomaly name>/ sub-folders "
    f"(images: {', '.join(IMAGE_EXTENSIONS)}), or a .zip/.tar.gz of such a folder (or set $PIAD_DATA)."
)


def _match(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "test").is_dir()


def resolve(data_root) -> Located:
    search = Search("folder", HOW)
    roots = user_roots(data_root, search)
    if not roots:
        raise DataError("benchmark 'folder' needs data_root (or $PIAD_DATA): " + HOW)
    root, origin = roots[0]
    if root.is_file():
        if is_archive(root):
            return Located(root.resolve(), origin, archive=True)
        raise DataError(f"data_root={str(root)!r} is a file but not an archive (.zip/.tar.gz/...). " + HOW)
    hit = find_dir(root, _match, max_depth=2)
    if hit is None:
        raise DataError(
            f"data_root={str(root)!r} ({origin}) has no train/ and test/ sub-folders (looked up to 2 "
            "levels down). " + HOW
        )
    return Located(hit.resolve(), origin)


def _layout(folder: Path) -> list[tuple[Path, str]]:
    """[(file, group)] with group "train", "normal" or the anomaly folder's name; DataError on empty folders."""

    def images(d: Path, what: str) -> list[Path]:
        if not d.is_dir():
            raise DataError(f"folder: {d} is missing; it must hold the {what}. " + HOW)
        files = list_images(d, recursive=True)
        if not files:
            raise DataError(
                f"folder: class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)}); it must hold "
                f"the {what}. Add images or remove the folder."
            )
        return files

    out = [(p, "train") for p in images(folder / "train", "normal training images")]
    out += [(p, "normal") for p in images(folder / "test" / "normal", "normal test images")]
    anomaly_dirs = sorted(
        d for d in (folder / "test").iterdir() if d.is_dir() and d.name != "normal" and not d.name.startswith(".")
    )
    if not anomaly_dirs:
        raise DataError(
            f"folder: {folder / 'test'} has no anomaly folder besides normal/; add at least one "
            "test/<anomaly name>/ folder of anomalous images. " + HOW
        )
    for d in anomaly_dirs:
        out += [(p, d.name) for p in images(d, f"anomalous test images of group {d.name!r}")]
    return out


@register(
    "folder",
    num_classes=1,
    description="your own images: train/ (normal), test/normal/, test/<anomaly>/; any size -> 32x32 RGB",
)
def load_folder(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    size, ch = image_size or 32, channels or 3
    loc = resolve(data_root)
    if loc.archive:
        identity = fingerprint_file(loc.path)
    else:
        items = _layout(loc.path)
        identity = fingerprint_files([p for p, _ in items], root=loc.path)

    def build_pool():
        folder = loc.folder(_match, "train/ and test/ folders", max_depth=2)
        found = _layout(folder)
        images = decode_many(((str(p), str(p)) for p, _ in found), size, ch, crop="square", count=len(found))
        return {"images": images, "groups": [g for _, g in found], "layout": str(folder)}

    pool = get_pool("folder", identity, VERSION, size, ch, build_pool)

    def build():
        groups = np.array(pool["groups"], dtype=object)
        test_idx = np.flatnonzero(groups != "train")
        return {
            "train_idx": np.flatnonzero(groups == "train"),
            "test_idx": test_idx,
            "test_labels": (groups[test_idx] != "normal").astype(np.int64),
            "test_groups": [str(g) for g in groups[test_idx]],
        }

    split = get_split("folder", pool, normal_class, 0, VERSION, build)
    source = f"image folders in {pool['layout']}" + (
        f" extracted from {loc.describe()}" if loc.archive else f" (from {loc.origin})"
    )
    return to_one_class(
        "folder", normal_class, pool, split, source, class_name="normal", info={"split_seed_used": False}
    )
