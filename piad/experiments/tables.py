"""Markdown tables and sentences computed from finished runs (piad.experiments.runs), for the notebooks and the book.

Numbers in tables are computed from the runs' files, never typed by hand; every "paper" cell comes from
piad.experiments.labels.paper_cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from piad.experiments.labels import ABLATION_TITLES, paper_cell
from piad.experiments.provenance import device_label
from piad.experiments.runs import RunRecord

MISSING = "missing"


# -- tables of one run ------------------------------------------------------------------------------------------------
def metrics_table(metrics: dict) -> str:
    keys = [
        "roc_auc",
        "benchmark",
        "normal_class",
        "run",
        "iterations",
        "distance",
        "train",
        "test_normal",
        "test_anomalous",
        "data_source",
        "device",
        "eval_seconds",
    ]
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


# -- tables over runs ------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=0)) if len(v) > 1 else 0.0


def class_means(per_class: dict[int, Sequence[float]]) -> dict[int, float]:
    """Mean ROC AUC over runs of each normal class that has at least one finished run (`per_class` of
    :func:`benchmark_table`: class -> ROC AUC of each run)."""
    return {c: float(np.mean(a)) for c, a in per_class.items() if len(a)}


def class_range(per_class: dict[int, Sequence[float]]) -> str:
    """'lowest to highest' class mean (3 decimals), or MISSING when no class has finished."""
    means = list(class_means(per_class).values())
    return f"{min(means):.3f} to {max(means):.3f}" if means else MISSING


def fmt_mean_std(values: Sequence[float], expected: int) -> str:
    if not values:
        return MISSING
    m, s = mean_std(values)
    txt = f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"
    if len(values) < expected:
        txt += f" ({len(values)} of {expected} runs)"
    return txt


def device_kind(device) -> str:
    """'CPU' or 'GPU' from a run's device string ('cpu', 'cuda:0', ...)."""
    d = str(device or "cpu")
    return "GPU" if d.startswith(("cuda", "mps")) else "CPU"


def benchmark_table(
    records: Sequence[RunRecord],
    experiment: str,
    benchmark: str,
    classes: Sequence[int],
    runs: Sequence[int],
    class_names: dict[int, str] | None = None,
    iterations: int | None = None,
) -> tuple[str, dict]:
    """Paper-style table: per class mean ± std of ROC AUC over runs, then the mean over classes.

    With `iterations`, only runs trained for exactly that many iterations count (runs of an earlier budget are
    left out and reported in the summary as "n_other_budget").

    Returns (markdown, summary) where summary has "per_class" {c: [aucs]}, "mean" (over classes that have at least
    one finished run, None if none), "n_classes_done", "n_runs_done", "n_runs_expected".
    """
    by_class: dict[int, list[float]] = {c: [] for c in classes}
    devices: dict[int, set[str]] = {c: set() for c in classes}
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
            devices[c].add(device_kind((r.metrics or {}).get("device")))
    ours = "ours: ROC AUC (mean ± std over runs)" if len(runs) > 1 else "ours: ROC AUC (one run)"
    lines = [f"| normal class | {ours} | paper | trained on |", "|---|---|---|---|"]
    for c in classes:
        name = f"{c}" + (f" ({class_names[c]})" if class_names and c in class_names else "")
        dev = ", ".join(sorted(devices[c]))
        lines.append(f"| {name} | {fmt_mean_std(by_class[c], len(runs))} | {paper_cell(benchmark, c)} | {dev} |")
    done = [float(np.mean(v)) for v in by_class.values() if v]
    mean = float(np.mean(done)) if done else None
    mean_txt = MISSING if mean is None else f"{mean:.3f}"
    if done and len(done) < len(classes):
        mean_txt += f" ({len(done)} of {len(classes)} classes)"
    lines.append(f"| **mean over classes** | **{mean_txt}** | {paper_cell(benchmark, None)} | |")
    summary = {
        "per_class": by_class,
        "mean": mean,
        "n_classes_done": len(done),
        "n_other_budget": other_budget,
        "n_runs_done": sum(len(v) for v in by_class.values()),
        "n_runs_expected": len(classes) * len(runs),
    }
    return "\n".join(lines), summary


# The ablation asks two separate questions, each answered over the classes its own variants have all finished, so a
# slow variant of one question does not hold back the other (book: Experiments > Ablation).
ABLATION_COMPARISONS = {
    "distance": ("relative_perceptual_l1", "perceptual_l1", "perceptual_l2", "l2"),
    "rule": ("l2", "l2_manual"),
}
COMPARISON_TITLES = {"distance": "distances compared, weight rule fixed", "rule": "weight rule against manual weights"}


def classes_phrase(classes: Sequence[int]) -> str:
    """'class 0', 'classes 0, 2', or '' for none."""
    return f"class{'es' if len(classes) > 1 else ''} {', '.join(map(str, classes))}" if classes else ""


def ablation_table(
    records: Sequence[RunRecord],
    rows: dict[str, str],
    classes: Sequence[int],
    runs: Sequence[int],
    benchmark: str = "cifar10",
    iterations: int | None = None,
) -> tuple[str, dict]:
    """One row per variant (variant -> experiment folder), one column per comparison (ABLATION_COMPARISONS).

    A comparison's cell is the mean over classes of the per-class mean ROC AUC, taken over the classes that every
    variant of that comparison has finished, so its cells compare like with like. Returns (markdown, out) with
    `out[comparison][variant]` that mean (None where those variants share no finished class),
    `out["classes"][comparison]` the classes it covers and `out["per_class"][variant]` {class: mean ROC AUC over
    runs} for every class the variant finished (the ablation figure's bars)."""
    tables = {
        v: benchmark_table(records, e, benchmark, classes, runs, iterations=iterations)[1] for v, e in rows.items()
    }
    out: dict = {"classes": {}, "per_class": {v: class_means(t["per_class"]) for v, t in tables.items()}}
    for comp, variants in ABLATION_COMPARISONS.items():
        members = [v for v in variants if v in tables]
        common = [c for c in classes if members and all(tables[v]["per_class"][c] for v in members)]
        out["classes"][comp] = common
        out[comp] = {
            v: float(np.mean([np.mean(tables[v]["per_class"][c]) for c in common])) if common else None for v in members
        }
    head = []
    for comp in ABLATION_COMPARISONS:
        common = out["classes"][comp]
        over = f"mean over {classes_phrase(common)}" if common else "no class finished by all of them yet"
        head.append(f"ours, {COMPARISON_TITLES[comp]}: ROC AUC ({over})")
    lines = [f"| variant | {' | '.join(head)} | classes done | paper |", "|---" * (len(head) + 3) + "|"]
    for variant, s in tables.items():
        cells = []
        for comp in ABLATION_COMPARISONS:
            if variant not in out[comp]:
                cells.append("–")
            else:
                v = out[comp][variant]
                cells.append(MISSING if v is None else f"{v:.3f}")
        lines.append(
            f"| {ABLATION_TITLES.get(variant, variant)} | {' | '.join(cells)} | "
            f"{s['n_classes_done']} of {len(classes)} | {paper_cell(benchmark, None)} |"
        )
    return "\n".join(lines), out


def overview_table(
    summaries: dict[str, dict], titles: dict[str, str] | None = None, benchmarks: dict[str, str] | None = None
) -> str:
    """One row per experiment (summaries from benchmark_table); `benchmarks`: experiment -> benchmark name."""
    lines = ["| benchmark | ours: mean ROC AUC | classes done | runs done | paper |", "|---|---|---|---|---|"]
    for exp, s in summaries.items():
        val = MISSING if s["mean"] is None else f"{s['mean']:.3f}"
        lines.append(
            f"| {(titles or {}).get(exp, exp)} | {val} | {s['n_classes_done']} of {len(s['per_class'])} | "
            f"{s['n_runs_done']} of {s['n_runs_expected']} | "
            f"{paper_cell((benchmarks or {}).get(exp, exp), None)} |"
        )
    return "\n".join(lines)


def runs_listing(records: Sequence[RunRecord]) -> str:
    """Every finished run: experiment, class, run, iterations, ROC AUC, training and evaluation time, device.

    Training time is the run's log (`training_seconds` in provenance.json): summed over every session of a run that
    was interrupted and resumed (iterations repeated after the last checkpoint count once). The provenance's
    `wall_seconds` covers only the last session, so it is not shown."""
    lines = [
        "| experiment | class | run | iterations | ROC AUC | training time (s) | evaluation (s) | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r.experiment, r.config.get("normal_class", 0), r.config.get("run", 0))):
        if not r.finished:
            continue
        train = (r.provenance or {}).get("training_seconds")
        ev = r.metrics.get("eval_seconds")
        lines.append(
            f"| {r.experiment} | {r.config.get('normal_class')} | {r.config.get('run')} | "
            f"{r.config.get('iterations')} | {r.roc_auc:.4f} | {'' if train is None else f'{train:.0f}'} | "
            f"{'' if ev is None else f'{ev:.0f}'} | {r.metrics.get('device', '')} |"
        )
    return "\n".join(lines)


def ranges_phrase(numbers: Sequence[int]) -> str:
    """Sorted integers with three or more consecutive ones joined: [12, 13, 16, 18, 19, 20] -> '12, 13, 16, 18-20'."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if b - a > 1 else ", ".join(map(str, range(a, b + 1))) for a, b in spans)


def classes_ranges(classes: Sequence[int]) -> str:
    """'class 3', 'classes 16, 18-20' (ranges_phrase)."""
    return f"class{'es' if len(set(classes)) > 1 else ''} {ranges_phrase(classes)}"


def trained_on(record: RunRecord) -> str:
    """Where a run trained, in words: 'a CPU', 'an NVIDIA H200 GPU' (from its provenance.json, else metrics.json)."""
    prov = record.provenance or {"device": (record.metrics or {}).get("device")}
    label, accelerator = device_label(prov), (prov.get("hardware") or {}).get("accelerator")
    if label == "cpu":
        return "a CPU"
    return f"an {accelerator} GPU" if label.startswith("cuda") and accelerator else label


def devices_sentence(records: Sequence[RunRecord], titles: dict[str, str]) -> str:
    """Where the given runs trained: the most common device, then every other device's runs by experiment and class.

    'All these runs trained on a 2-core CPU except COIL-100 classes 18-29 (12 of its 30 runs), on an NVIDIA H200
    GPU.' The CPU's cores are named when every CPU run recorded the same count. `titles` maps an experiment to its
    name in the sentence."""
    if not records:
        return "No run has finished yet."
    where = [trained_on(r) for r in records]
    on_cpu = [r for r, w in zip(records, where, strict=True) if w == "a CPU"]
    cores = {((r.provenance or {}).get("hardware") or {}).get("logical_cpus") for r in on_cpu}
    if len(cores) == 1 and None not in cores:
        where = [f"a {next(iter(cores))}-core CPU" if w == "a CPU" else w for w in where]
    main = max(sorted(set(where)), key=where.count)
    totals = {e: sum(r.experiment == e for r in records) for e in {r.experiment for r in records}}
    groups: dict[tuple[str, str], list[int]] = {}
    for r, w in zip(records, where, strict=True):
        if w != main:
            groups.setdefault((w, r.experiment), []).append(int(r.config.get("normal_class", -1)))
    if not groups:
        return f"All these runs trained on {main}."
    parts = []
    for (w, e), classes in sorted(groups.items()):
        runs = f"{len(classes)} of its {totals[e]} run{'s' if totals[e] > 1 else ''}"
        parts.append(f"{titles.get(e, e)} {classes_ranges(classes)} ({runs}), on {w}")
    return f"All these runs trained on {main} except " + "; ".join(parts) + "."


# -- what the results support (sentences glued into the book, computed from the tables) ------------------------------
def ablation_support(distance: dict[str, float | None]) -> str:
    """The ranking of the distances, the weight rule fixed (`ablation_table(...)[1]["distance"]`), or what is
    still missing."""
    dists = ABLATION_COMPARISONS["distance"]
    have = {v: distance.get(v) for v in dists if distance.get(v) is not None}
    missing = [ABLATION_TITLES[v] for v in dists if v not in have]
    if len(have) < 2:
        if distance and all(a is None for a in distance.values()):
            return (
                "not measured yet (no class has finished under all four distances; the ablation table lists "
                "each variant's classes done)"
            )
        return "not measured yet (ablation runs missing: " + ", ".join(missing) + ")"
    ranked = sorted(have.items(), key=lambda kv: -kv[1])
    text = " > ".join(f"{ABLATION_TITLES[v]} {a:.3f}" for v, a in ranked)
    return text + (f" (still missing: {', '.join(missing)})" if missing else "")


def rule_support(rule: dict[str, float | None]) -> str:
    """L2 with the gradient-normalising weights against L2 with the paper's manual weights
    (`ablation_table(...)[1]["rule"]`)."""
    auto, manual = rule.get("l2"), rule.get("l2_manual")
    if auto is None or manual is None:
        return "not measured yet (no class has finished under both L2 with the weight rule and L2 with manual weights)"
    return (
        f"L2 with the gradient-normalising rule {auto:.3f}, with manual weights {manual:.3f} "
        f"(difference {auto - manual:+.3f})"
    )
