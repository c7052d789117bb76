"""Shared helpers of the benchmark scripts: environment report, offline configs and data, timers."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

ASSETS = Path(os.environ.get("PIAD_ASSETS") or REPO.parent / "shared" / "assets")
SUBSTITUTE_VGG = ASSETS / "vgg19_caffe_normalised_to_relu3_1.pth"
IMAGENET_STATS = ASSETS / "vgg19_imagenet_feature_stats.pt"
BENCHMARKS = ("mnist", "fashion_mnist", "cifar10", "coil100", "celeba", "lsun", "synthetic")


def setup_device(device: str, threads=None) -> torch.device:
    """Thread count, the resolved device, and cuDNN autotuning on CUDA (fixed shapes), shared by both scripts."""
    from piad.run.training import resolve_device

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return dev


def cpu_name() -> str:
    from piad.experiments.provenance import processor_name  # the name provenance.json records for a run

    return processor_name() or platform.machine()


def environment(device: torch.device) -> list[str]:
    """Lines describing the hardware and software a measurement was made on."""
    lines = [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"host: {platform.node()}  python {platform.python_version()}  {platform.platform()}",
        f"cpu: {cpu_name()}  ({os.cpu_count()} logical cores visible)",
        f"torch {torch.__version__}  threads={torch.get_num_threads()}  interop={torch.get_num_interop_threads()}"
        f"  mkldnn={torch.backends.mkldnn.is_available()}",
        f"device: {device}",
    ]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(
            f"gpu: {p.name}  {p.total_memory / 2**30:.0f} GiB  cuda {torch.version.cuda}  "
            f"cudnn {torch.backends.cudnn.version()}"
        )
    try:
        lines.append(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    except OSError:
        pass
    return lines


def print_environment(device: torch.device, command: str) -> None:
    print(f"command: {command}")
    for line in environment(device):
        print(line)
    sys.stdout.flush()


VGG_CHOICES = ("paper", "substitute", "imagenet")


def perceptual_overrides(vgg: str = "paper") -> dict:
    """The perceptual network of a speed measurement.

    paper: the paper's compute, VGG-19 to relu4_2 with seeded random weights (the ImageNet weights cannot be
    downloaded here; a convolution costs the same whatever its weights), saved to one file so that all variants
    and ensemble members share it, and the authors' statistics if present.
    substitute: the offline substitute VGG-19 weights from ../shared/assets, which only reach relu3_1.
    imagenet: torchvision's ImageNet weights and the authors' statistics (downloads; what real users run).
    """
    stats = str(IMAGENET_STATS) if IMAGENET_STATS.exists() else None
    if vgg == "paper":
        return {"layer": "relu4_2", "vgg_weights": str(random_vgg_file("relu4_2")), "feature_stats": stats}
    if vgg == "substitute":
        return {
            "layer": "relu3_1",
            "vgg_weights": str(SUBSTITUTE_VGG) if SUBSTITUTE_VGG.exists() else "random",
            "feature_stats": stats,
        }
    if vgg == "imagenet":
        return {"layer": "relu4_2", "vgg_weights": "imagenet", "feature_stats": "imagenet"}
    raise ValueError(f"--vgg {vgg!r}: expected one of {VGG_CHOICES}")


def random_vgg_file(layer: str, seed: int = 0) -> Path:
    """A seeded random VGG-19 state dict up to `layer`, saved once to the temp folder: one file, so that every
    variant and every ensemble member shares the same VGG (as with the ImageNet weights)."""
    import tempfile

    from piad.run.resources import resolve_vgg_state_dict

    path = Path(tempfile.gettempdir()) / f"piad_bench_vgg19_random_{layer}_seed{seed}.pth"
    if not path.exists():
        sd, _ = resolve_vgg_state_dict("random", layer, seed)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(sd, tmp)
        os.replace(tmp, path)
    return path


def bench_config(benchmark: str, overrides: dict | None = None, vgg: str = "paper"):
    """The paper's config of `benchmark` (architecture, batch 32) with the perceptual network `vgg`."""
    from piad.run.config import make_config

    return make_config(benchmark, {**perceptual_overrides(vgg), **(overrides or {})})


def bench_data(cfg, source: str = "digits", normal_class: int = 0):
    """Offline training images shaped like the benchmark's: digits (upsampled) or the synthetic blobs."""
    from piad.data import load_benchmark

    if source == "digits":
        return load_benchmark("digits", normal_class % 10, image_size=cfg.image_size, channels=cfg.channels)
    return load_benchmark("synthetic", 0, split_seed=normal_class, image_size=cfg.image_size, channels=cfg.channels)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


class Clock:
    """Accumulates wall time per section name, synchronising the device at the section ends."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device, self.enabled = device, enabled
        self.acc: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            if not self.enabled:
                return fn(*a, **k)
            sync(self.device)
            t = time.perf_counter()
            out = fn(*a, **k)
            sync(self.device)
            self.acc[name] = self.acc.get(name, 0.0) + time.perf_counter() - t
            return out

        return timed

    def pop(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


def fmt_s(x: float) -> str:
    return f"{x:.4g}"
