"""What training adds: each benchmark's runs beside the training-free controls, with intervals and paired tests
(book: Experiments > Results; piad.experiments.controls writes the controls, piad.experiments.stats tests).

A run's interval is a bootstrap over its test images when its scores.npz was kept, else the Hanley-McNeil interval
from its ROC AUC and counts, marked † in the tables; a control's is always a bootstrap (its scores are kept). A
comparison over classes is a paired sign-flip test of the per-class differences; "resolved" means p < 0.05, and with
n classes the smallest possible p is 2 / 2^n (n = 3: 0.25), so a few classes can never resolve a difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from piad.experiments import stats
from piad.experiments.controls import CONTROLS_DIR
from piad.experiments.provenance import device_label
from piad.experiments.runs import EARLIER_SUFFIX, RunRecord, config_differences, read_json, stats_file_name
from piad.experiments.tables import classes_ranges, trained_on

CONTROL_TITLES = {"mean_image": "mean-image control", "nearest": "nearest-image control"}
ALPHA = 0.05


def _scores(folder: Path):
    """A folder's per-image scores, None where it kept none; an unreadable scores.npz raises (naming the file)
    rather than falling back silently to an interval without them."""
    from piad.run.scorefile import load_scores

    if not (folder / "scores.npz").is_file():
        return None
    return load_scores(folder / "scores.npz")


def run_replicates(rec: RunRecord, seed: int = 0) -> tuple[np.ndarray, str]:
    """Within-run replicates of the ROC AUC: bootstrap of scores.npz, else Hanley-McNeil draws."""
    z = _scores(rec.path)
    if z is not None:
        return stats.bootstrap_replicates(z.labels, z.scores, seed=seed), "bootstrap"
    m = rec.metrics
    return (
        stats.hanley_mcneil_replicates(rec.roc_auc, int(m["n_test_anomalous"]), int(m["n_test_normal"]), seed=seed),
        "Hanley-McNeil",
    )


def control_record(results_dir, experiment: str, normal_class: int, control: str, folder: str = CONTROLS_DIR):
    """(ROC AUC, bootstrap replicates) of a complete control, or None."""
    folder = Path(results_dir) / folder / experiment / str(normal_class) / control
    m = read_json(folder / "metrics.json") or {}
    z = _scores(folder)
    if m.get("status") != "ok" or z is None:
        return None
    return float(m["roc_auc"]), stats.bootstrap_replicates(z.labels, z.scores)


def _interval(estimate: float, reps: np.ndarray) -> stats.Interval:
    return stats.Interval(float(estimate), *stats.percentile_interval(reps), "")


def _cell(iv: stats.Interval | None) -> str:
    return "–" if iv is None else f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


NO_SCORES_MARK = " †"  # after a run's interval: Hanley-McNeil, the run's per-image scores were not kept


def _mark(hows: Sequence[str]) -> str:
    """The † for an interval that pools any run whose replicates are not a bootstrap of its scores."""
    return NO_SCORES_MARK if any(how != "bootstrap" for how in hows) else ""


def _run_cell(r: RunRecord) -> str:
    """A run's ROC AUC with its interval, marked when the interval is Hanley-McNeil (no per-image scores)."""
    rep, how = run_replicates(r)
    return _cell(_interval(r.roc_auc, rep)) + _mark([how])


def comparison(
    records: Sequence[RunRecord],
    results_dir,
    experiment: str,
    classes: Sequence[int],
    runs: Sequence[int] = (0,),
    iterations: int | None = None,
    class_names: dict[int, str] | None = None,
) -> tuple[str, dict]:
    """PIAD against both controls, class by class, for one experiment: a markdown table and a summary.

    Only classes with a finished run (of `runs`, at `iterations`) and both controls enter. Per class PIAD is the mean
    over its runs (its replicates pooled). The summary holds the means over classes with their intervals
    ("piad", "mean_image", "nearest": stats.Interval), the paired tests of PIAD minus each control
    ("tests": {control: stats.PairedTest}), the classes used, how the runs' intervals were computed, and per class
    the estimates ("per_class") and their intervals ("per_class_intervals": {class: {"piad", control: Interval}})."""
    per_class: dict[int, dict] = {}
    marks: dict[int, str] = {}
    methods = set()
    for c in classes:
        recs = [
            r
            for r in records
            if r.experiment == experiment
            and r.finished
            and int(r.config.get("normal_class", -1)) == c
            and int(r.config.get("run", -1)) in runs
            and (iterations is None or int(r.config.get("iterations", -1)) == int(iterations))
        ]
        ctrl = {k: control_record(results_dir, experiment, c, k) for k in CONTROL_TITLES}
        if not recs or any(v is None for v in ctrl.values()):
            continue
        reps, hows = [], []
        for r in recs:
            rep, how = run_replicates(r)
            reps.append(rep)
            hows.append(how)
        methods.update(hows)
        piad = float(np.mean([r.roc_auc for r in recs]))
        per_class[c] = {"piad": (piad, np.mean(reps, axis=0)), **ctrl}
        marks[c] = _mark(hows)
    summary: dict = {
        "classes": list(per_class),
        "run_intervals": sorted(methods),
        "tests": {},
        "per_class": {},
        "per_class_intervals": {},
    }
    lines = [
        "| normal class | PIAD (trained) | mean-image control | nearest-image control | PIAD − nearest |",
        "|---|---|---|---|---|",
    ]
    for c, v in per_class.items():
        name = f"{c}" + (f" ({class_names[c]})" if class_names and c in class_names else "")
        ivs = {k: _interval(*v[k]) for k in ("piad", *CONTROL_TITLES)}
        summary["per_class"][c] = {k: iv.estimate for k, iv in ivs.items()}
        summary["per_class_intervals"][c] = ivs
        diff = ivs["piad"].estimate - ivs["nearest"].estimate
        piad_cell = _cell(ivs["piad"]) + marks[c]
        lines.append(f"| {name} | {piad_cell} | {_cell(ivs['mean_image'])} | {_cell(ivs['nearest'])} | {diff:+.3f} |")
    if not per_class:
        return "No class has both a finished run and its controls yet.", summary
    for k in ("piad", *CONTROL_TITLES):
        summary[k] = stats.mean_interval([v[k][1] for v in per_class.values()], [v[k][0] for v in per_class.values()])
    for k in CONTROL_TITLES:
        d = [v["piad"][0] - v[k][0] for v in per_class.values()]
        summary["tests"][k] = stats.sign_flip_test(d)
    t = summary["tests"]["nearest"]
    lines.append(
        f"| **mean over {len(per_class)} classes** | **{_cell(summary['piad'])}** | {_cell(summary['mean_image'])} | "
        f"{_cell(summary['nearest'])} | {t.mean_difference:+.3f} |"
    )
    return "\n".join(lines), summary


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith("s") else "s")


def verdict(test: stats.PairedTest, first: str, second: str, unit: str = "class") -> str:
    """One sentence, only as strong as the paired test: which is higher and whether the difference is resolved.
    `unit`: what the test pairs (class, run)."""
    if test.n == 1:
        return (
            f"{first} − {second}: {test.mean_difference:+.3f} in the one {unit} measured; one {unit} allows no "
            "paired test: not resolved at this budget."
        )
    head = (
        f"{first} − {second}: {test.mean_difference:+.3f} (95% interval {test.low:+.3f} to {test.high:+.3f}; "
        f"{test.counts()} {_plural(unit)}; "
        f"sign-flip p = {test.p_value:.2g})"
    )
    if test.p_value < ALPHA:
        return head + f": {first if test.mean_difference > 0 else second} is higher."
    if test.low > 0 or test.high < 0:  # a percentile bootstrap of a few skewed differences is narrower than the test
        return (
            head
            + ": the bootstrap interval excludes 0 but the sign-flip test does not reject; not resolved at this budget."
        )
    return head + ": not resolved at this budget."


def resolvable(n: int, unit: str = "class") -> str:
    """Whether a paired sign-flip test over n pairs can resolve a difference at all (its smallest possible p)."""
    units = f"{n} {_plural(unit)}" if n != 1 else f"one {unit}"
    if n < 2:
        return f"with {units} no paired test is possible"
    p = stats.smallest_sign_flip_p(n)
    if p >= ALPHA:
        return f"with {units} no paired test can resolve a difference (the smallest possible p is {p:.2g})"
    return f"with {units} a paired test can resolve a difference (the smallest possible p is {p:.2g})"


def support(summary: dict, title: str) -> str:
    """What a benchmark's comparison supports, for the book's boxes."""
    if not summary.get("tests"):
        return f"{title}: no class has both a finished run and its controls yet."
    return (
        f"{title}, {len(summary['classes'])} classes. "
        + verdict(summary["tests"]["nearest"], "PIAD", "the nearest-image control")
        + " "
        + verdict(summary["tests"]["mean_image"], "PIAD", "the mean-image control")
    )


def pairwise(per_class: dict[str, dict[int, float]], first: str, second: str) -> stats.PairedTest | None:
    """Paired sign-flip test of two ablation variants over the classes both finished (`ablation_table`'s
    out["per_class"]), or None when they share none."""
    common = sorted(set(per_class.get(first, {})) & set(per_class.get(second, {})))
    if not common:
        return None
    return stats.sign_flip_test([per_class[first][c] - per_class[second][c] for c in common])


def seed_table(
    records: Sequence[RunRecord],
    experiment: str,
    iterations: int | None = None,
    class_names: dict[int, str] | None = None,
) -> tuple[str, dict]:
    """Classes with two or more finished runs (seeds): each run's ROC AUC, mean, standard deviation and range; the
    pooled within-class standard deviation (the run-to-run spread)."""
    by_class: dict[int, list[tuple[int, float]]] = {}
    for r in records:
        if r.experiment != experiment or not r.finished:
            continue
        if iterations is not None and int(r.config.get("iterations", -1)) != int(iterations):
            continue
        by_class.setdefault(int(r.config["normal_class"]), []).append((int(r.config["run"]), r.roc_auc))
    multi = {c: sorted(v) for c, v in sorted(by_class.items()) if len(v) >= 2}
    lines = ["| normal class | runs (seed) : ROC AUC | mean ± sd | range |", "|---|---|---|---|"]
    sq, dof = 0.0, 0
    for c, v in multi.items():
        a = np.array([x for _, x in v])
        sq += float(((a - a.mean()) ** 2).sum())
        dof += len(a) - 1
        name = f"{c}" + (f" ({class_names[c]})" if class_names and c in class_names else "")
        runs = ", ".join(f"{k}: {x:.4f}" for k, x in v)
        lines.append(f"| {name} | {runs} | {a.mean():.3f} ± {a.std(ddof=1):.3f} | {a.max() - a.min():.3f} |")
    pooled = float(np.sqrt(sq / dof)) if dof else None
    if not multi:
        return "No class has two finished runs yet.", {"classes": [], "pooled_sd": None, "n_runs": 0}
    return "\n".join(lines), {
        "classes": list(multi),
        "pooled_sd": pooled,
        "n_runs": sum(len(v) for v in multi.values()),
        "max_range": max(max(x for _, x in v) - min(x for _, x in v) for v in multi.values()),
    }


@dataclass(frozen=True)
class LeakStudy:
    """Where the two sides of the leak study live in a results folder (book: Results > What the feature statistics
    change): a benchmark's runs and controls under statistics of its own training split (all classes, the anomalous
    ones included: a one-class leak) and under the leak-free natural-image statistics. Runs: experiment folders;
    controls: (controls folder, experiment)."""

    benchmark: str
    leaky_runs: str
    leak_free_runs: str
    leaky_controls: tuple[str, str]
    leak_free_controls: tuple[str, str]


# The CIFAR-10 table's runs use the leak-free statistics; the same classes, seeds and budget trained with the CIFAR-10
# statistics are kept in cifar10-cifar10-stats/ (controls-natural-stats/ holds their controls with the leak-free
# statistics swapped in: the same numbers by another route, tests/test_committed_results.py).
LEAK_STUDY = LeakStudy(
    "cifar10", "cifar10-cifar10-stats", "cifar10", (CONTROLS_DIR, "cifar10-cifar10-stats"), (CONTROLS_DIR, "cifar10")
)


def statistics_effect(
    results_dir,
    leaky: tuple[str, str],
    leak_free: tuple[str, str],
    classes: Sequence[int],
    class_names=None,
) -> tuple[str, dict]:
    """Each control under the benchmark's own statistics (`leaky`: controls folder, experiment) against the same
    control under the leak-free statistics (`leak_free`), class by class, with a paired sign-flip test per control
    (leaky minus leak-free) over the classes both have."""
    from piad.experiments.controls import load_controls

    loaded = {folder: load_controls(results_dir, folder) for folder in {leaky[0], leak_free[0]}}  # once per folder
    own, free = loaded[leaky[0]], loaded[leak_free[0]]
    a_exp, b_exp = leaky[1], leak_free[1]
    common = [c for c in classes if (a_exp, c) in own and (b_exp, c) in free]
    lines = [
        "| normal class | mean image: the benchmark's statistics | leak-free | nearest image: the benchmark's "
        "statistics | leak-free |",
        "|---|---|---|---|---|",
    ]
    for c in common:
        a, b = own[(a_exp, c)], free[(b_exp, c)]
        name = f"{c}" + (f" ({class_names[c]})" if class_names and c in class_names else "")
        lines.append(
            f"| {name} | {a['mean_image']:.3f} | {b['mean_image']:.3f} | {a['nearest']:.3f} | {b['nearest']:.3f} |"
        )
    tests = {
        k: stats.sign_flip_test([own[(a_exp, c)][k] - free[(b_exp, c)][k] for c in common])
        for k in CONTROL_TITLES
        if common
    }
    if not common:
        return "No class has its controls under both statistics yet.", {"classes": [], "tests": {}}
    return "\n".join(lines), {"classes": common, "tests": tests}


def statistics_file(rec: RunRecord) -> str | None:
    """The name of the feature statistics a run used (its provenance), or None."""
    p = rec.provenance or read_json(rec.path / "provenance.json") or {}
    name = ((p.get("weights") or {}).get("feature_stats") or {}).get("name")
    path = name or (p.get("parameters") or {}).get("feature_stats") or rec.config.get("feature_stats")
    return stats_file_name(path)


def trained_statistics_effect(
    records: Sequence[RunRecord],
    experiment: str,
    retrained: str,
    classes: Sequence[int] = range(10),
    iterations: int | None = None,
    class_names: dict[int, str] | None = None,
) -> tuple[str, dict]:
    """Trained runs under both statistics: each class's run 0 of `experiment` (trained with the benchmark's own
    statistics) beside the same class, seed and budget trained with the leak-free statistics (`retrained`), with each
    run's interval and a paired sign-flip test of leak-free minus the other over the classes both have."""

    def run0(exp: str, c: int) -> RunRecord | None:
        for r in records:
            if (
                r.experiment == exp
                and r.finished
                and int(r.config.get("normal_class", -1)) == c
                and int(r.config.get("run", -1)) == 0
                and (iterations is None or int(r.config.get("iterations", -1)) == int(iterations))
            ):
                return r
        return None

    pairs = {c: (run0(experiment, c), run0(retrained, c)) for c in classes}
    pairs = {c: p for c, p in pairs.items() if p[0] is not None and p[1] is not None}
    files = sorted({f"{statistics_file(a)} → {statistics_file(b)}" for a, b in pairs.values()})
    lines = [
        "| normal class | trained, the benchmark's statistics | trained, leak-free statistics "
        "| leak-free − benchmark's |",
        "|---|---|---|---|",
    ]
    diffs = []
    for c, (a, b) in pairs.items():
        name = f"{c}" + (f" ({class_names[c]})" if class_names and c in class_names else "")
        diffs.append(b.roc_auc - a.roc_auc)
        lines.append(f"| {name} | {_run_cell(a)} | {_run_cell(b)} | {diffs[-1]:+.3f} |")
    if not pairs:
        return "No class has been trained under both statistics yet.", {"classes": [], "test": None}
    return "\n".join(lines), {
        "classes": list(pairs),
        "files": files,
        "differences": dict(zip(pairs, diffs, strict=True)),
        "test": stats.sign_flip_test(diffs),
    }


def reexecutions(
    records: Sequence[RunRecord], class_name=None, titles: dict[str, str] | None = None, suffix: str = EARLIER_SUFFIX
) -> tuple[str, dict]:
    """Each run executed twice: the earlier execution (experiment `<experiment><suffix>`, superseded) beside the run
    the tables use (`<experiment>`, same class and run): both ROC AUCs with their intervals, the commits that ran them
    and the difference. A pair whose configs differ (runs.config_differences) is listed with the differing keys and
    left out of the differences: it is not a re-execution. The summary's "test": a paired sign-flip test of latest
    minus earlier over the pairs (does the code change move the runs one way?); "devices": per pair, where the earlier
    and the latest execution trained (tables.trained_on); "labels": per pair, its title, class and run, as in
    "COIL-100 object 79 (run 0)"."""
    by_key = {(r.experiment, r.config.get("normal_class"), r.config.get("run")): r for r in records if r.finished}
    lines = [
        "| run | earlier execution: commit (device), ROC AUC | latest (in the tables): commit (device), ROC AUC | "
        "latest − earlier |",
        "|---|---|---|---|",
    ]

    def commit(r: RunRecord) -> str:
        p = r.provenance or {}
        return f"{str(p.get('git_commit') or '?')[:7]} ({device_label(p)})"

    diffs: dict[tuple[str, int, int], float] = {}
    devices: dict[tuple[str, int, int], tuple[str, str]] = {}
    names: dict[tuple[str, int, int], str] = {}
    for (exp, c, run), first in sorted(by_key.items(), key=lambda kv: tuple(map(str, kv[0]))):
        current = exp[: -len(suffix)] if exp.endswith(suffix) else None
        again = by_key.get((current, c, run)) if current else None
        if again is None:
            continue
        title, cname = (titles or {}).get(current, current), class_name(again, c) if class_name else None
        name = f"{title}, class {c}" + (f" ({cname})" if cname else "") + f", run {run}"
        cells = [f"{commit(r)}, {_run_cell(r)}" for r in (first, again)]
        keys = config_differences(first.config, again.config)
        if keys:
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | not comparable: config differs in {', '.join(keys)} |")
            continue
        key = (current, int(c), int(run))
        diffs[key] = again.roc_auc - first.roc_auc
        devices[key] = (trained_on(first), trained_on(again))
        names[key] = f"{title} {cname or f'class {c}'} (run {run})"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {diffs[key]:+.3f} |")
    return "\n".join(lines) if len(lines) > 2 else "No run has been executed twice yet.", {
        "differences": diffs,
        "devices": devices,
        "labels": names,
        "max_abs": max(map(abs, diffs.values())) if diffs else None,
        "test": stats.sign_flip_test(list(diffs.values())) if diffs else None,
    }


def device_changes(devices: dict[tuple[str, int, int], tuple[str, str]], titles: dict[str, str] | None = None) -> str:
    """Which executed-twice pairs (`reexecutions(...)[1]["devices"]`) changed device between their two executions."""
    if not devices:
        return "no run has been executed twice"
    moved: dict[tuple[str, str, str], list[int]] = {}
    for (exp, c, _), (earlier, latest) in sorted(devices.items()):
        if earlier != latest:
            moved.setdefault((earlier, latest, exp), []).append(c)
    if not moved:
        kinds = sorted({d for pair in devices.values() for d in pair})
        return f"both executions of every pair trained on {' or '.join(kinds)}"
    n = sum(len(v) for v in moved.values())
    parts = [
        f"{(titles or {}).get(exp, exp)} {classes_ranges(cs)}: earlier on {a}, latest on {b}"
        for (a, b, exp), cs in sorted(moved.items())
    ]
    return (
        f"{n} of the {len(devices)} pairs changed device ({'; '.join(parts)}), so their differences include the "
        "change of device as well as of code"
    )


def reexecution_tests(summary: dict) -> dict[str, stats.PairedTest | None]:
    """The paired sign-flip test of latest minus earlier (`reexecutions(...)[1]`) split by whether a pair's two
    executions trained on the same device ("same device") or not ("changed device"); None where no pair is."""
    split: dict[str, list[float]] = {"same device": [], "changed device": []}
    for key, d in summary["differences"].items():
        earlier, latest = summary["devices"][key]
        split["same device" if earlier == latest else "changed device"].append(d)
    return {k: stats.sign_flip_test(v) if v else None for k, v in split.items()}


def reexecution_by_experiment(summary: dict, titles: dict[str, str] | None = None) -> str:
    """Latest minus earlier (`reexecutions(...)[1]`) per experiment: the mean difference over its executed-twice runs
    and how many went each way, so that a shift over all pairs can be traced to the benchmarks that carry it."""
    by: dict[str, list[float]] = {}
    for (exp, _, _), d in sorted(summary["differences"].items()):
        by.setdefault(exp, []).append(d)
    parts = []
    for exp, ds in by.items():
        lower, higher = sum(d < 0 for d in ds), sum(d > 0 for d in ds)
        runs = "1 run" if len(ds) == 1 else f"{len(ds)} runs"
        parts.append(
            f"{(titles or {}).get(exp, exp)} {np.mean(ds):+.3f} over {runs} (lower in {lower}, higher in {higher})"
        )
    return "; ".join(parts) or "no run has been executed twice"
