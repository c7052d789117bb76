"""scores.npz: per-image labels, float32 scores and groups, round-tripped exactly and read without pickle."""

import numpy as np
import pytest

from piad.errors import RunDirectoryError
from piad.run.scorefile import load_scores, save_scores


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500).astype(np.float32)
    labels = (rng.random(500) < 0.3).astype(int)
    groups = rng.integers(0, 9, 500)
    save_scores(tmp_path / "s.npz", labels, scores, groups)
    z = load_scores(tmp_path / "s.npz")
    assert z.scores.dtype == np.float32 and np.array_equal(z.scores, scores)
    assert z.labels.tolist() == labels.tolist() and z.groups.tolist() == [str(g) for g in groups]


def test_no_groups_are_empty_strings(tmp_path):
    save_scores(tmp_path / "s.npz", [0, 1], [0.1, 0.2])
    assert load_scores(tmp_path / "s.npz").groups.tolist() == ["", ""]


def test_mismatched_lengths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one length"):
        save_scores(tmp_path / "s.npz", [0, 1, 1], [0.1, 0.2])
    assert not (tmp_path / "s.npz").exists()


def test_object_arrays_are_refused_without_executing(tmp_path):
    """An archive holding pickled objects is refused (allow_pickle=False), as is a file that is no archive."""
    p = tmp_path / "evil.npz"
    np.savez(p, labels=np.array([0, 1]), scores=np.array([object(), object()], dtype=object), groups=np.array(["", ""]))
    with pytest.raises(RunDirectoryError, match="not a scores file"):
        load_scores(p)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RunDirectoryError, match="junk.npz"):
        load_scores(tmp_path / "junk.npz")
    with pytest.raises(RunDirectoryError, match="does not exist"):
        load_scores(tmp_path / "missing.npz")
