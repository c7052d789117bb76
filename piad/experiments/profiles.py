"""The profiles of `piad reproduce`: which benchmarks, classes, runs, iterations, weights and notebook parameters.

smoke    digits (scikit-learn, always available), random VGG, 10 iterations: 15-20 s per run, for CI.
offline  MNIST, Fashion-MNIST, CIFAR-10 (JPEG copy), COIL-100 from the offline assets, the substitute VGG-19 to
         relu3_1 with feature statistics computed on CIFAR-10 training images, few iterations (CPU). NOT the paper's
         setting: every page that shows these numbers says so. A dataset missing from the assets is read from
         $PIAD_DATA or downloaded by torchvision (then CIFAR-10 is the original, lossless one; provenance.json
         records the source and sha256 of each input). The substitute VGG-19 is not downloadable: see
         piad.experiments.inputs.
paper    the paper's configs: ImageNet VGG-19, relu4_2, the authors' statistics, full iterations, 3 runs, all classes,
         plus the CIFAR-10 ablation. Meant for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piad.paths import assets_dir, repo_root

PROFILES = ("smoke", "offline", "paper")
ABLATION_VARIANTS = ("l2", "perceptual_l2", "perceptual_l1", "l2_manual")  # relative_perceptual_l1 = the main run


@dataclass
class Experiment:
    """One row group of the paper's tables: a benchmark (or an ablation variant of one), its classes and runs."""

    name: str
    benchmark: str
    classes: list[int]
    runs: list[int]
    ablation: str | None = None
    extra_runs: dict[int, list[int]] = field(default_factory=dict)  # class -> more runs (seeds) of that class

    def runs_for(self, normal_class: int) -> list[int]:
        """The runs of one class: the experiment's runs, then the class's extra seeds."""
        return list(self.runs) + [r for r in self.extra_runs.get(normal_class, []) if r not in self.runs]


@dataclass
class Profile:
    """A named grid of experiments and the notebook parameters that its runs share."""

    name: str
    description: str
    benchmarks: dict[str, list[int] | None]  # benchmark -> classes (None: all)
    runs: list[int]
    iterations: None | int | dict[str, int]  # None: the paper's; an int for all; or per benchmark
    params: dict[str, Any]  # notebook parameters shared by every run
    overrides: dict[str, Any] = field(default_factory=dict)
    data_roots: dict[str, str | None] = field(default_factory=dict)
    ablation: tuple[str, list[int] | None, list[int]] | None = None  # (benchmark, classes, runs)
    perceptual_metric: dict[str, Any] = field(default_factory=dict)
    weight_policy_runs: dict[str, str] = field(default_factory=dict)
    feature_stats_recipes: list[dict] = field(default_factory=list)  # compute these statistics files if missing
    feature_stats_by_benchmark: dict[str, str] = field(default_factory=dict)  # a benchmark's own statistics file
    threads: int = 0  # torch threads per run (0: torch's default); 1 is far faster on a shared, busy CPU
    channels_last: tuple[str, ...] = ()  # benchmarks trained in the NHWC memory layout (notebook parameter)
    extra_runs: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # benchmark -> class -> more runs
    bf16: tuple[str, ...] = ()  # benchmarks trained with bf16 autocast (notebook parameter)

    def feature_stats_for(self, benchmark: str):
        """The statistics file a benchmark's runs use: its own if it has one, else the profile's."""
        return self.feature_stats_by_benchmark.get(benchmark, self.params.get("feature_stats"))

    def iterations_for(self, benchmark: str) -> int | None:
        """The profile's training iterations for a benchmark (None: the paper's, from the benchmark's config)."""
        if isinstance(self.iterations, dict):
            return self.iterations.get(benchmark)
        return self.iterations

    def experiments(self) -> list[Experiment]:
        out = [
            Experiment(b, b, _classes(b, c), list(self.runs), extra_runs=dict(self.extra_runs.get(b, {})))
            for b, c in self.benchmarks.items()
        ]
        if self.ablation:
            b, c, r = self.ablation
            out += [Experiment(f"{b}-ablation-{v}", b, _classes(b, c), list(r), v) for v in ABLATION_VARIANTS]
        return out

    def ablation_rows(self) -> dict[str, str]:
        """Ablation table rows: variant -> experiment folder (the full method is the benchmark's main experiment)."""
        if not self.ablation:
            return {}
        b = self.ablation[0]
        rows = {v: f"{b}-ablation-{v}" for v in ABLATION_VARIANTS if v != "l2_manual"}
        rows["relative_perceptual_l1"] = b
        rows["l2_manual"] = f"{b}-ablation-l2_manual"
        return {k: rows[k] for k in ("l2", "perceptual_l2", "perceptual_l1", "relative_perceptual_l1", "l2_manual")}

    def ablation_grid(self) -> Experiment | None:
        if not self.ablation:
            return None
        b, c, r = self.ablation
        return Experiment(f"{b}-ablation", b, _classes(b, c), list(r))


def _classes(benchmark: str, classes: list[int] | None) -> list[int]:
    if classes is not None:
        return list(classes)
    from piad.data import num_classes

    return list(range(num_classes(benchmark)))


def class_names(benchmark: str) -> dict[int, str]:
    """Human names of a benchmark's normal classes (for tables)."""
    try:
        if benchmark == "mnist":
            from piad.data.mnist import MNIST_CLASSES as names
        elif benchmark == "fashion_mnist":
            from piad.data.mnist import FASHION_CLASSES as names
        elif benchmark == "cifar10":
            from piad.data.cifar10 import CLASSES as names
        elif benchmark == "coil100":
            from piad.data.coil100 import NORMAL_OBJECTS

            names = [f"object {o}" for o in NORMAL_OBJECTS]
        else:
            return {}
    except ImportError:
        return {}
    return dict(enumerate(names))


def offline_stats_path() -> Path:
    return repo_root() / "results" / "offline" / "feature_stats" / "cifar10_train_vgg19caffe_relu3_1.pt"


def natural_stats_path() -> Path:
    """Statistics of scikit-image's photographs (piad.data.natural): outside every benchmark."""
    return repo_root() / "results" / "offline" / "feature_stats" / "natural_crops_vgg19caffe_relu3_1.pt"


def recipe_command(recipe: dict, shown=str) -> str:
    """The `piad feature-stats` command that computes a profile's statistics recipe (`shown` formats paths)."""
    if recipe.get("source") == "natural":
        head = f"piad feature-stats --natural-crops {recipe['n_images']}"
    else:
        head = f"piad feature-stats --benchmark {recipe['benchmark']}"
        if recipe.get("data_root"):
            head += f" --data-root {shown(recipe['data_root'])}"
    out = f" --layer {recipe['layer']} --output {shown(recipe['output'])}"
    return f"{head} --vgg-weights {shown(recipe['vgg_weights'])}{out}"


# A benchmark's feature statistics never come from its own images (its anomalous classes would shape the normal
# model's distance): CIFAR-10 uses natural-image crops; MNIST, Fashion-MNIST and COIL-100 the CIFAR-10 file.
NATURAL_CROPS = 5000


# The offline (CPU) profile's budget per benchmark, read off measured learning curves (book: Experiments > Learning
# curves): MNIST still gains up to 1,500 iterations; Fashion-MNIST (class 0, run to 3,000) is flat from 1,000 on;
# CIFAR-10 (class 0, run to 3,000) has no climb that flattens, at most a slow rise under snapshot-to-snapshot noise
# as large as what tripling the budget could gain, so it gets Fashion-MNIST's 1,000. COIL-100 (object class 0, run
# to 3,000) is at 0.99-1.00 from the first snapshot (250) on, so it gets 1,000, the least the grid uses anywhere.
# Every checkpoint (every 250 iterations) leaves a weight snapshot, so each run's learning curve can be scored.
OFFLINE_ITERATIONS = {"mnist": 1500, "fashion_mnist": 1000, "cifar10": 1000, "coil100": 1000}

# Runs 1 and 2 (seeds 1000c+1, 1000c+2) of three MNIST classes, so the book can state a measured run-to-run spread;
# the main tables keep run 0 of every class, the seed table reads these.
OFFLINE_SEEDS = {2: [1, 2], 3: [1, 2], 8: [1, 2]}

# NHWC memory layout for the CIFAR-10-size networks: 1.17x faster on this CPU, ROC AUCs unchanged within
# run-to-run noise in a paired check (book: Performance, benchmarks/layout_auc.py). The MNIST-size networks gain
# nothing (0.98x); COIL-100's were not measured.
OFFLINE_CHANNELS_LAST = ("cifar10",)

# The smoke profile's tiny networks (16x16 images): 15-20 s per run on two CPU cores, mostly kernel start-up.
SMOKE_NETWORK = {
    "image_size": 16,
    "latent_dim": 8,
    "g_widths": [8, 8, 8],
    "e_widths": [8, 8, 8],
    "dx_widths": [8, 8, 8],
    "dz_hidden": [16, 16],
    "batch_size": 8,
}


def get_profile(name: str) -> Profile:
    if name == "smoke":
        return Profile(
            name="smoke",
            description=(
                "CI smoke test: scikit-learn's 8x8 digits at 16x16, tiny networks (widths 8, batch 8), "
                "VGG-19 with random weights (layer relu2_1, no feature statistics), 10 training iterations "
                "per run. The numbers only show that the pipeline runs; they say nothing about the method."
            ),
            benchmarks={"digits": [0, 1]},
            runs=[0, 1],
            iterations=10,
            threads=1,
            params={"vgg_weights": "random", "layer": "relu2_1", "feature_stats": "none"},
            overrides={**SMOKE_NETWORK, "policy_every": 2, "log_every": 1, "checkpoint_every": 5, "sample_every": 10},
            ablation=("digits", [0], [0]),
            perceptual_metric={
                "benchmark": "digits",
                "n_images": 100,
                "vgg_weights": "random",
                "layer": "relu2_1",
                "feature_stats": "none",
                "n_examples": 2,
                "threads": 1,
            },
            weight_policy_runs={
                "relative-perceptual-L1, gradient-normalising policy": "digits/0/0",
                "L2, gradient-normalising policy": "digits-ablation-l2/0/0",
                "L2, manual weights": "digits-ablation-l2_manual/0/0",
            },
        )
    if name == "offline":
        a = assets_dir()
        vgg = str(a / "vgg19_caffe_normalised_to_relu3_1.pth")
        stats = str(offline_stats_path())

        def local(name: str) -> str | None:  # a local copy if there is one, else $PIAD_DATA or a download
            return str(a / name) if (a / name).exists() else None

        cifar = local("cifar10-jpeg.tar.gz")  # lossy JPEG copy; a download gives the real CIFAR-10
        return Profile(
            name="offline",
            description=(
                "offline CPU substitute of the paper's grid: MNIST, COIL-100, Fashion-MNIST and CIFAR-10 "
                "(lossy JPEG copy) from local copies (else $PIAD_DATA or torchvision downloads), the "
                "substitute Caffe VGG-19 up to relu3_1 with feature statistics computed on CIFAR-10 "
                "training images, a CPU budget of training iterations per benchmark chosen from measured "
                "learning curves, one run per class. NOT comparable to the paper."
            ),
            benchmarks={"mnist": None, "coil100": None, "fashion_mnist": None, "cifar10": None},
            runs=[0],
            iterations=dict(OFFLINE_ITERATIONS),
            threads=1,
            channels_last=OFFLINE_CHANNELS_LAST,
            extra_runs={"mnist": dict(OFFLINE_SEEDS)},
            params={"vgg_weights": vgg, "layer": "relu3_1", "feature_stats": stats},
            overrides={"policy_every": 10, "log_every": 10, "checkpoint_every": 250, "sample_every": 500},
            data_roots={
                "mnist": local("mnist"),
                "fashion_mnist": None,
                "cifar10": cifar,
                "coil100": local("coil-100.tar.gz"),
            },
            ablation=("cifar10", [0, 1, 2, 3], [0]),  # four classes: the ablation costs 4 CIFAR-10 runs each
            perceptual_metric={
                "benchmark": "cifar10",
                "data_root": cifar,
                "n_images": 1000,
                "vgg_weights": vgg,
                "layer": "relu3_1",
                "feature_stats": stats,
                "n_examples": 3,
                "threads": 1,
            },
            weight_policy_runs={
                "relative-perceptual-L1, gradient-normalising policy (MNIST, class 0)": "mnist/0/0",
                "relative-perceptual-L1, gradient-normalising policy (COIL-100, class 0)": "coil100/0/0",
                "L2, gradient-normalising policy (CIFAR-10 ablation, class 0)": "cifar10-ablation-l2/0/0",
                "L2, manual weights (CIFAR-10 ablation, class 0)": "cifar10-ablation-l2_manual/0/0",
            },
            feature_stats_by_benchmark={"cifar10": str(natural_stats_path())},
            feature_stats_recipes=[
                {
                    "source": "natural",
                    "n_images": NATURAL_CROPS,
                    "vgg_weights": vgg,
                    "layer": "relu3_1",
                    "output": str(natural_stats_path()),
                },
                {
                    "benchmark": "cifar10",
                    "data_root": cifar,
                    "vgg_weights": vgg,
                    "layer": "relu3_1",
                    "output": stats,
                },
            ],
        )
    if name == "paper":
        return Profile(
            name="paper",
            description=(
                "the paper's setting: torchvision's ImageNet VGG-19, relu4_2, the authors' ImageNet feature "
                "statistics, the paper's iterations, 3 runs per class, every class, plus the CIFAR-10 "
                "ablation. Needs the datasets (downloads or $PIAD_DATA) and a GPU."
            ),
            benchmarks={
                "mnist": None,
                "fashion_mnist": None,
                "cifar10": None,
                "coil100": None,
                "celeba": None,
                "lsun": None,
            },
            runs=[0, 1, 2],
            iterations=None,
            params={"vgg_weights": "imagenet", "layer": "relu4_2", "feature_stats": "imagenet"},
            ablation=("cifar10", None, [0, 1, 2]),
            perceptual_metric={
                "benchmark": "cifar10",
                "n_images": 1000,
                "vgg_weights": "imagenet",
                "layer": "relu4_2",
                "feature_stats": "imagenet",
                "n_examples": 3,
            },
            weight_policy_runs={
                "relative-perceptual-L1, gradient-normalising policy (CIFAR-10, class 0)": "cifar10/0/0",
                "L2, gradient-normalising policy (CIFAR-10, class 0)": "cifar10-ablation-l2/0/0",
                "L2, manual weights (CIFAR-10, class 0)": "cifar10-ablation-l2_manual/0/0",
            },
        )
    raise ValueError(f"profile {name!r} is unknown: expected one of {PROFILES}")
