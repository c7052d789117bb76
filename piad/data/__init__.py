"""Data layer: benchmark sources and one-class protocols (book: Experiments > Datasets and
protocol; Method > Anomaly score and evaluation, spec-protocol). No models are imported here.

Every protocol is a function registered with :func:`register` that returns a :class:`OneClassData`: the whole
preprocessed split as float tensors in [-1, 1] (built once, then sampled by index, no per-iteration decoding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from piad.errors import DataError


@dataclass
class OneClassData:
    """A one-class split. `test_labels`: 0 = normal, 1 = anomalous.

    `test_groups` optionally names a group per test image ("normal" for normals, e.g. the anomaly class or CelebA
    attribute otherwise); evaluation then also reports one ROC AUC per anomaly group against all normals.
    """

    benchmark: str
    normal_class: int
    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    source: str
    test_groups: list[str] | None = None
    class_name: str | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("train", "test"):
            t = getattr(self, name)
            if t.dim() != 4 or t.dtype != torch.float32:
                raise DataError(
                    f"{self.benchmark}: {name} images must be a float32 tensor (N, C, H, W), "
                    f"got {t.dtype} {tuple(t.shape)}"
                )
            if t.shape[0] == 0:
                raise DataError(f"{self.benchmark}, normal class {self.normal_class}: the {name} split is empty.")
        if self.test_labels.shape != (self.test.shape[0],):
            raise DataError(f"{self.benchmark}: test_labels must have one label per test image")
        if self.test_groups is not None and len(self.test_groups) != self.test.shape[0]:
            raise DataError(f"{self.benchmark}: test_groups must name one group per test image")

    def counts(self) -> dict[str, int]:
        n_anom = int(self.test_labels.sum())
        return {
            "train": int(self.train.shape[0]),
            "test_normal": int(self.test.shape[0]) - n_anom,
            "test_anomalous": n_anom,
        }


@dataclass
class Protocol:
    name: str
    loader: Callable[..., OneClassData]
    num_classes: int
    description: str


PROTOCOLS: dict[str, Protocol] = {}


def register(name: str, num_classes: int, description: str):
    """Decorator registering `loader(normal_class, *, data_root, split_seed, download, image_size, channels)`."""

    def deco(fn):
        PROTOCOLS[name] = Protocol(name, fn, num_classes, description)
        return fn

    return deco


def check_normal_class(benchmark: str, normal_class: int) -> None:
    n = PROTOCOLS[benchmark].num_classes
    if not isinstance(normal_class, int) or isinstance(normal_class, bool) or not 0 <= normal_class < n:
        raise DataError(
            f"normal_class={normal_class!r} does not exist for benchmark {benchmark!r}: expected an "
            f"integer in 0..{n - 1}."
        )


def check_benchmark_class(benchmark: str, normal_class: int) -> None:
    """Raise DataError unless `benchmark` exists and has class `normal_class` (no data is read)."""
    import_protocols()
    if benchmark not in PROTOCOLS:
        raise DataError(f"benchmark {benchmark!r} is unknown: expected one of {sorted(PROTOCOLS)}.")
    check_normal_class(benchmark, normal_class)


def load_benchmark(
    benchmark: str,
    normal_class: int = 0,
    *,
    data_root: str | None = None,
    split_seed: int = 0,
    download: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
) -> OneClassData:
    """The one-class split of `benchmark` for `normal_class` (seeded by `split_seed`)."""
    import_protocols()
    if benchmark not in PROTOCOLS:
        raise DataError(f"benchmark {benchmark!r} is unknown: expected one of {sorted(PROTOCOLS)}.")
    check_normal_class(benchmark, normal_class)
    return PROTOCOLS[benchmark].loader(
        normal_class,
        data_root=data_root,
        split_seed=split_seed,
        download=downloads_enabled(download),
        image_size=image_size,
        channels=channels,
    )


def num_classes(benchmark: str) -> int:
    """How many normal classes `benchmark`'s protocol has (DataError for an unknown benchmark)."""
    import_protocols()
    if benchmark not in PROTOCOLS:
        raise DataError(f"benchmark {benchmark!r} is unknown: expected one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[benchmark].num_classes


def load_for_config(cfg) -> OneClassData:
    return load_benchmark(
        cfg.benchmark,
        cfg.normal_class,
        data_root=cfg.data_root,
        split_seed=cfg.split_seed,
        download=cfg.download,
        image_size=cfg.image_size,
        channels=cfg.channels,
    )


def import_protocols() -> None:
    """Import every protocol module so that it registers itself."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


# the data layer's public API for the other layers (re-exported; the modules behind it are private)
from piad.data._describe import describe  # noqa: E402,F401
from piad.data._files import expand_paths, read_image_files  # noqa: E402,F401
from piad.data._io import IMAGE_EXTENSIONS, open_image, to_mode  # noqa: E402,F401
from piad.data._sources import downloads_enabled  # noqa: E402,F401
