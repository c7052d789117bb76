"""Reading finished runs into the notebooks' tables and sentences (figures: piad.experiments.figures; the notebooks stay thin).

Everything here reads files a run or the runner wrote (config.json, metrics.json, provenance.json, log.csv,
policy.csv, scores.csv, samples/latest.png); nothing trains. Numbers in tables are computed from those files, never
typed by hand. Paper numbers are not transcribed in this project (the paper's tables could not be read, see
the book's introduction), so every "paper" cell says so.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

NOT_TRANSCRIBED = "not transcribed"
MISSING = "missing"

# The paper's numbers, keyed by (benchmark, normal_class or None for the benchmark mean). Empty on purpose: the
# paper's result tables could not be read while building this project (book: Introduction). Fill only from the paper
# itself, citing table and page, never from memory.
PAPER_ROC_AUC: dict[tuple[str, Optional[int]], float] = {}
PAPER_SOURCE = ("Tuluptceva et al., ACPR 2019 (arXiv 1909.05904); its result tables were not transcribed in this "
                "project, so every paper cell reads \"not transcribed\".")

BENCHMARK_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "coil100": "COIL-100",
                    "celeba": "CelebA", "lsun": "LSUN", "digits": "digits (scikit-learn 8x8)",
                    "synthetic": "synthetic", "folder": "folder"}
ABLATION_TITLES = {"l2": "L2", "perceptual_l2": "perceptual L2", "perceptual_l1": "perceptual L1",
                   "relative_perceptual_l1": "relative-perceptual-L1 (PIAD)",
                   "l2_manual": "L2, manual weights (lambda_E = 10, lambda_G = 100)"}


# -- files ---------------------------------------------------------------------------------------------------------
def read_json(path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_csv(path) -> dict[str, np.ndarray]:
    """Columns of a CSV file as arrays (float where every value parses, else str); {} if absent or empty."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
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
    metrics: Optional[dict]
    provenance: Optional[dict] = None
    experiment: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.metrics) and self.metrics.get("status") == "ok" and _finite(self.metrics.get("roc_auc"))

    @property
    def roc_auc(self) -> Optional[float]:
        return float(self.metrics["roc_auc"]) if self.finished else None


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def load_run(run_dir) -> RunRecord:
    p = Path(run_dir)
    return RunRecord(p, read_json(p / "config.json") or {}, read_json(p / "metrics.json"),
                     read_json(p / "provenance.json"))


def collect(results_dir) -> list[RunRecord]:
    """Every run under `results_dir` (any depth) that has a config.json; `experiment` = its path's first part."""
    root = Path(results_dir)
    out = []
    for cfg in sorted(root.rglob("config.json")):
        rec = load_run(cfg.parent)
        rel = cfg.parent.relative_to(root).parts
        rec.experiment = rel[0] if rel else ""
        out.append(rec)
    return out


# -- honesty labels -------------------------------------------------------------------------------------------------
PAPER_SETTINGS = {"vgg_weights": "imagenet", "layer": "relu4_2", "feature_stats": "imagenet"}


def deviations(config: dict, metrics: Optional[dict] = None, paper_iterations: Optional[int] = None) -> list[str]:
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
    if config.get("distance") in ("relative_perceptual_l1", "perceptual_l1", None) and fs != "imagenet":
        if fs in (None, "none"):
            out.append("no feature statistics (features not normalised)")
        else:
            out.append(f"feature statistics from {Path(str(fs)).name} (not the authors' ImageNet statistics)")
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
        out.append(f"{title}: {int(config['iterations']):,} training iterations instead of the paper's "
                   f"{paper_iterations:,}")
    if config.get("policy_every") not in (None, 100) and config.get("weight_policy") == "gradient_normalizing":
        out.append(f"weight policy updated every {config['policy_every']} iterations instead of 100")
    return out


def paper_iterations(benchmark: str) -> Optional[int]:
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
    return (":::{warning}\nThese numbers are **not comparable to the paper**. They were produced with:\n\n"
            f"{items}\n:::\n")


# -- tables of one run ------------------------------------------------------------------------------------------------
def metrics_table(metrics: dict) -> str:
    keys = ["roc_auc", "benchmark", "normal_class", "run", "iterations", "distance", "train", "test_normal",
            "test_anomalous", "data_source", "device", "eval_seconds"]
    rows = [f"| {k} | {_fmt_value(metrics.get(k))} |" for k in keys if k in metrics]
    for g, v in (metrics.get("roc_auc_per_group") or {}).items():
        rows.append(f"| roc_auc vs {g} | {_fmt_value(v)} |")
    ps = metrics.get("perceptual_sources") or {}
    rows += [f"| perceptual {k} | {_fmt_value(v)} |" for k, v in ps.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v).replace("|", "\\|")


# -- the weight policy -----------------------------------------------------------------------------------------------
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
        out[net] = {"iteration": its, "adv": adv, "rec": rec, "adv_median": np.median(adv, 1),
                    "rec_median": np.median(rec, 1), "ratio_median": np.median(adv / rec, 1), "lambda": lam}
    return out


# -- tables over runs ------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=0)) if len(v) > 1 else 0.0


def fmt_mean_std(values: Sequence[float], expected: int) -> str:
    if not values:
        return MISSING
    m, s = mean_std(values)
    txt = f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"
    if len(values) < expected:
        txt += f" ({len(values)} of {expected} runs)"
    return txt


STAND_INS = ("digits", "synthetic", "folder")      # not benchmarks of the paper: no paper number exists


def paper_cell(benchmark: str, normal_class: Optional[int]) -> str:
    if benchmark in STAND_INS:
        return "– (not in the paper)"
    v = PAPER_ROC_AUC.get((benchmark, normal_class))
    return f"{v:.3f}" if v is not None else NOT_TRANSCRIBED


def benchmark_table(records: Sequence[RunRecord], experiment: str, benchmark: str, classes: Sequence[int],
                    runs: Sequence[int], class_names: Optional[dict[int, str]] = None,
                    iterations: Optional[int] = None) -> tuple[str, dict]:
    """Paper-style table: per class mean ± std of ROC AUC over runs, then the mean over classes.

    With `iterations`, only runs trained for exactly that many iterations count (runs of an earlier budget are
    left out and reported in the summary as "n_other_budget").

    Returns (markdown, summary) where summary has "per_class" {c: [aucs]}, "mean" (over classes that have at least
    one finished run, None if none), "n_classes_done", "n_runs_done", "n_runs_expected".
    """
    by_class: dict[int, list[float]] = {c: [] for c in classes}
    other_budget = 0
    for r in records:
        if r.experiment != experiment or not r.finished:
            continue
        c, k = int(r.config.get("normal_class", -1)), int(r.config.get("run", -1))
        if c in by_class and k in runs:
            if iterations is not None and int(r.config.get("iterations", -1)) != int(iterations):
                other_budget += 1
                continue
            by_class[c].append(r.roc_auc)
    ours = "ours: ROC AUC (mean ± std over runs)" if len(runs) > 1 else "ours: ROC AUC (one run)"
    lines = [f"| normal class | {ours} | paper |", "|---|---|---|"]
    for c in classes:
        name = f"{c}" + (f" ({class_names[c]})" if class_names and c in class_names else "")
        lines.append(f"| {name} | {fmt_mean_std(by_class[c], len(runs))} | {paper_cell(benchmark, c)} |")
    done = [float(np.mean(v)) for v in by_class.values() if v]
    mean = float(np.mean(done)) if done else None
    mean_txt = MISSING if mean is None else f"{mean:.3f}"
    if done and len(done) < len(classes):
        mean_txt += f" ({len(done)} of {len(classes)} classes)"
    lines.append(f"| **mean over classes** | **{mean_txt}** | {paper_cell(benchmark, None)} |")
    summary = {"per_class": by_class, "mean": mean, "n_classes_done": len(done), "n_other_budget": other_budget,
               "n_runs_done": sum(len(v) for v in by_class.values()), "n_runs_expected": len(classes) * len(runs)}
    return "\n".join(lines), summary


def ablation_table(records: Sequence[RunRecord], rows: dict[str, str], classes: Sequence[int],
                   runs: Sequence[int], benchmark: str = "cifar10", iterations: Optional[int] = None
                   ) -> tuple[str, dict]:
    """One row per variant (variant -> experiment folder): mean over classes of the per-class mean ROC AUC.

    A variant's mean covers only the classes that every variant has finished, so the rows compare like with like;
    `out[variant]` is that mean (None where no class is common to all)."""
    tables = {v: benchmark_table(records, e, benchmark, classes, runs, iterations=iterations)[1]
              for v, e in rows.items()}
    common = [c for c in classes if all(s["per_class"][c] for s in tables.values())]
    lines = [f"| variant | ours: ROC AUC (mean over the {len(common)} classes every variant finished) | "
             "classes done | paper |", "|---|---|---|---|"]
    out = {}
    for variant, s in tables.items():
        out[variant] = float(np.mean([np.mean(s["per_class"][c]) for c in common])) if common else None
        val = MISSING if out[variant] is None else f"{out[variant]:.3f}"
        lines.append(f"| {ABLATION_TITLES.get(variant, variant)} | {val} | {s['n_classes_done']} of {len(classes)} "
                     f"| {paper_cell(benchmark, None)} |")
    return "\n".join(lines), out


def overview_table(summaries: dict[str, dict], titles: Optional[dict[str, str]] = None,
                   benchmarks: Optional[dict[str, str]] = None) -> str:
    """One row per experiment (summaries from benchmark_table); `benchmarks`: experiment -> benchmark name."""
    lines = ["| benchmark | ours: mean ROC AUC | classes done | runs done | paper |", "|---|---|---|---|---|"]
    for exp, s in summaries.items():
        val = MISSING if s["mean"] is None else f"{s['mean']:.3f}"
        lines.append(f"| {(titles or {}).get(exp, exp)} | {val} | {s['n_classes_done']} of {len(s['per_class'])} | "
                     f"{s['n_runs_done']} of {s['n_runs_expected']} | "
                     f"{paper_cell((benchmarks or {}).get(exp, exp), None)} |")
    return "\n".join(lines)


def runs_listing(records: Sequence[RunRecord]) -> str:
    """Every finished run: experiment, class, run, iterations, ROC AUC, wall time, device."""
    lines = ["| experiment | class | run | iterations | ROC AUC | wall time (s) | device |", "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r.experiment, r.config.get("normal_class", 0), r.config.get("run", 0))):
        if not r.finished:
            continue
        prov = r.provenance or {}
        wall = prov.get("wall_seconds")
        lines.append(f"| {r.experiment} | {r.config.get('normal_class')} | {r.config.get('run')} | "
                     f"{r.config.get('iterations')} | {r.roc_auc:.4f} | "
                     f"{'' if wall is None else f'{wall:.0f}'} | {r.metrics.get('device', '')} |")
    return "\n".join(lines)


# -- what the results support (sentences glued into the book, computed from the tables) ------------------------------
def ablation_support(ablation: dict[str, Optional[float]]) -> str:
    """The ranking of the distances in the ablation (weight rule fixed), or what is still missing."""
    dists = ["relative_perceptual_l1", "perceptual_l1", "perceptual_l2", "l2"]
    have = {v: ablation.get(v) for v in dists if ablation.get(v) is not None}
    missing = [ABLATION_TITLES[v] for v in dists if v not in have]
    if len(have) < 2:
        return "not measured yet (ablation runs missing: " + ", ".join(missing) + ")"
    ranked = sorted(have.items(), key=lambda kv: -kv[1])
    text = " > ".join(f"{ABLATION_TITLES[v]} {a:.3f}" for v, a in ranked)
    return text + (f" (still missing: {', '.join(missing)})" if missing else "")


def rule_support(ablation: dict[str, Optional[float]]) -> str:
    """L2 with the gradient-normalising weights against L2 with the paper's manual weights."""
    rule, manual = ablation.get("l2"), ablation.get("l2_manual")
    if rule is None or manual is None:
        return "not measured yet (L2 with the weight rule and L2 with manual weights are both needed)"
    return (f"L2 with the gradient-normalising rule {rule:.3f}, with manual weights {manual:.3f} "
            f"(difference {rule - manual:+.3f})")
