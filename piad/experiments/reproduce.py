"""`piad reproduce`: run the experiment grid of a profile through the papermill notebooks; `piad book`: build the book.

For every (experiment, normal class, run) of a profile the runner executes `notebooks/train_evaluate.ipynb` with
papermill. Training writes checkpoints into a work folder (`runs/<profile>/...`, git-ignored); the small files that
describe the result are then copied to `results/<profile>/<experiment>/<class>/<run>/`:

    train_evaluate.ipynb (executed)  config.json  metrics.json  provenance.json  log.csv  policy.csv  samples/latest.png

`metrics.json` is copied last, so a result folder with it is complete. Finished runs are skipped; interrupted ones are
resumed (the notebook trains with resume=True from the work folder's checkpoint). After the grid the summary
notebooks (`results.ipynb`, `weight_policy.ipynb`, and once `perceptual_metric.ipynb`) are executed into
`results/<profile>/`.

Profiles:
  smoke    digits (scikit-learn, always available), random VGG, 10 iterations: 15-20 s per run, for CI.
  offline  MNIST, Fashion-MNIST, CIFAR-10 (JPEG copy), COIL-100 from the offline assets, the substitute VGG-19 to
           relu3_1 with feature statistics computed on CIFAR-10 training images, few iterations (CPU). NOT the paper's
           setting: every page that shows these numbers says so. A dataset missing from the assets is read from
           $PIAD_DATA or downloaded by torchvision (then CIFAR-10 is the original, lossless one; provenance.json
           records the source and sha256 of each input). The substitute VGG-19 is not downloadable: see piad.experiments.inputs.

`reproduce` first checks every input of the selected runs (piad.experiments.inputs.check_inputs; also with --dry-run) and stops
with exit code 2, naming how to get each missing one, before anything trains.
  paper    the paper's configs: ImageNet VGG-19, relu4_2, the authors' statistics, full iterations, 3 runs, all classes,
           plus the CIFAR-10 ablation. Meant for a GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

PROFILES = ("smoke", "offline", "paper")
ABLATION_VARIANTS = ("l2", "perceptual_l2", "perceptual_l1", "l2_manual")   # relative_perceptual_l1 = the main run
RESULT_FILES = ("config.json", "log.csv", "policy.csv", "curve.csv", "samples/latest.png")
NOTEBOOK = "train_evaluate.ipynb"
ENSEMBLE_SIZE_GPU = 10             # runs per batched ensemble on a CUDA device (issue #6: K = 10 on one H200)
SUMMARY_NOTEBOOKS = ("perceptual_metric.ipynb", "weight_policy.ipynb", "learning_curves.ipynb", "results.ipynb")
MAX_OUTPUT_BYTES = 1_500_000      # executed notebooks: drop any single output bigger than this


# -- locations (piad.paths; re-exported) -----------------------------------------------------------------------------
from piad.experiments.notebooks import label_prefix  # noqa: E402
from piad.paths import (assets_dir, display_path, repo_root, sanitise_file, sanitise_text,  # noqa: E402,F401
                        sanitise_tree)


# -- profiles --------------------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """One row group of the paper's tables: a benchmark (or an ablation variant of one), its classes and runs."""
    name: str
    benchmark: str
    classes: list[int]
    runs: list[int]
    ablation: Optional[str] = None


@dataclass
class Profile:
    name: str
    description: str
    benchmarks: dict[str, Optional[list[int]]]      # benchmark -> classes (None: all)
    runs: list[int]
    iterations: Union[None, int, dict[str, int]]     # None: the paper's; an int for all; or per benchmark
    params: dict[str, Any]                           # notebook parameters shared by every run
    overrides: dict[str, Any] = field(default_factory=dict)
    data_roots: dict[str, Optional[str]] = field(default_factory=dict)
    ablation: Optional[tuple[str, Optional[list[int]], list[int]]] = None   # (benchmark, classes, runs)
    perceptual_metric: dict[str, Any] = field(default_factory=dict)
    weight_policy_runs: dict[str, str] = field(default_factory=dict)
    feature_stats_recipe: Optional[dict[str, str]] = None   # compute this statistics file if missing
    threads: int = 0        # torch threads per run (0: torch's default); 1 is far faster on a shared, busy CPU

    def iterations_for(self, benchmark: str) -> Optional[int]:
        """The profile's training iterations for a benchmark (None: the paper's, from the benchmark's config)."""
        if isinstance(self.iterations, dict):
            return self.iterations.get(benchmark)
        return self.iterations

    def experiments(self) -> list[Experiment]:
        out = [Experiment(b, b, _classes(b, c), list(self.runs)) for b, c in self.benchmarks.items()]
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

    def ablation_grid(self) -> Optional[Experiment]:
        if not self.ablation:
            return None
        b, c, r = self.ablation
        return Experiment(f"{b}-ablation", b, _classes(b, c), list(r))


def _classes(benchmark: str, classes: Optional[list[int]]) -> list[int]:
    if classes is not None:
        return list(classes)
    from piad.data import PROTOCOLS, import_protocols
    import_protocols()
    return list(range(PROTOCOLS[benchmark].num_classes))


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


# The offline (CPU) profile's budget per benchmark, read off measured learning curves (book: Experiments > Learning
# curves): MNIST still gains up to 1,500 iterations; Fashion-MNIST (class 0, run to 3,000) is flat from 1,000 on.
# CIFAR-10 and COIL-100 have no measured curve yet: 1,000 is provisional. Every checkpoint (every 250 iterations)
# leaves a weight snapshot, so each run's learning curve can be scored.
OFFLINE_ITERATIONS = {"mnist": 1500, "fashion_mnist": 1000, "cifar10": 1000, "coil100": 1000}

# The smoke profile's tiny networks (16x16 images): 15-20 s per run on two CPU cores, mostly kernel start-up.
SMOKE_NETWORK = {"image_size": 16, "latent_dim": 8, "g_widths": [8, 8, 8], "e_widths": [8, 8, 8],
                 "dx_widths": [8, 8, 8], "dz_hidden": [16, 16], "batch_size": 8}


def get_profile(name: str) -> Profile:
    if name == "smoke":
        return Profile(
            name="smoke",
            description=("CI smoke test: scikit-learn's 8x8 digits at 16x16, tiny networks (widths 8, batch 8), "
                         "VGG-19 with random weights (layer relu2_1, no feature statistics), 10 training iterations "
                         "per run. The numbers only show that the pipeline runs; they say nothing about the method."),
            benchmarks={"digits": [0, 1]}, runs=[0, 1], iterations=10, threads=1,
            params={"vgg_weights": "random", "layer": "relu2_1", "feature_stats": "none"},
            overrides={**SMOKE_NETWORK, "policy_every": 2, "log_every": 1, "checkpoint_every": 5,
                       "sample_every": 10},
            ablation=("digits", [0], [0]),
            perceptual_metric={"benchmark": "digits", "n_images": 100, "vgg_weights": "random", "layer": "relu2_1",
                               "feature_stats": "none", "n_examples": 2, "threads": 1},
            weight_policy_runs={"relative-perceptual-L1, gradient-normalising policy": "digits/0/0",
                                "L2, gradient-normalising policy": "digits-ablation-l2/0/0",
                                "L2, manual weights": "digits-ablation-l2_manual/0/0"},
        )
    if name == "offline":
        a = assets_dir()
        vgg = str(a / "vgg19_caffe_normalised_to_relu3_1.pth")
        stats = str(offline_stats_path())

        def local(name: str) -> Optional[str]:   # a local copy if there is one, else $PIAD_DATA or a download
            return str(a / name) if (a / name).exists() else None
        cifar = local("cifar10-jpeg.tar.gz")      # lossy JPEG copy; a download gives the real CIFAR-10
        return Profile(
            name="offline",
            description=("offline CPU substitute of the paper's grid: MNIST, COIL-100, Fashion-MNIST and CIFAR-10 "
                         "(lossy JPEG copy) from local copies (else $PIAD_DATA or torchvision downloads), the "
                         "substitute Caffe VGG-19 up to relu3_1 with feature statistics computed on CIFAR-10 "
                         "training images, a CPU budget of training iterations per benchmark chosen from measured "
                         "learning curves, one run per class. NOT comparable to the paper."),
            benchmarks={"mnist": None, "coil100": None, "fashion_mnist": None, "cifar10": None}, runs=[0],
            iterations=dict(OFFLINE_ITERATIONS), threads=1,
            params={"vgg_weights": vgg, "layer": "relu3_1", "feature_stats": stats},
            overrides={"policy_every": 10, "log_every": 10, "checkpoint_every": 250, "sample_every": 500},
            data_roots={"mnist": local("mnist"), "fashion_mnist": None, "cifar10": cifar,
                        "coil100": local("coil-100.tar.gz")},
            ablation=("cifar10", [0, 1, 2], [0]),   # three classes: the ablation costs 4 CIFAR-10 runs each
            perceptual_metric={"benchmark": "cifar10", "data_root": cifar, "n_images": 1000, "vgg_weights": vgg,
                               "layer": "relu3_1", "feature_stats": stats, "n_examples": 3, "threads": 1},
            weight_policy_runs={"relative-perceptual-L1, gradient-normalising policy (MNIST, class 0)": "mnist/0/0",
                                "relative-perceptual-L1, gradient-normalising policy (COIL-100, class 0)":
                                    "coil100/0/0",
                                "L2, gradient-normalising policy (CIFAR-10 ablation, class 0)":
                                    "cifar10-ablation-l2/0/0",
                                "L2, manual weights (CIFAR-10 ablation, class 0)": "cifar10-ablation-l2_manual/0/0"},
            feature_stats_recipe={"benchmark": "cifar10", "data_root": cifar, "vgg_weights": vgg, "layer": "relu3_1",
                                  "output": stats},
        )
    if name == "paper":
        return Profile(
            name="paper",
            description=("the paper's setting: torchvision's ImageNet VGG-19, relu4_2, the authors' ImageNet feature "
                         "statistics, the paper's iterations, 3 runs per class, every class, plus the CIFAR-10 "
                         "ablation. Needs the datasets (downloads or $PIAD_DATA) and a GPU."),
            benchmarks={"mnist": None, "fashion_mnist": None, "cifar10": None, "coil100": None, "celeba": None,
                        "lsun": None},
            runs=[0, 1, 2], iterations=None,
            params={"vgg_weights": "imagenet", "layer": "relu4_2", "feature_stats": "imagenet"},
            ablation=("cifar10", None, [0, 1, 2]),
            perceptual_metric={"benchmark": "cifar10", "n_images": 1000, "vgg_weights": "imagenet",
                               "layer": "relu4_2", "feature_stats": "imagenet", "n_examples": 3},
            weight_policy_runs={"relative-perceptual-L1, gradient-normalising policy (CIFAR-10, class 0)":
                                    "cifar10/0/0",
                                "L2, gradient-normalising policy (CIFAR-10, class 0)": "cifar10-ablation-l2/0/0",
                                "L2, manual weights (CIFAR-10, class 0)": "cifar10-ablation-l2_manual/0/0"},
        )
    raise ValueError(f"profile {name!r} is unknown: expected one of {PROFILES}")


# -- jobs ------------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    profile: str
    experiment: Experiment
    normal_class: int
    run: int

    @property
    def key(self) -> str:
        return f"{self.experiment.name}/{self.normal_class}/{self.run}"


def plan(profile: Profile, benchmarks=None, classes=None, runs=None) -> list[Job]:
    """The (experiment, class, run) grid, filtered by benchmark / experiment names, classes and runs."""
    jobs = []
    for exp in profile.experiments():
        if benchmarks and exp.benchmark not in benchmarks and exp.name not in benchmarks:
            continue
        for c in exp.classes:
            if classes is not None and c not in classes:
                continue
            for r in exp.runs:
                if runs is not None and r not in runs:
                    continue
                jobs.append(Job(profile.name, exp, c, r))
    return jobs


def notebook_parameters(profile: Profile, job: Job, work_dir: Path, device: str, iterations: Optional[int],
                        threads: int) -> dict[str, Any]:
    exp = job.experiment
    p = {"benchmark": exp.benchmark, "normal_class": job.normal_class, "run": job.run,
         "iterations": iterations if iterations is not None else profile.iterations_for(exp.benchmark),
         "device": device,
         "data_root": profile.data_roots.get(exp.benchmark), "vgg_weights": profile.params["vgg_weights"],
         "layer": profile.params["layer"], "feature_stats": profile.params["feature_stats"],
         "distance": None if exp.ablation else "relative_perceptual_l1",
         "weight_policy": None if exp.ablation else "gradient_normalizing", "ablation": exp.ablation,
         "overrides": dict(profile.overrides), "out_dir": str(work_dir), "threads": threads, "progress": False}
    return p


def job_config(params: dict[str, Any]):
    """The ExperimentConfig that notebooks/train_evaluate.ipynb builds from these notebook parameters."""
    from piad.run.config import config_from_parameters
    keys = ("iterations", "data_root", "vgg_weights", "layer", "feature_stats", "distance", "weight_policy",
            "normal_class", "run")
    return config_from_parameters(params["benchmark"], params["overrides"], params["ablation"],
                                  **{k: params[k] for k in keys})


def resolve_ensemble_size(ensemble: Optional[int], device: str) -> int:
    """None: batch up to ENSEMBLE_SIZE_GPU runs on a CUDA device, none on other devices; else the size given."""
    if ensemble is not None:
        if int(ensemble) < 1:
            from piad.errors import ConfigError
            raise ConfigError(f"ensemble={ensemble!r}: expected a positive number of runs per batched ensemble "
                             "(1 trains every run on its own).")
        return int(ensemble)
    from piad.run.training import resolve_device
    return ENSEMBLE_SIZE_GPU if resolve_device(device).type == "cuda" else 1


def ensemble_groups(jobs: list[Job], size: int) -> list[list[Job]]:
    """Jobs of one experiment (same benchmark, ablation and settings; classes and runs differ) in chunks of `size`."""
    by_exp: dict[str, list[Job]] = {}
    for j in jobs:
        by_exp.setdefault(j.experiment.name, []).append(j)
    return [js[i:i + size] for js in by_exp.values() for i in range(0, len(js), size)]


def train_ensembles(profile: Profile, jobs: list[Job], work_root: Path, device: str, iterations: Optional[int],
                    threads: int, size: int, log=print) -> dict[str, dict[str, Any]]:
    """Train the jobs' models as batched ensembles of up to `size` members (piad.run.ensemble) before the notebooks run.

    Each member's run directory is the one its notebook uses; the notebook then finds the finished checkpoint,
    resumes nothing and evaluates. A group that cannot be batched (e.g. members interrupted at different
    iterations) is left to the notebooks, which train its runs one by one. Returns job key -> ensemble record.
    """
    import torch

    from piad.run.ensemble import train_ensemble
    from piad.errors import PiadError
    records: dict[str, dict[str, Any]] = {}
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for group in ensemble_groups(jobs, size):
            if len(group) < 2:
                continue
            keys = [j.key for j in group]
            outs = [work_root / j.experiment.name / str(j.normal_class) / str(j.run) for j in group]
            cfgs = [job_config(notebook_parameters(profile, j, out.resolve(), device, iterations, threads))
                    for j, out in zip(group, outs)]
            log(f"[ensemble] training {len(group)} runs together: {', '.join(keys)}")
            t0 = time.time()
            try:
                ens = train_ensemble(cfgs, outs, device, resume=True, progress=False)
            except PiadError as e:
                log(f"[ensemble] {', '.join(keys)}: not batched ({e}); the notebooks train these runs one by one")
                continue
            wall = time.time() - t0
            log(f"[ensemble] {len(group)} runs trained in {wall:.0f} s ({len(ens.diverged)} diverged)")
            for j in group:
                records[j.key] = {"members": keys, "mode": ens.mode, "wall_seconds": round(wall, 1)}
    finally:
        torch.set_num_threads(before)
    return records


def is_finished(result_dir: Path, iterations: Optional[int] = None) -> bool:
    from piad.experiments.results import read_json
    m = read_json(result_dir / "metrics.json")
    if not m or m.get("status") != "ok" or not (result_dir / NOTEBOOK).exists():
        return False
    return iterations is None or int(m.get("iterations", -1)) == int(iterations)


def expected_iterations(profile: Profile, exp: Experiment, iterations: Optional[int]) -> int:
    if iterations is not None:
        return iterations
    if profile.iterations_for(exp.benchmark) is not None:
        return profile.iterations_for(exp.benchmark)
    from piad.run.config import make_config
    return make_config(exp.benchmark, ablation=exp.ablation).iterations


# -- provenance ------------------------------------------------------------------------------------------------------
def git_state(root: Path) -> dict[str, Any]:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "piad", "notebooks")
    return {"git_commit": commit or None, "git_dirty": bool(dirty)}


_SHA_CACHE: dict[str, str] = {}


def file_sha256(path) -> Optional[str]:
    p = Path(str(path))
    if not p.is_file():
        return None
    key = f"{p.resolve()}|{p.stat().st_mtime_ns}"
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def input_record(spec, kind: str) -> Optional[dict[str, Any]]:
    """A data or weights input as provenance records it: name, source (no paths of this machine), sha256.

    `kind`: "data", "vgg_weights" or "feature_stats". A folder lists the sha256 of each file directly in it.
    """
    if spec is None or spec == "none":
        return None
    if spec in ("imagenet", "random"):
        from piad.run.resources import IMAGENET_STATS_SHA256, IMAGENET_STATS_URL
        named = {("vgg_weights", "imagenet"): ("torchvision VGG19_Weights.IMAGENET1K_V1",
                                               "torchvision download (hash-checked by torchvision)", None),
                 ("vgg_weights", "random"): ("random VGG-19", "seeded random initialisation (not ImageNet)", None),
                 ("feature_stats", "imagenet"): ("the authors' ImageNet feature statistics", IMAGENET_STATS_URL,
                                                 IMAGENET_STATS_SHA256)}
        name, source, sha = named.get((kind, spec), (spec, spec, None))
        return {"name": name, "source": source, "sha256": sha}
    p = Path(str(spec))
    rec: dict[str, Any] = {"name": p.name, "source": display_path(p)}
    if p.is_dir():
        rec["sha256"] = {f.name: file_sha256(f) for f in sorted(p.iterdir())
                         if f.is_file() and not f.name.startswith(".")}
    else:
        rec["sha256"] = file_sha256(p)
    return rec


def _outside_repo_roots(root: Path, **labelled: Path) -> list[tuple[str, str]]:
    """Extra roots for piad.paths.sanitise_text: the given folders (label -> folder) that lie outside the repo."""
    out = []
    for label, d in labelled.items():
        try:
            Path(d).resolve().relative_to(root)
        except ValueError:
            out.append((str(Path(d).resolve()), f"<{label}>"))
    return out


def provenance(profile: Profile, job: Job, params: dict, metrics: dict, wall: float, started: float,
               root: Path, ensemble: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    import torch

    import piad
    from piad.experiments.results import deviations, paper_iterations, read_json
    cfg = read_json(Path(params["out_dir"]) / "config.json") or {}
    weights = {"vgg_weights": input_record(params["vgg_weights"], "vgg_weights"), "layer": params["layer"],
               "feature_stats": input_record(params["feature_stats"], "feature_stats"),
               "resolved": metrics.get("perceptual_sources")}
    data = {**(input_record(params.get("data_root"), "data") or {}), "benchmark": job.experiment.benchmark,
            "source": metrics.get("data_source")}
    return {
        "profile": profile.name, "experiment": job.experiment.name, "benchmark": job.experiment.benchmark,
        "ablation": job.experiment.ablation, "normal_class": job.normal_class, "run": job.run,
        **git_state(root), "device": metrics.get("device"), "data_source": metrics.get("data_source"),
        "data_root": display_path(params.get("data_root")), "data": data, "weights": weights,
        "iterations": metrics.get("iterations"), "roc_auc": metrics.get("roc_auc"),
        "wall_seconds": round(wall, 1), "training_seconds": _training_seconds(Path(params["out_dir"])),
        "trained_in_ensemble": ensemble,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "piad": getattr(piad, "__version__", None), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(terse=True), "notebook": f"notebooks/{NOTEBOOK}",
        "parameters": {k: (display_path(v) if k in ("data_root", "vgg_weights", "feature_stats", "out_dir")
                           else v) for k, v in params.items()},
        "deviations_from_paper": deviations(cfg, metrics, paper_iterations(job.experiment.benchmark)),
    }


def _training_seconds(work: Path) -> Optional[float]:
    from piad.experiments.results import read_csv
    log = read_csv(work / "log.csv")
    return float(log["seconds"][-1]) if log and len(log.get("seconds", [])) else None


# -- notebooks -------------------------------------------------------------------------------------------------------
def clean_notebook(path: Path, label_prefix: Optional[str] = None) -> None:
    """Keep executed notebooks small and book-friendly: drop widget state, progress widgets and huge outputs; one
    parameters cell and numbered figures (piad.experiments.notebooks.prepare_for_book). RuntimeError if a cell raised."""
    import nbformat

    from piad.experiments.notebooks import error_outputs, prepare_for_book
    nb = nbformat.read(path, as_version=4)
    errors = error_outputs(nb)
    if errors:
        raise RuntimeError(f"executed notebook {path} holds error output(s): " + "; ".join(errors))
    before = nbformat.writes(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                continue
            if len(json.dumps(out)) > MAX_OUTPUT_BYTES:
                continue
            kept.append(out)
        cell.outputs = kept
    prepare_for_book(nb, label_prefix)
    if nbformat.writes(nb) != before:
        nbformat.write(nb, path)


def execute_notebook(template: Path, output: Path, parameters: dict, cwd: Path) -> None:
    import papermill
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(template), str(output), parameters=parameters, progress_bar=False,
                               log_output=False, cwd=str(cwd), kernel_name="python3")


def run_job(profile: Profile, job: Job, results_root: Path, work_root: Path, device: str,
            iterations: Optional[int], threads: int, ensemble: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Execute the training notebook for one job and copy its small outputs to the result folder."""
    from piad.experiments.results import read_json
    root = repo_root()
    rel = Path(job.experiment.name) / str(job.normal_class) / str(job.run)
    result_dir, work_dir = results_root / rel, work_root / rel
    params = notebook_parameters(profile, job, work_dir.resolve(), device, iterations, threads)
    started = time.time()
    executed = work_dir / NOTEBOOK
    try:
        execute_notebook(root / "notebooks" / NOTEBOOK, executed, params, root)
    except Exception as e:  # noqa: BLE001 - papermill raises PapermillExecutionError and kernel errors
        return {"status": "failed", "error": _short_error(e), "notebook": str(executed)}
    wall = time.time() - started
    metrics = read_json(work_dir / "metrics.json")
    if not metrics or metrics.get("status") != "ok":
        return {"status": "failed", "error": "the notebook finished but wrote no metrics.json", "notebook": str(executed)}
    try:
        curve_learning(work_dir, device, threads)
    except Exception as e:  # noqa: BLE001 - report it as this run's failure; a rerun only scores again
        return {"status": "failed", "error": f"learning curve: {_short_error(e)}", "notebook": str(executed)}
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / "metrics.json").unlink(missing_ok=True)
    # what is copied to results/ shows no paths of this machine (the work folder's config.json keeps them)
    extra = _outside_repo_roots(root, **{"work-dir": work_root, "results-dir": results_root})
    for name in RESULT_FILES:
        src = work_dir / name
        if src.exists():
            (result_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, result_dir / name)
            os.chmod(result_dir / name, 0o644)
            if (result_dir / name).suffix in (".json", ".csv"):
                sanitise_file(result_dir / name, extra)
    shutil.copyfile(executed, result_dir / NOTEBOOK)
    try:
        clean_notebook(result_dir / NOTEBOOK, label_prefix(results_root, rel.as_posix()))
    except RuntimeError as e:
        return {"status": "failed", "error": str(e), "notebook": str(executed)}
    sanitise_file(result_dir / NOTEBOOK, extra)
    prov = provenance(profile, job, params, metrics, wall, started, root, ensemble)
    for name, record in (("provenance.json", prov), ("metrics.json", metrics)):   # metrics.json last: complete
        text = sanitise_text(json.dumps(record, indent=2, sort_keys=True, default=str), extra)
        (result_dir / name).write_text(text + "\n")
    return {"status": "ok", "roc_auc": metrics["roc_auc"], "wall": wall}


def curve_learning(work_dir: Path, device: str, threads: int) -> None:
    """Score the run's weight snapshots into curve.csv (piad.run.curves), unless it is there and up to date."""
    import torch

    from piad.run.curves import write_learning_curve
    from piad.run.rundir import CURVE as CURVE_FILE, snapshots
    from piad.run.training import resolve_device
    snaps = snapshots(work_dir)
    out = work_dir / CURVE_FILE
    if not snaps or (out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for _, p in snaps)):
        return
    if threads:
        torch.set_num_threads(threads)
    write_learning_curve(work_dir, resolve_device(device))


def _short_error(e: Exception) -> str:
    text = str(e).strip().splitlines()
    tail = [ln for ln in text if ln.strip()][-3:]
    return f"{type(e).__name__}: " + " | ".join(tail)


def ensure_feature_stats(profile: Profile, device: str, log=print) -> None:
    """Compute the profile's feature-statistics file once (offline: CIFAR-10 training images, substitute VGG)."""
    r = profile.feature_stats_recipe
    if not r or Path(r["output"]).exists():
        return
    import torch

    from piad.cli import main as cli_main
    if profile.threads:
        torch.set_num_threads(profile.threads)
    log(f"computing feature statistics once: {r['benchmark']} training images, layer {r['layer']} -> {r['output']}")
    t0 = time.time()
    Path(r["output"]).parent.mkdir(parents=True, exist_ok=True)
    rc = cli_main(["feature-stats", "--benchmark", r["benchmark"], "--vgg-weights", r["vgg_weights"], "--layer",
                   r["layer"], "--output", r["output"], "--device", device]
                  + (["--data-root", r["data_root"]] if r.get("data_root") else []))
    if rc != 0:
        raise RuntimeError(f"`piad feature-stats` failed (exit {rc}); see the message above.")
    meta = {"benchmark": r["benchmark"], "split": "train, all classes", "layer": r["layer"],
            "vgg_weights": display_path(r["vgg_weights"]),
            "vgg_weights_sha256": file_sha256(r["vgg_weights"]), "data_root": display_path(r["data_root"]),
            "sha256": file_sha256(r["output"]), "seconds": round(time.time() - t0, 1),
            "command": f"piad feature-stats --benchmark {r['benchmark']} "
                       + (f"--data-root {display_path(r['data_root'])} " if r.get("data_root") else "")
                       + f"--vgg-weights {display_path(r['vgg_weights'])} --layer {r['layer']} "
                       f"--output {display_path(r['output'])}"}
    Path(r["output"]).with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def run_summaries(profile: Profile, results_root: Path, device: str, refresh_perceptual: bool = False,
                  log=print) -> list[str]:
    """Execute the profile's summary notebooks into results/<profile>/; returns the failures."""
    root = repo_root()
    failures = []
    tidy_results(results_root)
    todo = [("perceptual_metric.ipynb", {**profile.perceptual_metric, "device": device}),
            ("weight_policy.ipynb", {"results_dir": str(results_root.resolve()), "runs": profile.weight_policy_runs}),
            ("learning_curves.ipynb", {"profile": profile.name, "results_dir": str(results_root.resolve())}),
            ("results.ipynb", {"profile": profile.name, "results_dir": str(results_root.resolve())})]
    for name, params in todo:
        out = results_root / name
        if name == "perceptual_metric.ipynb" and out.exists() and not refresh_perceptual:
            continue
        t0 = time.time()
        tmp = results_root / f".{name}.tmp.ipynb"
        try:
            execute_notebook(root / "notebooks" / name, tmp, params, root)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name}: {_short_error(e)} (executed notebook kept at {tmp})")
            log(f"summary {name} FAILED: {_short_error(e)}")
            continue
        try:
            clean_notebook(tmp, label_prefix(results_root, Path(name).stem))
        except RuntimeError as e:
            failures.append(f"{name}: {e}")
            continue
        sanitise_file(tmp, _outside_repo_roots(root, **{"results-dir": results_root}))
        os.replace(tmp, out)
        log(f"summary {name} -> {out} ({time.time() - t0:.0f} s)")
    return failures


def tidy_results(results_root: Path) -> list[Path]:
    """Machine-independent, book-ready result folders, also for results written by older code: executed notebooks
    cleaned (`clean_notebook`), no paths of this machine in any text file (piad.paths.sanitise_tree), files mode
    644. Safe to re-run; returns the text files whose paths were rewritten."""
    results_root = Path(results_root)
    for nb in sorted(results_root.rglob("*.ipynb")):
        if not nb.name.startswith("."):
            where = nb.parent.relative_to(results_root).as_posix() if nb.name == NOTEBOOK else nb.stem
            clean_notebook(nb, label_prefix(results_root, where))
    changed = sanitise_tree(results_root, _outside_repo_roots(repo_root(), **{"results-dir": results_root}))
    for f in results_root.rglob("*"):
        if f.is_file() and (f.stat().st_mode & 0o777) != 0o644:
            os.chmod(f, 0o644)
    return changed


# -- the runner ------------------------------------------------------------------------------------------------------
def reproduce(profile_name: str, benchmarks=None, classes=None, runs=None, device: str = "auto", jobs: int = 1,
              iterations: Optional[int] = None, results_dir=None, work_dir=None, summaries: bool = True,
              summaries_only: bool = False, refresh_perceptual: bool = False, dry_run: bool = False,
              ensemble: Optional[int] = None, log=print, executor: str = "local", cluster=None,
              status: bool = False) -> int:
    """Run a profile's grid (skipping finished runs) and its summary notebooks; returns a process exit code.

    `ensemble`: runs of one experiment trained together as a batched ensemble (piad.run.ensemble) before their
    notebooks evaluate them; None batches up to 10 on a CUDA device and none elsewhere, 1 never batches.
    `executor="slurm"` submits the grid through submitit with `cluster` (piad.experiments.cluster.ClusterOptions); `status`
    only reports the state of every run (piad.experiments.cluster).
    """
    profile = get_profile(profile_name)
    root = repo_root()
    results_root = Path(results_dir) if results_dir else root / "results" / profile.name
    work_root = Path(work_dir) if work_dir else root / "runs" / profile.name
    all_jobs = [] if summaries_only else plan(profile, benchmarks, classes, runs)
    todo, done = [], []
    for j in all_jobs:
        rd = results_root / j.experiment.name / str(j.normal_class) / str(j.run)
        (done if is_finished(rd, expected_iterations(profile, j.experiment, iterations)) else todo).append(j)
    if status:
        from piad.experiments.cluster import report_status
        return report_status(profile, plan(profile, benchmarks, classes, runs), results_root, work_root, iterations,
                             log)
    size = resolve_ensemble_size(ensemble, device) if executor == "local" else 1   # slurm: piad.experiments.cluster decides
    log(f"profile {profile.name}: {len(all_jobs)} runs selected, {len(done)} already finished, {len(todo)} to run "
        f"(results: {results_root}, checkpoints: {work_root}, {jobs} parallel job(s)"
        + (f", batched ensembles of up to {size} runs)" if size > 1 else ")"))
    from piad.experiments.inputs import check_inputs, report     # every input there (or downloadable) before any training
    inputs = check_inputs(profile, {j.experiment.benchmark for j in todo}, summaries)
    log(report(inputs))
    if not all(i.ok for i in inputs):
        return 2
    if dry_run:
        for j in todo:
            log(f"  would run {j.key}")
        return 0
    if todo or (summaries and profile.feature_stats_recipe):
        ensure_feature_stats(profile, device, log)
    if executor == "slurm":
        from piad.experiments.cluster import ClusterOptions, run_grid
        return run_grid(profile, all_jobs, todo, results_root, work_root, device, iterations, ensemble,
                        cluster or ClusterOptions(), summaries, refresh_perceptual, log)
    threads = profile.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0)
    failures: list[str] = []
    lock = threading.Lock()
    t_start = time.time()
    finished = 0
    trained_together = train_ensembles(profile, todo, work_root, device, iterations, threads, size, log) \
        if size > 1 else {}

    def one(j: Job):
        log(f"[start] {j.key}")
        return j, run_job(profile, j, results_root, work_root, device, iterations, threads,
                          trained_together.get(j.key))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, j) for j in todo]
        for fut in as_completed(futures):
            j, res = fut.result()
            with lock:
                finished += 1
                elapsed = time.time() - t_start
                eta = elapsed / finished * (len(todo) - finished)
                if res["status"] == "ok":
                    msg = f"ROC AUC {res['roc_auc']:.4f} in {res['wall']:.0f} s"
                else:
                    msg = f"FAILED: {res['error']} (notebook: {res['notebook']})"
                    failures.append(f"{j.key}: {res['error']}")
                log(f"[{finished}/{len(todo)}] {j.key}: {msg}; elapsed {elapsed / 60:.1f} min, "
                    f"about {eta / 60:.1f} min left")
    if summaries:
        failures += run_summaries(profile, results_root, device, refresh_perceptual, log)
    if failures:
        log(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures))
        return 1
    log(f"profile {profile.name}: all done in {(time.time() - t_start) / 60:.1f} min")
    return 0


# -- command line ----------------------------------------------------------------------------------------------------
def add_parsers(sub) -> None:
    p = sub.add_parser("reproduce", help="run a profile's experiment grid through the notebooks",
                       description="Execute notebooks/train_evaluate.ipynb with papermill for every (benchmark, class, "
                                   "run) of a profile into results/<profile>/<benchmark>/<class>/<run>/, skipping "
                                   "finished runs and resuming interrupted ones; then the summary notebooks.")
    p.add_argument("--profile", choices=PROFILES, required=True,
                   help="smoke (CI, seconds), offline (substitute data/weights on CPU), paper (the paper's setting)")
    p.add_argument("--benchmarks", nargs="+", help="only these benchmarks (or experiment folders, e.g. "
                                                   "cifar10-ablation-l2)")
    p.add_argument("--classes", nargs="+", type=int, help="only these normal classes")
    p.add_argument("--runs", nargs="+", type=int, help="only these run numbers")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default auto)")
    p.add_argument("--jobs", type=int, default=1, help="runs executed in parallel (default 1)")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="train up to K runs of an experiment together as a batched ensemble before their notebooks "
                        "evaluate them (default: 10 on a CUDA device, none elsewhere; 1 disables)")
    p.add_argument("--iterations", type=int, help="training iterations (default: the profile's)")
    p.add_argument("--results-dir", help="default: <repo>/results/<profile>")
    p.add_argument("--work-dir", help="checkpoints and full run folders (default: <repo>/runs/<profile>)")
    p.add_argument("--summaries-only", action="store_true", help="only re-execute the summary notebooks")
    p.add_argument("--no-summaries", action="store_true", help="do not execute the summary notebooks")
    p.add_argument("--refresh-perceptual", action="store_true", help="re-execute perceptual_metric.ipynb")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be executed")
    from piad.experiments.cluster import add_cluster_arguments
    add_cluster_arguments(p)
    p.set_defaults(func=cmd_reproduce)

    b = sub.add_parser("book", help="build the Jupyter Book (HTML in _build/html)",
                       description="Build the book from the committed results with `jupyter-book build`; it never "
                                   "trains, unless --run asks to run a profile first.")
    b.add_argument("--profile", choices=PROFILES, help="with --run: the profile to run before building")
    b.add_argument("--run", action="store_true", help="run `piad reproduce --profile P` before building")
    b.add_argument("--jobs", type=int, default=1, help="with --run: parallel runs")
    b.add_argument("--device", default="auto", help="with --run: device")
    b.add_argument("--path-output", help="build folder (default: the repository, i.e. _build/html)")
    b.add_argument("-W", "--warningiserror", action="store_true", help="treat warnings as errors (as CI does)")
    b.add_argument("--keep-going", action="store_true", help="with -W: report every warning before failing")
    b.add_argument("--all", action="store_true", help="rebuild every page (jupyter-book build --all)")
    b.set_defaults(func=cmd_book)


def cmd_reproduce(a: argparse.Namespace) -> int:
    from piad.experiments.cluster import options_from_args
    return reproduce(a.profile, a.benchmarks, a.classes, a.runs, a.device, a.jobs, a.iterations, a.results_dir,
                     a.work_dir, summaries=not a.no_summaries, summaries_only=a.summaries_only,
                     refresh_perceptual=a.refresh_perceptual, dry_run=a.dry_run, ensemble=a.ensemble,
                     log=lambda m: print(m, flush=True), executor=a.executor, cluster=options_from_args(a),
                     status=a.status)


def cmd_book(a: argparse.Namespace) -> int:
    from piad.book import build_book
    if a.run:
        if not a.profile:
            print("piad book: --run needs --profile", file=sys.stderr)
            return 2
        rc = reproduce(a.profile, device=a.device, jobs=a.jobs, log=lambda m: print(m, flush=True))
        if rc != 0:
            return rc
    return build_book(path_output=a.path_output, warningiserror=a.warningiserror, keep_going=a.keep_going,
                      all_pages=a.all)
