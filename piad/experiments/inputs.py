"""What a profile's runs need before they start, and how to get what is missing.

`piad reproduce` (also with --dry-run) calls `check_inputs` first and stops with exit code 2, before any training,
when an input is missing: a dataset, the perceptual network's weights or the feature statistics. Each line names
the input and every way to obtain it. Downloads (torchvision datasets, torchvision's VGG-19, the authors' statistics)
count as available unless `$PIAD_DOWNLOAD=0` (piad.data.downloads_enabled), since whether the internet is
reachable is only known when trying.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10", "celeba": "CelebA"}
SUBSTITUTE_VGG = "vgg19_caffe_normalised_to_relu3_1.pth"
SUBSTITUTE_VGG_SHA256 = "2129910e64c5cd4da7d434f8fb9be5b4f8b490a42fa7baf7d9e27a3f6ea3402c"


@dataclass
class Input:
    what: str
    ok: bool
    how: str  # where it was found, how it will be obtained, or how to get it

    def line(self) -> str:
        return f"  {'ok     ' if self.ok else 'MISSING'} {self.what}: {self.how}"


def _how(error: Exception) -> str:
    text = str(error)
    return text.split("How to get it: ", 1)[1].strip() if "How to get it: " in text else text.splitlines()[0]


def find_data(benchmark: str, data_root) -> str:
    """Where `benchmark`'s data would be read from, without downloading or reading it; DataError when not found."""
    from piad.data import cifar10, coil100, mnist

    if benchmark in ("mnist", "fashion_mnist"):
        return mnist.resolve(benchmark, data_root, download=False)[1]
    if benchmark == "cifar10":
        return cifar10.resolve(data_root, download=False).describe()
    if benchmark == "coil100":
        return coil100.resolve(data_root).describe()
    if benchmark in ("celeba", "lsun", "folder"):
        import importlib

        mod = importlib.import_module(f"piad.data.{benchmark}")
        found = mod.resolve(data_root, download=False) if benchmark == "celeba" else mod.resolve(data_root)
        return f"folder {found[0]} (from {found[1]})" if isinstance(found, tuple) else found.describe()
    return "built in"


def data_input(benchmark: str, data_root, download: bool) -> Input:
    from piad.errors import DataError

    what = f"{benchmark} data" + (f" (data_root={data_root})" if data_root else "")
    try:
        return Input(what, True, find_data(benchmark, data_root))
    except DataError as e:
        if download and not data_root and benchmark in TORCHVISION_DATASETS:
            return Input(
                what,
                True,
                f"not found locally: torchvision.datasets.{TORCHVISION_DATASETS[benchmark]} "
                "downloads it on first use (needs internet; $PIAD_DOWNLOAD=0 forbids it)",
            )
        off = "downloads are off ($PIAD_DOWNLOAD=0); " if benchmark in TORCHVISION_DATASETS and not download else ""
        return Input(what, False, off + _how(e))


def weights_input(spec: str, download: bool) -> Input | None:
    if spec == "random":
        return None
    if spec == "imagenet":
        import torch
        from torchvision.models import VGG19_Weights

        url = VGG19_Weights.IMAGENET1K_V1.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        what = "VGG-19 weights (torchvision IMAGENET1K_V1)"
        if cached.is_file():
            return Input(what, True, f"cached at {cached}")
        return Input(
            what,
            download,
            f"torchvision downloads {url} on first use (needs internet)"
            if download
            else f"not cached at {cached} and downloads are off: download {url} there (or unset "
            "$PIAD_DOWNLOAD on a machine with internet)",
        )
    p = Path(spec)
    what = f"VGG-19 weights {p.name}"
    if p.is_file():
        return Input(what, True, str(p))
    if p.name == SUBSTITUTE_VGG:
        return Input(
            what,
            False,
            (
                f"no file {p}. This substitute (Caffe VGG-19 up to relu3_1, sha256 {SUBSTITUTE_VGG_SHA256}) "
                "is not published as a download: it was derived from models/vgg_normalised_conv3_1.pth of "
                "github.com/jkbehne/GOTStyleTranfer by folding its input 1x1 convolution into conv1_1 "
                "(book: Reproduce). Copy it into $PIAD_ASSETS (default ../shared/assets). With internet, the nearest "
                "public alternative is "
                "torchvision's ImageNet VGG-19 at the same layer: `piad train ... --set vgg_weights=imagenet "
                "layer=relu3_1 feature_stats=imagenet`, or the paper profile."
            ),
        )
    return Input(
        what,
        False,
        f"no file {p}: pass an existing torchvision vgg19 state dict, 'imagenet' (torchvision download) or 'random'",
    )


def stats_input(spec: str | None, download: bool, recipe: dict | None = None) -> Input | None:
    if spec in (None, "none"):
        return None
    if spec == "imagenet":
        from piad.paths import cache_dir
        from piad.run.resources import IMAGENET_STATS_FILENAME, IMAGENET_STATS_URL

        cached = cache_dir() / IMAGENET_STATS_FILENAME
        what = "feature statistics (the authors' ImageNet statistics)"
        if cached.is_file():
            return Input(what, True, f"cached at {cached}")
        return Input(
            what,
            download,
            f"downloaded from {IMAGENET_STATS_URL} on first use (needs internet)"
            if download
            else f"downloads are off: download {IMAGENET_STATS_URL} to {cached}",
        )
    p = Path(spec)
    what = f"feature statistics {p.name}"
    if p.is_file():
        return Input(what, True, str(p))
    if recipe:
        from piad.experiments.profiles import recipe_command

        command = recipe_command(recipe)
        return Input(what, True, f"computed once before the runs (`{command}`), from the inputs listed here")
    return Input(
        what, False, f"no file {p}: compute it with `piad feature-stats` (see --help), or pass 'imagenet' or 'none'"
    )


def check_inputs(profile, benchmarks: Iterable[str] | None = None, summaries: bool = True) -> list[Input]:
    """Every input that the profile's runs of `benchmarks` (default: all) and its summary notebooks need."""
    from piad.data import downloads_enabled

    download = downloads_enabled()
    wanted = set(benchmarks) if benchmarks is not None else set(profile.benchmarks)
    data = {(b, profile.data_roots.get(b)) for b in wanted}
    pm = profile.perceptual_metric
    if summaries and pm:
        data.add((pm["benchmark"], pm.get("data_root")))
    recipes = {r["output"]: r for r in profile.feature_stats_recipes if not Path(r["output"]).is_file()}
    for r in recipes.values():
        if r.get("benchmark"):
            data.add((r["benchmark"], r.get("data_root")))
    out = [data_input(b, root, download) for b, root in sorted(data, key=lambda t: (t[0], str(t[1])))]
    if wanted or summaries:
        out.append(weights_input(profile.params["vgg_weights"], download))
        for stats in dict.fromkeys(
            [profile.params.get("feature_stats")] + [profile.feature_stats_for(b) for b in sorted(wanted)]
        ):
            if stats is not None:
                out.append(stats_input(stats, download, recipes.get(str(stats))))
    return [i for i in out if i is not None]


def report(inputs: list[Input]) -> str:
    missing = [i for i in inputs if not i.ok]
    head = (
        f"inputs: {len(missing)} of {len(inputs)} missing; get them, then run again"
        if missing
        else f"inputs: all {len(inputs)} available"
    )
    return "\n".join([head, *(i.line() for i in inputs)])
