"""What provenance.json records of a finished job: code state (git), inputs with their sha256, environment, timing and
how the run deviates from the paper. Paths of this machine are shown through piad.paths.display_path.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from piad.experiments.grid import NOTEBOOK, Job
from piad.experiments.labels import deviations, paper_iterations
from piad.experiments.profiles import Profile
from piad.experiments.runs import read_csv, read_json
from piad.paths import display_path
from piad.run.resources import IMAGENET_STATS_SHA256, IMAGENET_STATS_URL, sha256_of


def git_state(root: Path) -> dict[str, Any]:
    """The commit checked out at `root` and whether piad/ or notebooks/ differ from it."""

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "piad", "notebooks")
    return {"git_commit": commit or None, "git_dirty": bool(dirty)}


_SHA_CACHE: dict[str, str] = {}


def file_sha256(path) -> str | None:
    """sha256 of a file (None if it is not a file), computed once per file version."""
    p = Path(str(path))
    if not p.is_file():
        return None
    key = f"{p.resolve()}|{p.stat().st_mtime_ns}"
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(p)
    return _SHA_CACHE[key]


def input_record(spec, kind: str) -> dict[str, Any] | None:
    """A data or weights input as provenance records it: name, source (no paths of this machine), sha256.

    `kind`: "data", "vgg_weights" or "feature_stats". A folder lists the sha256 of each file directly in it.
    """
    if spec is None or spec == "none":
        return None
    if spec in ("imagenet", "random"):
        named = {
            ("vgg_weights", "imagenet"): (
                "torchvision VGG19_Weights.IMAGENET1K_V1",
                "torchvision download (hash-checked by torchvision)",
                None,
            ),
            ("vgg_weights", "random"): ("random VGG-19", "seeded random initialisation (not ImageNet)", None),
            ("feature_stats", "imagenet"): (
                "the authors' ImageNet feature statistics",
                IMAGENET_STATS_URL,
                IMAGENET_STATS_SHA256,
            ),
        }
        name, source, sha = named.get((kind, spec), (spec, spec, None))
        return {"name": name, "source": source, "sha256": sha}
    p = Path(str(spec))
    rec: dict[str, Any] = {"name": p.name, "source": display_path(p)}
    if p.is_dir():
        rec["sha256"] = {
            f.name: file_sha256(f) for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")
        }
    else:
        rec["sha256"] = file_sha256(p)
    return rec


def provenance(
    profile: Profile,
    job: Job,
    params: dict,
    metrics: dict,
    wall: float,
    started: float,
    root: Path,
    ensemble: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance.json record of a finished job (`params`: its notebook parameters; `ensemble`: how it was
    trained together with other runs, if it was; `code`: `git_state` when the job started, which is the code it
    ran: an edit made while it runs is not loaded by it. If the state at the end differs, both are recorded)."""
    import torch

    import piad

    cfg = read_json(Path(params["out_dir"]) / "config.json") or {}
    weights = {
        "vgg_weights": input_record(params["vgg_weights"], "vgg_weights"),
        "layer": params["layer"],
        "feature_stats": input_record(params["feature_stats"], "feature_stats"),
        "resolved": metrics.get("perceptual_sources"),
    }
    data = {
        **(input_record(params.get("data_root"), "data") or {}),
        "benchmark": job.experiment.benchmark,
        "source": metrics.get("data_source"),
    }
    at_end = git_state(root)
    code = code or at_end
    changed = {"git_state_at_finish": at_end} if at_end != code else {}
    return {
        "profile": profile.name,
        "experiment": job.experiment.name,
        "benchmark": job.experiment.benchmark,
        "ablation": job.experiment.ablation,
        "normal_class": job.normal_class,
        "run": job.run,
        **code,
        **changed,
        "device": metrics.get("device"),
        "data_source": metrics.get("data_source"),
        "data_root": display_path(params.get("data_root")),
        "data": data,
        "weights": weights,
        "iterations": metrics.get("iterations"),
        "roc_auc": metrics.get("roc_auc"),
        "wall_seconds": round(wall, 1),
        "training_seconds": _training_seconds(Path(params["out_dir"])),
        "trained_in_ensemble": ensemble,
        "memory_layout": memory_layout(params, ensemble),
        "precision": precision(params, ensemble),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "piad": getattr(piad, "__version__", None),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "hardware": hardware(metrics.get("device")),
        "notebook": f"notebooks/{NOTEBOOK}",
        "parameters": {
            k: (display_path(v) if k in ("data_root", "vgg_weights", "feature_stats", "out_dir") else v)
            for k, v in params.items()
        },
        "deviations_from_paper": deviations(cfg, metrics, paper_iterations(job.experiment.benchmark)),
    }


def hardware(device: str | None) -> dict[str, Any]:
    """The machine the timings come from: processor model and logical CPUs (training_seconds depends on both, and
    build machines differ between sessions), and the accelerator's name when the run used one."""
    rec: dict[str, Any] = {"processor": processor_name(), "logical_cpus": os.cpu_count(), "accelerator": None}
    if device and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            rec["accelerator"] = torch.cuda.get_device_name(torch.device(device))
    return rec


def processor_name() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what `platform` knows), None if unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_layout(params: dict, ensemble: dict[str, Any] | None = None) -> str:
    """The layout the run was trained in: a batched ensemble trains in NCHW whatever the notebook's `channels_last`
    says (its notebook only evaluates the finished run)."""
    return "channels_last" if params.get("channels_last") and not ensemble else "NCHW"


def precision(params: dict, ensemble: dict[str, Any] | None = None) -> str:
    """The arithmetic the run was trained in: "bf16 autocast" with the notebook's `bf16` (a batched ensemble does not
    use it), else "fp32"."""
    return "bf16 autocast" if params.get("bf16") and not ensemble else "fp32"


def _training_seconds(work: Path) -> float | None:
    log = read_csv(work / "log.csv")
    return float(log["seconds"][-1]) if log and len(log.get("seconds", [])) else None


def device_label(prov: dict) -> str:
    """`cpu`, or the accelerator kind with its model from provenance.json's `hardware` (`cuda (NVIDIA H200)`)."""
    device = str(prov.get("device") or "unknown")
    if device == "cpu":
        return device
    accelerator = (prov.get("hardware") or {}).get("accelerator")
    kind = device.split(":")[0]
    return f"{kind} ({accelerator})" if accelerator else kind
