"""Reading what runs and the runner wrote: a run folder as a RunRecord, every run under a results folder, CSV and
JSON files, and a run's weight-policy trace as arrays. Nothing trains or scores here.

A run folder holds config.json, metrics.json, provenance.json, log.csv, policy.csv, scores.csv, samples/latest.png;
tables (piad.experiments.tables) and figures (piad.experiments.figures) are computed from these files.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from piad.model.vgg import NORMALISED_DISTANCES

EARLIER_SUFFIX = "-earlier"  # `<experiment>-earlier/<class>/<run>`: a run's earlier execution, superseded by the one
# in `<experiment>/` (same config and seed, a later commit: re-executed to keep its per-image scores)


def stats_file_name(path) -> str | None:
    """The file name of a feature-statistics setting (a path, or "none"/empty for none), as runs record it."""
    return None if not path or str(path) == "none" else Path(str(path)).name


def reads_statistics(config: dict) -> bool:
    """Whether a run's distance standardises its features with the feature statistics (the two L1 kinds; the
    default relative-perceptual-L1 when the config names none): only then does its statistics file matter."""
    return (config.get("distance") or "relative_perceptual_l1") in NORMALISED_DISTANCES


def config_differences(a: dict, b: dict) -> list[str]:
    """The config keys in which two runs differ, the feature statistics left out where the distance of both reads
    none (l2, perceptual L2): a run trained again under another statistics file is then the same run."""
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    if "distance" not in keys and not reads_statistics(a):
        keys = [k for k in keys if k != "feature_stats"]
    return keys


def read_json(path) -> dict | None:
    """A JSON file holding an object, as a dict; None if it is missing, unreadable, not JSON, or JSON of another
    shape (a list, a string, ...): every reader then treats it like a missing file."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_csv(path) -> dict[str, np.ndarray]:
    """Columns of a CSV file as arrays (float where every value parses, else str); {} if absent or empty."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error):  # missing, not text, or not CSV
        return {}
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        vals = [r.get(k) if isinstance(r.get(k), str) else "" for r in rows]  # short rows: empty cells
        try:
            out[k] = np.array([float(v) if v != "" else np.nan for v in vals])
        except ValueError:
            out[k] = np.array(vals)
    return out


@dataclass
class RunRecord:
    """One run directory's saved files."""

    path: Path
    config: dict
    metrics: dict | None
    provenance: dict | None = None
    experiment: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.metrics) and self.metrics.get("status") == "ok" and _finite(self.metrics.get("roc_auc"))

    @property
    def roc_auc(self) -> float | None:
        return float(self.metrics["roc_auc"]) if self.finished else None


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def load_run(run_dir) -> RunRecord:
    p = Path(run_dir)
    return RunRecord(
        p, read_json(p / "config.json") or {}, read_json(p / "metrics.json"), read_json(p / "provenance.json")
    )


def damaged(path, why: str, consequence: str) -> None:
    """Name a damaged result file in the output of the summary that met it (one line; the summary goes on)."""
    print(f"note: {path} {why}; {consequence}.", flush=True)


def collect(results_dir) -> list[RunRecord]:
    """Every run under `results_dir` (any depth) that has a config.json; `experiment` = its path's first part. A
    metrics.json or config.json that exists but is not a JSON object is named (the run counts as unfinished). Hidden
    folders (a name starting with ".", e.g. a copy being moved in) hold no runs."""
    root = Path(results_dir)
    out = []
    for cfg in sorted(root.rglob("config.json")):
        if any(part.startswith(".") for part in cfg.parent.relative_to(root).parts):
            continue
        rec = load_run(cfg.parent)
        for name, value in (("config.json", rec.config or None), ("metrics.json", rec.metrics)):
            if value is None and (cfg.parent / name).is_file():
                damaged(cfg.parent / name, "is not a readable JSON object", "this run is left out of the summaries")
        rel = cfg.parent.relative_to(root).parts
        rec.experiment = rel[0] if rel else ""
        out.append(rec)
    return out


def policy_series(run_dir) -> dict[str, dict[str, np.ndarray]]:
    """{network: {"iteration", "adv_median", "rec_median", "ratio_median", "lambda", "adv" (T, L), "rec" (T, L)}}."""
    p = read_csv(Path(run_dir) / "policy.csv")
    out = {}
    if not p:
        return out
    for net in ("E", "G"):
        sel = p["network"] == net
        its = np.unique(p["iteration"][sel])
        layers = np.unique(p["layer"][sel]).astype(int)
        adv = np.full((len(its), len(layers)), np.nan)
        rec = np.full_like(adv, np.nan)
        lam = np.full(len(its), np.nan)
        for t, it in enumerate(its):
            rows = sel & (p["iteration"] == it)
            li = p["layer"][rows].astype(int)
            adv[t, li] = p["adv_std"][rows]
            rec[t, li] = p["rec_std"][rows]
            lam[t] = p["lambda"][rows][0]
        out[net] = {
            "iteration": its,
            "adv": adv,
            "rec": rec,
            "adv_median": np.median(adv, 1),
            "rec_median": np.median(rec, 1),
            "ratio_median": np.median(adv / rec, 1),
            "lambda": lam,
        }
    return out
