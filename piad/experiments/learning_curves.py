"""Learning curves of finished runs, read from their committed `curve.csv` files, as tables and figures.

`piad reproduce` writes a run's `curve.csv` (piad.run.curves: ROC AUC of every weight snapshot on the full test split).
Here they are gathered across runs and drawn: one thin line per normal class, their mean in bold. Nothing trains or
scores here. A run's reported number is its last iteration's; a curve only shows whether training has converged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from piad.experiments.runs import collect, config_differences, damaged, read_csv, stats_file_name


def collect_curves(results_dir, experiments: Sequence[str] | None = None):
    """A pandas DataFrame (experiment, benchmark, normal_class, run, iteration, roc_auc) of every finished run's
    curve.csv under `results_dir`, restricted to `experiments` when given."""
    import pandas as pd

    rows = []
    for rec in collect(results_dir):
        if not rec.finished or (experiments is not None and rec.experiment not in experiments):
            continue
        path = rec.path / "curve.csv"
        c = read_csv(path)
        if not c:
            if path.is_file():
                damaged(path, "is empty or not a readable CSV file", "this run's learning curve is left out")
            continue
        ok = all(k in c and c[k].dtype.kind == "f" for k in ("iteration", "roc_auc"))
        if not ok or not np.isfinite(c["iteration"]).all():
            damaged(path, "is damaged (expected numeric columns iteration, roc_auc)", "this run's curve is left out")
            continue
        for it, auc in zip(c["iteration"], c["roc_auc"], strict=True):
            rows.append(
                {
                    "experiment": rec.experiment,
                    "benchmark": rec.config.get("benchmark"),
                    "normal_class": int(rec.config.get("normal_class", -1)),
                    "run": int(rec.config.get("run", 0)),
                    "iteration": int(it),
                    "roc_auc": float(auc),
                }
            )
    return pd.DataFrame(rows, columns=["experiment", "benchmark", "normal_class", "run", "iteration", "roc_auc"])


def mean_curve(df):
    """Mean ROC AUC over classes at each iteration reached by every class (a DataFrame: iteration, roc_auc, n)."""
    if df.empty:
        return df.assign(n=[])[["iteration", "roc_auc", "n"]]
    per_class = df.groupby(["normal_class", "iteration"], as_index=False)["roc_auc"].mean()
    n_classes = per_class["normal_class"].nunique()
    g = per_class.groupby("iteration")["roc_auc"].agg(["mean", "count"]).reset_index()
    g = g[g["count"] == n_classes]
    return g.rename(columns={"mean": "roc_auc", "count": "n"})[["iteration", "roc_auc", "n"]]


def curve_trend(iterations: Sequence[int], roc_auc: Sequence[float]) -> dict:
    """How a curve moves, for choosing a budget where it does not simply climb and flatten.

    `thirds`: mean ROC AUC of the snapshots in the first, middle and last third of the run (in iteration order;
    the thirds' sizes differ by at most one); `step`: mean absolute change between neighbouring snapshots, the
    snapshot-to-snapshot noise that a difference between the thirds has to exceed; `slope_per_1000`: least-squares
    slope in ROC AUC per 1,000 iterations; `min`, `max`.
    """
    it = np.asarray(iterations, dtype=np.float64)
    y = np.asarray(roc_auc, dtype=np.float64)
    if it.shape != y.shape or len(y) < 3:
        raise ValueError(
            f"curve_trend needs at least 3 snapshots with one ROC AUC each; got {len(it)} iterations "
            f"and {len(y)} values"
        )
    order = np.argsort(it)
    it, y = it[order], y[order]
    thirds = [float(part.mean()) for part in np.array_split(y, 3)]
    return {
        "min": float(y.min()),
        "max": float(y.max()),
        "thirds": thirds,
        "step": float(np.abs(np.diff(y)).mean()),
        "slope_per_1000": float(np.polyfit(it / 1000.0, y, 1)[0]),
    }


def plot_curves(
    panels: dict[str, object],
    budgets: dict[str, int] | None = None,
    class_names=None,
    ncols: int = 2,
    controls: dict[str, dict[str, float]] | None = None,
):
    """One panel per key of `panels` (title -> curve DataFrame): a thin line per normal class, the mean over
    classes in bold, and a dashed vertical line at the panel's training budget (`budgets[title]`). `controls`:
    title -> {label: mean ROC AUC over the same classes} of training-free controls, drawn as horizontal lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False, constrained_layout=True)
    for ax, (title, df) in zip(axes.flat, panels.items(), strict=False):  # the grid may have a spare panel
        classes = sorted(df["normal_class"].unique())
        palette = dict(
            zip(classes, sns.color_palette("husl", max(len(classes), 1)), strict=False)
        )  # one colour even for no class
        for c in classes:
            d = df[df["normal_class"] == c].groupby("iteration", as_index=False)["roc_auc"].mean()
            name = (class_names or {}).get(title, {}).get(c, str(c))
            ax.plot(
                d["iteration"],
                d["roc_auc"],
                lw=1,
                alpha=0.7,
                color=palette[c],
                marker=".",
                ms=4,
                label=f"class {name}" if len(classes) <= 10 else None,
            )
        m = mean_curve(df)
        if len(classes) > 1 and not m.empty:
            ax.plot(m["iteration"], m["roc_auc"], lw=3, color="black", label=f"mean of {len(classes)} classes")
        if budgets and budgets.get(title):
            ax.axvline(budgets[title], ls="--", color="grey", lw=1.2, label=f"budget ({budgets[title]:,} it.)")
        for (label, value), ls in zip((controls or {}).get(title, {}).items(), (":", "-."), strict=False):
            ax.axhline(value, ls=ls, color="tab:red", lw=1.6, label=f"{label} ({value:.3f})")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("training iteration")
        ax.set_ylabel("test ROC AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2 if len(classes) > 5 else 1, loc="lower right", framealpha=0.9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if not panels:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no learning curves yet", ha="center", va="center")
        axes.flat[0].set_axis_off()
    return fig


def curves_table(df, class_names: dict[int, str] | None = None) -> str:
    """Markdown table: one row per normal class, one column per snapshot iteration (mean over runs)."""
    if df.empty:
        return "No learning curves yet."
    pivot = df.groupby(["normal_class", "iteration"])["roc_auc"].mean().unstack("iteration").sort_index()
    its = list(pivot.columns)
    head = "| class | " + " | ".join(f"{int(i):,}" for i in its) + " |\n|---|" + "---|" * len(its) + "\n"
    body = ""
    for c, row in pivot.iterrows():
        cells = " | ".join("" if np.isnan(v) else f"{v:.3f}" for v in row.values)
        body += f"| {(class_names or {}).get(int(c), str(c))} | {cells} |\n"
    m = mean_curve(df).set_index("iteration")["roc_auc"]
    body += "| **mean** | " + " | ".join(f"**{m[i]:.3f}**" if i in m.index else "" for i in its) + " |\n"
    return head + body


def last_rise(mean: object, budget: int, span: int = 250) -> float | None:
    """How much the mean curve (`mean_curve`) gains over its last `span` iterations before `budget`: the ROC AUC at
    the budget minus the one at budget - span (None if either snapshot is missing)."""
    m = mean.set_index("iteration")["roc_auc"]
    if budget not in m.index or budget - span not in m.index:
        return None
    return float(m[budget] - m[budget - span])


def long_run_differences(long_dir, grid_dir, experiments: Sequence[str]) -> dict[tuple[str, int, int], dict]:
    """(experiment, class, run) -> {config key: (the longer run's value, the table's run's value)} for every finished
    longer run under `long_dir` (its own folder: trained past the budget) whose config differs from the table's run
    of the same class and seed (`grid_dir/<experiment>/<class>/<run>`) in more than its iterations; feature statistics
    by file name. A longer run without a table run of its class is left out."""
    grid = {r.path.relative_to(grid_dir): r for r in collect(grid_dir) if r.finished}
    out: dict[tuple[str, int, int], dict] = {}
    for rec in collect(long_dir):
        other = grid.get(rec.path.relative_to(long_dir))
        if not rec.finished or rec.experiment not in experiments or other is None:
            continue
        keys = [k for k in config_differences(rec.config, other.config) if k != "iterations"]
        if keys:
            key = (rec.experiment, int(rec.path.parent.name), int(rec.path.name))
            out[key] = {k: (_shown(k, rec.config.get(k)), _shown(k, other.config.get(k))) for k in keys}
    return out


def _shown(key: str, value):
    return stats_file_name(value) if key == "feature_stats" else value
