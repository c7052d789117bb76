"""Learning curves (piad.run.curves): ROC AUC of every weight snapshot, never a choice of the reported number."""

import csv
import dataclasses

import pytest
import torch
from helpers import run_cli

from piad.data import load_for_config
from piad.errors import RunDirectoryError
from piad.run.config import make_config
from piad.run.curves import learning_curve, write_learning_curve
from piad.run.evaluation import AnomalyScorer, evaluate, roc_auc
from piad.run.rundir import curve_points, load_run_config, snapshot_stamp, snapshots
from piad.run.training import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("curve-run")
    train(make_config("synthetic", {"iterations": 12, "checkpoint_every": 4}), out, progress=False)
    return out


def test_snapshots_are_listed_by_iteration_and_filtered_by_cadence(run):
    assert [it for it, _ in snapshots(run)] == [4, 8, 12]
    assert [it for it, _ in snapshots(run, every=8)] == [8]


def test_each_point_equals_scoring_that_snapshot_alone(run):
    # seeded random labels: every snapshot then has its own ROC AUC, so a curve that scored one model for every
    # point cannot match (with the synthetic labels every snapshot reaches the same AUC)
    data = load_for_config(make_config("synthetic", {"iterations": 12}))
    labels = torch.randint(0, 2, (len(data.test),), generator=torch.Generator().manual_seed(0))
    data = dataclasses.replace(data, test_labels=labels, test_groups=None)
    curve = learning_curve(run, data=data)
    assert [it for it, _ in curve] == [4, 8, 12]
    scores = []
    for it, auc in curve:
        scorer = AnomalyScorer.from_checkpoint(run / "checkpoints" / f"iter_{it:07d}.pt")
        scores.append(scorer.score(data.test))
        assert auc == pytest.approx(roc_auc(scores[-1].numpy(), data.test_labels.numpy()), abs=1e-9)
    assert not torch.allclose(scores[0], scores[-1])  # each point is its own snapshot, not one model
    assert len({round(a, 9) for _, a in curve}) == len(curve)
    # the final point is the run's reported number (real labels)
    assert learning_curve(run)[-1][1] == pytest.approx(evaluate(run)["roc_auc"], abs=1e-6)


def test_curve_csv_round_trip_and_cli(run, tmp_path):
    curve = write_learning_curve(run, every=4)
    with open(run / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [it for it, _ in curve]
    assert [float(r["roc_auc"]) for r in rows] == pytest.approx([a for _, a in curve], abs=1e-6)
    r = run_cli("curve", "--out", run, "--every", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "wrote 1 points" in r.stdout
    r = run_cli("curve", "--out", run, "--every", "8", "--channels-last")
    assert r.returncode == 0 and "wrote 1 points" in r.stdout, r.stderr
    assert run_cli("curve", "--out", run, "--every", "0").returncode == 2


def test_run_without_snapshots_is_refused(tmp_path):
    with pytest.raises(RunDirectoryError, match="no weight snapshots"):
        learning_curve(tmp_path)


def test_an_interrupted_curve_resumes_from_the_snapshots_it_scored(run, monkeypatch):
    """Scoring stops after the first snapshot (a session ends): the next call scores only the other two, gives the
    uninterrupted curve; a third call scores none. A snapshot rewritten since is scored again."""
    data = load_for_config(make_config("synthetic", {"iterations": 12}))
    labels = torch.randint(0, 2, (len(data.test),), generator=torch.Generator().manual_seed(0))
    data = dataclasses.replace(data, test_labels=labels, test_groups=None)  # a distinct ROC AUC per snapshot
    whole = learning_curve(run, data=data)
    assert len({auc for _, auc in whole}) == 3
    import piad.run.curves

    monkeypatch.setattr(piad.run.curves, "load_for_config", lambda cfg: data)  # the run's own data, as loaded
    (run / "curve.points.csv").unlink(missing_ok=True)
    calls = []
    original = AnomalyScorer.score

    def score(self, *a, **k):
        if len(calls) == 1 and interrupt:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(AnomalyScorer, "score", score)
    (run / "curve.csv").unlink(missing_ok=True)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        write_learning_curve(run)
    assert (run / "curve.points.csv").exists() and not (run / "curve.csv").exists()
    interrupt, calls[:] = False, []
    assert write_learning_curve(run) == whole
    assert len(calls) == 2
    calls[:] = []
    assert write_learning_curve(run) == whole and calls == []
    # data other than the run's own: nothing reused
    assert write_learning_curve(run, data=data) == whole and len(calls) == 3
    (run / "curve.points.csv").unlink()
    # kept points are tied to their snapshot file: one rewritten after the interruption is scored again
    interrupt, calls[:] = True, []
    with pytest.raises(KeyboardInterrupt):
        write_learning_curve(run)
    first = run / "checkpoints" / "iter_0000004.pt"
    first.write_bytes(first.read_bytes())
    interrupt, calls[:] = False, []
    assert write_learning_curve(run) == whole
    assert len(calls) == 3


def test_grid_curves_score_the_cadence_not_an_interruptions_snapshot(tmp_path):
    """`piad reproduce` scores the snapshots at the run's checkpoint cadence; a snapshot an interruption left in
    between is not a point. A run whose last iteration is off the cadence keeps every snapshot (the last is the
    reported number)."""
    from piad.experiments.jobs import curve_learning

    def points(run):
        with open(run / "curve.csv") as f:
            return [int(r["iteration"]) for r in csv.DictReader(f)]

    on = tmp_path / "on"
    train(make_config("synthetic", {"iterations": 12, "checkpoint_every": 4}), on, progress=False)
    ckpt = on / "checkpoints"
    (ckpt / "iter_0000006.pt").write_bytes((ckpt / "iter_0000008.pt").read_bytes())  # as SIGTERM at 6 leaves
    curve_learning(on, "cpu", 1)
    assert points(on) == [4, 8, 12]
    off = tmp_path / "off"
    train(make_config("synthetic", {"iterations": 10, "checkpoint_every": 4}), off, progress=False)
    curve_learning(off, "cpu", 1)
    assert points(off) == [4, 8, 10]


def test_the_evaluation_keeps_the_final_point_so_the_curve_does_not_score_it_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(make_config("synthetic", {"iterations": 8, "checkpoint_every": 4}), out, progress=False)
    final = out / "checkpoints" / "iter_0000008.pt"
    m = evaluate(out)
    assert curve_points(out) == {8: (m["roc_auc"], snapshot_stamp(final))}
    data = load_for_config(load_run_config(out))
    alone = AnomalyScorer.from_checkpoint(final).score(data.test)
    assert m["roc_auc"] == pytest.approx(roc_auc(alone.numpy(), data.test_labels.numpy()), abs=1e-9)
    scored = []
    original = AnomalyScorer.score

    def score(self, *a, **k):
        scored.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(AnomalyScorer, "score", score)
    curve = write_learning_curve(out)
    assert [it for it, _ in curve] == [4, 8] and curve[-1][1] == m["roc_auc"]
    assert len(scored) == 1  # iteration 4 only
    # an evaluation on other data than the run's own keeps nothing
    (out / "curve.points.csv").unlink()
    evaluate(out, data=data)
    assert curve_points(out) == {}


def test_scoring_in_the_nhwc_layout_matches_nchw_up_to_float_rounding(run):
    """`channels_last` (evaluate, curves, the CLI) changes the memory layout the scorer runs in, not its math."""
    data = load_for_config(load_run_config(run))
    ckpt = run / "checkpoints" / "iter_0000012.pt"
    nchw = AnomalyScorer.from_checkpoint(ckpt).score(data.test, batch_size=7)
    scorer = AnomalyScorer.from_checkpoint(ckpt).use_channels_last()
    seen = []
    first_conv = next(m for m in scorer.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    nhwc = scorer.score(data.test, batch_size=7)
    hook.remove()
    assert seen and all(seen)  # the batches really ran in NHWC
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-6)
    shared = scorer.score(data.test, batch_size=7, features=scorer.features(data.test, batch_size=7))
    torch.testing.assert_close(shared, nchw, rtol=1e-4, atol=1e-6)
    # seeded random labels give every snapshot its own ROC AUC (the synthetic labels give all the same)
    labels = torch.randint(0, 2, (len(data.test),), generator=torch.Generator().manual_seed(1))
    shuffled = dataclasses.replace(data, test_labels=labels, test_groups=None)
    m = evaluate(run, data=shuffled, channels_last=True)
    assert m["scoring_memory_layout"] == "channels_last"
    assert evaluate(run, data=shuffled)["scoring_memory_layout"] == "NCHW"
    assert m["roc_auc"] == pytest.approx(roc_auc(nchw.numpy(), labels.numpy()), abs=1e-6)
    nhwc_curve = learning_curve(run, data=shuffled, channels_last=True)
    nchw_curve = learning_curve(run, data=shuffled)
    assert [it for it, _ in nhwc_curve] == [it for it, _ in nchw_curve] == [4, 8, 12]
    assert [a for _, a in nhwc_curve] == pytest.approx([a for _, a in nchw_curve], abs=1e-6)
