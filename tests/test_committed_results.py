"""Properties of the committed offline results (results/offline, results/offline-curves) that the book relies on."""

import pytest

from piad.experiments.learning_curves import collect_curves
from piad.experiments.runs import EARLIER_SUFFIX, read_json
from piad.paths import repo_root

GRID, LONG = repo_root() / "results" / "offline", repo_root() / "results" / "offline-curves"


def curves(results_dir):
    """{(experiment, normal class, run): {iteration: ROC AUC}} of every finished run's curve.csv."""
    df = collect_curves(results_dir)
    by_run = df.groupby(["experiment", "normal_class", "run"])
    return {key: dict(zip(g["iteration"], g["roc_auc"], strict=True)) for key, g in by_run}


def test_long_runs_repeat_the_grid_runs_up_to_the_budget():
    """A long run is the grid run with its settings (the same config but for the iterations) trained further:
    training is seeded and does not depend on the total number of iterations, so up to the grid's budget every
    snapshot scores exactly what the grid's scores. The long runs were trained by the code of the grid runs' first
    executions: where a grid run was executed again later (`<experiment>-earlier/` holds the first), the first
    execution is the one repeated; a grid run kept aside under other statistics (the leak study) counts too."""
    from piad.experiments.runs import collect, config_differences

    grid, long = curves(GRID), curves(LONG)
    grid_runs = sorted(
        (r for r in collect(GRID) if r.finished), key=lambda r: not r.experiment.endswith(EARLIER_SUFFIX)
    )
    pairs = []
    for rec in (r for r in collect(LONG) if r.finished):
        same = [g for g in grid_runs if config_differences(g.config, rec.config) == ["iterations"]]
        if same:  # the first execution first
            g = same[0]
            pairs.append(((g.experiment, int(g.config["normal_class"]), int(g.config["run"])), rec))
    if not pairs:
        pytest.skip("no committed long run has a committed grid run with its settings")
    for key, rec in pairs:
        g, lg = grid[key], long[(rec.experiment, int(rec.config["normal_class"]), int(rec.config["run"]))]
        assert max(lg) > max(g), f"the long run {rec.path} is not longer than the grid's"
        assert {it: lg.get(it) for it in g} == g, f"the long run {rec.path} and {key} differ up to iteration {max(g)}"
    assert len(pairs) == sum(r.finished for r in collect(LONG)), "a long run without a grid run of its settings"


def _committed_scores():
    root = repo_root() / "results"
    return sorted(p.parent for p in root.glob("*/**/scores.npz") if "smoke" not in p.parts)


def test_committed_roc_aucs_are_recomputed_from_the_committed_per_image_scores():
    """Every committed run and control with a scores.npz: scikit-learn's ROC AUC of those scores is the ROC AUC its
    metrics.json reports, and the counts agree."""
    import json

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from piad.run.scorefile import load_scores

    folders = _committed_scores()
    if not folders:
        pytest.skip("no committed per-image scores (results/*/.../scores.npz) in this checkout")
    for d in folders:
        z = load_scores(d / "scores.npz")
        m = json.loads((d / "metrics.json").read_text())
        assert roc_auc_score(z.labels, z.scores.astype(np.float64)) == pytest.approx(m["roc_auc"], abs=1e-12), d
        assert (int((z.labels == 0).sum()), int(z.labels.sum())) == (m["n_test_normal"], m["n_test_anomalous"]), d


def test_controls_with_a_statistics_override_equal_those_of_a_run_trained_with_those_statistics():
    """Two routes to the same control: `piad control --feature-stats` (controls-natural-stats/, the configs of the
    CIFAR-10 runs trained with the CIFAR-10 statistics, the natural-image statistics swapped in) and the plain
    controls of the same class trained with those statistics (evidence.LEAK_STUDY names both). Same data, distance
    and statistics: the same scores, image by image, up to float32 rounding (a CPU's reductions, the mean image among
    them, sum in an order that follows its thread count; one ulp is 1.2e-7 of a score; the other statistics file
    moves them by 1-4%, median per class)."""
    import numpy as np

    from piad.experiments.evidence import LEAK_STUDY
    from piad.run.scorefile import load_scores

    overridden = GRID / "controls-natural-stats" / LEAK_STUDY.leaky_runs
    retrained = GRID / "controls" / LEAK_STUDY.leak_free_runs
    classes = (
        sorted(p.name for p in retrained.glob("*") if (overridden / p.name).is_dir()) if retrained.is_dir() else []
    )
    if not classes:
        pytest.skip("no retrained CIFAR-10 class has committed controls under both routes")
    for c in classes:
        for control in ("mean_image", "nearest"):
            a, b = (load_scores(d / c / control / "scores.npz") for d in (overridden, retrained))
            assert np.array_equal(a.labels, b.labels), (c, control)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=0, err_msg=f"class {c}, {control}")
            aucs = [read_json(d / c / control / "metrics.json")["roc_auc"] for d in (overridden, retrained)]
            assert aucs[0] == pytest.approx(aucs[1], abs=1e-6), (c, control)


def test_every_committed_control_was_computed_for_the_inputs_of_the_run_it_stands_beside():
    """Each control folder's provenance names the inputs its run's config gives it (with the statistics override
    the provenance records, for controls-natural-stats): no table compares a run with a control of other inputs,
    e.g. after a run was retrained with other statistics and moved in."""
    from piad.experiments.controls import control_dir, control_targets, is_complete, run_config, stale_inputs

    checked = 0
    for results in (GRID, repo_root() / "results" / "smoke"):
        targets = control_targets(results)
        for folder in sorted(p.name for p in results.glob("controls*") if p.is_dir()):
            for key, rec in targets.items():
                d = control_dir(results, *key, folder)
                if not is_complete(d):
                    continue
                overrides = (read_json(d / "provenance.json") or {}).get("overrides") or {}
                stale = stale_inputs(d, run_config(rec, overrides))
                assert not stale, f"{d}: computed for other {', '.join(stale)} than {rec.path}"
                checked += 1
    assert checked >= len(control_targets(GRID))
