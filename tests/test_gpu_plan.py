"""The prepared GPU plan (piad.experiments.gpu_plan) on the CPU with a tiny slice: the same code path, device cpu."""

from __future__ import annotations

import json
import os
import signal

import torch

from piad.experiments import gpu_plan
from piad.run.ensemble import EnsembleTrainer


def test_plan_orders_the_slices_as_the_issue_asks():
    _, slices = gpu_plan.plan_slices("offline")
    assert [s.experiments[0].name for s in slices] == ["cifar10", "cifar10-ablation-l2", "mnist-long", "cifar10-long"]
    abl = slices[1].experiments
    assert len(abl) == 4 and all(e.classes == [0, 1, 2, 3] and e.runs == [0, 1, 2] for e in abl)
    assert slices[2].iterations == 50_000 and slices[3].iterations == 100_000
    assert slices[2].overrides["checkpoint_every"] == 500 and slices[3].long


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
        second = gpu_plan.run_plan(**kw)  # resumes: only the long run is left, from its checkpoint at 8
    finally:
        torch.set_num_threads(old)
    assert second["finished"] == ["digits-long/0/0"] and second["progressed"] == []
    assert (results / "digits/0/0/metrics.json").stat().st_mtime_ns == mtime  # finished results are kept
    assert not (results / "digits-long/0/0/progress.json").exists()
    assert json.loads((results / "digits-long/0/0/metrics.json").read_text())["iterations"] == 12
    log = (work / "digits-long/0/0/log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, 13))  # one row per iteration, none repeated
