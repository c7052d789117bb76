"""Tables, sentences and learning curves built from result folders (piad.experiments.runs, .tables, .labels,
.learning_curves)."""

import json

import numpy as np
import pytest

from piad.experiments import labels, tables
from piad.experiments import learning_curves as lc
from piad.experiments.runs import RunRecord, collect, policy_series


def rec(experiment, c, auc, run=0, iterations=1500, benchmark="mnist"):
    return RunRecord(
        path=None,
        config={"benchmark": benchmark, "normal_class": c, "run": run, "iterations": iterations},
        metrics={"status": "ok", "roc_auc": auc},
        experiment=experiment,
    )


def test_benchmark_table_mean_over_classes_of_per_class_means():
    recs = [rec("mnist", 0, 0.9, 0), rec("mnist", 0, 0.8, 1), rec("mnist", 1, 0.6, 0), rec("mnist", 1, 0.7, 1)]
    md, s = tables.benchmark_table(recs, "mnist", "mnist", [0, 1, 2], [0, 1])
    assert s["mean"] == pytest.approx(np.mean([np.mean([0.9, 0.8]), np.mean([0.6, 0.7])]))
    assert s["n_classes_done"] == 2 and s["n_runs_done"] == 4 and s["n_runs_expected"] == 6
    assert "mean ± std over runs" in md and "0.850 ± 0.050" in md and "(2 of 3 classes)" in md


def test_class_range_spans_the_lowest_and_highest_class_mean():
    """Classes are averaged over their runs first; an unfinished class (no runs) is left out, not counted as 0."""
    recs = [rec("mnist", 0, 0.9, 0), rec("mnist", 0, 0.5, 1), rec("mnist", 1, 0.6, 0), rec("mnist", 1, 0.8, 1)]
    _, s = tables.benchmark_table(recs, "mnist", "mnist", [0, 1, 2], [0, 1])
    assert tables.class_means(s["per_class"]) == pytest.approx({0: 0.7, 1: 0.7})
    recs.append(rec("mnist", 2, 0.95, 0))
    _, s = tables.benchmark_table(recs, "mnist", "mnist", [0, 1, 2, 3], [0, 1])
    assert tables.class_range(s["per_class"]) == "0.700 to 0.950"  # not 0.500 (a run) nor 0.000 (class 3)
    assert tables.class_range({3: []}) == tables.MISSING


def test_one_run_per_class_is_not_called_a_mean_over_runs():
    md, _ = tables.benchmark_table([rec("mnist", 0, 0.9)], "mnist", "mnist", [0], [0])
    assert "(one run)" in md and "std" not in md


def test_runs_of_another_budget_are_left_out_and_counted():
    recs = [rec("mnist", 0, 0.9, iterations=1500), rec("mnist", 1, 0.5, iterations=300)]
    _, s = tables.benchmark_table(recs, "mnist", "mnist", [0, 1], [0], iterations=1500)
    assert s["mean"] == pytest.approx(0.9) and s["n_other_budget"] == 1 and s["per_class"][1] == []
    _, s_all = tables.benchmark_table(recs, "mnist", "mnist", [0, 1], [0])
    assert s_all["mean"] == pytest.approx(0.7)


def test_ablation_rows_compare_only_classes_every_variant_finished():
    rows = {"l2": "c-l2", "relative_perceptual_l1": "c"}
    recs = [
        rec("c", 0, 0.8, benchmark="cifar10"),
        rec("c", 1, 0.6, benchmark="cifar10"),
        rec("c-l2", 0, 0.7, benchmark="cifar10"),
    ]
    md, ab = tables.ablation_table(recs, rows, [0, 1], [0], "cifar10")
    assert ab["distance"] == {"l2": pytest.approx(0.7), "relative_perceptual_l1": pytest.approx(0.8)}
    assert ab["classes"]["distance"] == [0]
    assert "weight rule fixed: ROC AUC (mean over class 0)" in md


def test_each_ablation_question_compares_the_classes_its_own_variants_finished():
    """The distances are compared over the classes all four distance variants finished, the weight rule over the
    classes both L2 variants finished: a missing manual-weights run does not hold back the ranking of distances."""
    done = {
        "c": {0: 0.80, 1: 0.70},
        "c-l2": {0: 0.60, 1: 0.55},
        "c-pl2": {0: 0.65},
        "c-pl1": {0: 0.75, 1: 0.50},
        "c-man": {1: 0.45},
    }
    recs = [rec(e, c, a, benchmark="cifar10") for e, per in done.items() for c, a in per.items()]
    rows = {
        "l2": "c-l2",
        "perceptual_l2": "c-pl2",
        "perceptual_l1": "c-pl1",
        "relative_perceptual_l1": "c",
        "l2_manual": "c-man",
    }
    md, ab = tables.ablation_table(recs, rows, [0, 1, 2], [0], "cifar10")
    assert ab["classes"] == {"distance": [0], "rule": [1]}
    assert ab["distance"] == pytest.approx({v: done[rows[v]][0] for v in tables.ABLATION_COMPARISONS["distance"]})
    assert ab["rule"] == pytest.approx({"l2": 0.55, "l2_manual": 0.45})
    table = rows_of(md)
    assert table[labels.ABLATION_TITLES["l2"]][:3] == ["0.600", "0.550", "2 of 3"]
    assert table[labels.ABLATION_TITLES["l2_manual"]][:2] == ["–", "0.450"]
    assert table[labels.ABLATION_TITLES["perceptual_l2"]][:3] == ["0.650", "–", "1 of 3"]
    assert "(mean over class 0)" in md.splitlines()[0] and "(mean over class 1)" in md.splitlines()[0]
    assert tables.ablation_support(ab["distance"]).startswith(labels.ABLATION_TITLES["relative_perceptual_l1"])
    assert "difference +0.100" in tables.rule_support(ab["rule"])
    for v, e in rows.items():  # every finished class
        assert ab["per_class"][v] == pytest.approx(done[e]), v


def test_per_class_figure_bars_are_class_means_and_the_line_is_the_mean_over_finished_classes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piad.experiments import figures

    per_class = {"A": {0: [0.9, 0.7, 0.8], 1: [], 2: [0.6]}, "B": {0: [0.55], 1: [0.95]}}  # run mean != class mean
    fig = figures.per_class_auc(per_class)
    for ax, (title, by_class) in zip(fig.axes, per_class.items(), strict=True):
        assert ax.get_title() == title
        heights = {
            int(round(p.get_x() + p.get_width() / 2)): p.get_height() for p in ax.patches if np.isfinite(p.get_height())
        }
        assert heights == pytest.approx({c: np.mean(a) for c, a in by_class.items() if a}), title
        mean = np.mean([np.mean(a) for a in by_class.values() if a])
        lines = {ln.get_label(): ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_label().startswith("mean")}
        ((label, y),) = lines.items()
        assert y == pytest.approx(mean) and f"{mean:.3f}" in label
        assert f"over {sum(1 for a in by_class.values() if a)} of {len(by_class)} classes" in label
    plt.close(fig)


def test_ablation_bars_show_every_finished_class_of_every_variant():
    """One bar per (class, variant) a variant has finished, as tall as its ROC AUC, in the panel of each question
    the variant belongs to; a variant keeps its colour in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piad.experiments import figures

    per_class = {
        "l2": {0: 0.60, 1: 0.55},
        "perceptual_l2": {0: 0.65},
        "relative_perceptual_l1": {0: 0.8, 2: 0.7},
        "l2_manual": {1: 0.45},
    }
    fig = figures.ablation_bars(per_class, [0, 1, 2])
    panels = {}
    for ax, comp in zip(fig.axes, tables.ABLATION_COMPARISONS, strict=True):
        legend = ax.get_legend()  # what a reader sees: the legend's colour -> variant
        title_of = {
            tuple(h.get_facecolor()): t.get_text()
            for h, t in zip(legend.legend_handles, legend.texts, strict=True)
            if hasattr(h, "get_facecolor")
        }
        bars = {}
        for container in ax.containers:
            for patch in container.patches:
                title = title_of[tuple(patch.get_facecolor())]
                variant = next(v for v, t in labels.ABLATION_TITLES.items() if t == title)
                if np.isfinite(patch.get_height()) and patch.get_height() > 0:
                    c = int(round(patch.get_x() + patch.get_width() / 2))
                    bars[(variant, c)] = (patch.get_height(), tuple(patch.get_facecolor()))
        panels[comp] = bars
    want = {
        comp: {(v, c): a for v in variants if v in per_class for c, a in per_class[v].items()}
        for comp, variants in tables.ABLATION_COMPARISONS.items()
    }
    for comp in want:
        assert {k: h for k, (h, _) in panels[comp].items()} == pytest.approx(want[comp]), comp
    assert panels["distance"][("l2", 0)][1] == panels["rule"][("l2", 0)][1]
    plt.close(fig)


def test_runs_listing_shows_the_training_time_of_every_session_not_the_last_sessions_wall_time():
    done = RunRecord(
        path=None,
        config={"benchmark": "mnist", "normal_class": 3, "run": 0, "iterations": 1500},
        metrics={"status": "ok", "roc_auc": 0.94391, "eval_seconds": 31.6, "device": "cpu"},
        provenance={"training_seconds": 2293.4, "wall_seconds": 144.3},
        experiment="mnist",
    )
    unfinished = rec("mnist", 4, None)
    rows = tables.runs_listing([unfinished, done]).splitlines()
    assert rows[0].split("|")[6:8] == [" training time (s) ", " evaluation (s) "]
    assert len(rows) == 3 and rows[2] == "| mnist | 3 | 0 | 1500 | 0.9439 | 2293 | 32 | cpu |"


def test_ranges_phrase_joins_consecutive_numbers_and_expands_back_to_the_same_set():
    rng = np.random.default_rng(0)
    for _ in range(50):
        numbers = {int(n) for n in rng.integers(0, 30, size=rng.integers(1, 20))}
        phrase = tables.ranges_phrase(list(numbers))
        back = set()
        for part in phrase.split(", "):
            a, _, b = part.partition("-")
            back.update(range(int(a), int(b or a) + 1))
        assert back == numbers
        for part in phrase.split(", "):  # a span is written a-b only when it holds three or more numbers
            a, _, b = part.partition("-")
            assert not b or (int(b) - int(a) > 1 and int(a) - 1 not in numbers and int(b) + 1 not in numbers)
    assert tables.ranges_phrase([20, 16, 18, 19, 13, 12]) == "12, 13, 16, 18-20"


def on(experiment, c, device, accelerator=None, cores=None):
    r = rec(experiment, c, 0.9)
    r.provenance = {"device": device, "hardware": {"accelerator": accelerator, "logical_cpus": cores}}
    return r


def test_devices_sentence_names_the_usual_device_and_every_run_elsewhere_by_class():
    runs = [on("mnist", c, "cpu", cores=2 if c % 2 else None) for c in range(10)]
    runs += [on("coil100", c, "cuda:0", "NVIDIA H200", 16) for c in (20, 16, 18, 19)] + [on("coil100", 0, "cpu")]
    sentence = tables.devices_sentence(runs, {"coil100": "COIL-100"})
    assert (
        sentence
        == "All these runs trained on a CPU except COIL-100 classes 16, 18-20 (4 of its 5 runs), on an NVIDIA H200 GPU."
    )
    assert tables.devices_sentence(runs[1:10:2], {}) == "All these runs trained on a 2-core CPU."
    assert tables.devices_sentence([on("mnist", 3, "mps")] + runs[:2], {"mnist": "MNIST"}).endswith(
        "except MNIST class 3 (1 of its 3 runs), on mps."
    )
    assert tables.devices_sentence([], {}) == "No run has finished yet."


def test_support_sentences_rank_and_compare_from_the_numbers():
    ab = {"l2": 0.61, "perceptual_l2": 0.66, "perceptual_l1": 0.64, "relative_perceptual_l1": 0.70, "l2_manual": 0.65}
    text = tables.ablation_support(ab)
    ranked = [part.rsplit(" ", 1)[0] for part in text.split(" > ")]
    assert ranked == [
        labels.ABLATION_TITLES[v] for v in ("relative_perceptual_l1", "perceptual_l2", "perceptual_l1", "l2")
    ]
    assert "difference -0.040" in tables.rule_support(ab)
    assert tables.ablation_support({"l2": 0.6}).startswith("not measured yet")
    none_common = tables.ablation_support(dict.fromkeys(ab))
    assert none_common.startswith("not measured yet (no class has finished under all four distances")
    assert "PIAD" not in none_common
    assert tables.rule_support({"l2": 0.6}).startswith("not measured yet")


def test_stand_in_benchmarks_have_no_paper_cell_and_deviations_name_the_benchmark():
    assert "not in the paper" in labels.paper_cell("digits", None)
    assert labels.paper_cell("mnist", None) == labels.NOT_TRANSCRIBED
    d = labels.deviations(
        {
            "benchmark": "mnist",
            "iterations": 1500,
            "vgg_weights": "imagenet",
            "layer": "relu4_2",
            "feature_stats": "imagenet",
        },
        None,
        50_000,
    )
    assert d == ["MNIST: 1,500 training iterations instead of the paper's 50,000"]


def write_run(root, experiment, c, curve, iterations=1500):
    d = root / experiment / str(c) / "0"
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps({"benchmark": experiment, "normal_class": c, "run": 0, "iterations": iterations})
    )
    (d / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": curve[-1][1]}))
    (d / "curve.csv").write_text("iteration,roc_auc\n" + "".join(f"{i},{a}\n" for i, a in curve))


def test_learning_curves_mean_only_where_every_class_has_a_point(tmp_path):
    write_run(tmp_path, "mnist", 0, [(250, 0.6), (500, 0.8), (750, 0.9)])
    write_run(tmp_path, "mnist", 1, [(250, 0.7), (500, 0.9)])
    write_run(tmp_path, "coil100", 0, [(250, 0.5)])
    df = lc.collect_curves(tmp_path, ["mnist"])
    assert sorted(df["normal_class"].unique()) == [0, 1] and len(df) == 5
    m = lc.mean_curve(df)
    assert list(m["iteration"]) == [250, 500]
    assert list(m["roc_auc"]) == pytest.approx([0.65, 0.85])
    table = lc.curves_table(df)
    assert "| **mean** | **0.650** | **0.850** |" in table
    fig = lc.plot_curves({"MNIST": df}, {"MNIST": 500})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training iteration" and ax.get_ylabel() == "test ROC AUC"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "mean of 2 classes" in labels and "budget (500 it.)" in labels


def test_curve_trend_separates_a_rise_from_noise():
    its = [250 * (i + 1) for i in range(9)]
    rising = [0.5 + 0.01 * i for i in range(9)]
    t = lc.curve_trend(its, rising)
    assert t["slope_per_1000"] == pytest.approx(0.04)  # 0.01 per 250 iterations
    assert t["thirds"] == pytest.approx([0.51, 0.54, 0.57]) and t["step"] == pytest.approx(0.01)
    zigzag = [0.6, 0.7] * 4 + [0.6]  # no trend, steps of 0.1
    z = lc.curve_trend(its, zigzag)
    assert abs(z["slope_per_1000"]) < 0.01 and z["step"] == pytest.approx(0.1)
    assert (z["min"], z["max"]) == (0.6, 0.7)
    # the order of the points does not matter, only their iterations
    assert lc.curve_trend(its[::-1], rising[::-1]) == t
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        lc.curve_trend([250, 500], [0.5, 0.6])


# -- tables from run folders ---------------------------------------------------------------------------------------
def write_result(
    root, experiment, c, run, auc, iterations=1500, status="ok", benchmark="mnist", metrics=True, device=None
):
    """A result folder as the runner leaves it (config.json, and metrics.json unless the run is unfinished)."""
    d = root / experiment / str(c) / str(run)
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps({"benchmark": benchmark, "normal_class": c, "run": run, "iterations": iterations})
    )
    if metrics:
        m = {"status": status, "roc_auc": auc, "iterations": iterations, **({"device": device} if device else {})}
        (d / "metrics.json").write_text(json.dumps(m))


def rows_of(md: str) -> dict[str, list[str]]:
    """Markdown table body: first cell -> the other cells."""
    out = {}
    for line in md.splitlines()[2:]:
        first, *rest = [c.strip() for c in line.strip().strip("|").split("|")]
        out[first] = rest
    return out


def test_benchmark_table_from_run_folders(tmp_path):
    """Only finished runs of the experiment, of the listed runs and of the budget count; per class mean ± std equal
    numpy's (population std), classes without a run read "missing", the mean is over the classes that have one."""
    c0 = [0.91, 0.83, 0.88]
    for run, auc in enumerate(c0):
        write_result(tmp_path, "mnist", 0, run, auc)
    write_result(tmp_path, "mnist", 0, 3, 0.10)  # not one of the runs asked for
    write_result(tmp_path, "mnist", 1, 0, 0.70)
    write_result(tmp_path, "mnist", 1, 1, 0.20, iterations=300)  # an earlier budget
    write_result(tmp_path, "mnist", 1, 2, None, metrics=False)  # interrupted: no metrics.json
    write_result(tmp_path, "mnist", 2, 0, float("nan"), status="diverged")
    write_result(tmp_path, "mnist-ablation-l2", 3, 0, 0.05)  # another experiment
    records = collect(tmp_path)
    assert len(records) == 9 and sum(r.finished for r in records) == 7
    md, s = tables.benchmark_table(
        records, "mnist", "mnist", [0, 1, 2, 3], [0, 1, 2], {0: "zero", 3: "three"}, iterations=1500
    )
    rows = rows_of(md)
    assert list(rows) == ["0 (zero)", "1", "2", "3 (three)", "**mean over classes**"]
    assert rows["0 (zero)"] == [f"{np.mean(c0):.3f} ± {np.std(c0):.3f}", labels.NOT_TRANSCRIBED, "CPU"]
    assert rows["2"][2] == "" and rows["3 (three)"][2] == ""  # no finished run: no device
    assert rows["1"][0] == "0.700 (1 of 3 runs)"
    assert rows["2"][0] == rows["3 (three)"][0] == tables.MISSING
    assert rows["**mean over classes**"][0] == f"**{np.mean([np.mean(c0), 0.70]):.3f} (2 of 4 classes)**"
    assert s["per_class"] == {0: pytest.approx(c0), 1: [0.70], 2: [], 3: []}
    assert (s["n_runs_done"], s["n_runs_expected"], s["n_classes_done"], s["n_other_budget"]) == (4, 12, 2, 1)
    write_result(tmp_path, "mnist", 3, 0, 0.6, device="cuda:0")  # a class trained on a GPU says so
    write_result(tmp_path, "mnist", 3, 1, 0.7, device="cpu")
    md3, _ = tables.benchmark_table(collect(tmp_path), "mnist", "mnist", [3], [0, 1], iterations=1500)
    assert rows_of(md3)["3"][2] == "CPU, GPU"
    _, s_any = tables.benchmark_table(records, "mnist", "mnist", [0, 1, 2, 3], [0, 1, 2])  # every budget
    assert s_any["per_class"][1] == [0.70, 0.20] and s_any["n_other_budget"] == 0
    md, s = tables.benchmark_table(records, "nothing", "mnist", [0], [0])
    assert s["mean"] is None and rows_of(md)["**mean over classes**"][0] == f"**{tables.MISSING}**"


def test_ablation_table_from_run_folders_compares_the_classes_every_variant_finished(tmp_path):
    runs = {
        "cifar10": {0: [0.80, 0.90], 1: [0.60], 2: [0.70, 0.75]},
        "cifar10-ablation-l2": {0: [0.50], 2: [0.55, 0.65]},
        "cifar10-ablation-perceptual_l1": {0: [0.60, 0.62], 1: [0.30], 2: [0.66]},
    }
    for exp, per_class in runs.items():
        for c, aucs in per_class.items():
            for run, auc in enumerate(aucs):
                write_result(tmp_path, exp, c, run, auc, benchmark="cifar10")
    rows = {
        "l2": "cifar10-ablation-l2",
        "perceptual_l1": "cifar10-ablation-perceptual_l1",
        "relative_perceptual_l1": "cifar10",
    }
    md, ab = tables.ablation_table(collect(tmp_path), rows, [0, 1, 2], [0, 1], "cifar10", iterations=1500)
    want = {v: np.mean([np.mean(runs[e][c]) for c in (0, 2)]) for v, e in rows.items()}  # class 1 lacks L2
    assert ab["distance"] == pytest.approx(want) and ab["classes"]["distance"] == [0, 2]
    table = rows_of(md)
    for v in rows:
        done = len(runs[rows[v]])
        assert table[labels.ABLATION_TITLES[v]][0] == f"{want[v]:.3f}", v
        assert table[labels.ABLATION_TITLES[v]][2] == f"{done} of 3", v
    assert "weight rule fixed: ROC AUC (mean over classes 0, 2)" in md.splitlines()[0]
    md, ab = tables.ablation_table(
        collect(tmp_path), {**rows, "perceptual_l2": "not-run"}, [0, 1, 2], [0, 1], "cifar10"
    )
    assert set(ab["distance"].values()) == {None} and all(r[0] == tables.MISSING for r in rows_of(md).values())
    assert "weight rule fixed: ROC AUC (no class finished by all of them yet)" in md.splitlines()[0]


def test_policy_series_holds_the_values_of_policy_csv(tmp_path):
    """Per network, policy.csv's rows become (iteration x layer) arrays of the gradient stds, whatever the order
    of the rows; the medians are numpy's over layers."""
    rng = np.random.default_rng(0)
    its, n_layers = [10, 20, 30], {"E": 3, "G": 4}
    vals = {
        (net, it, layer): (rng.uniform(0.1, 2), rng.uniform(0.1, 2))
        for net in n_layers
        for it in its
        for layer in range(n_layers[net])
    }
    lam = {(net, it): rng.uniform(1, 100) for net in n_layers for it in its}
    keys = list(vals)
    rng.shuffle(keys)
    lines = ["iteration,network,layer,adv_std,rec_std,lambda"]
    lines += [
        f"{it},{net},{layer},{vals[net, it, layer][0]!r},{vals[net, it, layer][1]!r},{lam[net, it]!r}"
        for net, it, layer in keys
    ]
    (tmp_path / "policy.csv").write_text("\n".join(lines) + "\n")
    series = policy_series(tmp_path)
    assert set(series) == {"E", "G"}
    for net, s in series.items():
        adv = np.array([[vals[net, it, layer][0] for layer in range(n_layers[net])] for it in its])
        rec = np.array([[vals[net, it, layer][1] for layer in range(n_layers[net])] for it in its])
        assert s["iteration"].tolist() == its
        np.testing.assert_array_equal(s["adv"], adv)
        np.testing.assert_array_equal(s["rec"], rec)
        np.testing.assert_array_equal(s["lambda"], [lam[net, it] for it in its])
        np.testing.assert_allclose(s["adv_median"], np.median(adv, 1))
        np.testing.assert_allclose(s["rec_median"], np.median(rec, 1))
        np.testing.assert_allclose(s["ratio_median"], np.median(adv / rec, 1))
    assert policy_series(tmp_path / "absent") == {}


def test_ablation_bars_carry_each_runs_interval_and_its_controls():
    """With `intervals`, each bar gets a vertical line over its interval at its centre, and its variant's controls
    their markers at their estimates; a bar without intervals gets neither."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piad.experiments import figures, stats

    def iv(e):
        return stats.Interval(e, e - 0.05, e + 0.04, "")

    per_class = {"l2": {0: 0.60, 1: 0.55}, "l2_manual": {0: 0.45, 1: 0.5}}
    intervals = {"l2": {0: {"piad": iv(0.60), "mean_image": iv(0.3), "nearest": iv(0.7)}}}
    fig = figures.ablation_bars(per_class, [0, 1], intervals=intervals)
    ax = fig.axes[1]  # (b): L2 against manual weights
    patch = ax.containers[0].patches[0]  # L2, class 0
    x = patch.get_x() + patch.get_width() / 2
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]
    spans = {round(float(ln.get_xdata()[0]), 6): tuple(ln.get_ydata()) for ln in lines}
    assert spans[round(x, 6)] == pytest.approx((0.55, 0.64))
    assert len(spans) == 3  # one bar's interval and its two controls' intervals: the other bars have none
    markers = sorted(float(ln.get_ydata()[0]) for ln in ax.get_lines() if len(ln.get_xdata()) == 1)
    assert markers == pytest.approx([0.3, 0.7])
    plt.close(fig)
