"""CelebA (book: Experiments > Datasets and protocol): faces without any of a set of attributes are normal;
centre-crop 140, resize 64.

normal_class 0 (the paper): the attributes are Bald, Mustache, Bangs, Eyeglasses, Wearing_Hat. normal_class 1 (the
authors' extended experiment): Bags_Under_Eyes, Bald, Bangs, Eyeglasses, Goatee, Heavy_Makeup, Mustache, Sideburns,
Wearing_Hat.
Train = train partition images with none of the attributes; test normals = test partition images with none; test
anomalies, per attribute = test images with it and none of the others (groups named by attribute -> one ROC AUC per
attribute). Test images with two or more of the attributes are left out, as in the paper.

Sources: `data_root` / `$PIAD_DATA` holding (at most 2 folder levels down, e.g. torchvision's `<root>/celeba/`)
`list_attr_celeba.txt`, `list_eval_partition.txt` and `img_align_celeba/*.jpg` (or `img_align_celeba.zip`, extracted
into the cache); a previous torchvision download in the piad cache; torchvision's download (download=True, from
Google Drive, often over quota).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from piad.data import OneClassData, register
from piad.data._cache import fingerprint_file, get_pool, get_split, short_hash, to_one_class
from piad.data._io import decode_many, extract_archive
from piad.data._sources import Search, downloads_dir, find_dir, user_roots
from piad.errors import DataError

VERSION = 2  # 2: the extended set is the authors' (the pool keeps its attribute columns)
# The authors' lists, in their order: `CelebA` in piad/datasets.py of github.com/ninatu/piad (commit adcb8fa); the
# extended one is used by their configs/celeba_extended.yaml (`extended_attribute_list: True`). The pool below
# relies on the first set being part of every set.
ATTRIBUTE_SETS = [
    ["Bald", "Mustache", "Bangs", "Eyeglasses", "Wearing_Hat"],
    [
        "Bags_Under_Eyes",
        "Bald",
        "Bangs",
        "Eyeglasses",
        "Goatee",
        "Heavy_Makeup",
        "Mustache",
        "Sideburns",
        "Wearing_Hat",
    ],
]
ALL_ATTRIBUTES = list(dict.fromkeys(a for s in ATTRIBUTE_SETS for a in s))
CLASS_NAMES = ["no " + "/".join(ATTRIBUTE_SETS[0]) + " (paper)", "no " + "/".join(ATTRIBUTE_SETS[1]) + " (extended)"]
CROP, SIZE = 140, 64
ATTR_FILE, PART_FILE, IMG_DIR = "list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"
HOW = (
    "download=True (torchvision.datasets.CelebA; Google Drive, often over quota); or download "
    "img_align_celeba.zip, list_attr_celeba.txt and list_eval_partition.txt from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into <root>/celeba/ (unzipped or not) and pass "
    "data_root=<root> (or set $PIAD_DATA)."
)
WHAT = f"{ATTR_FILE} + {PART_FILE} + {IMG_DIR}/ (or {IMG_DIR}.zip)"


def _match(d: Path) -> bool:
    return (
        (d / ATTR_FILE).is_file()
        and (d / PART_FILE).is_file()
        and ((d / IMG_DIR).is_dir() or (d / f"{IMG_DIR}.zip").is_file())
    )


def resolve(data_root, download: bool) -> tuple[Path, str]:
    search = Search("celeba", HOW)
    for root, origin in user_roots(data_root, search):
        hit = find_dir(root, _match, max_depth=2) if root.is_dir() else None
        if hit is not None:
            return hit.resolve(), origin
        search.note(f"{root} ({origin})", f"no {WHAT} up to 2 folder levels down")
        if origin == "data_root":
            raise search.error()
    dl = downloads_dir() / "celeba"
    if _match(dl):
        return dl.resolve(), "previous torchvision download"
    search.note(dl, "no previous torchvision download")
    if download:
        try:
            import torchvision.datasets as tvd

            tvd.CelebA(str(downloads_dir()), split="all", target_type="attr", download=True)
        except Exception as e:  # noqa: BLE001 - network and Google Drive errors come in many types
            search.note(
                f"torchvision.datasets.CelebA download into {downloads_dir()}", f"failed ({type(e).__name__}: {e})"
            )
        else:
            if _match(dl):
                return dl.resolve(), "torchvision download"
    else:
        search.note("torchvision download", "not tried (download=False)")
    raise search.error()


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(file names, attribute names, (N, 40) int8 array of +1/-1) from list_attr_celeba.txt."""
    try:
        lines = path.read_text().splitlines()
        names = lines[1].split()
        files, rows = [], []
        for i, line in enumerate(lines[2:], start=3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1:
                raise ValueError(f"line {i} has {len(parts) - 1} values, expected {len(names)}")
            files.append(parts[0])
            rows.append([int(v) for v in parts[1:]])
        values = np.array(rows, dtype=np.int8).reshape(len(rows), len(names))
    except (OSError, IndexError, ValueError, UnicodeDecodeError) as e:
        raise DataError(
            f"celeba: {path} could not be read as CelebA attributes ({e}). Expected a count line, a "
            "line of attribute names, then '<file> <+1/-1 per attribute>' lines."
        ) from None
    return files, names, values


def read_partition(path: Path) -> dict[str, int]:
    try:
        out = {}
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"line {i}: expected '<file> <0|1|2>'")
            out[parts[0]] = int(parts[1])
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"celeba: {path} could not be read as a CelebA partition file ({e}).") from None
    return out


def _pool(data_root, download: bool, size: int, channels: int) -> tuple[dict, str]:
    folder, origin = resolve(data_root, download)
    img_dir = folder / IMG_DIR
    img_src = img_dir if img_dir.is_dir() else folder / f"{IMG_DIR}.zip"
    identity = short_hash(
        fingerprint_file(folder / ATTR_FILE), fingerprint_file(folder / PART_FILE), fingerprint_file(img_src)
    )

    def build():
        files, names, values = read_attributes(folder / ATTR_FILE)
        missing = sorted(set(ALL_ATTRIBUTES) - set(names))
        if missing:
            raise DataError(f"celeba: {folder / ATTR_FILE} has no attribute(s) {missing}.")
        part = read_partition(folder / PART_FILE)
        no_part = [f for f in files if f not in part]
        if no_part:
            raise DataError(
                f"celeba: {len(no_part)} images of {ATTR_FILE} (e.g. {no_part[0]}) have no partition in "
                f"{folder / PART_FILE}."
            )
        partition = np.array([part[f] for f in files], dtype=np.int64)
        base = values[:, [names.index(a) for a in ATTRIBUTE_SETS[0]]] > 0
        # every image either normal_class can use: train partition without the five; test with at most one of them
        keep = ((partition == 0) & (base.sum(1) == 0)) | ((partition == 2) & (base.sum(1) <= 1))
        idx = np.flatnonzero(keep)
        images_dir = img_dir if img_dir.is_dir() else _extracted_images(folder)
        paths = [images_dir / files[i] for i in idx]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise DataError(
                f"celeba: {len(absent)} image files listed in {ATTR_FILE} are missing from "
                f"{images_dir} (e.g. {absent[0].name}). Use the complete img_align_celeba folder."
            )
        images = decode_many(((str(p), str(p)) for p in paths), size, channels, crop=CROP, count=len(paths))
        used = [names.index(a) for a in ALL_ATTRIBUTES]
        return {
            "images": images,
            "partition": torch.from_numpy(partition[idx]),
            "attrs": torch.from_numpy((values[idx][:, used] > 0).astype(np.int64)),
            "attr_names": list(ALL_ATTRIBUTES),
            "layout": str(images_dir),
        }

    pool = get_pool("celeba", identity, VERSION, size, channels, build)
    return pool, f"CelebA, attributes/partitions in {folder}, images in {pool['layout']} (from {origin})"


def _extracted_images(folder: Path) -> Path:
    top = extract_archive(folder / f"{IMG_DIR}.zip")
    hit = find_dir(top, lambda d: d.name == IMG_DIR, max_depth=2)
    return hit if hit is not None else top


def celeba_split(partition: np.ndarray, attrs: np.ndarray, attr_names: list[str], chosen: list[str]) -> dict:
    """Train/test indices, labels and groups for the normality 'none of `chosen`'."""
    a = attrs[:, [attr_names.index(n) for n in chosen]].astype(bool)
    count = a.sum(1)
    train_idx = np.flatnonzero((partition == 0) & (count == 0))
    normal = np.flatnonzero((partition == 2) & (count == 0))
    groups, anomalies = [], []
    for j, name in enumerate(chosen):
        idx = np.flatnonzero((partition == 2) & (count == 1) & a[:, j])
        anomalies.append(idx)
        groups += [name] * len(idx)
    anomalies = np.concatenate(anomalies)
    return {
        "train_idx": train_idx,
        "test_idx": np.concatenate([normal, anomalies]),
        "test_labels": np.concatenate([np.zeros(len(normal), np.int64), np.ones(len(anomalies), np.int64)]),
        "test_groups": ["normal"] * len(normal) + groups,
    }


@register(
    "celeba",
    num_classes=len(ATTRIBUTE_SETS),
    description="CelebA: no Bald/Mustache/Bangs/Eyeglasses/Wearing_Hat (1: the authors' extended set, "
    "+Bags_Under_Eyes/Goatee/Heavy_Makeup/Sideburns) is normal; per-attribute anomalies; "
    "crop 140, 64x64",
)
def load_celeba(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    size, ch = image_size or SIZE, channels or 3
    pool, source = _pool(data_root, download, size, ch)
    chosen = ATTRIBUTE_SETS[normal_class]

    def build():
        return celeba_split(pool["partition"].numpy(), pool["attrs"].numpy(), list(pool["attr_names"]), chosen)

    split = get_split("celeba", pool, normal_class, 0, VERSION, build)  # no randomness: the seed is irrelevant
    return to_one_class(
        "celeba",
        normal_class,
        pool,
        split,
        source,
        class_name=CLASS_NAMES[normal_class],
        info={"attributes": list(chosen), "split_seed_used": False},
    )
