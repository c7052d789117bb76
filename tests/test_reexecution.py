"""`piad adopt` (piad.experiments.reexecution): a re-executed run takes the committed run's place, the committed one
moves to `<experiment>-earlier/`, and nothing moves unless every run can be adopted."""

import json
import os

import numpy as np
import pytest

from piad.errors import PiadError
from piad.experiments import evidence
from piad.experiments.reexecution import adopt_reexecutions
from piad.experiments.runs import collect
from piad.run.scorefile import save_scores

CONFIG = {"benchmark": "mnist", "iterations": 10, "seed": None, "lr_eg": 1e-4}


def _run(root, exp, c, r, auc, scores=False, **config):
    d = root / exp / str(c) / str(r)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({**CONFIG, "normal_class": c, "run": r, **config}))
    m = {"status": "ok", "roc_auc": auc, "n_test_normal": 3, "n_test_anomalous": 3}
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "provenance.json").write_text(json.dumps({"started": f"{exp}/{c}/{r} {auc}", "git_commit": "0" * 40}))
    if scores:
        save_scores(d / "scores.npz", np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.5, 0.4, 0.6, 0.7]))
    return d


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def folders(tmp_path):
    results, source = tmp_path / "results" / "offline", tmp_path / "rerun" / "offline"
    for c in (0, 1):
        _run(results, "mnist", c, 0, 0.90 + c / 100)
    _run(results, "mnist", 2, 0, 0.5)  # not re-executed: stays as it is
    for c in (0, 1):
        _run(source, "mnist", c, 0, 0.80 + c / 100, scores=True)
    return results, source


def test_adopted_runs_take_the_committed_place_and_the_committed_runs_move_to_earlier(folders):
    results, source = folders
    before = _tree(source)
    done = adopt_reexecutions(source, results, log=lambda s: None)
    assert done == [results / "mnist" / "0" / "0", results / "mnist" / "1" / "0"]
    for c in (0, 1):
        now = json.loads((results / "mnist" / str(c) / "0" / "metrics.json").read_text())
        earlier = json.loads((results / "mnist-earlier" / str(c) / "0" / "metrics.json").read_text())
        assert (now["roc_auc"], earlier["roc_auc"]) == (0.80 + c / 100, 0.90 + c / 100)
        assert (results / "mnist" / str(c) / "0" / "scores.npz").is_file()
    assert json.loads((results / "mnist" / "2" / "0" / "metrics.json").read_text())["roc_auc"] == 0.5
    assert not (results / "mnist-earlier" / "2").exists()
    assert _tree(source) == before  # copied, not moved
    assert not list(results.rglob(".*adopting*"))
    _, s = evidence.reexecutions(collect(results))
    assert s["differences"] == {("mnist", 0, 0): pytest.approx(-0.10), ("mnist", 1, 0): pytest.approx(-0.10)}
    after = _tree(results)
    assert adopt_reexecutions(source, results, log=lambda s: None) == []  # again: adopted before, nothing moves
    assert _tree(results) == after


@pytest.mark.parametrize(
    "arrange, words",
    [
        (lambda r, s: _run(s, "mnist", 3, 0, 0.7), "no finished run at"),
        (lambda r, s: _run(s, "mnist", 4, 0, 0.7) and _run(r, "mnist", 4, 0, 0.6, iterations=20), "differs"),
        (lambda r, s: _run(r, "mnist-earlier", 1, 0, 0.95), "already holds an earlier execution"),
    ],
    ids=["no committed run", "another config", "earlier already kept"],
)
def test_nothing_moves_unless_every_run_can_be_adopted(folders, arrange, words):
    results, source = folders
    arrange(results, source)
    before = _tree(results)
    with pytest.raises(PiadError, match=words) as e:
        adopt_reexecutions(source, results, log=lambda s: None)
    assert len(str(e.value).splitlines()) == 1
    assert _tree(results) == before


def test_a_source_without_finished_runs_or_the_results_folder_itself_is_refused(tmp_path, folders):
    results, _ = folders
    (tmp_path / "empty").mkdir()
    with pytest.raises(PiadError, match="holds no finished run"):
        adopt_reexecutions(tmp_path / "empty", results)
    with pytest.raises(PiadError, match="same folder"):
        adopt_reexecutions(results, results)
    with pytest.raises(PiadError, match="is not a folder"):
        adopt_reexecutions(tmp_path / "missing", results)


def test_a_failed_swap_puts_the_committed_run_back(folders, monkeypatch):
    results, source = folders
    before = _tree(results)
    real = os.rename

    def failing(a, b):
        if str(a).endswith(".adopting"):
            raise OSError(28, "No space left on device")
        return real(a, b)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError):
        adopt_reexecutions(source, results, log=lambda s: None)
    monkeypatch.setattr(os, "rename", real)
    assert _tree(results) == before
    assert not list(results.rglob(".*adopting*")) and not (results / "mnist-earlier").exists()


def test_adopt_command_refuses_bad_input_in_one_line(tmp_path):
    from helpers import run_cli

    p = run_cli("adopt", str(tmp_path / "missing"), "--results-dir", str(tmp_path))
    assert p.returncode == 2 and "is not a folder" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_copy_left_by_a_killed_adoption_is_no_run_and_is_replaced(folders):
    results, source = folders
    _run(results / "mnist" / "0", "", "", ".0.adopting", 0.3)  # as a SIGKILL between copy and rename leaves it
    assert sorted(r.path.name for r in collect(results)) == ["0", "0", "0"]
    adopt_reexecutions(source, results, log=lambda s: None)
    assert not list(results.rglob(".*adopting*"))
    assert json.loads((results / "mnist" / "0" / "0" / "metrics.json").read_text())["roc_auc"] == 0.80


@pytest.mark.parametrize(
    "distance, adopted",
    [("l2", True), ("perceptual_l2", True), ("perceptual_l1", False), (None, False)],
)
def test_other_statistics_are_a_re_execution_only_where_the_distance_reads_none(tmp_path, distance, adopted):
    """The CIFAR-10 ablation's l2 and perceptual-L2 runs name the statistics file of their time, which their distance
    never reads: trained again under today's file, they are the same run. A distance that standardises its features
    with the statistics (the L1 kinds; None is the default relative-perceptual-L1) trains another run."""
    results, source = tmp_path / "results", tmp_path / "rerun"
    old = _run(results, "cifar10-ablation-x", 0, 0, 0.6, distance=distance, feature_stats="a/cifar10_train.pt")
    _run(source, "cifar10-ablation-x", 0, 0, 0.7, scores=True, distance=distance, feature_stats="b/natural.pt")
    before = _tree(results)
    if adopted:
        assert adopt_reexecutions(source, results, log=lambda s: None) == [old]
        assert json.loads((old / "metrics.json").read_text())["roc_auc"] == 0.7
    else:
        with pytest.raises(PiadError, match="config differs .* in feature_stats: not a re-execution"):
            adopt_reexecutions(source, results, log=lambda s: None)
        assert _tree(results) == before


def test_other_statistics_with_another_distance_are_still_refused(tmp_path):
    results, source = tmp_path / "results", tmp_path / "rerun"
    _run(results, "x", 0, 0, 0.6, distance="l2", feature_stats="a.pt")
    _run(source, "x", 0, 0, 0.7, distance="perceptual_l2", feature_stats="b.pt")
    with pytest.raises(PiadError, match="in distance, feature_stats"):
        adopt_reexecutions(source, results, log=lambda s: None)
