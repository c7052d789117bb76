"""Tables, sentences and learning curves built from result folders (piad.experiments.runs, .tables, .labels,
.learning_curves)."""
import json

import numpy as np
import pytest

from piad.experiments import labels, tables
from piad.experiments import learning_curves as lc
from piad.experiments.runs import RunRecord, collect, policy_series


def rec(experiment, c, auc, run=0, iterations=1500, benchmark="mnist"):
    return RunRecord(path=None, config={"benchmark": benchmark, "normal_class": c, "run": run,
                                        "iterations": iterations},
                     metrics={"status": "ok", "roc_auc": auc}, experiment=experiment)


def test_benchmark_table_mean_over_classes_of_per_class_means():
    recs = [rec("mnist", 0, 0.9, 0), rec("mnist", 0, 0.8, 1), rec("mnist", 1, 0.6, 0), rec("mnist", 1, 0.7, 1)]
    md, s = tables.benchmark_table(recs, "mnist", "mnist", [0, 1, 2], [0, 1])
    assert s["mean"] == pytest.approx(np.mean([np.mean([0.9, 0.8]), np.mean([0.6, 0.7])]))
    assert s["n_classes_done"] == 2 and s["n_runs_done"] == 4 and s["n_runs_expected"] == 6
    assert "mean ± std over runs" in md and "0.850 ± 0.050" in md and "(2 of 3 classes)" in md


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
    recs = [rec("c", 0, 0.8, benchmark="cifar10"), rec("c", 1, 0.6, benchmark="cifar10"),
            rec("c-l2", 0, 0.7, benchmark="cifar10")]
    md, ab = tables.ablation_table(recs, rows, [0, 1], [0], "cifar10")
    assert ab == {"l2": pytest.approx(0.7), "relative_perceptual_l1": pytest.approx(0.8)}
    assert "over the 1 classes every variant finished" in md


def test_support_sentences_rank_and_compare_from_the_numbers():
    ab = {"l2": 0.61, "perceptual_l2": 0.66, "perceptual_l1": 0.64, "relative_perceptual_l1": 0.70,
          "l2_manual": 0.65}
    text = tables.ablation_support(ab)
    ranked = [part.rsplit(" ", 1)[0] for part in text.split(" > ")]
    assert ranked == [labels.ABLATION_TITLES[v] for v in ("relative_perceptual_l1", "perceptual_l2",
                                                           "perceptual_l1", "l2")]
    assert "difference -0.040" in tables.rule_support(ab)
    assert tables.ablation_support({"l2": 0.6}).startswith("not measured yet")
    assert tables.rule_support({"l2": 0.6}).startswith("not measured yet")


def test_stand_in_benchmarks_have_no_paper_cell_and_deviations_name_the_benchmark():
    assert "not in the paper" in labels.paper_cell("digits", None)
    assert labels.paper_cell("mnist", None) == labels.NOT_TRANSCRIBED
    d = labels.deviations({"benchmark": "mnist", "iterations": 1500, "vgg_weights": "imagenet",
                            "layer": "relu4_2", "feature_stats": "imagenet"}, None, 50_000)
    assert d == ["MNIST: 1,500 training iterations instead of the paper's 50,000"]


def write_run(root, experiment, c, curve, iterations=1500):
    d = root / experiment / str(c) / "0"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"benchmark": experiment, "normal_class": c, "run": 0,
                                               "iterations": iterations}))
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

