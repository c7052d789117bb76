"""piad.experiments.evidence: runs beside their controls, intervals and paired tests, from files on disk."""

import json

import numpy as np
import pytest

from piad.experiments import evidence, labels, stats
from piad.experiments.profiles import class_names
from piad.experiments.runs import collect
from piad.run.scorefile import save_scores


def _scores(auc_shift, seed, n0=200, n1=300):
    rng = np.random.default_rng(seed)
    return np.r_[np.zeros(n0, int), np.ones(n1, int)], np.r_[rng.normal(0, 1, n0), rng.normal(auc_shift, 1, n1)]


def _run(root, exp, c, r, auc, scores=None):
    d = root / exp / str(c) / str(r)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"normal_class": c, "run": r, "iterations": 10, "benchmark": "mnist"}))
    m = {"status": "ok", "roc_auc": auc, "n_test_normal": 200, "n_test_anomalous": 300, "iterations": 10}
    (d / "metrics.json").write_text(json.dumps(m))
    if scores is not None:
        save_scores(d / "scores.npz", *scores)


def _control(root, exp, c, name, scores):
    d = root / "controls" / exp / str(c) / name
    d.mkdir(parents=True)
    save_scores(d / "scores.npz", *scores)
    (d / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": stats.roc_auc(*scores)}))


@pytest.fixture
def results(tmp_path):
    """Four classes: PIAD (Hanley-McNeil for runs without scores) beats the mean-image control in each class; the
    nearest-image control is PIAD's equal up to noise."""
    aucs = {}
    for c in range(4):
        aucs[c] = 0.80 + 0.02 * c
        _run(tmp_path, "mnist", c, 0, aucs[c], _scores(1.2, c) if c == 0 else None)
        _control(tmp_path, "mnist", c, "mean_image", _scores(0.2, 10 + c))
        _control(tmp_path, "mnist", c, "nearest", _scores(1.2, 20 + c))
    _run(tmp_path, "mnist", 4, 0, 0.9)  # a class without controls is left out
    return tmp_path, aucs


def test_comparison_pairs_each_class_with_its_controls(results):
    root, aucs = results
    table, s = evidence.comparison(collect(root), root, "mnist", range(5))
    assert s["classes"] == [0, 1, 2, 3] and "| 4" not in table
    assert s["run_intervals"] == ["Hanley-McNeil", "bootstrap"]
    rows = {
        int(ln.split("|")[1]): ln.split("|")[2] for ln in table.splitlines()[2:] if ln.split("|")[1].strip().isdigit()
    }
    assert [c for c, cell in rows.items() if cell.rstrip().endswith("†")] == [1, 2, 3]  # no scores: Hanley-McNeil
    for c in range(4):
        near = stats.roc_auc(*_scores(1.2, 20 + c))
        assert s["per_class"][c]["nearest"] == pytest.approx(near)
        assert s["per_class"][c]["piad"] == pytest.approx(aucs[c])
    diffs = [aucs[c] - stats.roc_auc(*_scores(0.2, 10 + c)) for c in range(4)]
    t = s["tests"]["mean_image"]
    assert t.mean_difference == pytest.approx(np.mean(diffs)) and t.n == 4 and t.wins == 4
    assert t.p_value == pytest.approx(2 / 16)  # 4 of 4: the smallest two-sided p with 4 classes
    assert s["piad"].estimate == pytest.approx(np.mean(list(aucs.values())))
    assert s["piad"].low < s["piad"].estimate < s["piad"].high


def test_verdict_says_not_resolved_unless_the_test_resolves_it(results):
    root, _ = results
    _, s = evidence.comparison(collect(root), root, "mnist", range(4))
    text = evidence.support(s, "MNIST")
    assert "not resolved at this budget" in text and "4 classes" in text
    strong = stats.sign_flip_test([0.1] * 8)
    assert evidence.verdict(strong, "A", "B").endswith("A is higher.")


def test_seed_table_reports_the_pooled_within_class_spread(tmp_path):
    vals = {2: [0.90, 0.94, 0.92], 3: [0.80, 0.86]}
    for c, v in vals.items():
        for r, a in enumerate(v):
            _run(tmp_path, "mnist", c, r, a)
    _run(tmp_path, "mnist", 5, 0, 0.7)
    table, s = evidence.seed_table(collect(tmp_path), "mnist")
    ss = sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in vals.values())
    assert s["classes"] == [2, 3] and s["n_runs"] == 5
    assert s["pooled_sd"] == pytest.approx(np.sqrt(ss / 3)) and s["max_range"] == pytest.approx(0.06)
    assert "| 5" not in table


def test_pairwise_uses_only_shared_classes():
    t = evidence.pairwise({"a": {0: 0.7, 1: 0.6, 2: 0.9}, "b": {0: 0.5, 2: 0.8}}, "a", "b")
    assert t.n == 2 and t.mean_difference == pytest.approx(0.15)
    assert evidence.pairwise({"a": {0: 0.7}, "b": {1: 0.5}}, "a", "b") is None


def test_statistics_effect_pairs_each_control_under_both_statistics(results):
    root, _ = results
    for c in (0, 1, 2):
        _control_in(root, "controls-natural-stats", "mnist", c, "mean_image", _scores(0.5, 30 + c))
        _control_in(root, "controls-natural-stats", "mnist", c, "nearest", _scores(1.2, 20 + c))
    table, s = evidence.statistics_effect(root, ("controls", "mnist"), ("controls-natural-stats", "mnist"), range(4))
    assert s["classes"] == [0, 1, 2]
    want = [stats.roc_auc(*_scores(0.2, 10 + c)) - stats.roc_auc(*_scores(0.5, 30 + c)) for c in range(3)]
    assert s["tests"]["mean_image"].mean_difference == pytest.approx(np.mean(want))
    assert s["tests"]["nearest"].mean_difference == pytest.approx(0.0)  # same scores under both: no effect
    # the same controls as two experiments of one folder (the table's runs leak-free, the others kept aside)
    for c in (0, 1, 2):
        _control_in(root, "controls", "mnist-leaky", c, "mean_image", _scores(0.2, 10 + c))
        _control_in(root, "controls", "mnist-leaky", c, "nearest", _scores(1.2, 20 + c))
        _control_in(root, "controls", "mnist-free", c, "mean_image", _scores(0.5, 30 + c))
        _control_in(root, "controls", "mnist-free", c, "nearest", _scores(1.2, 20 + c))
    _, moved = evidence.statistics_effect(root, ("controls", "mnist-leaky"), ("controls", "mnist-free"), range(4))
    assert moved["classes"] == [0, 1, 2]
    assert moved["tests"]["mean_image"].mean_difference == pytest.approx(np.mean(want))


def _control_in(root, folder, exp, c, name, scores):
    d = root / folder / exp / str(c) / name
    d.mkdir(parents=True)
    save_scores(d / "scores.npz", *scores)
    (d / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": stats.roc_auc(*scores)}))


def test_learning_curves_draw_the_controls_and_measure_the_last_rise():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from piad.experiments import learning_curves as lc

    df = pd.DataFrame(
        {
            "normal_class": [0, 0, 0, 1, 1, 1],
            "run": 0,
            "iteration": [250, 500, 750] * 2,
            "roc_auc": [0.6, 0.7, 0.75, 0.5, 0.6, 0.69],
        }
    )
    m = lc.mean_curve(df)
    assert lc.last_rise(m, 750) == pytest.approx((0.75 + 0.69) / 2 - (0.7 + 0.6) / 2)
    assert lc.last_rise(m, 1000) is None
    fig = lc.plot_curves({"MNIST": df}, {"MNIST": 750}, controls={"MNIST": {"nearest-image control": 0.8}})
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("nearest-image control")]
    assert len(lines) == 1 and set(lines[0].get_ydata()) == {0.8} and "0.800" in lines[0].get_label()


def test_a_longer_run_is_compared_with_the_tables_run_of_its_class_and_seed_in_everything_but_its_iterations(
    tmp_path,
):
    from piad.experiments import learning_curves as lc

    def run(root, exp, c, **config):
        d = root / exp / str(c) / "0"
        d.mkdir(parents=True)
        base = {"benchmark": exp, "normal_class": c, "run": 0, "iterations": 1000, "feature_stats": "a/natural.pt"}
        (d / "config.json").write_text(json.dumps({**base, **config}))
        (d / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.7}))

    grid, long = tmp_path / "grid", tmp_path / "long"
    run(grid, "mnist", 0)
    run(long, "mnist", 0, iterations=5000)  # only the budget differs
    run(grid, "cifar10", 0)
    run(long, "cifar10", 0, iterations=9000, feature_stats="b/cifar10_train.pt")
    run(long, "coil100", 0, iterations=9000, lr_d=1.0)  # no table run of its class: left out
    assert lc.long_run_differences(long, grid, ["mnist", "cifar10", "coil100"]) == {
        ("cifar10", 0, 0): {"feature_stats": ("cifar10_train.pt", "natural.pt")}
    }
    assert lc.long_run_differences(long, grid, ["mnist"]) == {}


def test_ranked_indices_pick_best_median_and_worst_per_label():
    from piad.experiments.figures import ranked_indices

    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.5, 0.1, 0.9, 0.2, 0.8, 0.4, 0.6])
    r = ranked_indices(labels, scores)
    assert (r["normal, best"], r["normal, median"], r["normal, worst"]) == (1, 0, 2)  # low is good for normals
    assert (r["anomalous, best"], r["anomalous, worst"]) == (4, 3)  # high is good for anomalies
    assert r["anomalous, median"] in (5, 6)


def test_trained_statistics_effect_pairs_each_class_with_its_retrained_run(tmp_path):
    """Original runs (no per-image scores: Hanley-McNeil) beside the same classes retrained with other statistics
    (with scores: bootstrap); the test is a sign-flip over the classes both have."""
    orig, free = {0: 0.60, 1: 0.70, 2: 0.65}, {0: 0.64, 1: 0.69}
    for c, a in orig.items():
        _run(tmp_path, "cifar10", c, 0, a)
        (tmp_path / "cifar10" / str(c) / "0" / "provenance.json").write_text(
            json.dumps({"weights": {"feature_stats": {"name": "cifar10_train.pt"}}})
        )
    for c in free:
        sc = _scores(0.5 + c, 40 + c)
        _run(tmp_path, "cifar10-natural-stats", c, 0, stats.roc_auc(*sc), sc)
        (tmp_path / "cifar10-natural-stats" / str(c) / "0" / "provenance.json").write_text(
            json.dumps({"weights": {"feature_stats": {"name": "natural_crops.pt"}}})
        )
    _run(tmp_path, "cifar10-natural-stats", 1, 1, 0.99)  # another seed: not the run 0 the pair is made of
    table, s = evidence.trained_statistics_effect(collect(tmp_path), "cifar10", "cifar10-natural-stats", range(3))
    assert s["classes"] == [0, 1] and "| 2" not in table
    want = {c: stats.roc_auc(*_scores(0.5 + c, 40 + c)) - orig[c] for c in (0, 1)}
    assert s["differences"] == pytest.approx(want)
    assert s["test"].n == 2 and s["test"].mean_difference == pytest.approx(np.mean(list(want.values())))
    assert s["test"].p_value >= 0.5  # two classes can never resolve a difference
    assert s["files"] == ["cifar10_train.pt → natural_crops.pt"]
    assert evidence.trained_statistics_effect(collect(tmp_path), "mnist", "cifar10-natural-stats")[1]["classes"] == []


def test_an_unreadable_scores_file_is_an_error_naming_it_not_a_silent_fallback(results):
    from piad.errors import RunDirectoryError

    root, _ = results
    (root / "mnist" / "0" / "0" / "scores.npz").write_bytes(b"not a numpy archive")
    with pytest.raises(RunDirectoryError, match=r"mnist/0/0/scores\.npz"):
        evidence.comparison(collect(root), root, "mnist", range(4))


def test_the_controls_figure_draws_each_estimate_with_its_interval_and_names_the_classes(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piad.experiments import figures

    root, _ = results
    _, s = evidence.comparison(collect(root), root, "mnist", range(4))
    _, one = evidence.comparison(collect(root), root, "mnist", [2])
    names = {c: f"digit {c}" for c in range(4)}
    fig = figures.against_controls({"MNIST": s, "MNIST, one class": one, "empty": {}}, {"MNIST": names})
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == {"MNIST: 4 classes", "MNIST, one class: 1 class"}  # a panel without classes is left out
    ax = axes["MNIST: 4 classes"]
    assert [t.get_text() for t in ax.get_yticklabels()] == [names[c] for c in range(4)]
    drawn = {c.get_label(): c for c in ax.containers}
    for key, (label, *_rest) in figures.CONTROL_MARKERS.items():
        container = drawn[label]
        ivs = [s["per_class_intervals"][c][key] for c in range(4)]
        assert container.lines[0].get_xdata() == pytest.approx([iv.estimate for iv in ivs])
        segments = container.lines[2][0].get_segments()
        assert np.array([(seg[0][0], seg[1][0]) for seg in segments]) == pytest.approx(
            np.array([(iv.low, iv.high) for iv in ivs])
        )
    assert (
        s["per_class_intervals"][0]["piad"].low < s["per_class"][0]["piad"] < s["per_class_intervals"][0]["piad"].high
    )
    plt.close(fig)


def test_a_verdict_counts_ties_and_defers_to_the_test_when_the_interval_disagrees():
    t = stats.sign_flip_test([-0.06, -0.01, 0.0, 0.0, 0.0, 0.01])
    assert (t.wins, t.ties, t.n) == (1, 3, 6)
    assert "higher in 1, equal in 3 of 6 runs;" in evidence.verdict(t, "A", "B", unit="run")
    assert t.text().endswith("higher in 1, equal in 3 of 6")
    narrow = stats.PairedTest(-0.004, -0.0097, -0.00002, 0.11, 27, 5, "sign-flip over classes", 16)
    text = evidence.verdict(narrow, "A", "B")
    assert "excludes 0 but the sign-flip test does not reject" in text and text.endswith("not resolved at this budget.")
    wide = stats.PairedTest(-0.004, -0.0097, 0.001, 0.11, 27, 5, "sign-flip over classes")
    assert "excludes" not in evidence.verdict(wide, "A", "B") and "equal" not in evidence.verdict(wide, "A", "B")


def test_a_verdict_over_one_class_claims_no_interval_and_no_test():
    one = stats.sign_flip_test([0.021])
    text = evidence.verdict(one, "A", "B")
    assert (
        text == "A − B: +0.021 in the one class measured; one class allows no paired test: not resolved at this budget."
    )


def test_reexecutions_pair_each_earlier_execution_with_the_run_the_tables_use(tmp_path):
    _run(tmp_path, "mnist-earlier", 0, 0, 0.90, _scores(1.2, 1))
    _run(tmp_path, "mnist", 0, 0, 0.87, _scores(1.0, 2))
    _run(tmp_path, "mnist-earlier", 1, 0, 0.80)
    _run(tmp_path, "mnist", 1, 0, 0.85)
    cfg = tmp_path / "mnist" / "1" / "0" / "config.json"  # another budget: not a re-execution
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "iterations": 20}))
    _run(tmp_path, "mnist-earlier", 2, 0, 0.7)  # superseded by nothing: no pair
    _run(tmp_path, "mnist", 3, 0, 0.6)  # executed once: no pair
    table, s = evidence.reexecutions(collect(tmp_path), titles={"mnist": "MNIST"})
    assert s["differences"] == {("mnist", 0, 0): pytest.approx(0.87 - 0.90)}  # latest minus earlier
    assert s["max_abs"] == pytest.approx(0.03)
    assert "config differs in iterations" in table and "class 2" not in table and "class 3" not in table
    row = next(ln for ln in table.splitlines() if ln.startswith("| MNIST, class 0, run 0 |"))
    assert row.index("0.900") < row.index("0.870") and row.endswith("| -0.030 |")  # earlier first
    assert "†" not in row  # both kept their scores: bootstrap intervals
    assert table.count("†") == 2  # class 1: neither kept its scores
    assert s["test"].n == 1 and s["test"].mean_difference == pytest.approx(-0.03)
    assert "in the one run measured" in evidence.verdict(s["test"], "latest", "earlier", unit="run")
    assert evidence.reexecutions(collect(tmp_path), suffix="-again")[1] == {
        "differences": {},
        "max_abs": None,
        "test": None,
        "devices": {},
        "labels": {},
    }


def test_an_ablation_run_trained_again_under_another_unread_statistics_file_is_an_executed_twice_pair(tmp_path):
    """The CIFAR-10 ablation's L2 runs name the statistics file of their time; executed again under today's file they
    are the same run (its distance reads none) and count as a pair. A relative-perceptual-L1 run under another file
    is another run: listed, not counted."""
    for exp, distance in (("cifar10-ablation-l2", "l2"), ("cifar10", "relative_perceptual_l1")):
        for folder, stats_file, auc in ((f"{exp}-earlier", "old/cifar10_train.pt", 0.6), (exp, "natural.pt", 0.62)):
            _run(tmp_path, folder, 0, 0, auc)
            cfg = tmp_path / folder / "0" / "0" / "config.json"
            cfg.write_text(
                json.dumps(
                    {
                        **json.loads(cfg.read_text()),
                        "benchmark": "cifar10",
                        "distance": distance,
                        "feature_stats": stats_file,
                    }
                )
            )
    table, s = evidence.reexecutions(collect(tmp_path))
    assert s["differences"] == {("cifar10-ablation-l2", 0, 0): pytest.approx(0.02)}
    assert "| cifar10, class 0, run 0 |" in table and "not comparable: config differs in feature_stats |" in table
    assert s["labels"] == {("cifar10-ablation-l2", 0, 0): "cifar10-ablation-l2 class 0 (run 0)"}
    # an ablation variant's pair is named by its benchmark, its variant and its class
    titles = {
        "cifar10-ablation-l2": labels.experiment_title("cifar10", "l2"),
        "cifar10": labels.experiment_title("cifar10"),
    }
    table, s = evidence.reexecutions(collect(tmp_path), lambda r, c: class_names(r.config["benchmark"])[c], titles)
    assert s["labels"] == {("cifar10-ablation-l2", 0, 0): "CIFAR-10 ablation (L2) airplane (run 0)"}
    assert "| CIFAR-10, class 0 (airplane), run 0 |" in table
    assert evidence.reexecution_by_experiment(s, titles).startswith("CIFAR-10 ablation (L2) +0.020 over 1 run")


def test_experiment_titles_name_the_benchmark_and_the_ablation_variant():
    assert labels.experiment_title("fashion_mnist") == "Fashion-MNIST"
    assert labels.experiment_title("cifar10", "perceptual_l2") == "CIFAR-10 ablation (perceptual L2)"
    assert labels.experiment_title("cifar10", "l2_manual") == "CIFAR-10 ablation (L2, manual weights)"
    assert labels.experiment_title("newbench", "newvariant") == "newbench ablation (newvariant)"


def test_executed_twice_pairs_say_which_changed_device(tmp_path):
    def trained(exp, c, device, accelerator=None, auc=0.9):
        _run(tmp_path, exp, c, 0, auc)
        prov = {"device": device, "hardware": {"accelerator": accelerator, "logical_cpus": 2}}
        (tmp_path / exp / str(c) / "0" / "provenance.json").write_text(json.dumps(prov))

    for c in range(4):
        trained("coil100-earlier", c, "cuda:0" if c else "cpu", "NVIDIA H200" if c else None)
        trained("coil100", c, "cpu", auc=0.9 + 0.01 * c)
    s = evidence.reexecutions(collect(tmp_path))[1]
    assert s["devices"][("coil100", 0, 0)] == ("a CPU", "a CPU")
    assert s["devices"][("coil100", 2, 0)] == ("an NVIDIA H200 GPU", "a CPU")
    assert evidence.device_changes(s["devices"], {"coil100": "COIL-100"}) == (
        "3 of the 4 pairs changed device (COIL-100 classes 1-3: earlier on an NVIDIA H200 GPU, latest on a CPU), so "
        "their differences include the change of device as well as of code"
    )
    tests = evidence.reexecution_tests(s)
    assert tests["same device"].n == 1 and tests["changed device"].n == 3
    assert tests["same device"].mean_difference == pytest.approx(0.0)
    assert tests["changed device"].mean_difference == pytest.approx(0.02)  # classes 1-3 gained 0.01, 0.02, 0.03
    empty = evidence.reexecution_tests({"differences": {}, "devices": {}})
    assert empty == {"same device": None, "changed device": None}
    same = {k: v for k, v in s["devices"].items() if k[1] == 0}
    assert evidence.device_changes(same) == "both executions of every pair trained on a CPU"
    assert evidence.device_changes({}) == "no run has been executed twice"


def test_executed_twice_differences_are_broken_down_by_experiment():
    diffs = {("mnist", 0, 0): -0.01, ("mnist", 1, 0): -0.03, ("mnist", 2, 0): 0.01, ("coil100", 5, 0): 0.0}
    text = evidence.reexecution_by_experiment({"differences": diffs}, {"mnist": "MNIST"})
    assert (
        text
        == "coil100 +0.000 over 1 run (lower in 0, higher in 0); MNIST -0.010 over 3 runs (lower in 2, higher in 1)"
    )
    assert evidence.reexecution_by_experiment({"differences": {}}) == "no run has been executed twice"


def test_controls_are_computed_for_the_runs_in_the_tables_not_for_superseded_executions(tmp_path):
    from piad.experiments.controls import control_targets

    _run(tmp_path, "mnist", 0, 0, 0.9)
    _run(tmp_path, "mnist-earlier", 0, 0, 0.8)
    _run(tmp_path, "mnist", 1, 1, 0.7)
    _run(tmp_path, "mnist", 1, 0, 0.6)
    targets = control_targets(tmp_path)
    assert sorted(targets) == [("mnist", 0), ("mnist", 1)]
    assert targets[("mnist", 1)].config["run"] == 0  # the lowest run number's config


def test_resolvable_says_whether_a_sign_flip_test_over_n_classes_can_reach_p_below_alpha():
    for n in range(2, 9):
        reachable = stats.sign_flip_test(np.arange(1, n + 1) / 100.0).p_value < evidence.ALPHA
        sentence = evidence.resolvable(n)
        assert f"with {n} classes" in sentence
        assert ("a paired test can resolve" in sentence) == reachable
        assert ("no paired test can resolve" in sentence) == (not reachable)
    assert "no paired test is possible" in evidence.resolvable(1)
