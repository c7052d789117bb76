"""Batched one-class ensembles (piad.run.ensemble): K members in one process == K separate Trainer runs."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import SUBSTITUTE_VGG

from piad.errors import ConfigError, RunDirectoryError, TrainingInterrupted
from piad.run.checkpoint import load_checkpoint
from piad.run.config import make_config
from piad.run.ensemble import EnsembleTrainer, train_ensemble
from piad.run.evaluation import evaluate
from piad.run.training import train

ITERS = 8
BASE = dict(
    iterations=ITERS, policy_every=4, log_every=4, checkpoint_every=ITERS, sample_every=ITERS, weight_decay=1e-2
)  # a large decay so that Adam's L2 term is exercised by the comparison


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is faster and steadier on a shared CPU
    yield
    torch.set_num_threads(old)


def _max_weight_diff(a_dir, b_dir) -> float:
    a = load_checkpoint(a_dir / "checkpoints" / "latest.pt")["networks"]
    b = load_checkpoint(b_dir / "checkpoints" / "latest.pt")["networks"]
    assert a.keys() == b.keys()
    return max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in a[n])


def _compare(tmp_path, cfgs, mode):
    singles = [tmp_path / f"single{k}" for k in range(len(cfgs))]
    members = [tmp_path / f"member{k}" for k in range(len(cfgs))]
    for cfg, out in zip(cfgs, singles, strict=True):
        train(cfg, out, progress=False)
    ens = train_ensemble(cfgs, members, mode=mode)
    assert ens.iteration == ITERS and not ens.diverged
    for s, m in zip(singles, members, strict=True):
        assert _max_weight_diff(s, m) < 1e-4
        a, b = load_checkpoint(s / "checkpoints" / "latest.pt"), load_checkpoint(m / "checkpoints" / "latest.pt")
        assert float(a["policy"]["e"]["lambda"]) == pytest.approx(float(b["policy"]["e"]["lambda"]), rel=1e-3)
        assert float(a["policy"]["g"]["lambda"]) == pytest.approx(float(b["policy"]["g"]["lambda"]), rel=1e-3)
        assert float(a["policy"]["e"]["lambda"]) != 1.0  # the weight rule did update
        for opt in ("eg", "dx", "dz"):
            sa, sb = a["optimizers"][opt]["state"], b["optimizers"][opt]["state"]
            assert sa.keys() == sb.keys()
            for i in sa:
                assert float(sa[i]["step"]) == float(sb[i]["step"])
                assert torch.allclose(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-2, atol=1e-9)
        assert (m / "config.json").read_text() == (s / "config.json").read_text()
        assert (m / "log.csv").read_text().splitlines()[0] == (s / "log.csv").read_text().splitlines()[0]
        assert (m / "samples" / "latest.png").exists() and (m / "policy.csv").exists()
        ra, rb = evaluate(s)["roc_auc"], evaluate(m)["roc_auc"]
        assert ra == pytest.approx(rb, abs=1e-6)


def test_vmap_ensemble_equals_separate_trainers(tmp_path):
    # vgg_weights="random" is seeded per member: each member has its own VGG (vmapped distance)
    cfgs = [make_config("synthetic", dict(BASE, run=r)) for r in (0, 1)]
    _compare(tmp_path, cfgs, "vmap")


def test_one_member_ensemble_equals_the_trainer(tmp_path):
    """K=1: the stacked case of piad.model.objective is the Trainer's one-member case (to rounding)."""
    _compare(tmp_path, [make_config("synthetic", dict(BASE, run=2))], "vmap")


def test_loop_ensemble_with_shared_vgg_equals_separate_trainers(tmp_path):
    if not SUBSTITUTE_VGG.exists():
        pytest.skip(f"{SUBSTITUTE_VGG} absent")
    cfgs = [make_config("synthetic", dict(BASE, run=r, vgg_weights=str(SUBSTITUTE_VGG))) for r in (0, 1)]
    _compare(tmp_path, cfgs, "loop")


def test_ensemble_resume_equals_uninterrupted(tmp_path):
    short = [make_config("synthetic", dict(BASE, run=r, iterations=4, checkpoint_every=4)) for r in (0, 1)]
    full = [make_config("synthetic", dict(BASE, run=r, iterations=8, checkpoint_every=8)) for r in (0, 1)]
    a = [tmp_path / f"a{k}" for k in range(2)]
    b = [tmp_path / f"b{k}" for k in range(2)]
    train_ensemble(short, a)
    with pytest.raises(RunDirectoryError, match="already holds a checkpoint"):
        train_ensemble(full, a)  # refuses to overwrite without resume/overwrite
    train_ensemble(full, a, resume=True)
    train_ensemble(full, b)
    for x, y in zip(a, b, strict=True):
        assert _max_weight_diff(x, y) < 1e-6
        assert load_checkpoint(x / "checkpoints" / "latest.pt")["iteration"] == 8


def test_sigterm_checkpoints_every_member_and_resume_matches_uninterrupted(tmp_path, monkeypatch):
    cfgs = [make_config("synthetic", dict(BASE, run=r)) for r in (0, 1)]
    a = [tmp_path / f"a{k}" for k in range(2)]
    b = [tmp_path / f"b{k}" for k in range(2)]
    before = signal.getsignal(signal.SIGTERM)
    step = EnsembleTrainer.train_iteration

    def step_then_signal(self):
        step(self)
        if self.iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(EnsembleTrainer, "train_iteration", step_then_signal)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_ensemble(cfgs, a)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
    for d in a:  # checkpoint_every=8, but the signal forced one
        assert load_checkpoint(d / "checkpoints" / "latest.pt")["iteration"] == 3
        assert not (d / "metrics.json").exists()
    monkeypatch.undo()
    train_ensemble(cfgs, a, resume=True)
    train_ensemble(cfgs, b)
    for x, y in zip(a, b, strict=True):
        assert _max_weight_diff(x, y) < 1e-6


def test_members_must_share_the_architecture(tmp_path):
    cfgs = [make_config("synthetic", dict(BASE)), make_config("synthetic", dict(BASE, run=1, latent_dim=4))]
    with pytest.raises(ConfigError, match="latent_dim"):
        EnsembleTrainer(cfgs, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError, match="distinct"):
        EnsembleTrainer(cfgs[:1] * 2, [tmp_path / "a", tmp_path / "a"])


def test_a_diverging_member_does_not_disturb_the_others(tmp_path):
    from piad.data import load_benchmark

    cfgs = [make_config("synthetic", dict(BASE, run=r, iterations=2, checkpoint_every=2)) for r in (0, 1)]
    datas = [load_benchmark("synthetic", 0, split_seed=r) for r in (0, 1)]
    datas[1].train[:] = float("nan")
    outs = [tmp_path / "ok", tmp_path / "bad"]
    ens = train_ensemble(cfgs, outs, datas=datas)
    assert list(ens.diverged) == [1]
    assert '"diverged"' in (outs[1] / "metrics.json").read_text()
    assert not (outs[1] / "checkpoints" / "latest.pt").exists()
    weights = load_checkpoint(outs[0] / "checkpoints" / "latest.pt")["networks"]
    assert all(torch.isfinite(t).all() for n in weights.values() for t in n.values())
