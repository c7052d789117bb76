"""Properties of the committed offline results (results/offline, results/offline-curves) that the book relies on."""
import csv

import pytest

from piad.paths import repo_root

GRID, LONG = repo_root() / "results" / "offline", repo_root() / "results" / "offline-curves"


def read_curve(path):
    with open(path, newline="") as f:
        return {int(r["iteration"]): float(r["roc_auc"]) for r in csv.DictReader(f)}


def test_long_runs_repeat_the_grid_runs_up_to_the_budget():
    """A long run is the grid run of the same class trained further: training is seeded and does not depend on the
    total number of iterations, so up to the grid's budget every snapshot scores exactly what the grid's scores."""
    pairs = [(p, GRID / p.relative_to(LONG)) for p in sorted(LONG.glob("*/*/*/curve.csv"))]
    pairs = [(long, grid) for long, grid in pairs if grid.exists()]
    if not pairs:
        pytest.skip("no committed long run has a committed grid run of the same class")
    for long, grid in pairs:
        g, l = read_curve(grid), read_curve(long)
        assert max(l) > max(g), f"{long} is not longer than {grid}"
        assert {it: l.get(it) for it in g} == g, f"{long} and {grid} differ up to iteration {max(g)}"
