"""WGAN-GP critic loss with the eps drift penalty (book: Method > Training, spec-critic-loss)."""

import math

import pytest
import torch

from piad.model.objective import Members, adversarial_loss, critic_loss, gradient_penalty


class LinearCritic(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w[:, None]


def test_gradient_penalty_vanishes_for_unit_norm_linear_critic():
    torch.manual_seed(0)
    w = torch.randn(48)
    critic = LinearCritic(w / w.norm())
    real, fake = torch.randn(16, 3, 4, 4), torch.randn(16, 3, 4, 4)
    assert gradient_penalty(critic, real, fake).item() < 1e-10


def test_the_gradient_penalty_trains_the_critic():
    """The penalty is differentiated through (a double backward): for D(x) = w.x, grad_x D = w everywhere, so
    penalty = (||w|| - 1)^2 and d penalty / dw = 2 (||w|| - 1) w / ||w||."""
    w = torch.randn(12, dtype=torch.float64)
    critic = LinearCritic(3 * w / w.norm())
    gp = gradient_penalty(critic, torch.randn(5, 12, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64))
    (grad,) = torch.autograd.grad(gp, critic.w)
    v = critic.w.detach()
    assert torch.allclose(grad, 2 * (v.norm() - 1) * v / v.norm())


def test_gradient_penalty_of_scaled_linear_critic():
    w = torch.randn(12)
    critic = LinearCritic(3 * w / w.norm())  # ||grad|| = 3 everywhere -> (3 - 1)^2 = 4
    gp = gradient_penalty(critic, torch.randn(5, 12), torch.randn(5, 12))
    assert torch.isclose(gp, torch.tensor(4.0), atol=1e-5)


def test_critic_loss_matches_formula():
    torch.manual_seed(1)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    real, fake = torch.randn(6, 8), torch.randn(6, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    total, parts = critic_loss(critic, real, fake, gp_weight=10, eps=0.001, members=Members.one(g1))
    d_real, d_fake = critic(real), critic(fake)
    gp = gradient_penalty(critic, real, fake, members=Members.one(g2))
    expected = d_fake.mean() - d_real.mean() + 10 * gp + 0.001 * ((d_real**2).mean() + (d_fake**2).mean())
    assert torch.allclose(total, expected, rtol=0, atol=1e-6)
    assert torch.allclose(parts["wasserstein"], d_fake.mean() - d_real.mean(), rtol=0, atol=1e-7)
    # each term on its own: in the total, 0.001 * drift sits below a relative tolerance of the gradient penalty
    assert torch.allclose(parts["drift"], (d_real**2).mean() + (d_fake**2).mean(), rtol=0, atol=1e-7)
    assert torch.allclose(parts["gradient_penalty"], gp, rtol=0, atol=1e-7)


def test_fakes_are_detached_in_critic_loss():
    critic = LinearCritic(torch.randn(4))
    fake = torch.randn(3, 4, requires_grad=True)
    total, _ = critic_loss(critic, torch.randn(3, 4), fake)
    total.backward()
    assert fake.grad is None and critic.w.grad is not None


def test_adversarial_loss_is_negative_mean_critic_output():
    critic = LinearCritic(torch.ones(2))
    assert torch.isclose(adversarial_loss(critic, torch.tensor([[1.0, 2.0], [3.0, 4.0]])), torch.tensor(-5.0))


class QuadraticCritic(torch.nn.Module):
    """D(x) = ||x||^2 / 2 per sample (over the last dims after `lead` leading ones): grad_x D = x, so the penalty
    depends on where it is evaluated."""

    def __init__(self, lead=1):
        super().__init__()
        self.lead = lead

    def forward(self, x):
        return 0.5 * (x**2).flatten(self.lead).sum(-1)


def test_gradient_penalty_is_taken_at_the_interpolates_with_one_alpha_per_sample():
    real, fake = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    gp = gradient_penalty(QuadraticCritic(), real, fake, Members.one(torch.Generator().manual_seed(5)))
    a = torch.rand((6, 1, 1, 1), generator=torch.Generator().manual_seed(5))  # the same draw, independently
    xhat = a * real + (1 - a) * fake
    expected = ((xhat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert torch.allclose(gp, expected, atol=1e-5)


def test_an_unstacked_model_takes_exactly_one_noise_generator():
    for generators in ([], [None, None]):
        with pytest.raises(ValueError, match="exactly one noise generator"):
            Members(generators, stacked=False)
    assert Members.one().k == 1 and Members.stacked([None, None]).k == 2


def test_members_total_and_mean():
    """What each member's loss contributes: stacked losses [K] are summed (each member's gradient is then its own
    loss's), one model's loss is itself; a mean runs over everything but the member dimension."""
    t = torch.arange(12.0).reshape(3, 4)
    stacked, one = Members.stacked([None] * 3), Members.one()
    assert torch.equal(stacked.total(torch.tensor([1.0, 2.0, 4.0])), torch.tensor(7.0))
    assert torch.equal(one.total(torch.tensor(5.0)), torch.tensor(5.0))
    assert torch.equal(stacked.mean(t), torch.tensor([1.5, 5.5, 9.5])) and torch.equal(one.mean(t), t.mean())


@pytest.mark.parametrize("sample_shape", [(2,), (2, 4), (2, 4, 4)])  # a latent, a 2-d and an image-shaped sample
def test_stacked_members_get_each_members_own_penalty_alphas_and_means(sample_shape):
    """K stacked members ([K, B, ...]) equal K separate one-model computations with the same generators."""
    k, real, fake = 3, torch.randn(3, 5, *sample_shape), torch.randn(3, 5, *sample_shape)
    stacked = Members.stacked([torch.Generator().manual_seed(10 + i) for i in range(k)])
    gp = gradient_penalty(QuadraticCritic(lead=2), real, fake, stacked)
    each = [
        gradient_penalty(QuadraticCritic(), real[i], fake[i], Members.one(torch.Generator().manual_seed(10 + i)))
        for i in range(k)
    ]
    assert gp.shape == (k,) and torch.allclose(gp, torch.stack(each), atol=1e-5)
    lam = torch.tensor([1.0, 2.0, 3.0])
    # every rank a stacked model's parameters have: [K], bias [K, o], linear [K, o, i], conv [K, o, i, h, w]
    shapes = [(k,), (k, 4), (k, 4, 2), (k, 4, 2, 3), (k, 4, 2, 3, 3)]
    g_rec, g_adv = [torch.randn(s) for s in shapes], [torch.randn(s) for s in shapes]
    for g, gr, ga in zip(stacked.scaled_sum(g_rec, lam, g_adv), g_rec, g_adv, strict=True):
        expected = torch.stack([lam[i] * gr[i] + ga[i] for i in range(k)])  # member i's own lambda
        assert g.shape == gr.shape and torch.allclose(g, expected)


def test_a_critic_update_steps_both_critics_on_their_own_loss():
    """D_X on (x, G(z)), then D_Z on (z, E(x)): each equals one Adam step on critic_loss computed by hand."""
    import copy

    from piad.model.objective import critic_update

    torch.manual_seed(0)
    E, G = torch.nn.Linear(6, 2), torch.nn.Linear(2, 6)
    DX, DZ = torch.nn.Linear(6, 1), torch.nn.Linear(2, 1)
    x, z = torch.randn(4, 6), torch.randn(4, 2)
    nets = (E, G, DX, DZ)
    copies = copy.deepcopy(nets)
    opts = [torch.optim.Adam(DX.parameters(), 1e-2), torch.optim.Adam(DZ.parameters(), 1e-2)]
    logged = critic_update(Members.one(torch.Generator().manual_seed(1)), nets, opts, x, z, 10.0, 0.001)

    e, g, dx, dz = copies
    gen = torch.Generator().manual_seed(1)  # the penalties draw their alphas in this order: D_X's, then D_Z's
    for critic, real, fake, tag in ((dx, x, g(z).detach(), "x"), (dz, z, e(x).detach(), "z")):
        opt = torch.optim.Adam(critic.parameters(), 1e-2)
        loss, _ = critic_loss(critic, real, fake, 10.0, 0.001, Members.one(gen))
        loss.backward()
        opt.step()
        assert torch.allclose(logged[f"critic_{tag}"], loss.detach(), atol=1e-6)
    for mine, theirs in zip((DX, DZ, E, G), (dx, dz, e, g), strict=True):
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)  # E and G are not touched by a critic step


def test_the_divergence_watch_reports_each_members_first_non_finite_value_only():
    from piad.model.objective import DivergenceWatch

    watch = DivergenceWatch(Members.stacked([None, None, None]), "cpu")
    assert watch.report() == [None, None, None] and DivergenceWatch(Members.one(), "cpu").report() == [None]
    watch.update(1, {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.0, 0.0, 0.0])})
    assert watch.report() == [None, None, None]  # finite everywhere: nothing to report
    watch.update(2, {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.0, float("inf"), 0.0])})
    watch.update(3, {"a": torch.tensor([float("nan"), 2.0, 3.0]), "b": torch.tensor([0.0, float("nan"), 0.0])})
    (first, second, third) = watch.report()
    assert first[:2] == (3, "a") and math.isnan(first[2])
    assert second == (2, "b", float("inf"))  # its first bad iteration, not the later one
    assert third is None
    one = DivergenceWatch(Members.one(), "cpu")
    one.update(7, {"a": torch.tensor(1.0)})
    assert one.report() == [None]
    one.update(0, {"a": torch.tensor(float("nan"))})  # iteration 0 is an iteration like any other
    one.update(1, {"a": torch.tensor(float("inf"))})
    (only,) = one.report()
    assert only[:2] == (0, "a") and math.isnan(only[2])


def test_critic_loss_defaults_are_the_papers_gp_weight_and_drift():
    """lambda_gp = 10 and eps_drift = 0.001 (the method chapter), as the config's defaults."""
    from piad.run.config import ExperimentConfig

    torch.manual_seed(2)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 1))
    real, fake = torch.randn(5, 8) * 3, torch.randn(5, 8) * 3
    cfg = ExperimentConfig()
    default, _ = critic_loss(critic, real, fake, members=Members.one(torch.Generator().manual_seed(0)))
    explicit, _ = critic_loss(
        critic, real, fake, cfg.gp_weight, cfg.eps_drift, Members.one(torch.Generator().manual_seed(0))
    )
    assert (cfg.gp_weight, cfg.eps_drift) == (10.0, 0.001) and torch.equal(default, explicit)
