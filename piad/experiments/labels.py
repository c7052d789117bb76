"""Names and honesty labels: titles of benchmarks and ablation variants, the paper's numbers (none transcribed), and
how a run's setting deviates from the paper's, in words for every page that shows its numbers.

Paper numbers are not transcribed in this project (the paper's tables could not be read, see the book's
introduction), so every "paper" cell says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from piad.experiments.runs import reads_statistics

if TYPE_CHECKING:
    from piad.experiments.runs import RunRecord

NOT_TRANSCRIBED = "not transcribed"

# The paper's numbers, keyed by (benchmark, normal_class or None for the benchmark mean). Empty on purpose: the
# paper's result tables could not be read while building this project (book: Introduction). Fill only from the paper
# itself, citing table and page, never from memory.
PAPER_ROC_AUC: dict[tuple[str, int | None], float] = {}
PAPER_SOURCE = (
    "Tuluptceva et al., ACPR 2019 (arXiv 1909.05904); its result tables were not transcribed in this "
    'project, so every paper cell reads "not transcribed".'
)

BENCHMARK_TITLES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "coil100": "COIL-100",
    "celeba": "CelebA",
    "lsun": "LSUN",
    "digits": "digits (scikit-learn 8x8)",
    "synthetic": "synthetic",
    "folder": "folder",
}
ABLATION_TITLES = {
    "l2": "L2",
    "perceptual_l2": "perceptual L2",
    "perceptual_l1": "perceptual L1",
    "relative_perceptual_l1": "relative-perceptual-L1 (PIAD)",
    "l2_manual": "L2, manual weights (lambda_E = 10, lambda_G = 100)",
}

_SHORT_ABLATION_TITLES = {"l2_manual": "L2, manual weights", "relative_perceptual_l1": "relative-perceptual-L1"}


def experiment_title(benchmark: str, ablation: str | None = None) -> str:
    """An experiment's title: its benchmark's ("CIFAR-10"), or for an ablation variant the benchmark's with the
    variant's short name ("CIFAR-10 ablation (L2, manual weights)")."""
    title = BENCHMARK_TITLES.get(benchmark, benchmark)
    if ablation is None:
        return title
    return f"{title} ablation ({_SHORT_ABLATION_TITLES.get(ablation, ABLATION_TITLES.get(ablation, ablation))})"


STAND_INS = ("digits", "synthetic", "folder")  # not benchmarks of the paper: no paper number exists


def paper_cell(benchmark: str, normal_class: int | None) -> str:
    if benchmark in STAND_INS:
        return "– (not in the paper)"
    v = PAPER_ROC_AUC.get((benchmark, normal_class))
    return f"{v:.3f}" if v is not None else NOT_TRANSCRIBED


# -- honesty labels -------------------------------------------------------------------------------------------------
PAPER_SETTINGS = {"vgg_weights": "imagenet", "layer": "relu4_2", "feature_stats": "imagenet"}


def deviations(config: dict, metrics: dict | None = None, paper_iterations: int | None = None) -> list[str]:
    """How a run differs from the paper's setting, in words (empty list: the paper's setting)."""
    out = []
    vw = str(config.get("vgg_weights", ""))
    if vw == "random":
        out.append("VGG-19 with **random** weights (not ImageNet-trained): an illustration only")
    elif vw != "imagenet":
        sub = "substitute Caffe VGG-19 (Gatys-normalised, up to relu3_1)" if "caffe" in vw.lower() else f"file {vw}"
        out.append(f"perceptual network: {sub}, not torchvision's ImageNet VGG-19")
    if config.get("distance", "relative_perceptual_l1") != "l2" and config.get("layer") not in (None, "relu4_2"):
        out.append(f"feature layer {config.get('layer')} instead of relu4_2")
    fs = config.get("feature_stats")
    if reads_statistics(config) and fs != "imagenet":
        if fs in (None, "none"):
            out.append("no feature statistics (features not normalised)")
        else:
            out.append(f"feature statistics from {Path(str(fs)).name} (not the authors' ImageNet statistics)")
            if leaky_statistics(config):
                out.append(
                    "feature statistics computed on every class of the benchmark's own training split, the "
                    "anomalous classes included (a one-class leak; see Datasets, leak-free statistics)"
                )
    src = str((metrics or {}).get("data_source", ""))
    if "jpeg" in src.lower() or "jpg" in src.lower():
        out.append("CIFAR-10 from a lossy JPEG copy (quality 75), not the original images")
    coil = re.search(r"COIL-100, (\d+) images", src)
    if coil and int(coil.group(1)) != 7200:
        out.append(f"an incomplete COIL-100 copy ({int(coil.group(1)):,} of the 7,200 images)")
    if config.get("benchmark") in ("digits", "synthetic"):
        out.append(f"benchmark {config.get('benchmark')!r} is a stand-in, not one of the paper's benchmarks")
    if paper_iterations and config.get("iterations") and int(config["iterations"]) < paper_iterations:
        title = BENCHMARK_TITLES.get(config.get("benchmark", ""), config.get("benchmark", ""))
        out.append(
            f"{title}: {int(config['iterations']):,} training iterations instead of the paper's {paper_iterations:,}"
        )
    if config.get("policy_every") not in (None, 100) and config.get("weight_policy") == "gradient_normalizing":
        out.append(f"weight policy updated every {config['policy_every']} iterations instead of 100")
    return out


def leaky_statistics(config: dict) -> bool:
    """The run's feature statistics were computed on its own benchmark's training split (all classes)."""
    name = Path(str(config.get("feature_stats") or "")).name
    bench = str(config.get("benchmark", ""))
    return reads_statistics(config) and bool(bench) and name.startswith(f"{bench}_train_")


def paper_iterations(benchmark: str) -> int | None:
    from piad.run.config import BENCHMARK_CONFIGS

    if benchmark in ("digits", "synthetic", "folder") or benchmark not in BENCHMARK_CONFIGS:
        return None
    return BENCHMARK_CONFIGS[benchmark]().iterations


def deviation_note(records: Iterable[RunRecord]) -> str:
    """A Markdown admonition listing every deviation from the paper found in `records` (or saying there are none)."""
    found: list[str] = []
    for r in records:
        for d in deviations(r.config, r.metrics, paper_iterations(r.config.get("benchmark", ""))):
            if d not in found:
                found.append(d)
    if not found:
        return ""
    items = "\n".join(f"- {d}" for d in found)
    return (
        f":::{{warning}}\nThese numbers are **not comparable to the paper**. They were produced with:\n\n{items}\n:::\n"
    )
