"""Training (book: Method > Training, spec-iteration) and evaluation end to end on tiny synthetic data, CPU."""

import csv
import json

import numpy as np
import pytest
import torch
from helpers import all_finite, assert_same_networks, log_rows, networks_of

from piad.data import load_for_config
from piad.run.config import load_config, make_config
from piad.run.evaluation import AnomalyScorer, evaluate, score_checkpoints
from piad.run.training import Trainer, train


def tiny(**kw):
    return make_config("synthetic", {"iterations": 20, "checkpoint_every": 10, **kw})


def test_twenty_iterations_finite_losses_and_checkpoints(tmp_path):
    cfg = tiny()
    train(cfg, tmp_path, progress=False)
    rows = log_rows(tmp_path)
    assert [int(r["iteration"]) for r in rows] == [5, 10, 15, 20]
    assert all_finite(rows)
    for name in ("latest.pt", "iter_0000010.pt", "iter_0000020.pt"):
        assert (tmp_path / "checkpoints" / name).is_file()
    assert load_config(tmp_path / "config.json") == cfg
    assert (tmp_path / "samples" / "latest.png").is_file()
    assert torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)["iteration"] == 20


def test_policy_updates_every_T_iterations(tmp_path):
    train(tiny(policy_every=5), tmp_path, progress=False)
    lines = (tmp_path / "policy.csv").read_text().splitlines()[1:]
    assert sorted({int(ln.split(",")[0]) for ln in lines}) == [5, 10, 15, 20]
    lam = [float(r["lambda_e"]) for r in log_rows(tmp_path)]
    assert all(v > 0 for v in lam) and len(set(lam)) > 1  # lambda moves away from its start value 1


def test_manual_policy_keeps_weights(tmp_path):
    train(tiny(weight_policy="manual", lambda_e=10.0, lambda_g=100.0), tmp_path, progress=False)
    rows = log_rows(tmp_path)
    assert {float(r["lambda_e"]) for r in rows} == {10.0} and {float(r["lambda_g"]) for r in rows} == {100.0}


def test_resume_from_iteration_10_equals_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny(), full, progress=False)
    train(tiny(iterations=10), part, progress=False)
    train(tiny(), part, resume=True, progress=False)
    assert_same_networks(networks_of(full), networks_of(part))
    assert log_rows(full) and [r["rec"] for r in log_rows(full)] == [r["rec"] for r in log_rows(part)]


def test_resume_drops_log_rows_written_after_the_checkpoint(tmp_path):
    """A run killed after logging past its last checkpoint: resuming rewrites those rows instead of repeating them."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny(log_every=2), full, progress=False)
    train(tiny(iterations=10, log_every=2), part, progress=False)
    stale = log_rows(full)[5]  # iteration 12, as if logged before a SIGKILL
    with open(part / "log.csv", "a") as f:
        f.write(",".join(stale.values()).replace(stale["rec"], "123.0") + "\n")
    train(tiny(log_every=2), part, resume=True, progress=False)
    assert [r["iteration"] for r in log_rows(part)] == [r["iteration"] for r in log_rows(full)]
    assert [r["rec"] for r in log_rows(part)] == [r["rec"] for r in log_rows(full)]


def test_feature_cache_does_not_change_the_math(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny(iterations=6, cache_features=True), a, progress=False)
    train(tiny(iterations=6, cache_features=False), b, progress=False)
    assert_same_networks(networks_of(a), networks_of(b), atol=1e-5)


def test_seeds_make_runs_reproducible_and_distinct(tmp_path):
    t1 = Trainer(tiny(), tmp_path / "1", progress=False)
    t2 = Trainer(tiny(), tmp_path / "2", progress=False)
    t3 = Trainer(tiny(run=1), tmp_path / "3", progress=False)
    w = lambda t: t.nets.encoder.model[0].weight  # noqa: E731
    assert torch.equal(w(t1), w(t2)) and not torch.equal(w(t1), w(t3))


def test_evaluation_separates_far_anomalies(tmp_path):
    """Normals are smooth blobs, anomalies uniform noise: a briefly trained model ranks them apart."""
    train(make_config("synthetic", {"iterations": 80, "lr_eg": 1e-3, "checkpoint_every": 80}), tmp_path, progress=False)
    m = evaluate(tmp_path)
    assert m["roc_auc"] > 0.9
    assert (m["n_test_normal"], m["n_test_anomalous"]) == (32, 32)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["roc_auc"] == m["roc_auc"] and saved["distance"] == "relative_perceptual_l1"
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 65
    # scores.npz holds the exact float32 scores: scikit-learn's ROC AUC of them is the reported one
    from sklearn.metrics import roc_auc_score

    from piad.run.scorefile import load_scores

    z = load_scores(tmp_path / "scores.npz")
    csv_labels = [int(r.split(",")[1]) for r in (tmp_path / "scores.csv").read_text().splitlines()[1:]]
    assert z.labels.tolist() == csv_labels and sorted(csv_labels) == [0] * 32 + [1] * 32
    assert roc_auc_score(z.labels, z.scores.astype(np.float64)) == m["roc_auc"]


def test_scoring_several_checkpoints_shares_the_test_features(tmp_path, monkeypatch):
    """score_checkpoints computes f(x) of the test images once for snapshots with the same distance, and gives the
    same scores as scoring each checkpoint on its own."""
    cfg = tiny(checkpoint_every=5, iterations=10)
    train(cfg, tmp_path, progress=False)
    ckpts = sorted((tmp_path / "checkpoints").glob("iter_*.pt"))
    assert len(ckpts) == 2
    x = load_for_config(cfg).test
    separate = [AnomalyScorer.from_checkpoint(p).score(x, batch_size=16) for p in ckpts]
    assert not torch.equal(separate[0], separate[1])  # the snapshots differ
    calls = []
    features = AnomalyScorer.features
    monkeypatch.setattr(AnomalyScorer, "features", lambda self, *a, **k: calls.append(1) or features(self, *a, **k))
    shared = score_checkpoints(ckpts, x, batch_size=16)
    assert len(calls) == 1
    for p, s in zip(ckpts, separate, strict=True):
        torch.testing.assert_close(shared[str(p)], s, rtol=1e-5, atol=1e-6)


def test_evaluate_refuses_unfinished_run(tmp_path):
    from piad.errors import CheckpointError

    train(tiny(iterations=10), tmp_path, progress=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["iterations"] = 20
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unfinished"):
        evaluate(tmp_path)


def test_digits_protocol_end_to_end(tmp_path):
    cfg = make_config(
        "digits",
        {
            "iterations": 4,
            "vgg_weights": "random",
            "layer": "relu2_1",
            "feature_stats": None,
            "checkpoint_every": 4,
            "batch_size": 8,
        },
    )
    train(cfg, tmp_path, progress=False)
    m = evaluate(tmp_path)
    data = load_for_config(cfg)
    scores = AnomalyScorer.from_checkpoint(tmp_path / "checkpoints" / "latest.pt").score(data.test).double().numpy()
    labels, groups = data.test_labels.numpy(), np.asarray(data.test_groups)
    with open(tmp_path / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["label"]), r["group"], r["score"]) for r in rows] == [
        (int(lab), g, f"{s:.8g}") for lab, g, s in zip(labels, groups, scores, strict=True)
    ]

    def pairwise_auc(sel):  # P(anomalous scores higher) + P(tie) / 2, over all normal/anomalous pairs
        a, n = scores[sel & (labels == 1)], scores[sel & (labels == 0)]
        return ((a[:, None] > n[None]).sum() + 0.5 * (a[:, None] == n[None]).sum()) / (a.size * n.size)

    assert m["roc_auc"] == pytest.approx(pairwise_auc(labels >= 0), abs=1e-12)
    assert m["n_test_normal"] == int((labels == 0).sum()) > 0
    anomaly_groups = sorted(set(groups[labels == 1]))
    assert len(anomaly_groups) == 9 and sorted(m["roc_auc_per_group"]) == anomaly_groups
    for g in anomaly_groups:
        assert m["roc_auc_per_group"][g] == pytest.approx(pairwise_auc((labels == 0) | (groups == g)), abs=1e-12)


def test_bf16_autocast_runs_the_steps_in_bf16_and_keeps_fp32_weights(tmp_path):
    """`bf16=True`: the convolutions of both steps compute in bf16, the weights (and so the checkpoints) stay fp32,
    and the first critic step's losses equal the fp32 run's (same seed) up to bf16 rounding."""
    runs = {}
    for bf16 in (False, True):
        tr = Trainer(tiny(iterations=2, n_dis=1), tmp_path / str(bf16), progress=False, bf16=bf16)
        dtypes = []
        for net in (tr.nets.image_critic, tr.nets.generator):
            conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
            conv.register_forward_hook(lambda m, i, o, out=dtypes: out.append(o.dtype))  # this run's list, bound now
        tr.train_iteration()
        assert set(dtypes) == {torch.bfloat16 if bf16 else torch.float32}
        assert all(p.dtype == torch.float32 for p in tr.nets.parameters())
        runs[bf16] = {k: float(v) for k, v in tr._last.items() if torch.is_tensor(v) and v.numel() == 1}
    # n_dis=1: the critic step's losses come from the same initial weights, so they differ by bf16 rounding only;
    # adv_e/adv_g are means of critic outputs near zero after one (differently rounded) critic update: not compared
    for k in ("critic_x", "critic_z", "wasserstein_x", "wasserstein_z", "gp_x", "gp_z", "rec"):
        assert runs[True][k] == pytest.approx(runs[False][k], rel=0.05, abs=0.02), k
    assert runs[True] != runs[False]  # bf16 did change the rounding
