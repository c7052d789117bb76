"""Properties of the committed offline results (results/offline, results/offline-curves) that the book relies on."""

import pytest

from piad.experiments.learning_curves import collect_curves
from piad.paths import repo_root

GRID, LONG = repo_root() / "results" / "offline", repo_root() / "results" / "offline-curves"


def curves(results_dir):
    """{(experiment, normal class, run): {iteration: ROC AUC}} of every finished run's curve.csv."""
    df = collect_curves(results_dir)
    by_run = df.groupby(["experiment", "normal_class", "run"])
    return {key: dict(zip(g["iteration"], g["roc_auc"], strict=True)) for key, g in by_run}


def test_long_runs_repeat_the_grid_runs_up_to_the_budget():
    """A long run is the grid run of the same class trained further: training is seeded and does not depend on the
    total number of iterations, so up to the grid's budget every snapshot scores exactly what the grid's scores."""
    grid, long = curves(GRID), curves(LONG)
    pairs = sorted(set(grid) & set(long))
    if not pairs:
        pytest.skip("no committed long run has a committed grid run of the same class")
    for key in pairs:
        g, lg = grid[key], long[key]
        assert max(lg) > max(g), f"the long run {key} is not longer than the grid's"
        assert {it: lg.get(it) for it in g} == g, f"the long run {key} and the grid's differ up to iteration {max(g)}"
