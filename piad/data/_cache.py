"""The on-disk cache of preprocessed data, under `cache_dir()/data/` (nothing is written anywhere else).

Two levels, both keyed by the benchmark, the source's identity (path + size/mtime fingerprint) and the protocol
version, and saved atomically (temporary file, then `os.replace`), loaded with `torch.load(weights_only=True)`:

* a *pool*: every image the benchmark needs, decoded and preprocessed once (crop, resize, channels) as a uint8
  tensor (N, C, S, S) plus per-image metadata; key adds (size, channels).
* a *split*: for one (normal_class, split_seed), the train / test indices into the pool, the test labels and
  groups; key adds (normal_class, split_seed). It is a pure function of the seed and the pool.

:func:`to_one_class` turns pool + split into a :class:`OneClassData` of float32 tensors in [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piad.data import OneClassData
from piad.errors import DataError
from piad.paths import cache_dir

_MEMORY: dict[str, Any] = {}  # the last pool loaded, so that looping over classes decodes/loads it once


def data_cache_dir() -> Path:
    return cache_dir() / "data"


def short_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def fingerprint_file(p: Path) -> str:
    p = Path(p).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def fingerprint_files(paths, root: Path | None = None) -> str:
    """A digest of (relative path, size, mtime) of every file: changes when any file is added, removed or edited."""
    h = hashlib.sha256()
    if root is not None:
        h.update(str(Path(root).resolve()).encode("utf-8", "surrogateescape"))
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:  # a broken link or a loop of links: the file's fault, named
            from piad.errors import os_error

            raise os_error(e, p, "read the image file") from None
        rel = os.path.relpath(p, root) if root is not None else str(p)
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def save_atomic(obj, path: Path) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        # a read-only or full cache must not stop training: the data are still returned from memory. One line on
        # stderr, not a Python warning (which prints the source line that raised it)
        import sys

        from piad.errors import os_error

        print(
            f"piad: warning: {str(os_error(e, path)).rstrip('.')}; continuing without the data cache.",
            file=sys.stderr,
            flush=True,
        )
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def load_cached(path: Path):
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a truncated or foreign cache file is rebuilt, never trusted
        try:
            path.unlink()
        except OSError:
            pass
        return None


def get_pool(benchmark: str, identity: str, version: int, size: int, channels: int, build: Callable[[], dict]) -> dict:
    """The cached pool {"images": uint8 (N,C,S,S), ...metadata}, building it with `build()` on a miss."""
    key = short_hash("pool", benchmark, identity, version, size, channels)
    if key in _MEMORY:
        return _MEMORY[key]
    path = data_cache_dir() / f"{benchmark}-pool-{size}x{channels}-{key}.pt"
    pool = load_cached(path)
    if pool is None or not isinstance(pool, dict) or "images" not in pool:
        pool = build()
        imgs = pool["images"]
        if isinstance(imgs, np.ndarray):
            pool["images"] = torch.from_numpy(np.ascontiguousarray(imgs))
        if pool["images"].dtype != torch.uint8 or tuple(pool["images"].shape[1:]) != (channels, size, size):
            raise AssertionError(f"pool of {benchmark} has {pool['images'].dtype} {tuple(pool['images'].shape)}")
        save_atomic(pool, path)
    pool["_key"] = key
    _MEMORY.clear()
    _MEMORY[key] = pool
    return pool


def standard_split(pool: dict, normal_class: int, class_names) -> dict:
    """The split of benchmarks with a fixed train/test partition (MNIST, CIFAR-10): train = class c of the train
    part; test = the whole test part, class c normal, every other class anomalous (grouped by class name)."""
    labels, is_test = pool["labels"].numpy(), pool["is_test"].numpy()
    train_idx = np.flatnonzero((is_test == 0) & (labels == normal_class))
    test_idx = np.flatnonzero(is_test == 1)
    return {
        "train_idx": train_idx,
        "test_idx": test_idx,
        "test_labels": (labels[test_idx] != normal_class).astype(np.int64),
        "test_groups": ["normal" if y == normal_class else class_names[y] for y in labels[test_idx]],
    }


def get_split(
    benchmark: str, pool: dict, normal_class: int, split_seed: int, version: int, build: Callable[[], dict]
) -> dict:
    """The cached split {"train_idx", "test_idx", "test_labels" (int64 tensors), "test_groups" (list[str])}."""
    key = short_hash("split", benchmark, pool["_key"], version, normal_class, split_seed)
    path = data_cache_dir() / f"{benchmark}-split-c{normal_class}-s{split_seed}-{key}.pt"
    split = load_cached(path)
    if split is None or not isinstance(split, dict) or "train_idx" not in split:
        split = build()
        split = {
            k: (
                torch.as_tensor(np.asarray(v), dtype=torch.int64)
                if k in ("train_idx", "test_idx", "test_labels")
                else v
            )
            for k, v in split.items()
        }
        save_atomic(split, path)
    return split


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_one_class(
    benchmark: str,
    normal_class: int,
    pool: dict,
    split: dict,
    source: str,
    class_name: str | None = None,
    info: dict | None = None,
) -> OneClassData:
    images = pool["images"]
    train = to_float(images[split["train_idx"]])
    test = to_float(images[split["test_idx"]])
    info = dict(info or {})
    info.setdefault("cache", str(data_cache_dir()))
    # positions in the benchmark's source order (see each protocol's pool): makes the split inspectable
    info["train_index"], info["test_index"] = split["train_idx"], split["test_idx"]
    return OneClassData(
        benchmark,
        normal_class,
        train,
        test,
        split["test_labels"].to(torch.int64),
        source,
        test_groups=list(split["test_groups"]),
        class_name=class_name,
        info=info,
    )


def require_nonempty(benchmark: str, what: str, n: int, hint: str) -> None:
    if n == 0:
        raise DataError(f"{benchmark}: {what} has no images. {hint}")
