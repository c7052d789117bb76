"""Training-free controls for every finished run of a results folder (`piad control`).

For each (experiment, normal class) with a finished run, the run's own config (data, distance, VGG weights, layer,
statistics) is rebuilt and both controls of piad.run.controls score its test split. Written to

    <results>/controls/<experiment>/<class>/<control>/scores.npz, metrics.json   (metrics.json last: complete)
    <results>/controls/<experiment>/<class>/provenance.json

An existing complete control is kept (the controls are deterministic), unless `overwrite` or its provenance names
other inputs than the run's config gives it now (`stale_inputs`: e.g. the run was retrained with other statistics).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from piad.experiments.provenance import git_state, hardware, input_record
from piad.experiments.runs import EARLIER_SUFFIX, RunRecord, collect, read_json, stats_file_name
from piad.paths import assets_dir, display_path, repo_root, sanitise_text

CONTROLS_DIR = "controls"


def committed_path(value):
    """A path as committed in a results config.json (`<assets>/...` or relative to the repository) made usable on this
    machine; named specs ("imagenet", "random", None) unchanged."""
    if not isinstance(value, str) or value in ("imagenet", "random", "none", ""):
        return value
    if value.startswith("<assets>"):
        return str(assets_dir() / value[len("<assets>/") :])
    p = Path(value)
    if not p.is_absolute() and not value.startswith(("~", "$")) and (repo_root() / p).exists():
        return str(repo_root() / p)
    return value


def run_config(rec: RunRecord, overrides: dict | None = None):
    """The ExperimentConfig a committed run was trained with, its paths resolved on this machine; `overrides`
    replace config keys (e.g. another feature-statistics file, to measure what the statistics change)."""
    from piad.run.config import config_from_dict

    d = {**rec.config, **(overrides or {})}
    for key in ("data_root", "vgg_weights", "feature_stats"):
        d[key] = committed_path(d.get(key))
    return config_from_dict(d)


def control_targets(
    results_dir, experiments: Sequence[str] | None = None, classes: Sequence[int] | None = None, ablation: bool = True
):
    """(experiment, class) -> the finished run whose config the control uses (the lowest run number). A benchmark
    name in `experiments` selects its ablation experiments too, unless `ablation` is False. Superseded executions
    (`<experiment>-earlier/`) get none: no table compares them with a control."""
    out: dict[tuple[str, int], RunRecord] = {}
    for rec in collect(results_dir):
        if not rec.finished or rec.experiment.startswith(CONTROLS_DIR) or rec.experiment.endswith(EARLIER_SUFFIX):
            continue
        if not ablation and rec.experiment != rec.config.get("benchmark"):
            continue
        if experiments and rec.experiment not in experiments and rec.config.get("benchmark") not in experiments:
            continue
        c = int(rec.config.get("normal_class", -1))
        if classes is not None and c not in classes:
            continue
        key = (rec.experiment, c)
        if key not in out or int(rec.config.get("run", 0)) < int(out[key].config.get("run", 0)):
            out[key] = rec
    return dict(sorted(out.items()))


def control_dir(results_dir, experiment: str, normal_class: int, folder: str = CONTROLS_DIR) -> Path:
    return Path(results_dir) / folder / experiment / str(normal_class)


def is_complete(folder: Path) -> bool:
    from piad.run.controls import CONTROLS

    return all((read_json(folder / c / "metrics.json") or {}).get("status") == "ok" for c in CONTROLS)


def _input_name(spec, kind: str) -> str | None:
    """An input's name as the provenance records it (input_record), without hashing the file."""
    return input_record(spec, kind)["name"] if spec in ("imagenet", "random") else stats_file_name(spec)


def stale_inputs(folder: Path, cfg) -> list[str]:
    """The inputs in which a complete control (its provenance.json) differs from those the run's config `cfg` gives
    it now: benchmark, class, distance, layer, VGG weights, and the feature statistics where the distance reads them.
    A run trained again under another statistics file (or moved in its place) thus gets its controls computed again.
    A control without provenance is stale."""
    from piad.model.vgg import NORMALISED_DISTANCES

    prov = read_json(folder / "provenance.json")
    if prov is None:
        return ["provenance.json"]
    weights = prov.get("weights") or {}
    recorded = {
        "benchmark": prov.get("benchmark"),
        "normal_class": prov.get("normal_class"),
        "distance": prov.get("distance"),
        "layer": weights.get("layer"),
        "vgg_weights": (weights.get("vgg_weights") or {}).get("name"),
    }
    now = {
        "benchmark": cfg.benchmark,
        "normal_class": cfg.normal_class,
        "distance": cfg.distance,
        "layer": cfg.layer,
        "vgg_weights": _input_name(cfg.vgg_weights, "vgg_weights"),
    }
    if cfg.distance in NORMALISED_DISTANCES:
        recorded["feature_stats"] = (weights.get("feature_stats") or {}).get("name")
        now["feature_stats"] = _input_name(cfg.feature_stats, "feature_stats")
    return [k for k in now if recorded[k] != now[k]]


def _feature_key(cfg, distance) -> str:
    from piad.model.vgg import NORMALISED_DISTANCES

    kind = "pixels" if cfg.distance == "l2" else ("normalised" if cfg.distance in NORMALISED_DISTANCES else "raw")
    return json.dumps([kind, cfg.vgg_weights, cfg.layer, cfg.feature_stats if kind == "normalised" else None])


def run_controls(
    results_dir,
    experiments: Sequence[str] | None = None,
    classes: Sequence[int] | None = None,
    settings=None,
    device: str = "cpu",
    overwrite: bool = False,
    log: Callable[[str], Any] = print,
    overrides: dict | None = None,
    folder: str = CONTROLS_DIR,
    ablation: bool = True,
) -> list[Path]:
    """Compute the missing controls of `results_dir` into `<results_dir>/<folder>/`; returns the class folders
    written. `overrides`: config keys replaced in every run's config (recorded in the provenance)."""
    import torch

    from piad.data import load_for_config
    from piad.run.controls import ControlSettings, control_scores, features
    from piad.run.distance import make_distance
    from piad.run.evaluation import metrics_from_scores
    from piad.run.rundir import atomic_write_json
    from piad.run.scorefile import save_scores
    from piad.run.training import resolve_device

    settings = settings or ControlSettings()
    dev = resolve_device(device)
    targets = control_targets(results_dir, experiments, classes, ablation)
    todo = {}
    for k, rec in targets.items():
        out = control_dir(results_dir, *k, folder)
        if overwrite or not is_complete(out):
            todo[k] = rec
        elif stale := stale_inputs(out, run_config(rec, overrides)):
            log(f"[control] {k[0]}/{k[1]}: computed for other inputs ({', '.join(stale)}) than its run's: again")
            todo[k] = rec
    log(f"controls: {len(targets)} (experiment, class) with a finished run, {len(todo)} to compute")
    cache: dict[tuple[str, str], torch.Tensor] = {}  # (feature key, test-set hash) -> f(test)
    written = []
    code = git_state(repo_root())
    for (exp, c), rec in todo.items():
        t0 = time.perf_counter()
        cfg = run_config(rec, overrides)
        data = load_for_config(cfg)
        distance = make_distance(cfg, cfg.resolved_seed()).to(dev).eval()
        test_hash = hashlib.sha1(data.test.numpy().tobytes()).hexdigest()
        key = (_feature_key(cfg, distance), test_hash)
        if key not in cache:
            if len(cache) >= 3:  # f(test) of one benchmark is up to ~0.7 GB: keep the last few
                cache.pop(next(iter(cache)))
            cache[key] = features(distance, data.test, settings.batch_size)
        scores, info = control_scores(distance, data.train.to(dev), cache[key], settings)
        out = control_dir(results_dir, exp, c, folder)
        summary = {}
        for name, s in scores.items():
            m = metrics_from_scores(s, data)
            m.update(
                {
                    "status": "ok",
                    "control": name,
                    "experiment": exp,
                    "benchmark": cfg.benchmark,
                    "normal_class": c,
                    "distance": cfg.distance,
                }
            )
            save_scores(out / name / "scores.npz", data.test_labels.numpy(), s.numpy(), data.test_groups)
            atomic_write_json(out / name / "metrics.json", m)
            summary[name] = m["roc_auc"]
        prov = {
            "experiment": exp,
            "benchmark": cfg.benchmark,
            "normal_class": c,
            "distance": cfg.distance,
            "config_of_run": display_path(rec.path),
            "overrides": {k: display_path(v) if isinstance(v, str) else v for k, v in (overrides or {}).items()},
            "settings": settings.to_dict(),
            **info,
            **code,
            "data_source": sanitise_text(data.source),
            "weights": {
                "vgg_weights": input_record(cfg.vgg_weights, "vgg_weights"),
                "layer": cfg.layer,
                "feature_stats": input_record(cfg.feature_stats, "feature_stats"),
            },
            "device": str(dev),
            "hardware": hardware(str(dev)),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(out / "provenance.json", json.loads(sanitise_text(json.dumps(prov, default=str))))
        written.append(out)
        log(
            f"[control] {exp}/{c}: mean image {summary['mean_image']:.4f}, nearest {summary['nearest']:.4f} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    return written


def load_controls(results_dir, folder: str = CONTROLS_DIR) -> dict[tuple[str, int], dict[str, float]]:
    """(experiment, class) -> {control: ROC AUC} of every complete control under `results_dir`/`folder`."""
    root = Path(results_dir) / folder
    out: dict[tuple[str, int], dict[str, float]] = {}
    for m in sorted(root.glob("*/*/*/metrics.json")):
        rec = read_json(m) or {}
        if rec.get("status") != "ok":
            continue
        exp, c, name = m.parent.parent.parent.name, int(m.parent.parent.name), m.parent.name
        out.setdefault((exp, c), {})[name] = float(rec["roc_auc"])
    return out
