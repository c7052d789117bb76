"""Per-image anomaly scores on disk: `scores.npz` beside a run's metrics.json (and a control's).

A compressed numpy archive with three arrays, the same order as the test split:
  labels  int8     0 normal, 1 anomalous
  scores  float32  the anomaly score (higher = more anomalous), exactly as scored
  groups  unicode  the original class of each test image ('' where the benchmark has none)
It is read with `allow_pickle=False`: loading never executes code. From it anyone can recompute ROC AUC, bootstrap
intervals and paired tests without the checkpoints (piad.experiments.stats).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from piad.errors import RunDirectoryError
from piad.run.rundir import SCORES_NPZ, atomic_write_bytes

__all__ = ["SCORES_NPZ", "Scores", "load_scores", "save_scores"]


class Scores(NamedTuple):
    labels: np.ndarray  # int8 [N]
    scores: np.ndarray  # float32 [N]
    groups: np.ndarray  # str [N]


def save_scores(path, labels, scores, groups: Sequence | None = None) -> None:
    """Write `path` (.npz) atomically; `groups` None means no per-image groups."""
    labels = np.asarray(labels).astype(np.int8)
    scores = np.asarray(scores, dtype=np.float32)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be two vectors of one length")
    groups = np.asarray([str(g) for g in groups] if groups is not None else [""] * len(labels), dtype=str)
    if groups.shape != labels.shape:
        raise ValueError(f"groups has {groups.shape[0]} entries for {labels.shape[0]} scores")
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=labels, scores=scores, groups=groups)
    atomic_write_bytes(path, buf.getvalue())


def load_scores(path) -> Scores:
    """Read a scores.npz; a file that is not one gives a one-line RunDirectoryError naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = Scores(z["labels"].astype(np.int8), z["scores"].astype(np.float32), z["groups"].astype(str))
    except FileNotFoundError:
        raise RunDirectoryError(
            f"{str(path)!r} does not exist: evaluate the run (piad evaluate) to write it."
        ) from None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise RunDirectoryError(
            f"{str(path)!r} is not a scores file written by piad ({type(e).__name__}); "
            "evaluate the run again to rewrite it."
        ) from None
    n = out.labels.shape
    if out.labels.ndim != 1 or out.scores.shape != n or out.groups.shape != n or not np.isin(out.labels, (0, 1)).all():
        raise RunDirectoryError(f"{str(path)!r} has inconsistent arrays; evaluate the run again to rewrite it.")
    return out
