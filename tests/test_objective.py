"""The encoder/generator step and the weight rule inside training, against independent computations (book: Method >
Training, spec-objective and spec-iteration; Method > Weight policy, spec-weight-policy).

The networks are the synthetic benchmark's tiny ones; every expected value is computed here with autograd and plain
Python from the definitions in the book, not taken from piad's own output.
"""

from __future__ import annotations

import inspect
import statistics

import pytest
import torch
from torch import autograd, nn

from piad.model.objective import Members, encoder_generator_update
from piad.run.config import make_config
from piad.run.training import Trainer

LAM_E, LAM_G = 40.0, 1 / 32  # far from 1 and from each other: a lambda applied to the wrong term changes the gradient


def tiny(**kw):
    return make_config("synthetic", {"iterations": 20, **kw})


def weight_tensors_by_layer_type(net: nn.Module) -> list[torch.Tensor]:
    """The weights of the convolutions and linear layers of `net`, in build order (the book's choice of tensors)."""
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def population_std(g: torch.Tensor) -> float:
    v = g.detach().double().flatten()
    return float(((v - v.mean()) ** 2).mean().sqrt())


def hand_ema(xs, alpha):
    out, s = [], None
    for x in xs:
        s = x if s is None else alpha * x + (1 - alpha) * s
        out.append(s)
    return out


def hand_lambda(adv_records, rec_records, alpha) -> float:
    """median over layers and kept time points of EMA(a) / EMA(r) (spec-weight-policy, steps 4 and 5)."""
    ratios = []
    for layer in range(len(adv_records[0])):
        a = hand_ema([rec[layer] for rec in adv_records], alpha)
        r = hand_ema([rec[layer] for rec in rec_records], alpha)
        ratios += [ai / ri for ai, ri in zip(a, r, strict=True)]
    return statistics.median(ratios)


def _with_lambdas(tr: Trainer, lam_e: float, lam_g: float) -> Trainer:
    tr.policy_e._lambda = torch.tensor(lam_e)
    tr.policy_g._lambda = torch.tensor(lam_g)
    return tr


def _forward(tr: Trainer, x, idx, z):
    E, G, DX, DZ = tr.modules()
    fake_z = E(x)
    rec_loss = tr.reconstruction_loss(x, idx, G(fake_z))
    return -DZ(fake_z).mean(), -DX(G(z)).mean(), rec_loss  # L_adv^E, L_adv^G, L_rec (spec-adversarial)


def test_fused_step_equals_the_two_pass_step_and_the_definition_with_lambda_far_from_1(tmp_path):
    """On an iteration without a weight-rule update, E is back-propagated once from the latent (fused). Its gradients
    must be lambda_E dL_rec/dE + dL_adv^E/dE and lambda_G dL_rec/dG + dL_adv^G/dG, exactly as the two-pass step and
    as autograd on the weighted sums; after the Adam step both give the same weights."""
    cfg = tiny(policy_every=1000)  # no update of the rule during this step
    fused, two_pass, ref = (_with_lambdas(Trainer(cfg, tmp_path / n, progress=False), LAM_E, LAM_G) for n in "abc")
    x, idx = ref._batch()
    z = ref._z()

    adv_e, adv_g, rec = _forward(ref, x, idx, z)
    E, G = ref.nets.encoder, ref.nets.generator
    want_e = autograd.grad(LAM_E * rec + adv_e, list(E.parameters()), retain_graph=True)
    want_g = autograd.grad(LAM_G * rec + adv_g, list(G.parameters()), retain_graph=True)
    unweighted_e = autograd.grad(rec + adv_e, list(E.parameters()), retain_graph=True)
    unweighted_g = autograd.grad(rec + adv_g, list(G.parameters()))
    # the lambdas matter on this batch: the weighted gradients are far from the unweighted ones
    assert max(float((w - u).abs().max()) for w, u in zip(want_e, unweighted_e, strict=True)) > 1e-3
    assert max(float((w - u).abs().max()) for w, u in zip(want_g, unweighted_g, strict=True)) > 1e-3

    for tr, is_fused in ((fused, True), (two_pass, False)):
        params_e, params_g = tr.eg_params()
        logged = encoder_generator_update(
            Members.one(tr.noise),
            tr.modules(),
            tr.opt_eg,
            x,
            z,
            lambda r, tr=tr: tr.reconstruction_loss(x, idx, r),
            params_e,
            params_g,
            tr.rule,
            update_rule=False,
            fused=is_fused,
        )
        assert (float(logged["lambda_e"]), float(logged["lambda_g"])) == (LAM_E, LAM_G)
        assert float(tr.policy_e.weight) == LAM_E and tr.policy_e.adv is None  # the rule was not touched
        for p, w in zip(params_e, want_e, strict=True):
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-6)
        for p, w in zip(params_g, want_g, strict=True):
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(fused.nets.named_parameters(), two_pass.nets.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_the_fused_step_is_the_default_and_differentiates_e_once_from_the_latent(tmp_path, monkeypatch):
    """The fused step's point is cost: without a rule update, E's parameters are reached by one autograd pass from
    the latent (grad_outputs lambda_E g_z^rec + g_z^adv), where the two-pass step takes two; with an update, the rule
    needs the separate gradients, so both take two."""
    import piad.model.objective as objective

    tr = Trainer(tiny(policy_every=1000), tmp_path, progress=False)
    params_e, params_g = tr.eg_params()
    x, idx = tr._batch()
    z = tr._z()
    real_grad, passes = objective.autograd.grad, []

    def counting(outputs, inputs, *args, **kwargs):
        if any(p is params_e[0] for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])):
            passes.append(kwargs.get("grad_outputs") is not None)
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(objective.autograd, "grad", counting)
    for step in (objective.encoder_generator_update, objective.encoder_generator_gradients):
        assert inspect.signature(step).parameters["fused"].default is True, step.__name__
    for kwargs, update_rule, want in (
        ({}, False, [True]),
        ({"fused": False}, False, [False, False]),
        ({}, True, [False, False]),
    ):
        passes.clear()
        encoder_generator_update(
            Members.one(tr.noise),
            tr.modules(),
            tr.opt_eg,
            x,
            z,
            lambda r: tr.reconstruction_loss(x, idx, r),
            params_e,
            params_g,
            tr.rule,
            update_rule,
            **kwargs,
        )
        assert passes == want, kwargs


def test_lambda_after_real_training_steps_equals_the_hand_computation_from_their_gradients(tmp_path, monkeypatch):
    """Through the trainer: at every multiple of T the rule records std(dL_adv^N/dW_l) and std(dL_rec/dW_l) of that
    step's batch for each weight tensor of N, keeps H records, and lambda_N is the median of the EMA ratios a/r.
    The gradients are taken here, independently, from the same loss tensors the step builds."""
    import piad.model.objective as objective

    T, H, alpha, n_iter = 2, 2, 0.3, 7
    tr = Trainer(tiny(n_dis=1, policy_every=T, policy_history=H, policy_ema=alpha), tmp_path, progress=False)
    weights = {"e": weight_tensors_by_layer_type(tr.nets.encoder), "g": weight_tensors_by_layer_type(tr.nets.generator)}
    records = {"e": ([], []), "g": ([], [])}  # net -> (adversarial stds, reconstruction stds), one list per update
    real = objective.encoder_generator_gradients

    def recording(m, params_e, params_g, latent, adv_e, adv_g, rec_loss, rule, update_rule, fused=True):
        if update_rule:
            for net, adv in (("e", adv_e), ("g", adv_g)):
                ga = autograd.grad(adv, weights[net], retain_graph=True)
                gr = autograd.grad(rec_loss, weights[net], retain_graph=True)
                records[net][0].append([population_std(g) for g in ga])
                records[net][1].append([population_std(g) for g in gr])
        return real(m, params_e, params_g, latent, adv_e, adv_g, rec_loss, rule, update_rule, fused)

    monkeypatch.setattr(objective, "encoder_generator_gradients", recording)
    lambdas = []
    for _ in range(n_iter):
        tr.train_iteration()
        lambdas.append((float(tr.policy_e.weight), float(tr.policy_g.weight)))
    assert len(records["e"][0]) == n_iter // T  # iterations 2, 4, 6
    assert lambdas[0] == (1.0, 1.0)  # before the first update
    assert lambdas[-1] == lambdas[-2]  # iteration 7 is no multiple of T: unchanged since iteration 6
    for k, net in enumerate(("e", "g")):
        adv, rec = records[net]
        want = hand_lambda(adv[-H:], rec[-H:], alpha)  # only the last H records count
        assert lambdas[-1][k] == pytest.approx(want, rel=1e-5), net
        assert lambdas[-1][k] != pytest.approx(hand_lambda(adv, rec, alpha), rel=1e-3)  # the window matters here


def test_scaling_the_reconstruction_loss_by_s_scales_lambda_by_1_over_s_through_the_trainer(tmp_path):
    """With the rule updated at every iteration, s L_rec gives lambda / s, the same weighted gradient, hence the same
    training: the logged reconstruction loss is s times larger and the weights stay equal."""
    s, runs = 1000.0, {}
    for scale in (1.0, s):
        (tmp_path / str(scale)).mkdir()
        tr = Trainer(tiny(n_dis=1, policy_every=1), tmp_path / str(scale), progress=False)
        plain = tr.reconstruction_loss
        tr.reconstruction_loss = lambda x, idx, rec, plain=plain, scale=scale: scale * plain(x, idx, rec)
        history = []
        for _ in range(4):
            tr.train_iteration()
            history.append((float(tr.policy_e.weight), float(tr.policy_g.weight), float(tr._last["rec"])))
        runs[scale] = tr, history
    (a, ha), (b, hb) = runs[1.0], runs[s]
    for (lam_e, lam_g, rec), (lam_e_s, lam_g_s, rec_s) in zip(ha, hb, strict=True):
        assert lam_e_s == pytest.approx(lam_e / s, rel=1e-4) and lam_g_s == pytest.approx(lam_g / s, rel=1e-4)
        assert rec_s == pytest.approx(rec * s, rel=1e-4)
    assert ha[-1][1] != pytest.approx(1.0, rel=0.2)  # lambda_G did move: the comparison is not 1 against 1 / s
    for (name, p), q in zip(a.nets.named_parameters(), b.nets.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
