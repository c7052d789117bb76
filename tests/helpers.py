"""Small utilities shared by tests (not fixtures)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def tiny(**kw):
    """A 4-iteration run of the synthetic data, checkpointed every 2 iterations (the fault tests' run)."""
    from piad.run.config import make_config

    return make_config("synthetic", {"iterations": 4, "checkpoint_every": 2, "log_every": 2, **kw})


def networks_of(run_dir) -> dict:
    state = torch.load(Path(run_dir) / "checkpoints" / "latest.pt", weights_only=True)
    return state["networks"]


def assert_same_networks(a: dict, b: dict, atol: float = 0.0) -> None:
    for net in a:
        for k in a[net]:
            if atol == 0:
                assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
            else:
                assert torch.allclose(a[net][k], b[net][k], atol=atol), f"{net}.{k} differs"


def log_rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "log.csv") as f:
        return list(csv.DictReader(f))


def all_finite(rows) -> bool:
    return all(math.isfinite(float(v)) for r in rows for k, v in r.items() if v != "")


def run_cli(*args, timeout=300, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "piad.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def roc_auc_from_scores(run_dir) -> float:
    """scikit-learn's ROC AUC of a run's scores.csv (anomaly = label 1), after checking that its labels are the test
    labels of the run's data (loaded again from its config.json)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from piad.data import load_for_config
    from piad.run.config import load_config

    with open(Path(run_dir) / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = load_for_config(load_config(Path(run_dir) / "config.json")).test_labels.numpy()
    assert [int(r["label"]) for r in rows] == labels.tolist(), "scores.csv does not hold the test labels in order"
    return float(roc_auc_score(labels, np.array([float(r["score"]) for r in rows])))
