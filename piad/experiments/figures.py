"""Figures of the notebooks (train_evaluate, weight_policy, perceptual_metric): labelled axes, readable legends.

Each function reads a run folder (log.csv, policy.csv, scores.csv, samples/latest.png, metrics.json) or a study
result and returns a matplotlib figure laid out with constrained_layout in seaborn's "whitegrid" style. Captions
and the text that says what to see live in the notebooks (numbered figures: ``{glue:figure}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from piad.experiments.runs import policy_series, read_csv, read_json
from piad.experiments.tables import class_means

ITERATION = "training iteration"
_NAN = np.array([])


@contextmanager
def style():
    """seaborn whitegrid, font sizes for a book page (legends and tick labels at least 10 pt)."""
    import seaborn as sns

    with (
        sns.axes_style("whitegrid"),
        sns.plotting_context("notebook", rc={"legend.fontsize": 10, "legend.title_fontsize": 10}),
    ):
        yield


BOOK_COLUMN_INCHES = 7.9  # the book's text column (about 760 CSS px): wider figures are shown scaled down
MIN_TEXT_PT = 9.0  # the smallest text of a figure at the width it is shown


def text_pt(width_inches: float) -> float:
    """The font size (pt) a figure `width_inches` wide needs for its text to be at least 9 pt where the book shows it
    at the column's width."""
    return MIN_TEXT_PT * max(1.0, width_inches / BOOK_COLUMN_INCHES) + 1.0


def _readable_text(width_inches: float) -> None:
    """Inside style(): raise every font size of the figure about to be drawn to text_pt(width) at least."""
    import matplotlib.pyplot as plt

    pt = text_pt(width_inches)
    for key in (
        "font.size",
        "axes.labelsize",
        "axes.titlesize",
        "xtick.labelsize",
        "ytick.labelsize",
        "legend.fontsize",
        "legend.title_fontsize",
        "figure.titlesize",
    ):
        size = plt.rcParams[key]
        if not isinstance(size, (int, float)) or size < pt:
            plt.rcParams[key] = pt


def _subplots(*args, **kw):
    import matplotlib.pyplot as plt

    _readable_text(kw.get("figsize", plt.rcParams["figure.figsize"])[0])
    return plt.subplots(*args, layout="constrained", **kw)


def _col(log: dict, key: str) -> np.ndarray:
    return log.get(key, np.full(len(log.get("iteration", _NAN)), np.nan))


def samples(run_dir):
    """samples/latest.png: rows G(z) (random samples), x (training images), G(E(x)) (their reconstructions)."""
    from PIL import Image

    img = np.asarray(Image.open(Path(run_dir) / "samples" / "latest.png").convert("RGB"))
    with style():
        fig, ax = _subplots(figsize=(9, 3.6))
        ax.imshow(img, interpolation="nearest")
        ax.grid(False)
        h = img.shape[0] / 3
        ax.set_yticks(
            [h / 2, 1.5 * h, 2.5 * h], ["G(z)\nrandom samples", "x\ntraining images", "G(E(x))\nreconstructions"]
        )
        ax.set_xticks([])
    return fig


def losses(run_dir):
    """The loss terms of log.csv: (a) critics, (b) adversarial terms of E and G, (c) reconstruction loss."""
    log = read_csv(Path(run_dir) / "log.csv")
    it = log.get("iteration", _NAN)
    with style():
        fig, axes = _subplots(1, 3, figsize=(10.5, 4), sharex=True)
        for k, name in (("critic_x", "L_D of D_X (images)"), ("critic_z", "L_D of D_Z (latents)")):
            axes[0].plot(it, _col(log, k), label=name)
        for k, name, c in (
            ("wasserstein_x", "E[D_X(fake)] − E[D_X(real)]", "C0"),
            ("wasserstein_z", "E[D_Z(fake)] − E[D_Z(real)]", "C1"),
        ):
            axes[0].plot(it, _col(log, k), ls="--", color=c, label=name)
        axes[0].set(title="(a) critics", ylabel="critic loss (dimensionless)")
        axes[1].plot(it, _col(log, "adv_e"), label="L_adv of E = −E[D_Z(E(x))]")
        axes[1].plot(it, _col(log, "adv_g"), label="L_adv of G = −E[D_X(G(z))]")
        axes[1].set(title="(b) adversarial terms", ylabel="adversarial loss (dimensionless)")
        axes[2].plot(it, _col(log, "rec"), color="C3", label="L_rec = mean d(x, G(E(x)))")
        cfg = read_json(Path(run_dir) / "config.json") or {}
        axes[2].set(title="(c) reconstruction loss", ylabel=f"L_rec ({cfg.get('distance', 'distance')})")
        for ax in axes:
            ax.set_xlabel(ITERATION)
            ax.legend(loc="best")
    return fig


def lambdas(run_dir):
    """lambda_E and lambda_G of log.csv (log scale)."""
    log = read_csv(Path(run_dir) / "log.csv")
    it = log.get("iteration", _NAN)
    with style():
        fig, ax = _subplots(figsize=(7, 4))
        ax.plot(it, _col(log, "lambda_e"), label="λ_E (encoder)")
        ax.plot(it, _col(log, "lambda_g"), label="λ_G (generator)")
        ax.set(yscale="log", xlabel=ITERATION, ylabel="weight λ of L_rec (dimensionless)")
        ax.legend(loc="best")
    return fig


def score_histogram(run_dir):
    """Anomaly scores of normal and anomalous test images (scores.csv), densities normalised per group."""
    import pandas as pd
    import seaborn as sns

    s = read_csv(Path(run_dir) / "scores.csv")
    m = read_json(Path(run_dir) / "metrics.json") or {}
    label = np.asarray(s["label"]).astype(int)
    names = np.where(label == 1, f"anomalous ({int((label == 1).sum())})", f"normal ({int((label == 0).sum())})")
    df = pd.DataFrame({"score": s["score"], "test image": names})
    with style():
        fig, ax = _subplots(figsize=(7, 4))
        sns.histplot(df, x="score", hue="test image", stat="density", common_norm=False, bins=40, element="step", ax=ax)
        ax.set(
            xlabel=f"anomaly score d(x, G(E(x))) ({m.get('distance', 'distance')})",
            ylabel="density (per unit of score)",
        )
        auc = m.get("roc_auc")
        if isinstance(auc, float):
            ax.set_title(f"ROC AUC = {auc:.4f}")
    return fig


def gradient_stds(runs: dict[str, Any]):
    """Per-layer std of dL_adv/dW and dL_rec/dW (thin) and their medians (thick), for E and G; one row per run."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    with style():
        _readable_text(10)
        fig = plt.figure(figsize=(10, 3.4 * max(1, len(runs)) + 0.6), layout="constrained")
        subs = np.atleast_1d(fig.subfigures(max(1, len(runs)), 1))
        for sub, (label, d) in zip(subs, runs.items(), strict=False):
            sub.suptitle(label)
            series = policy_series(d)
            axes = sub.subplots(1, 2)
            for ax, net, name in zip(axes, ("E", "G"), ("encoder E", "generator G"), strict=False):
                ax.set(title=name, xlabel=ITERATION, ylabel="gradient std over a layer", yscale="log")
                s = series.get(net)
                if s is None:
                    ax.text(0.5, 0.5, "no policy.csv", ha="center", transform=ax.transAxes)
                    continue
                ax.plot(s["iteration"], s["adv"], color="C0", lw=0.6, alpha=0.35)
                ax.plot(s["iteration"], s["rec"], color="C1", lw=0.6, alpha=0.35)
                ax.plot(s["iteration"], s["adv_median"], color="C0", lw=2.2)
                ax.plot(s["iteration"], s["rec_median"], color="C1", lw=2.2)
        handles = [
            Line2D([], [], color="C0", lw=2.2),
            Line2D([], [], color="C1", lw=2.2),
            Line2D([], [], color="grey", lw=0.6),
        ]
        fig.legend(
            handles,
            ["std of dL_adv/dW (median over layers)", "std of dL_rec/dW (median over layers)", "one layer"],
            loc="outside lower center",
            ncols=3,
        )
    return fig


def policy_lambdas(runs: dict[str, Any], manual: tuple[float, float] | None = None):
    """lambda_E and lambda_G of each run (label -> run dir), with the manual weights as dashed lines."""
    with style():
        fig, axes = _subplots(1, 2, figsize=(10, 4.2 + 0.35 * len(runs)))
        for i, (label, d) in enumerate(runs.items()):
            log = read_csv(Path(d) / "log.csv")
            if log:
                for ax, k in zip(axes, ("lambda_e", "lambda_g"), strict=False):
                    ax.plot(log["iteration"], log[k], color=f"C{i}", label=label)
        names = ("λ_E (encoder)", "λ_G (generator)")
        if manual is not None:
            for ax, v in zip(axes, manual, strict=False):
                ax.axhline(v, color="k", ls="--", lw=1.2, label="manual weights (λ_E = 10, λ_G = 100)")
        for ax, name in zip(axes, names, strict=False):
            ax.set(yscale="log", xlabel=ITERATION, ylabel="weight of L_rec (dimensionless)", title=name)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=1)
    return fig


def contrast_ratio(study: dict):
    """median d(x_c, y_c) / median d(x, y) against the contrast factor c, one line per distance (log y)."""
    from piad.experiments.contrast import LABELS

    with style():
        fig, ax = _subplots(figsize=(7, 4.5))
        for k, r in study["ratio"].items():
            ax.plot(study["contrasts"], r, marker="o", label=LABELS.get(k, k))
        ax.axhline(1.0, color="grey", lw=1, ls="--")
        ax.set(
            yscale="log",
            xlabel="contrast factor c (1 = the original image)",
            ylabel="median d(x_c, y_c) / median d(x, y)",
        )
        ax.legend(title="distance", loc="best")
    return fig


def contrast_examples(images, distances: dict, contrasts=(0.5, 1.0, 2.0)):
    """A few images x_c (top of each pair) and their blurred y_c (bottom) at several contrasts; and a Markdown
    table of d(x_c, y_c) / d(x, y) per image, contrast and distance (the figure holds no numbers)."""
    from piad.experiments.contrast import LABELS, box_blur, distances_at, scale_contrast

    x = images.float()
    y = box_blur(x)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    d = {c: distances_at(x, y, distances, float(c)) for c in (*contrasts, 1.0)}
    n = len(x)
    with style():
        fig, axes = _subplots(2 * n, len(contrasts), figsize=(1.7 * len(contrasts) + 1.3, 1.7 * 2 * n), squeeze=False)
        for j, c in enumerate(contrasts):
            xc, yc = scale_contrast(x, c, m), scale_contrast(y, c, m)
            for i in range(n):
                for r, img, name in ((2 * i, xc[i], "x_c"), (2 * i + 1, yc[i], "y_c (blurred)")):
                    ax = axes[r, j]
                    show = ((img.expand(3, -1, -1).permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
                    ax.imshow(show, interpolation="nearest")
                    ax.set(xticks=[], yticks=[])
                    ax.grid(False)
                    if r == 0:
                        ax.set_title(f"c = {c:g}")
                    if j == 0:
                        ax.set_ylabel(f"image {i + 1}\n{name}")
    head = "| image | distance | " + " | ".join(f"c = {c:g}" for c in contrasts) + " |"
    rows = [head, "|---|---|" + "---|" * len(contrasts)]
    for i in range(n):
        for k in distances:
            vals = " | ".join(f"{d[c][k][i] / d[1.0][k][i]:.3g}" for c in contrasts)
            rows.append(f"| {i + 1} | {LABELS.get(k, k)} | {vals} |")
    return fig, "\n".join(rows)


def ablation_bars(
    per_class: dict[str, dict[int, float]],
    classes: Sequence[int],
    benchmark: str = "CIFAR-10",
    names: dict[int, str] | None = None,
    intervals: dict[str, dict[int, dict]] | None = None,
):
    """ROC AUC per normal class, one bar per ablation variant, for each question of the ablation (panel a: the
    distances, weight rule fixed; panel b: weight rule against manual weights). `per_class`: variant -> {class: mean
    ROC AUC over runs} (`tables.ablation_table(...)[1]["per_class"]`); a class a variant has not finished has no bar.
    `names`: class -> its name (the x axis shows names, e.g. "airplane", where given). `intervals`: variant ->
    {class: {"piad", "mean_image", "nearest": stats.Interval}} (the "per_class_intervals" of each variant's
    `evidence.comparison`): each bar gets its 95% interval, and the variant's two training-free controls (scored with
    the same distance) are drawn on it as markers with theirs.
    """
    names, intervals = names or {}, intervals or {}
    import pandas as pd
    import seaborn as sns
    from matplotlib.lines import Line2D

    from piad.experiments.labels import ABLATION_TITLES
    from piad.experiments.tables import ABLATION_COMPARISONS, COMPARISON_TITLES

    colors = dict(zip(ABLATION_TITLES.values(), sns.color_palette("colorblind", len(ABLATION_TITLES)), strict=False))
    with style():
        fig, axes = _subplots(2, 1, figsize=(10.5, 10.5))
        for ax, (letter, (comp, variants)) in zip(
            axes, zip("ab", ABLATION_COMPARISONS.items(), strict=False), strict=False
        ):
            shown = [v for v in variants if v in per_class]
            rows = [
                {"normal class": names.get(c, str(c)), "variant": ABLATION_TITLES.get(v, v), "ROC AUC": per_class[v][c]}
                for v in shown
                for c in classes
                if c in per_class[v]
            ]
            df = pd.DataFrame(rows, columns=["normal class", "variant", "ROC AUC"])
            order = [names.get(c, str(c)) for c in classes]
            extra = []
            if len(df):
                sns.barplot(
                    df,
                    x="normal class",
                    y="ROC AUC",
                    hue="variant",
                    hue_order=[ABLATION_TITLES.get(v, v) for v in shown],
                    order=order,
                    palette=colors,
                    errorbar=None,  # one value per bar; the intervals over test images are drawn below
                    ax=ax,
                )
                drew = False
                for v, bars in zip(shown, ax.containers, strict=False):
                    for c, patch in zip(classes, bars.patches, strict=False):
                        ivs = intervals.get(v, {}).get(c)
                        if ivs is None or not np.isfinite(patch.get_height()):
                            continue
                        x, w = patch.get_x() + patch.get_width() / 2, patch.get_width()
                        for key, dx in (("piad", 0.0), ("mean_image", -w / 4), ("nearest", w / 4)):
                            label, marker, color, _ = CONTROL_MARKERS[key]
                            iv = ivs[key]
                            ax.plot([x + dx, x + dx], [iv.low, iv.high], color="k" if key == "piad" else color, lw=1.2)
                            if key != "piad":
                                ax.plot(x + dx, iv.estimate, marker=marker, color=color, mfc="white", ms=6)
                        drew = True
                if drew:
                    extra = [
                        Line2D([], [], color="k", lw=1.2, label="95% interval"),
                        *(
                            Line2D(
                                [],
                                [],
                                marker=CONTROL_MARKERS[k][1],
                                color=CONTROL_MARKERS[k][2],
                                mfc="white",
                                ls="none",
                                label=f"{CONTROL_MARKERS[k][0]}, same distance",
                            )
                            for k in ("mean_image", "nearest")
                        ),
                    ]
            else:
                ax.text(0.5, 0.5, "no finished run yet", ha="center", va="center", transform=ax.transAxes)
            ax.axhline(0.5, color="k", ls="--", lw=1, label="chance (0.5)")
            ax.set(
                ylim=(0, 1.05),
                xlabel=f"{benchmark} normal class",
                ylabel="ROC AUC",
                title=f"({letter}) {COMPARISON_TITLES[comp]}",
            )
            handles, _ = ax.get_legend_handles_labels()
            ax.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="variant")
    return fig


def per_class_auc(
    per_class: dict[str, dict[int, list[float]]],
    names: dict[str, dict[int, str]] | None = None,
    xlabels: dict[str, str] | None = None,
):
    """ROC AUC per normal class, one panel per benchmark (title -> {class: [ROC AUC of each finished run]}, the
    `per_class` of tables.benchmark_table): a bar per class at its mean over runs (error bar: standard deviation over
    runs where a class has several), the mean over the finished classes as a solid line, chance as a dashed one.
    `names`: title -> {class: tick label}; `xlabels`: title -> axis label (default "normal class"). Panels of up to
    12 classes sit two to a row; a panel with more takes a whole row."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    names, xlabels = names or {}, xlabels or {}
    narrow = [t for t, v in per_class.items() if len(v) <= 12]
    wide = [t for t in per_class if t not in narrow]
    cols = 2 if len(per_class) > 1 else 1
    rows_narrow = -(-len(narrow) // cols)
    n_rows = max(rows_narrow + len(wide), 1)
    width = 5.25 * cols
    with style():
        _readable_text(width)
        fig = plt.figure(figsize=(width, 4.2 * n_rows), layout="constrained")
        grid = fig.add_gridspec(n_rows, cols)
        places = [grid[i // cols, i % cols] for i in range(len(narrow))]
        places += [grid[rows_narrow + i, :] for i in range(len(wide))]
        for place, title in zip(places, narrow + wide, strict=True):
            ax = fig.add_subplot(place)
            by_class = per_class[title]
            label = {c: names.get(title, {}).get(c, str(c)) for c in by_class}
            df = pd.DataFrame(
                [{"normal class": label[c], "ROC AUC": a} for c, aucs in by_class.items() for a in aucs],
                columns=["normal class", "ROC AUC"],
            )
            means = list(class_means(by_class).values())
            if len(df):
                sns.barplot(
                    df, x="normal class", y="ROC AUC", order=list(label.values()), errorbar="sd", color="C0", ax=ax
                )
                overall = float(np.mean(means))
                ax.axhline(
                    overall, color="C3", lw=2, label=f"mean over {len(means)} of {len(by_class)} classes: {overall:.3f}"
                )
            else:
                ax.text(0.5, 0.5, "no finished run yet", ha="center", va="center", transform=ax.transAxes)
            ax.axhline(0.5, color="k", ls="--", lw=1, label="chance (0.5)")
            ax.set(ylim=(0, 1.05), title=title, xlabel=xlabels.get(title, "normal class"), ylabel="ROC AUC")
            if max((len(s) for s in label.values()), default=0) > 2:
                ax.tick_params(axis="x", rotation=45)
                for t in ax.get_xticklabels():
                    t.set_horizontalalignment("right")
                    t.set_rotation_mode("anchor")
            ax.legend(loc="lower right")
    return fig


CONTROL_MARKERS = {  # summary key -> (label, marker, colour, vertical offset within a class's row)
    "piad": ("PIAD (trained)", "o", "C0", -0.22),
    "mean_image": ("mean-image control", "s", "0.45", 0.0),
    "nearest": ("nearest-image control", "^", "C1", 0.22),
}


def _columns(sizes: Sequence[int], n_cols: int) -> list[list[int]]:
    """Panel indices per column, each panel to the column with the fewest rows so far (order kept within one)."""
    cols: list[list[int]] = [[] for _ in range(n_cols)]
    load = [0] * n_cols
    for i, n in enumerate(sizes):
        k = int(np.argmin(load))
        cols[k].append(i)
        load[k] += n + 3  # a panel's title and axis take about three class rows
    return [c for c in cols if c]


def _forest_panel(ax, title: str, intervals: dict, names: dict[int, str]) -> None:
    classes = list(intervals)
    n = len(classes)
    for key, (label, marker, color, dy) in CONTROL_MARKERS.items():
        est = np.array([intervals[c][key].estimate for c in classes])
        lo = np.array([intervals[c][key].low for c in classes])
        hi = np.array([intervals[c][key].high for c in classes])
        face = color if key == "piad" else "white"
        ax.errorbar(est, np.arange(n) + dy, xerr=[est - lo, hi - est], fmt=marker, color=color, mfc=face, label=label)
    ax.set_yticks(np.arange(n), [names.get(c, str(c)) for c in classes])
    ax.set_ylim(n - 0.5, -0.5)
    left = max(0.0, min(iv.low for c in classes for iv in intervals[c].values()) - 0.03)
    ax.set_xlim(left, 1.012)
    if left < 0.5:
        ax.axvline(0.5, color="k", ls="--", lw=1)
    ax.set(title=f"{title}: {n} class{'es' if n != 1 else ''}", xlabel="ROC AUC")
    ax.grid(axis="y", visible=False)


def against_controls(panels: dict[str, dict], names: dict[str, dict[int, str]] | None = None):
    """Per normal class, PIAD beside the two training-free controls, each with its 95% interval (a forest plot, one
    panel per benchmark, in two columns). `panels`: title -> `evidence.comparison(...)[1]` (its
    "per_class_intervals"); `names`: title -> {class: name} for the class labels."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = names or {}
    items = [(t, s["per_class_intervals"]) for t, s in panels.items() if s.get("per_class_intervals")]
    sizes = [len(iv) for _, iv in items]
    cols = _columns(sizes, 2 if len(items) > 1 else 1)
    width = 10.5 if len(cols) > 1 else 6.0
    rows_max = max([sum(sizes[i] + 3 for i in col) for col in cols], default=4)
    with style():
        _readable_text(width)
        fig = plt.figure(figsize=(width, 1.0 + 0.24 * rows_max), layout="constrained")
        if not items:
            ax = fig.add_subplot()
            ax.text(0.5, 0.5, "no class has a run and its controls yet", ha="center", va="center")
            ax.set_axis_off()
            return fig
        subfigs = fig.subfigures(1, len(cols), squeeze=False)[0] if len(cols) > 1 else [fig]
        for sub, col in zip(subfigs, cols, strict=True):
            axes = sub.subplots(len(col), 1, squeeze=False, height_ratios=[sizes[i] + 3 for i in col])[:, 0]
            for ax, i in zip(axes, col, strict=True):
                _forest_panel(ax, items[i][0], items[i][1], names.get(items[i][0], {}))
        handles = [
            Line2D([], [], marker=m, color=c, mfc=c if k == "piad" else "white", label=lab)
            for k, (lab, m, c, _) in CONTROL_MARKERS.items()
        ] + [Line2D([], [], color="k", ls="--", lw=1, label="chance (0.5)")]
        fig.legend(handles=handles, loc="outside upper center", ncols=4, frameon=False)
    return fig


def ranked_indices(labels: np.ndarray, scores: np.ndarray) -> dict[str, int]:
    """Test-image indices of the best, median and worst scored normal and anomalous images: for normals the lowest
    score is best, for anomalies the highest ('normal, best', ..., 'anomalous, worst')."""
    out = {}
    for lab, name in ((0, "normal"), (1, "anomalous")):
        idx = np.flatnonzero(labels == lab)
        if not len(idx):
            continue
        order = idx[np.argsort(scores[idx], kind="stable")]
        if lab == 1:
            order = order[::-1]
        for rank, pos in (("best", 0), ("median", len(order) // 2), ("worst", len(order) - 1)):
            out[f"{name}, {rank}"] = int(order[pos])
    return out


def ranked_reconstructions(run_dir, device="cpu"):
    """Columns: the best, median and worst scored normal and anomalous test images of a finished run (scores.npz);
    rows x, G(E(x)) and the anomaly map (the distance's per-location error, one colour scale for all columns)."""
    import torch

    from piad.data import load_for_config
    from piad.run.evaluation import AnomalyScorer
    from piad.run.rundir import latest_checkpoint, load_run_config
    from piad.run.scorefile import load_scores

    run_dir = Path(run_dir)
    z = load_scores(run_dir / "scores.npz")
    picks = ranked_indices(z.labels, z.scores)
    cfg = load_run_config(run_dir)
    scorer = AnomalyScorer.from_checkpoint(latest_checkpoint(run_dir), device, expected_config=cfg)
    x = load_for_config(cfg).test[list(picks.values())].to(next(scorer.encoder.parameters()).device)
    with torch.no_grad():
        rec = scorer.generator(scorer.encoder(x))
        maps = scorer.distance.anomaly_map(x, rec).float().cpu().numpy()
    to_img = lambda t: ((t.float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()  # noqa: E731
    xs, rs = to_img(x), to_img(rec)
    top = float(np.quantile(maps, 0.99)) or 1.0
    with style():
        fig, axes = _subplots(3, len(picks), figsize=(1.45 * len(picks) + 1.3, 6.2), squeeze=False)
        for j, (name, i) in enumerate(picks.items()):
            for row, img in ((0, xs[j]), (1, rs[j])):
                axes[row, j].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            im = axes[2, j].imshow(maps[j], cmap="magma", vmin=0, vmax=top)
            axes[0, j].set_title(f"{name.replace(', ', chr(10))}\nscore {z.scores[i]:.3g}")
            for row in range(3):
                axes[row, j].set_xticks([])
                axes[row, j].set_yticks([])
                axes[row, j].grid(False)
        for row, label in enumerate(("x", "G(E(x))", "anomaly map")):
            axes[row, 0].set_ylabel(label)
        fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.9, label="per-location error")
    return fig
