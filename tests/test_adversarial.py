"""WGAN-GP critic loss with the eps drift penalty (book: Method > Training, spec-critic-loss)."""

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
    assert torch.allclose(total, expected, atol=1e-6)
    assert torch.allclose(parts["wasserstein"], d_fake.mean() - d_real.mean())


def test_fakes_are_detached_in_critic_loss():
    critic = LinearCritic(torch.randn(4))
    fake = torch.randn(3, 4, requires_grad=True)
    total, _ = critic_loss(critic, torch.randn(3, 4), fake)
    total.backward()
    assert fake.grad is None and critic.w.grad is not None


def test_adversarial_loss_is_negative_mean_critic_output():
    critic = LinearCritic(torch.ones(2))
    assert torch.isclose(adversarial_loss(critic, torch.tensor([[1.0, 2.0], [3.0, 4.0]])), torch.tensor(-5.0))
