"""Gradient-normalising weight policy (book: Method > Weight policy, spec-weight-policy) against a hand computation."""

import statistics

import pytest
import torch

from piad.model.weighting import (
    GRADIENT_NORMALIZING,
    MANUAL,
    GradientNormalizingWeights,
    ema_from_oldest,
    weight_indices,
    weight_tensors,
)


def hand_ema(xs, alpha):
    out, s = [], None
    for x in xs:
        s = x if s is None else alpha * x + (1 - alpha) * s
        out.append(s)
    return out


def pop_std(t):
    v = t.flatten().tolist()
    m = sum(v) / len(v)
    return (sum((a - m) ** 2 for a in v) / len(v)) ** 0.5


def test_ema_from_oldest_matches_recursion():
    x = torch.rand(7, 3, dtype=torch.float64)
    got = ema_from_oldest(x, 0.05)
    for col in range(3):
        assert torch.allclose(got[:, col], torch.tensor(hand_ema(x[:, col].tolist(), 0.05), dtype=torch.float64))


def test_lambda_equals_hand_computation_on_a_model_with_known_gradients():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    layers = weight_tensors(model)
    assert [tuple(p.shape) for p in layers] == [(4, 3), (2, 4)]  # weights only, no biases
    policy = GradientNormalizingWeights(history=5, ema=0.3)
    records = {"adv": [], "rec": []}
    for step in range(8):
        x = torch.randn(5, 3)
        out = model(x)
        adv, rec = -out[:, 0].mean() * (step + 1), (out**2).mean()
        ga = torch.autograd.grad(adv, layers, retain_graph=True)
        gr = torch.autograd.grad(rec, layers)
        records["adv"].append([pop_std(g) for g in ga])
        records["rec"].append([pop_std(g) for g in gr])
        policy.step(ga, gr)
    ratios = []
    for layer in range(2):
        a = hand_ema([r[layer] for r in records["adv"][-5:]], 0.3)
        r = hand_ema([r[layer] for r in records["rec"][-5:]], 0.3)
        ratios += [ai / ri for ai, ri in zip(a, r, strict=True)]
    assert float(policy.weight) == pytest.approx(statistics.median(ratios), rel=1e-5)


def test_the_rule_looks_at_the_conv_and_linear_weights_only():
    """Biases, 1-dim weights (a norm's scale) and a scalar parameter called weight are not weight tensors of a layer
    (book: spec-policy-layers)."""

    class Gain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor(2.0))  # a scalar, though named weight

        def forward(self, x):
            return self.weight * x

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.GroupNorm(1, 2), Gain(), torch.nn.Flatten(), torch.nn.Linear(2, 1)
    )
    names = [name for name, _ in model.named_parameters()]
    assert [names[i] for i in weight_indices(model)] == ["0.weight", "4.weight"]
    assert weight_tensors(model) == [model[0].weight, model[4].weight]


def test_lambda_is_one_before_first_update_and_manual_never_changes():
    policy = GradientNormalizingWeights()
    assert float(policy.weight) == 1.0
    manual = GradientNormalizingWeights("manual", manual_weight=10.0)
    for _ in range(3):
        manual.step([torch.randn(3, 3)], [torch.randn(3, 3) * 100])
    assert float(manual.weight) == 10.0


def test_history_keeps_last_records_only():
    policy = GradientNormalizingWeights(history=3)
    for k in range(1, 6):
        policy.record([torch.tensor([[0.0, 2.0 * k]])], [torch.tensor([[0.0, 2.0]])])
    assert policy.adv.shape == (3, 1)
    assert torch.allclose(policy.adv[:, 0], torch.tensor([3.0, 4.0, 5.0]))


def test_scale_invariance_of_policy():
    """Scaling the reconstruction loss by s scales lambda by 1/s (the weighted gradient is unchanged)."""
    g_adv, g_rec = [torch.randn(4, 4), torch.randn(2, 4)], [torch.randn(4, 4), torch.randn(2, 4)]
    p1, p2 = GradientNormalizingWeights(), GradientNormalizingWeights()
    p1.step(g_adv, g_rec)
    p2.step(g_adv, [g * 8 for g in g_rec])
    assert float(p2.weight) == pytest.approx(float(p1.weight) / 8, rel=1e-5)


def test_state_dict_roundtrip():
    """Every field survives save/load, and the loaded policy then computes the same next weights as the original."""
    g = torch.Generator().manual_seed(0)
    grads = [
        (
            [torch.randn(3, 3, generator=g), torch.randn(2, 3, generator=g)],
            [torch.randn(3, 3, generator=g), torch.randn(2, 3, generator=g)],
        )
        for _ in range(9)
    ]
    p = GradientNormalizingWeights(history=4, ema=0.2)
    for ga, gr in grads[:5]:
        p.step(ga, gr)
    state = p.state_dict()
    assert set(state) == {"mode", "lambda", "history", "ema", "adv", "rec"}
    q = GradientNormalizingWeights(MANUAL, manual_weight=3.0, history=7, ema=0.9)  # every field differs at first
    q.load_state_dict(state)
    loaded = q.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(loaded[key], value), key
        else:
            assert loaded[key] == value and type(loaded[key]) is type(value), key
    assert (q.mode, q.history, q.ema) == (GRADIENT_NORMALIZING, 4, 0.2) and q.adv.shape == (4, 2)
    for ga, gr in grads[5:]:
        assert torch.equal(q.step(ga, gr), p.step(ga, gr))
        assert torch.equal(q.adv, p.adv) and torch.equal(q.rec, p.rec)
    fresh = GradientNormalizingWeights()
    fresh.load_state_dict(GradientNormalizingWeights().state_dict())  # nothing recorded yet: adv/rec None
    assert fresh.adv is None and fresh.rec is None and float(fresh.weight) == 1.0


def test_defaults_are_the_papers_and_the_configs():
    """T, H, alpha of a policy built without arguments are the config's paper defaults (themselves checked against
    the method chapter by tests/test_config.py)."""
    from piad.run.config import make_config

    cfg, policy = make_config("mnist"), GradientNormalizingWeights()
    assert (policy.mode, policy.history, policy.ema) == (cfg.weight_policy, cfg.policy_history, cfg.policy_ema)


def test_mismatched_gradient_lists_are_refused_either_way():
    g = torch.ones(2, 2)
    for adv, rec in (([g, g], [g]), ([g], [g, g])):
        with pytest.raises(ValueError, match="same weight tensors"):
            GradientNormalizingWeights().record(adv, rec)


def test_manual_mode_needs_its_weight_also_when_the_mode_comes_from_text():
    mode = "".join(["man", "ual"])  # an equal string that is not the constant's object (as parsed from a config)
    with pytest.raises(ValueError, match="manual_weight"):
        GradientNormalizingWeights(mode)
    assert float(GradientNormalizingWeights(mode, manual_weight=3.0).weight) == 3.0


def test_to_moves_lambda_and_the_histories_and_works_before_any_record():
    fresh = GradientNormalizingWeights()
    assert fresh.to("meta") is fresh and fresh.adv is None and fresh.weight.device.type == "meta"
    policy = GradientNormalizingWeights()
    policy.step([torch.randn(3, 3)], [torch.randn(3, 3)])
    policy.to("meta")  # a device without data: where each tensor went is all that is checked
    assert {policy.weight.device.type, policy.adv.device.type, policy.rec.device.type} == {"meta"}


def test_the_rule_updates_also_when_its_mode_comes_from_text():
    """A mode string read from a checkpoint or a config is equal to the constant but not the same object."""
    mode = "".join(["gradient_", "normalizing"])
    policy = GradientNormalizingWeights(mode)
    policy.step([torch.full((2, 2), 1.0) + torch.eye(2)], [torch.full((2, 2), 1.0) + 4 * torch.eye(2)])
    assert float(policy.weight) == pytest.approx(0.25)  # std(adv) / std(rec) = 0.5 / 2
