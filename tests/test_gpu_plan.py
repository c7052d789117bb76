"""The prepared GPU plan (piad.experiments.gpu_plan) on the CPU with a tiny slice: the same code path, device cpu."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import torch

from piad.experiments import gpu_plan
from piad.experiments.provenance import file_sha256
from piad.experiments.reexecution import adopt_reexecutions
from piad.run.ensemble import EnsembleTrainer


def test_plan_orders_the_slices_as_the_issue_asks(tmp_path):
    _, slices = gpu_plan.plan_slices("offline", committed=tmp_path)  # nothing committed: nothing to re-execute
    assert [s.experiments[0].name for s in slices] == ["cifar10", "cifar10-ablation-l2", "mnist-long", "cifar10-long"]
    abl = slices[1].experiments
    assert len(abl) == 4 and all(e.classes == [0, 1, 2, 3] and e.runs == [0, 1, 2] for e in abl)
    assert slices[2].iterations == 50_000 and slices[3].iterations == 100_000
    assert slices[2].overrides["checkpoint_every"] == 500 and slices[3].long


def _committed(root, exp, c, r, scores=False, **config):
    d = root / exp / str(c) / str(r)
    d.mkdir(parents=True)
    cfg = {"benchmark": exp.split("-")[0], "normal_class": c, "run": r, "iterations": 1500, **config}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.9}))
    if scores:
        (d / "scores.npz").write_bytes(b"")


def test_committed_runs_without_scores_are_re_executed_after_the_grid(tmp_path):
    """Re-executed: a committed run of the profile's grid without scores.npz that trains the same today: with the
    statistics the profile uses now, or with a distance that reads none (the ablation's l2 variants). Not: runs with
    scores, earlier executions, folders outside the grid, runs whose distance reads other statistics (CIFAR-10's old
    file: retraining those is the grid's work)."""
    old = "results/offline/feature_stats/cifar10_train_vgg19caffe_relu3_1.pt"
    _committed(tmp_path, "mnist", 1, 0, feature_stats=old)
    _committed(tmp_path, "mnist", 2, 0, feature_stats=old)
    _committed(tmp_path, "mnist", 2, 1, scores=True, feature_stats=old)
    _committed(tmp_path, "mnist-earlier", 3, 0, feature_stats=old)
    _committed(tmp_path, "coil100", 4, 0, feature_stats=old, iterations=1000)
    _committed(tmp_path, "cifar10", 0, 0, feature_stats=old, iterations=1000)
    _committed(tmp_path, "cifar10-natural-stats", 0, 0, iterations=1000)
    cifar = dict(feature_stats=old, iterations=1000, benchmark="cifar10")
    _committed(tmp_path, "cifar10-ablation-l2", 0, 0, distance="l2", **cifar)
    _committed(tmp_path, "cifar10-ablation-l2_manual", 3, 0, distance="l2", weight_policy="manual", **cifar)
    _committed(tmp_path, "cifar10-ablation-perceptual_l2", 1, 0, distance="perceptual_l2", **cifar)
    _committed(tmp_path, "cifar10-ablation-perceptual_l1", 1, 0, distance="perceptual_l1", **cifar)
    _, slices = gpu_plan.plan_slices("offline", committed=tmp_path)
    again = slices[1:4]
    assert slices[0].name == "CIFAR-10 grid" and slices[4].name == "ablation seeds"
    assert [(s.name, s.iterations) for s in again] == [
        ("re-executions: cifar10", 1000),
        ("re-executions: coil100", 1000),
        ("re-executions: mnist", 1500),
    ]
    jobs = {(e.name, c, r) for s in again for e in s.experiments for c in e.classes for r in e.runs_for(c)}
    assert jobs == {
        ("cifar10-ablation-l2", 0, 0),
        ("cifar10-ablation-l2_manual", 3, 0),
        ("cifar10-ablation-perceptual_l2", 1, 0),
        ("coil100", 4, 0),
        ("mnist", 1, 0),
        ("mnist", 2, 0),
    }
    variants = {e.name: e.ablation for e in again[0].experiments}
    assert variants == {f"cifar10-ablation-{v}": v for v in ("l2", "l2_manual", "perceptual_l2")}
    assert all(s.profile.name == "offline" and s.folder == "reexecutions/offline" for s in again)


def test_plan_trains_scores_writes_and_resumes(tmp_path, monkeypatch):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    results, work = tmp_path / "results", tmp_path / "work"
    # the first call is stopped (as its deadline does: SIGTERM) at iteration 8 of the long run
    step = EnsembleTrainer.train_iteration

    def stop_at_8(self):
        step(self)
        if self.cfgs[0].iterations == 12 and self.iteration == 8 and not stopped:
            stopped.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    stopped: list = []
    monkeypatch.setattr(EnsembleTrainer, "train_iteration", stop_at_8)
    kw = dict(device="cpu", results_dir=results, work_dir=work, base="smoke", minutes=30, log=lambda m: None)
    try:
        first = gpu_plan.run_plan(**kw)
        assert sorted(first["finished"]) == [
            "digits-ablation-l2_manual/0/0",
            "digits-ablation-l2_manual/0/1",
            "digits/0/0",
            "digits/1/0",
        ]
        assert first["progressed"] == ["digits-long/0/0"]
        progress = json.loads((results / "digits-long/0/0/progress.json").read_text())
        assert progress == {"status": "in progress", "iteration": 8, "target": 12, "device": "cpu"}
        assert (results / "digits-long/0/0/curve.csv").exists()  # snapshots 4 and 8 scored
        prov = json.loads((results / "digits/1/0/provenance.json").read_text())
        metrics = json.loads((results / "digits/1/0/metrics.json").read_text())
        assert prov["device"] == metrics["device"] == "cpu" and prov["runner"] == "piad.experiments.gpu_plan"
        assert prov["roc_auc"] == metrics["roc_auc"] and metrics["iterations"] == 4
        assert (results / "digits/1/0/scores.npz").exists() and (results / "digits/1/0/log.csv").exists()
        mtime = (results / "digits/0/0/metrics.json").stat().st_mtime_ns
        committed = tmp_path / "committed"  # a run committed before scores were kept: digits/1/0 without scores.npz
        shutil.copytree(results / "digits/1/0", committed / "digits/1/0", ignore=shutil.ignore_patterns("scores.*"))
        # resumes: the long run from its checkpoint at 8; the committed run is executed again
        second = gpu_plan.run_plan(**kw, committed_dir=committed)
    finally:
        torch.set_num_threads(old)
    assert second["finished"] == ["reexecutions/smoke/digits/1/0", "digits-long/0/0"] and second["progressed"] == []
    again = results / "reexecutions/smoke"
    assert (again / "digits/1/0/scores.npz").exists()
    assert adopt_reexecutions(again, committed, log=lambda m: None) == [committed / "digits/1/0"]  # same config
    assert (committed / "digits/1/0/scores.npz").exists() and (committed / "digits-earlier/1/0/metrics.json").exists()
    assert (results / "digits/0/0/metrics.json").stat().st_mtime_ns == mtime  # finished results are kept
    assert not (results / "digits-long/0/0/progress.json").exists()
    assert json.loads((results / "digits-long/0/0/metrics.json").read_text())["iterations"] == 12
    log = (work / "digits-long/0/0/log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, 13))  # one row per iteration, none repeated


def test_a_finished_cifar10_result_counts_as_done_with_the_statistics_it_was_trained_with(tmp_path):
    """The plan's CIFAR-10 runs use the profile's CIFAR-10 statistics (natural-image crops), not the file of the
    other benchmarks: a result trained with them is finished, one trained with the other file is missing."""
    prof, _ = gpu_plan.plan_slices("offline", committed=tmp_path)
    natural, other = prof.feature_stats_for("cifar10"), prof.feature_stats_for("mnist")
    assert Path(natural).name != Path(other).name
    d = tmp_path / "cifar10" / "0" / "0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"status": "ok", "iterations": 1000}))
    for stats, done in ((natural, True), (other, False)):
        prov = {"weights": {"feature_stats": {"sha256": file_sha256(stats)}}}
        (d / "provenance.json").write_text(json.dumps(prov))
        assert gpu_plan.is_done(d, 1000, gpu_plan._stats_sha(prof, "cifar10")) is done
