"""Learning curves: the ROC AUC of a run's weight snapshots (checkpoints/iter_*.pt) against training iterations.

Every snapshot is scored on the run's whole test split with f(x) of the test images computed once
(:func:`piad.run.evaluation.score_checkpoints`). A curve shows how far training has converged; it never chooses the
reported number, which is always the final iteration's: picking the best snapshot by test ROC AUC would be model
selection on the test set (book: Method > Anomaly score).

`curve.csv` (columns `iteration`, `roc_auc`) is written into the run directory; `piad reproduce` copies it into the
result folder, where the learning-curve notebook reads it. Scoring a long run's snapshots takes a while on a CPU
(about 4-7 minutes per CIFAR-10 snapshot at one thread in NCHW, a third less in channels_last), so each snapshot's
ROC AUC is kept in `curve.points.csv` as soon as it is scored: an interrupted curve resumes where it stopped, and a
curve drawn again while a run trains scores only the new snapshots. A kept point is used only while its snapshot
file is unchanged (same size and modification time). The final snapshot's point is kept by the run's evaluation
(piad.run.evaluation.evaluate), which has just scored the same weights.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from piad.data import load_for_config
from piad.errors import RunDirectoryError, divergence_advice
from piad.run.evaluation import roc_auc, score_checkpoints
from piad.run.rundir import (
    CHECKPOINTS,
    CURVE,
    atomic_write_text,
    curve_points,
    diverged_status,
    keep_curve_points,
    load_run_config,
    snapshot_path,
    snapshot_stamp,
    snapshots,
)


def learning_curve(
    run_dir,
    device="cpu",
    every: int | None = None,
    batch_size: int = 256,
    data=None,
    known: dict[int, float] | None = None,
    on_point=None,
    channels_last: bool = False,
) -> list[tuple[int, float]]:
    """[(iteration, ROC AUC on the full test split)] for every snapshot (every `every` iterations) of a run.
    `known`: iteration -> ROC AUC of snapshots scored before (not scored again); `on_point(iteration, auc)` is called
    after each newly scored snapshot; `channels_last`: score in the NHWC memory layout."""
    run_dir = Path(run_dir)
    snaps = snapshots(run_dir, every)
    bad = diverged_status(run_dir)
    if not snaps and bad is not None:
        raise RunDirectoryError(
            f"run {str(run_dir)!r} diverged at iteration {bad.get('iteration')} ({bad.get('what')}) before its first "
            f"weight snapshot: there is no curve to draw. Train it again with --overwrite and {divergence_advice()}."
        )
    if not snaps:
        raise RunDirectoryError(
            f"{run_dir / CHECKPOINTS} holds no weight snapshots (iter_*.pt"
            + (f" at multiples of {every}" if every else "")
            + "); train the run first."
        )
    points = dict(known or {})
    todo = {str(p): it for it, p in snaps if it not in points}
    if todo:
        data = data if data is not None else load_for_config(load_run_config(run_dir))
        labels = data.test_labels.numpy()

        def scored(path, scores):
            it = todo[str(path)]
            points[it] = roc_auc(scores.cpu().numpy(), labels)
            if on_point is not None:
                on_point(it, points[it])

        score_checkpoints(list(todo), data.test, device, batch_size, on_scored=scored, channels_last=channels_last)
    return [(it, points[it]) for it, _ in snaps]


def curve_csv(curve: list[tuple[int, float]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["iteration", "roc_auc"])
    w.writerows((it, f"{auc:.6f}") for it, auc in curve)
    return buf.getvalue()


def write_learning_curve(
    run_dir, device="cpu", every: int | None = None, batch_size: int = 256, data=None, channels_last: bool = False
) -> list[tuple[int, float]]:
    """Score the run's snapshots and write `curve.csv` into the run directory (atomically); return the curve.
    Points kept in `curve.points.csv` by earlier calls are reused where their snapshot is unchanged; with other
    `data` than the run's own (given explicitly), nothing is reused or kept."""
    run_dir = Path(run_dir)
    known, on_point = {}, None  # data given explicitly (not the run's own): nothing reused or kept
    if data is None:
        stamps = {it: snapshot_stamp(p) for it, p in snapshots(run_dir)}
        known = {it: auc for it, (auc, stamp) in curve_points(run_dir).items() if stamps.get(it) == stamp}

        def keep(it: int, auc: float) -> None:
            # a snapshot written since we began has no stamp yet
            keep_curve_points(run_dir, {it: (auc, stamps.get(it) or snapshot_stamp(snapshot_path(run_dir, it)))})

        on_point = keep
    curve = learning_curve(
        run_dir, device, every, batch_size, data, known=known, on_point=on_point, channels_last=channels_last
    )
    atomic_write_text(run_dir / CURVE, curve_csv(curve))
    return curve
