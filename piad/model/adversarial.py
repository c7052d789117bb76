"""WGAN-GP critic loss with the extra eps-penalty on critic outputs (book: Method > Training, spec-critic-loss)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import autograd


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """E[(||grad_xhat D(xhat)||_2 - 1)^2], xhat = a*real + (1-a)*fake, a ~ U[0, 1] per sample."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    a = torch.rand(shape, generator=generator, device=real.device, dtype=real.dtype)
    xhat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    out = critic(xhat)
    (grad,) = autograd.grad(out.sum(), xhat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, gp_weight: float = 10.0, eps: float = 0.001,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_D = E[D(fake)] - E[D(real)] + gp * GP + eps * (E[D(real)^2] + E[D(fake)^2]); fakes are detached.

    Real and fake go through the critic in separate passes (the minibatch-stddev channel sees one kind at a time).
    """
    d_real, d_fake = critic(real.detach()), critic(fake.detach())
    wasserstein = d_fake.mean() - d_real.mean()
    drift = (d_real ** 2).mean() + (d_fake ** 2).mean()
    gp = gradient_penalty(critic, real, fake, generator)
    total = wasserstein + gp_weight * gp + eps * drift
    return total, {"wasserstein": wasserstein.detach(), "gradient_penalty": gp.detach(), "drift": drift.detach()}


def adversarial_loss(critic, fake: torch.Tensor) -> torch.Tensor:
    """L_adv = -E[D(fake)], for the generator (D_X on G(z)) or the encoder (D_Z on E(x))."""
    return -critic(fake).mean()
