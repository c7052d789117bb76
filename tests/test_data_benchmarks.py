"""The paper's benchmarks (book: Experiments > Datasets and protocol) on the real offline copies in ../shared/assets
(or $PIAD_ASSETS).

Tests skip with a reason when a copy is absent. All tests of the data layer share one temporary PIAD_CACHE per
session (pytest's base temp folder), so each source is decoded once per session and then read from the disk cache.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from piad.data import describe, load_benchmark
from piad.errors import DataError

ASSETS = Path(os.environ.get("PIAD_ASSETS") or Path(__file__).resolve().parents[2] / "shared" / "assets")
MNIST_DIR = ASSETS / "mnist"
CIFAR_ARCHIVE = ASSETS / "cifar10-jpeg.tar.gz"
COIL_ARCHIVE = ASSETS / "coil-100.tar.gz"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _need(path: Path, what: str):
    if not path.exists():
        pytest.skip(
            f"{what} not available: {path} is absent (offline assets live in ../shared/assets or "
            "$PIAD_ASSETS; see shared/assets/README.md)"
        )


def _need_fashion():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST not available: {FASHION_DIR} is absent (install Debian's dataset-fashion-mnist: "
            "apt-get install -y dataset-fashion-mnist)"
        )


pytestmark = pytest.mark.usefixtures("session_cache")


def _check_tensors(d, channels: int, size: int, exact_range: bool = True):
    """Shapes, labels and the pixel range: the 8-bit pixels 0..255 become [-1, 1], black -1 and white +1 (exactly,
    where the stored images hold both; COIL-100, downscaled 128 -> 32 with antialiasing, only nearly)."""
    for t in (d.train, d.test):
        assert t.dtype == torch.float32 and t.dim() == 4
        assert tuple(t.shape[1:]) == (channels, size, size)
        assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
        assert bool(torch.isfinite(t).all())
    everything = torch.cat([d.train.flatten(), d.test.flatten()])
    lo, hi = float(everything.min()), float(everything.max())
    if exact_range:
        assert (lo, hi) == (-1.0, 1.0)
    else:
        assert lo < -0.9 and hi > 0.5, (lo, hi)  # black backgrounds, bright objects; not [0, 1], not squeezed
    assert d.test_labels.dtype == torch.int64 and set(d.test_labels.unique().tolist()) == {0, 1}
    assert len(d.test_groups) == len(d.test_labels)
    assert all((g == "normal") == (y == 0) for g, y in zip(d.test_groups, d.test_labels.tolist(), strict=True))
    assert isinstance(d.source, str) and d.source


# ------------------------------------------------------------------------------------------------------------ MNIST
def test_mnist_counts_shape_and_source():
    _need(MNIST_DIR, "MNIST")
    d = load_benchmark("mnist", 0, data_root=str(ASSETS), download=False)
    assert d.counts() == {"train": 5923, "test_normal": 980, "test_anomalous": 9020}
    _check_tensors(d, 1, 32)
    assert str(MNIST_DIR.resolve()) in d.source and "data_root" in d.source
    assert float(d.train.min()) == -1.0 and float(d.train.max()) == 1.0
    assert sorted(set(d.test_groups) - {"normal"}) == [str(i) for i in range(1, 10)]


def test_mnist_resize_28_to_32_matches_the_idx_pixels():
    _need(MNIST_DIR, "MNIST")
    native = load_benchmark("mnist", 3, data_root=str(MNIST_DIR), download=False, image_size=28)
    resized = load_benchmark("mnist", 3, data_root=str(MNIST_DIR), download=False)
    assert tuple(native.train.shape[1:]) == (1, 28, 28) and tuple(resized.train.shape[1:]) == (1, 32, 32)
    with gzip.open(MNIST_DIR / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(MNIST_DIR / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    first3 = raw[np.flatnonzero(labels == 3)[:5]]
    got = ((native.train[:5, 0] + 1) * 127.5).round().numpy().astype(np.uint8)
    np.testing.assert_array_equal(got, first3)  # 28x28: exact, class 3, source order
    up = torch.nn.functional.interpolate(native.train[:5], size=(32, 32), mode="bilinear", align_corners=False)
    assert float((up - resized.train[:5]).abs().mean()) < 0.05  # the 32x32 images are the same digits
    assert resized.counts() == native.counts()


def _read_idx_gz(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


@pytest.mark.parametrize("benchmark", ["mnist", "fashion_mnist"])
def test_mnist_pixels_are_the_authors_pil_resize(benchmark):
    """The authors' recipe: torchvision's `transforms.Resize(32)` on `PIL.Image.fromarray(uint8 28x28)`."""
    from PIL import Image
    from torchvision import transforms

    if benchmark == "mnist":
        _need(MNIST_DIR, "MNIST")
        folder, root = MNIST_DIR, str(MNIST_DIR)
    else:
        _need_fashion()
        folder, root = FASHION_DIR, None
    d = load_benchmark(benchmark, 3, data_root=root, download=False)
    raw = np.concatenate(
        [_read_idx_gz(folder / f"{part}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28) for part in ("train", "t10k")]
    )  # the pool's order: train, then test
    resize = transforms.Resize(32)
    for images, index in ((d.train, d.info["train_index"]), (d.test, d.info["test_index"])):
        want = np.stack([np.asarray(resize(Image.fromarray(raw[i]))) for i in index.numpy()])
        got = ((images[:, 0] + 1) * 127.5).round().numpy().astype(np.uint8)
        np.testing.assert_array_equal(got, want)  # 0 grey levels apart


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_from_debian_package():
    _need_fashion()
    d = load_benchmark("fashion_mnist", 0, download=False)
    assert "dataset-fashion-mnist" in d.source
    assert d.counts() == {"train": 5600, "test_normal": 1400, "test_anomalous": 1400}
    _check_tensors(d, 1, 32)
    assert "T-shirt/top" not in d.test_groups and len(set(d.test_groups)) == 10  # normal + the 9 other classes


def test_fashion_mnist_split_disjoint_covering_and_seeded():
    _need_fashion()
    from piad.data import mnist

    a = load_benchmark("fashion_mnist", 2, download=False, split_seed=0)
    labels = mnist._pool("fashion_mnist", None, False, 32, 1)[0]["labels"].numpy()
    train_i, test_i = a.info["train_index"].numpy(), a.info["test_index"].numpy()
    normal_i = test_i[a.test_labels.numpy() == 0]
    anom_i = test_i[a.test_labels.numpy() == 1]
    assert len(np.intersect1d(train_i, normal_i)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_i, normal_i])), np.flatnonzero(labels == 2))
    assert len(np.unique(anom_i)) == len(anom_i) and not np.any(labels[anom_i] == 2)
    # anomalies come only from the other classes' 20% parts (= their test normals under the same seed)
    other = load_benchmark("fashion_mnist", 5, download=False, split_seed=0)
    other_normals = other.info["test_index"].numpy()[other.test_labels.numpy() == 0]
    assert np.all(np.isin(anom_i[labels[anom_i] == 5], other_normals))
    assert len(np.intersect1d(anom_i, other.info["train_index"].numpy())) == 0
    again = load_benchmark("fashion_mnist", 2, download=False, split_seed=0)
    assert torch.equal(again.train, a.train) and torch.equal(again.test, a.test)
    b = load_benchmark("fashion_mnist", 2, download=False, split_seed=1)
    assert b.counts() == a.counts() and not np.array_equal(b.info["train_index"].numpy(), train_i)


# --------------------------------------------------------------------------------------------------------- CIFAR-10
@pytest.fixture(scope="module")
def cifar():
    _need(CIFAR_ARCHIVE, "CIFAR-10 (JPEG copy)")
    return load_benchmark("cifar10", 0, data_root=str(ASSETS), download=False)  # decoded once, then cached


def test_cifar10_counts_shape_and_source(cifar):
    assert cifar.counts() == {"train": 5000, "test_normal": 1000, "test_anomalous": 9000}
    _check_tensors(cifar, 3, 32)
    assert "cifar10-jpeg.tar.gz" in cifar.source and "extracted" in cifar.source
    assert cifar.class_name == "airplane"
    assert sorted(set(cifar.test_groups)) == sorted(
        ["normal", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    )


def test_cifar10_other_class_and_archive_as_root_hit_the_cache(cifar):
    from PIL import Image

    d = load_benchmark("cifar10", 9, data_root=str(CIFAR_ARCHIVE), download=False)
    assert d.counts() == {"train": 5000, "test_normal": 1000, "test_anomalous": 9000} and d.class_name == "truck"
    same = load_benchmark("cifar10", 0, data_root=str(CIFAR_ARCHIVE), download=False)
    assert torch.equal(same.train, cifar.train)
    # pixel values are the JPEG files' own (class folder order, file order)
    folder = Path(d.source.split("image-folder tree ")[1].split(" extracted")[0])
    first = np.asarray(Image.open(folder / "train" / "truck" / "0000.jpg").convert("RGB"))
    got = ((d.train[0] + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(got, first)


# --------------------------------------------------------------------------------------------------------- COIL-100
@pytest.fixture(scope="module")
def coil():
    _need(COIL_ARCHIVE, "COIL-100")
    return load_benchmark("coil100", 0, data_root=str(ASSETS), download=False, split_seed=0)


def test_coil100_counts_balanced_and_shape(coil):
    n = coil.counts()
    assert n["test_normal"] == n["test_anomalous"] == 14 and n["train"] == 58  # object 79: 72 poses, 80/20
    _check_tensors(coil, 3, 32, exact_range=False)
    assert coil.class_name == "obj79" and "7168 images of 100 objects" in coil.source
    assert 79 not in coil.info["test_objects"][n["test_normal"] :]
    for k in (5, 29):
        d = load_benchmark("coil100", k, data_root=str(COIL_ARCHIVE), download=False)
        assert d.counts()["test_normal"] == d.counts()["test_anomalous"] > 0


def test_coil100_split_disjoint_covering_and_seeded(coil):
    from piad.data import coil100

    objects = coil100._pool(str(ASSETS), 32, 3)[0]["objects"].numpy()
    for seed in (0, 3):
        d = coil if seed == 0 else load_benchmark("coil100", 0, data_root=str(ASSETS), split_seed=seed)
        train_i, test_i = d.info["train_index"].numpy(), d.info["test_index"].numpy()
        normal_i, anom_i = test_i[d.test_labels.numpy() == 0], test_i[d.test_labels.numpy() == 1]
        assert len(np.intersect1d(train_i, normal_i)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train_i, normal_i])), np.flatnonzero(objects == 79))
        assert not np.any(objects[anom_i] == 79) and len(np.unique(anom_i)) == len(anom_i)
    again = load_benchmark("coil100", 0, data_root=str(ASSETS), split_seed=0)
    assert torch.equal(again.train, coil.train) and torch.equal(again.test, coil.test)
    other = load_benchmark("coil100", 0, data_root=str(ASSETS), split_seed=3)
    assert not np.array_equal(other.info["train_index"].numpy(), coil.info["train_index"].numpy())


def test_coil100_pixels_are_the_authors_skimage_rescale(coil, tmp_path):
    """The authors' recipe on the real PNG files: `skimage.io.imread`, `skimage.transform.rescale(img, (0.25, 0.25,
    1))`, `(img * 255).astype(np.uint8)`. Object 1 of the offline copy is already 32x32: kept as it is."""
    import tarfile

    import skimage.io
    import skimage.transform

    from piad.data import coil100

    pool = coil100._pool(str(ASSETS), 32, 3)[0]
    objects, angles = pool["objects"].numpy(), pool["angles"].numpy()
    rng = np.random.default_rng(0)
    picked = {(1, int(angles[objects == 1][0]))} | {
        (int(objects[i]), int(angles[i])) for i in rng.choice(len(objects), 40, replace=False)
    }
    names = {f"obj{o}__{a}.png": (o, a) for o, a in picked}
    with tarfile.open(COIL_ARCHIVE, "r:gz") as tf:  # the archive itself, not piad's extraction
        for m in tf:
            if m.isfile() and Path(m.name).name in names:
                (tmp_path / Path(m.name).name).write_bytes(tf.extractfile(m).read())
    diffs = []
    for name, (o, a) in sorted(names.items()):
        img = skimage.io.imread(tmp_path / name)
        if o == 1:
            assert img.shape == (32, 32, 3)
            want = img
        else:
            assert img.shape == (128, 128, 3) and img.dtype == np.uint8
            want = (skimage.transform.rescale(img, (0.25, 0.25, 1)) * 255).astype(np.uint8)
        (i,) = np.flatnonzero((objects == o) & (angles == a))
        got = pool["images"][i].permute(1, 2, 0).numpy()
        diffs.append(got.astype(int) - want.astype(int))
    diffs = np.stack(diffs)
    assert len(diffs) > 30
    # equal, or (if bit-equality is out of reach across library versions) 1 grey level on under 0.5% of values
    assert int(np.abs(diffs).max()) <= 1 and float((diffs != 0).mean()) < 0.005
    # the float tensors handed to training are the same pixels
    got = ((coil.train + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(got, pool["images"][coil.info["train_index"]])


def test_coil100_object_1_downsized_copy_is_handled(coil):
    from piad.data import coil100

    pool = coil100._pool(str(ASSETS), 32, 3)[0]
    assert int((pool["objects"] == 1).sum()) == 70 and pool["images"].shape[1:] == (3, 32, 32)


# --------------------------------------------------------------------------------------------------------- describe
def test_describe_lists_source_and_counts():
    _need(MNIST_DIR, "MNIST")
    text = describe("mnist", 0, data_root=str(ASSETS), download=False)
    assert str(MNIST_DIR.resolve()) in text and "5923" in text and "980" in text and "9020" in text
    text = describe("digits")
    assert text.count("\n") > 10 and "total" in text  # all 10 classes
    with pytest.raises(DataError, match="unknown"):
        describe("nope")
