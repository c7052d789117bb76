"""CIFAR-10 (book: Experiments > Datasets and protocol): train = train split of class c; test = test split, class c
normal, the other 9 anomalous.

Sources, in order: `data_root` / `$PIAD_DATA`, then a previous torchvision download in the piad cache, then a
torchvision download (download=True). A root may hold (at most 3 folder levels down) torchvision's
`cifar-10-batches-py`, or an image-folder tree `{train,test}/<class name>/*.{png,jpg}` (class names as CIFAR-10's:
airplane, automobile, ...), or an archive (.tar.gz/.zip, name containing "cifar") of either; or a root may be such an
archive itself (e.g. cifar10-jpeg.tar.gz, or torchvision's cifar-10-python.tar.gz).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from piad.data import OneClassData, register
from piad.data._cache import (
    fingerprint_file,
    fingerprint_files,
    get_pool,
    get_split,
    short_hash,
    standard_split,
    to_one_class,
)
from piad.data._io import convert_arrays, decode_many, list_images
from piad.data._sources import Located, Search, downloads_dir, locate, user_roots
from piad.errors import DataError

VERSION = 1
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
HOW = (
    "download=True (torchvision.datasets.CIFAR10, needs internet, 163 MB); or pass data_root=<folder> holding "
    "cifar-10-batches-py (from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, or that archive itself), "
    "or an image-folder tree {train,test}/<class name>/*.png|jpg, or a .tar.gz/.zip of such a tree "
    "(or set $PIAD_DATA)."
)
WHAT = "cifar-10-batches-py or a {train,test}/<class>/ image tree"


def _is_batches(d: Path) -> bool:
    return all((d / b).is_file() for b in BATCHES)


def _class_dirs(split_dir: Path):
    """{class index: folder} when `split_dir` has a sub-folder for every CIFAR-10 class (case-insensitive)."""
    if not split_dir.is_dir():
        return None
    by_name = {p.name.lower(): p for p in split_dir.iterdir() if p.is_dir()}
    if not all(c in by_name for c in CLASSES):
        return None
    return {k: by_name[c] for k, c in enumerate(CLASSES)}


def _is_tree(d: Path) -> bool:
    return _class_dirs(d / "train") is not None and _class_dirs(d / "test") is not None


def _match(d: Path) -> bool:
    return _is_batches(d) or _is_tree(d)


def resolve(data_root, download: bool) -> Located:
    search = Search("cifar10", HOW)
    for root, origin in user_roots(data_root, search):
        hit = locate(root, origin, _match, ("cifar",), search, WHAT)
        if hit:
            return hit
        if origin == "data_root":
            raise search.error()
    dl = downloads_dir()
    if _is_batches(dl / "cifar-10-batches-py"):
        return Located((dl / "cifar-10-batches-py").resolve(), "previous torchvision download")
    search.note(dl / "cifar-10-batches-py", "no previous torchvision download")
    if download:
        try:
            import torchvision.datasets as tvd

            tvd.CIFAR10(str(dl), train=True, download=True)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            search.note(f"torchvision.datasets.CIFAR10 download into {dl}", f"failed ({type(e).__name__}: {e})")
        else:
            if _is_batches(dl / "cifar-10-batches-py"):
                return Located((dl / "cifar-10-batches-py").resolve(), "torchvision download")
    else:
        search.note("torchvision download", "not tried (download=False)")
    raise search.error()


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - truncated pickle, wrong file, missing keys
        raise DataError(
            f"cifar10: {path} could not be read as a CIFAR-10 python batch ({type(e).__name__}: {e}). "
            "Replace cifar-10-batches-py with a fresh copy."
        ) from None
    if len(labels) != len(data) or (labels.size and not 0 <= labels.min() <= labels.max() <= 9):
        raise DataError(f"cifar10: {path} is malformed ({len(data)} images, {len(labels)} labels in 0..9 expected).")
    return data, labels


def _tree_files(folder: Path) -> list[tuple[Path, int, int]]:
    """[(file, label, is_test)] of an image-folder tree; DataError on an empty class folder."""
    out = []
    for is_test, split in enumerate(("train", "test")):
        for k, d in _class_dirs(folder / split).items():
            files = list_images(d)
            if not files:
                raise DataError(
                    f"cifar10: class folder {d} holds no images (.png/.jpg/...). Every "
                    f"{{train,test}}/<class>/ folder needs the class's images."
                )
            out.extend((p, k, is_test) for p in files)
    return out


def _pool(data_root, download: bool, size: int, channels: int) -> tuple[dict, str]:
    loc = resolve(data_root, download)
    if loc.archive:
        identity = fingerprint_file(loc.path)
    elif _is_batches(loc.path):
        identity = short_hash([fingerprint_file(loc.path / b) for b in BATCHES])
    else:
        identity = fingerprint_files([p for p, _, _ in _tree_files(loc.path)], root=loc.path)

    def build():
        folder = loc.folder(_match, WHAT)
        if _is_batches(folder):
            parts = [_read_batch(folder / b) for b in BATCHES]
            imgs = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
            is_test = np.concatenate(
                [np.full(len(p[1]), int(b == "test_batch")) for p, b in zip(parts, BATCHES, strict=True)]
            )
            images, layout = convert_arrays(imgs, size, channels), f"python batches in {folder}"
        else:
            items = _tree_files(folder)
            images = decode_many(((str(p), str(p)) for p, _, _ in items), size, channels, count=len(items))
            labels = np.array([k for _, k, _ in items], np.int64)
            is_test = np.array([t for _, _, t in items], np.int64)
            layout = f"image-folder tree {folder}"
        return {
            "images": images,
            "labels": torch.from_numpy(labels),
            "is_test": torch.from_numpy(is_test.astype(np.int64)),
            "layout": layout,
        }

    pool = get_pool("cifar10", identity, VERSION, size, channels, build)
    source = f"CIFAR-10, {pool['layout']}" + (
        f" extracted from {loc.describe()}" if loc.archive else f" (from {loc.origin})"
    )
    return pool, source


@register("cifar10", num_classes=10, description="CIFAR-10: train class c; test class c vs the other 9 classes")
def load_cifar10(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    size, ch = image_size or 32, channels or 3
    pool, source = _pool(data_root, download, size, ch)
    split = get_split(
        "cifar10",
        pool,
        normal_class,
        0,
        VERSION,  # no randomness: the seed is irrelevant
        lambda: standard_split(pool, normal_class, CLASSES),
    )
    return to_one_class(
        "cifar10", normal_class, pool, split, source, class_name=CLASSES[normal_class], info={"split_seed_used": False}
    )
