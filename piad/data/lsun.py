"""LSUN (book: Experiments > Datasets and protocol): train = bedroom train; test normals = bedroom val; anomalies =
conference_room val.

Images are centre-cropped to 256 (zero-padded if smaller, as torchvision's CenterCrop) and resized to 64. Read from
the official LSUN lmdb databases (`bedroom_train_lmdb`, `bedroom_val_lmdb`, `conference_room_val_lmdb`, found in
`data_root` / `$PIAD_DATA` up to 2 folder levels down) with the optional `lmdb` package (`pip install piad[lmdb]`).
torchvision has no LSUN download. Note: bedroom_train holds about 3 million images; the first load decodes all of
them once (hours, and about 37 GB of cache at 64x64x3); later loads read the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from piad.data import OneClassData, register
from piad.data._cache import fingerprint_file, get_pool, get_split, short_hash, to_one_class
from piad.data._io import decode_many
from piad.data._sources import Search, find_dir, user_roots
from piad.errors import DataError

VERSION = 1
CROP, SIZE = 256, 64
DATABASES = ["bedroom_train_lmdb", "bedroom_val_lmdb", "conference_room_val_lmdb"]
HOW = (
    "torchvision has no LSUN download. Download bedroom_train_lmdb.zip, bedroom_val_lmdb.zip and "
    "conference_room_val_lmdb.zip with the LSUN download script (https://github.com/fyu/lsun: "
    "`python download.py -c bedroom` and `-c conference_room`), unzip them into one folder and pass "
    "data_root=<that folder> (or set $PIAD_DATA). Reading them needs `pip install lmdb`."
)


def _match(d: Path) -> bool:
    return all((d / db / "data.mdb").is_file() for db in DATABASES)


def resolve(data_root) -> tuple[Path, str]:
    search = Search("lsun", HOW)
    for root, origin in user_roots(data_root, search):
        hit = find_dir(root, _match, max_depth=2) if root.is_dir() else None
        if hit is not None:
            return hit.resolve(), origin
        search.note(
            f"{root} ({origin})",
            f"no folder with {', '.join(d + '/data.mdb' for d in DATABASES)} up to 2 folder levels down",
        )
        if origin == "data_root":
            raise search.error()
    search.note("torchvision", "has no LSUN download")
    raise search.error()


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise DataError(
            "benchmark 'lsun' reads LSUN's lmdb databases and needs the optional `lmdb` package: "
            "`pip install lmdb` (or `pip install piad[lmdb]`)."
        ) from None
    return lmdb


def _records(path: Path):
    """(key, encoded image bytes) of one lmdb database, in key order."""
    lmdb = _lmdb()
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)
    except lmdb.Error as e:
        raise DataError(
            f"lsun: {path} could not be opened as an lmdb database ({e}). Re-extract it from its .zip."
        ) from None
    try:
        with env.begin(write=False) as txn:
            for key, value in txn.cursor():
                yield f"{path.name}:{key.decode('latin1')}", bytes(value)
    finally:
        env.close()


def _count(path: Path) -> int:
    lmdb = _lmdb()
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)
    try:
        return int(env.stat()["entries"])
    finally:
        env.close()


def _pool(data_root, size: int, channels: int) -> tuple[dict, str]:
    folder, origin = resolve(data_root)
    identity = short_hash([fingerprint_file(folder / db / "data.mdb") for db in DATABASES])

    def build():
        parts, which = [], []
        for k, db in enumerate(DATABASES):
            n = _count(folder / db)
            imgs = decode_many(_records(folder / db), size, channels, crop=CROP, count=n)
            if len(imgs) == 0:
                raise DataError(f"lsun: the lmdb database {folder / db} holds no images.")
            parts.append(imgs)
            which.append(np.full(len(imgs), k, np.int64))
        return {"images": np.concatenate(parts), "database": torch.from_numpy(np.concatenate(which))}

    pool = get_pool("lsun", identity, VERSION, size, channels, build)
    return pool, f"LSUN lmdb databases {', '.join(DATABASES)} in {folder} (from {origin})"


@register(
    "lsun",
    num_classes=1,
    description="LSUN: bedroom train (normal) / bedroom val vs conference_room val; crop 256, 64x64",
)
def load_lsun(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    size, ch = image_size or SIZE, channels or 3
    pool, source = _pool(data_root, size, ch)

    def build():
        db = pool["database"].numpy()
        normal, anomalies = np.flatnonzero(db == 1), np.flatnonzero(db == 2)
        return {
            "train_idx": np.flatnonzero(db == 0),
            "test_idx": np.concatenate([normal, anomalies]),
            "test_labels": np.concatenate([np.zeros(len(normal), np.int64), np.ones(len(anomalies), np.int64)]),
            "test_groups": ["normal"] * len(normal) + ["conference_room"] * len(anomalies),
        }

    split = get_split("lsun", pool, normal_class, 0, VERSION, build)  # no randomness: the seed is irrelevant
    return to_one_class(
        "lsun", normal_class, pool, split, source, class_name="bedroom", info={"split_seed_used": False}
    )
