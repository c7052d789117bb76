"""Learning curves: the ROC AUC of a run's weight snapshots (checkpoints/iter_*.pt) against training iterations.

Every snapshot is scored on the run's whole test split with f(x) of the test images computed once
(:func:`piad.run.evaluation.score_checkpoints`). A curve shows how far training has converged; it never chooses the
reported number, which is always the final iteration's: picking the best snapshot by test ROC AUC would be model
selection on the test set (book: Method > Anomaly score).

`curve.csv` (columns `iteration`, `roc_auc`) is written into the run directory; `piad reproduce` copies it into the
result folder, where the learning-curve notebook reads it.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from piad.data import load_for_config
from piad.errors import RunDirectoryError
from piad.run.evaluation import roc_auc, score_checkpoints
from piad.run.rundir import CURVE, CHECKPOINTS, atomic_write_text, load_run_config, snapshots

def learning_curve(run_dir, device="cpu", every: Optional[int] = None, batch_size: int = 256,
                   data=None) -> list[tuple[int, float]]:
    """[(iteration, ROC AUC on the full test split)] for every snapshot (every `every` iterations) of a run."""
    run_dir = Path(run_dir)
    snaps = snapshots(run_dir, every)
    if not snaps:
        raise RunDirectoryError(f"{run_dir / CHECKPOINTS} holds no weight snapshots (iter_*.pt"
                                + (f" at multiples of {every}" if every else "") + "); train the run first.")
    data = data if data is not None else load_for_config(load_run_config(run_dir))
    scores = score_checkpoints([p for _, p in snaps], data.test, device, batch_size)
    labels = data.test_labels.numpy()
    return [(it, roc_auc(scores[str(p)].cpu().numpy(), labels)) for it, p in snaps]


def curve_csv(curve: list[tuple[int, float]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["iteration", "roc_auc"])
    w.writerows((it, f"{auc:.6f}") for it, auc in curve)
    return buf.getvalue()


def write_learning_curve(run_dir, device="cpu", every: Optional[int] = None, batch_size: int = 256,
                         data=None) -> list[tuple[int, float]]:
    """Score the run's snapshots and write `curve.csv` into the run directory (atomically); return the curve."""
    curve = learning_curve(run_dir, device, every, batch_size, data)
    atomic_write_text(Path(run_dir) / CURVE, curve_csv(curve))
    return curve
