"""MNIST and Fashion-MNIST (book: Experiments > Datasets and protocol), read from the IDX files (gzipped or not)
with gzip + numpy.

* mnist: train = train split of class c; test = test split, class c normal, the other 9 classes anomalous.
* fashion_mnist: train + test pooled, a seeded 80/20 split per class; train = 80% of c; test = the 20% of c plus as
  many images drawn (seeded) from the other classes' 20% parts.

Images are resized 28 -> 32 with PIL's bilinear resize, as the authors'
`transforms.Resize(32)`. Sources, in order: `data_root` / `$PIAD_DATA` (IDX files in `<root>`,
`<root>/MNIST/raw`, `<root>/mnist`, `<root>/FashionMNIST/raw`, `<root>/fashion-mnist`, ...); for Fashion-MNIST
Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist); a previous torchvision download in
the piad cache; a torchvision download (download=True).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piad.data import OneClassData, register
from piad.data._cache import fingerprint_file, get_pool, get_split, short_hash, standard_split, to_one_class
from piad.data._io import pil_resize_grey, read_idx
from piad.data._sources import Search, downloads_dir, user_roots
from piad.data._util import seeded_split
from piad.errors import DataError

VERSION = 2  # 2: PIL's resize, as the authors' transforms.Resize (was torch's antialiased bilinear)
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_SPEC = {
    "mnist": dict(
        title="MNIST",
        subdirs=("MNIST/raw", "MNIST", "mnist/raw", "mnist", "."),
        tv="MNIST",
        how=(
            "download=True (torchvision.datasets.MNIST, needs internet); or put the four IDX files "
            "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz], from http://yann.lecun.com/exdb/mnist/ or a mirror) in <root>/MNIST/raw "
            "or <root>/mnist and pass data_root=<root> (or set $PIAD_DATA)."
        ),
    ),
    "fashion_mnist": dict(
        title="Fashion-MNIST",
        subdirs=(
            "FashionMNIST/raw",
            "FashionMNIST",
            "fashion-mnist/raw",
            "fashion-mnist",
            "fashion_mnist/raw",
            "fashion_mnist",
            ".",
        ),
        tv="FashionMNIST",
        how=(
            "download=True (torchvision.datasets.FashionMNIST, needs internet); or `apt-get install "
            "dataset-fashion-mnist` (Debian/Ubuntu, installs /usr/share/datasets/fashion-mnist); or put the four IDX "
            "files (from https://github.com/zalandoresearch/fashion-mnist) in <root>/FashionMNIST/raw and pass "
            "data_root=<root> (or set $PIAD_DATA)."
        ),
    ),
}


def _idx_files(d: Path) -> dict[str, Path] | None:
    out = {}
    for key, names in _FILES.items():
        for n in names:
            for suffix in ("", ".gz"):
                if (d / (n + suffix)).is_file():
                    out[key] = d / (n + suffix)
                    break
            if key in out:
                break
        else:
            return None
    return out


def _in_root(benchmark: str, root: Path) -> tuple[dict[str, Path], Path] | None:
    for sub in _SPEC[benchmark]["subdirs"]:
        d = root / sub if sub != "." else root
        files = _idx_files(d)
        if files:
            return files, d
    return None


def resolve(benchmark: str, data_root, download: bool) -> tuple[dict[str, Path], str]:
    """The four IDX files and a description of where they came from."""
    spec = _SPEC[benchmark]
    search = Search(benchmark, spec["how"])
    wanted = "the four IDX files in " + ", ".join(spec["subdirs"])
    for root, origin in user_roots(data_root, search):
        hit = _in_root(benchmark, root)
        if hit:
            return hit[0], f"{spec['title']} IDX files in {hit[1].resolve()} (from {origin})"
        search.note(f"{root} ({origin})", f"no {wanted}")
        if origin == "data_root":
            raise search.error()
    if benchmark == "fashion_mnist":
        files = _idx_files(DEBIAN_FASHION_DIR)
        if files:
            return files, f"Fashion-MNIST IDX files in {DEBIAN_FASHION_DIR} (Debian package dataset-fashion-mnist)"
        search.note(DEBIAN_FASHION_DIR, "Debian package dataset-fashion-mnist not installed")
    dl = downloads_dir()
    files = _idx_files(dl / spec["tv"] / "raw")
    if files:
        return files, f"{spec['title']} IDX files in {dl / spec['tv'] / 'raw'} (previous torchvision download)"
    search.note(dl / spec["tv"] / "raw", "no previous torchvision download")
    if download:
        try:
            import torchvision.datasets as tvd

            for train in (True, False):
                getattr(tvd, spec["tv"])(str(dl), train=train, download=True)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            search.note(f"torchvision.datasets.{spec['tv']} download into {dl}", f"failed ({type(e).__name__}: {e})")
        else:
            files = _idx_files(dl / spec["tv"] / "raw")
            if files:
                return files, f"{spec['title']} IDX files in {dl / spec['tv'] / 'raw'} (torchvision download)"
            search.note(dl / spec["tv"] / "raw", "torchvision download finished but the IDX files are not there")
    else:
        search.note("torchvision download", "not tried (download=False)")
    raise search.error()


def _check(benchmark: str, files: dict[str, Path], images: np.ndarray, labels: np.ndarray, part: str) -> None:
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{benchmark}: {files[part + '_images']} and {files[part + '_labels']} do not match "
            f"(images {images.shape}, labels {labels.shape}); expected (N, 28, 28) images and N labels."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{benchmark}: {files[part + '_labels']} has labels outside 0..9.")
    if part == "train" and labels.shape[0] == 60000:
        balanced = bool(np.all(np.bincount(labels, minlength=10) == 6000))
        if benchmark == "fashion_mnist" and not balanced:
            raise DataError(
                f"fashion_mnist: {files['train_labels']} is not Fashion-MNIST (its classes are not 6,000 "
                "images each; these look like MNIST files). Point data_root at Fashion-MNIST."
            )
        if benchmark == "mnist" and balanced:
            raise DataError(
                f"mnist: {files['train_labels']} looks like Fashion-MNIST (exactly 6,000 images per "
                "class), not MNIST. Point data_root at MNIST."
            )


def _pool(benchmark: str, data_root, download: bool, size: int, channels: int) -> tuple[dict, str]:
    files, source = resolve(benchmark, data_root, download)
    identity = short_hash(sorted((k, fingerprint_file(p)) for k, p in files.items()))

    def build():
        parts = {}
        for part in ("train", "test"):
            imgs, labels = read_idx(files[part + "_images"]), read_idx(files[part + "_labels"]).astype(np.int64)
            _check(benchmark, files, imgs, labels, part)
            parts[part] = (imgs, labels)
        imgs = np.concatenate([parts["train"][0], parts["test"][0]])
        labels = np.concatenate([parts["train"][1], parts["test"][1]])
        is_test = np.concatenate([np.zeros(len(parts["train"][1]), np.int64), np.ones(len(parts["test"][1]), np.int64)])
        import torch

        return {
            "images": pil_resize_grey(np.ascontiguousarray(imgs, dtype=np.uint8), size, channels),
            "labels": torch.from_numpy(labels),
            "is_test": torch.from_numpy(is_test),
        }

    return get_pool(benchmark, identity, VERSION, size, channels, build), source


@register("mnist", num_classes=10, description="MNIST: train class c; test class c vs the other 9 classes; 28->32")
def load_mnist(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    size, ch = image_size or 32, channels or 1
    pool, source = _pool("mnist", data_root, download, size, ch)
    split = get_split(
        "mnist",
        pool,
        normal_class,
        0,
        VERSION,  # no randomness: the seed is irrelevant
        lambda: standard_split(pool, normal_class, MNIST_CLASSES),
    )
    return to_one_class(
        "mnist",
        normal_class,
        pool,
        split,
        source,
        class_name=MNIST_CLASSES[normal_class],
        info={"split_seed_used": False},
    )


def pooled_split(labels: np.ndarray, normal_class: int, split_seed: int, num_classes: int, salt_base: int = 0) -> dict:
    """Seeded 80/20 split per class; test = 20% of c + as many random images from the other classes' 20% parts."""
    train_idx, normal_test, other_test = None, None, []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        a, b = seeded_split(len(idx), 0.8, split_seed, salt=salt_base + k)
        if k == normal_class:
            train_idx, normal_test = idx[a], idx[b]
        else:
            other_test.append(idx[b])
    others = np.concatenate(other_test) if other_test else np.empty(0, np.int64)
    rng = np.random.default_rng([split_seed, salt_base + 100_000 + normal_class])
    n = min(len(normal_test), len(others))
    drawn = np.sort(rng.choice(others, size=n, replace=False)) if n else np.empty(0, np.int64)
    test_idx = np.concatenate([normal_test, drawn])
    test_labels = np.concatenate([np.zeros(len(normal_test), np.int64), np.ones(len(drawn), np.int64)])
    return {"train_idx": train_idx, "test_idx": test_idx, "test_labels": test_labels}


@register(
    "fashion_mnist",
    num_classes=10,
    description="Fashion-MNIST: train+test pooled, seeded 80/20 split per class; balanced test; 28->32",
)
def load_fashion_mnist(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    size, ch = image_size or 32, channels or 1
    pool, source = _pool("fashion_mnist", data_root, download, size, ch)

    def build():
        labels = pool["labels"].numpy()
        split = pooled_split(labels, normal_class, split_seed, 10)
        split["test_groups"] = [
            "normal" if y == normal_class else FASHION_CLASSES[y] for y in labels[split["test_idx"]]
        ]
        return split

    split = get_split("fashion_mnist", pool, normal_class, split_seed, VERSION, build)
    return to_one_class(
        "fashion_mnist",
        normal_class,
        pool,
        split,
        source,
        class_name=FASHION_CLASSES[normal_class],
        info={"split_seed": split_seed},
    )
