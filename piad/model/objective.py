"""The PIAD objective, written once for one model or for K stacked models (book: Method > Training,
spec-critic-loss, spec-iteration).

Critic loss (WGAN-GP with the eps drift penalty on critic outputs):

    L_D = E[D(fake)] - E[D(real)] + gp_weight * E[(||grad_xhat D(xhat)||_2 - 1)^2] + eps * (E[D(real)^2] + E[D(fake)^2])

with xhat = a real + (1 - a) fake, a ~ U[0, 1] per sample. The encoder and generator get
lambda_N * dL_rec/dN + dL_adv/dN for N in {E, G}; lambda_N comes from the weight rule
(piad.model.weighting), updated on the iterations the caller asks for. On the other iterations E is
back-propagated once: lambda_E * dL_rec/dE(x) + dL_adv/dE(x) is formed at the latent E(x) and pushed through E
(by linearity the same gradient as two passes, up to float rounding).

:class:`Members` describes the member dimension: one model (tensors [B, ...], losses are scalars) or K stacked
members (tensors [K, B, ...], losses have shape [K]; members touch disjoint parameter slices, so the gradient of the
summed losses is each member's own gradient). Every function here takes it, so the single-model trainer and the
ensemble run the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import autograd


class Members:
    """The member dimension of a training step and each member's noise generator (for the penalty's alphas).

    `Members.one(generator)`: one model, no member dimension. `Members.stacked(generators)`: K = len(generators)
    members along a leading dimension.
    """

    def __init__(self, generators: Sequence[torch.Generator | None], stacked: bool):
        if not stacked and len(generators) != 1:
            raise ValueError("an unstacked model has exactly one noise generator")
        self.generators, self.is_stacked, self.k = list(generators), stacked, len(generators)

    @classmethod
    def one(cls, generator: torch.Generator | None = None) -> Members:
        return cls([generator], stacked=False)

    @classmethod
    def stacked(cls, generators: Sequence[torch.Generator | None]) -> Members:
        return cls(generators, stacked=True)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over everything but the member dimension: a scalar, or shape [K]."""
        return t.reshape(self.k, -1).mean(1) if self.is_stacked else t.mean()

    def total(self, loss: torch.Tensor) -> torch.Tensor:
        """The scalar to differentiate: the loss, or the sum of the members' losses."""
        return loss.sum() if self.is_stacked else loss

    def sample_norms(self, g: torch.Tensor) -> torch.Tensor:
        """L2 norm of each sample's gradient: [B] or [K, B]."""
        d = 2 if self.is_stacked else 1
        return g.flatten(d).norm(2, dim=d)

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        """One U[0, 1) draw per sample of `like`, broadcastable to it, from each member's generator."""

        def draw(g, shape):
            return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)

        if not self.is_stacked:
            return draw(self.generators[0], (like.shape[0],) + (1,) * (like.dim() - 1))
        shape = (like.shape[1],) + (1,) * (like.dim() - 2)
        return torch.stack([draw(g, shape) for g in self.generators])

    def per_member(self, lam: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """lambda shaped to scale `like`: the 0-dim value, or [K] viewed as [K, 1, ...]."""
        return lam.view(self.k, *([1] * (like.dim() - 1))) if self.is_stacked else lam

    def scaled_sum(
        self, g_rec: Sequence[torch.Tensor], lam: torch.Tensor, g_adv: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """lambda * g_rec + g_adv for each tensor."""
        if not self.is_stacked:
            g = list(torch._foreach_mul(list(g_rec), lam))
            torch._foreach_add_(g, list(g_adv))
            return g
        return [gr * self.per_member(lam, gr) + ga for gr, ga in zip(g_rec, g_adv, strict=True)]

    def weights(self, policies: Sequence, device) -> torch.Tensor:
        """The members' current lambdas: 0-dim, or [K]."""
        if not self.is_stacked:
            return policies[0].weight
        return torch.stack([p.weight for p in policies]).to(device)

    def member_tensors(self, grads: Sequence[torch.Tensor], indices: Sequence[int], k: int) -> list[torch.Tensor]:
        """Member k's slice of grads[i] for i in indices (the weight tensors its weight rule looks at)."""
        if not self.is_stacked:
            return [grads[i] for i in indices]
        return [grads[i][k] for i in indices]


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, members: Members | None = None) -> torch.Tensor:
    """E[(||grad_xhat D(xhat)||_2 - 1)^2], xhat = a*real + (1-a)*fake, a ~ U[0, 1] per sample."""
    m = members or Members.one()
    a = m.uniform(real)
    xhat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    out = critic(xhat)
    (grad,) = autograd.grad(out.sum(), xhat, create_graph=True)
    return m.mean((m.sample_norms(grad) - 1) ** 2)


def critic_loss(
    critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    gp_weight: float = 10.0,
    eps: float = 0.001,
    members: Members | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_D (module docstring) per member; fakes are detached.

    Real and fake go through the critic in separate passes (the minibatch-stddev channel sees one kind at a time).
    """
    m = members or Members.one()
    d_real, d_fake = critic(real.detach()), critic(fake.detach())
    wasserstein = m.mean(d_fake) - m.mean(d_real)
    drift = m.mean(d_real**2) + m.mean(d_fake**2)
    gp = gradient_penalty(critic, real, fake, m)
    total = wasserstein + gp_weight * gp + eps * drift
    return total, {"wasserstein": wasserstein.detach(), "gradient_penalty": gp.detach(), "drift": drift.detach()}


def adversarial_loss(critic, fake: torch.Tensor, members: Members | None = None) -> torch.Tensor:
    """L_adv = -E[D(fake)], for the generator (D_X on G(z)) or the encoder (D_Z on E(x))."""
    return -(members or Members.one()).mean(critic(fake))


def critic_update(
    m: Members, networks, optimizers, x: torch.Tensor, z: torch.Tensor, gp_weight: float, eps: float
) -> dict[str, torch.Tensor]:
    """One step of D_X (real x vs G(z)) and then of D_Z (real z vs E(x)); returns the detached loss terms."""
    E, G, DX, DZ = networks
    with torch.no_grad():
        fake_x, fake_z = G(z), E(x)
    logged = {}
    for critic, opt, real, fake, tag in ((DX, optimizers[0], x, fake_x, "x"), (DZ, optimizers[1], z, fake_z, "z")):
        loss, parts = critic_loss(critic, real, fake, gp_weight, eps, m)
        opt.zero_grad(set_to_none=True)
        m.total(loss).backward()
        opt.step()
        logged.update(
            {
                f"critic_{tag}": loss.detach(),
                f"wasserstein_{tag}": parts["wasserstein"],
                f"gp_{tag}": parts["gradient_penalty"],
            }
        )
    return logged


class WeightRule:
    """The weight policies (one per member) of E and G and the indices of the weight tensors they look at."""

    def __init__(
        self, policies_e: Sequence, policies_g: Sequence, weight_idx_e: Sequence[int], weight_idx_g: Sequence[int]
    ):
        self.policies_e, self.policies_g = list(policies_e), list(policies_g)
        self.weight_idx_e, self.weight_idx_g = list(weight_idx_e), list(weight_idx_g)


def encoder_generator_gradients(
    m: Members,
    params_e: list,
    params_g: list,
    latent: torch.Tensor,
    adv_e: torch.Tensor,
    adv_g: torch.Tensor,
    rec_loss: torch.Tensor,
    rule: WeightRule,
    update_rule: bool,
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set `.grad` of E's and G's parameters to lambda_N * dL_rec/dN + dL_adv/dN; return (lambda_E, lambda_G).

    With `update_rule`, the separate gradients feed each member's weight rule first. Otherwise, with `fused`, E is
    back-propagated once from the latent (module docstring); `fused=False` takes two passes like an update."""
    if update_rule or not fused:
        ne = len(params_e)
        g_rec = autograd.grad(m.total(rec_loss), params_e + params_g, retain_graph=True)
        g_adv_e = autograd.grad(m.total(adv_e), params_e)
        g_adv_g = autograd.grad(m.total(adv_g), params_g)
        g_rec_e, g_rec_g = g_rec[:ne], g_rec[ne:]
        if update_rule:
            for policies, widx, ga, gr in (
                (rule.policies_e, rule.weight_idx_e, g_adv_e, g_rec_e),
                (rule.policies_g, rule.weight_idx_g, g_adv_g, g_rec_g),
            ):
                for k, policy in enumerate(policies):
                    policy.step(m.member_tensors(ga, widx, k), m.member_tensors(gr, widx, k))
        lam_e, lam_g = m.weights(rule.policies_e, latent.device), m.weights(rule.policies_g, latent.device)
        grads = m.scaled_sum(g_rec_e, lam_e, g_adv_e) + m.scaled_sum(g_rec_g, lam_g, g_adv_g)
    else:
        lam_e, lam_g = m.weights(rule.policies_e, latent.device), m.weights(rule.policies_g, latent.device)
        # each pass stops at the latent or at G's parameters and frees what it traversed; E's graph is traversed once
        g_z_rec, *g_rec_g = autograd.grad(m.total(rec_loss), [latent] + params_g)
        (g_z_adv,) = autograd.grad(m.total(adv_e), latent)
        g_adv_g = list(autograd.grad(m.total(adv_g), params_g))
        g_e = autograd.grad(latent, params_e, grad_outputs=g_z_rec * m.per_member(lam_e, latent) + g_z_adv)
        grads = list(g_e) + m.scaled_sum(g_rec_g, lam_g, g_adv_g)
    for p, g in zip(params_e + params_g, grads, strict=True):
        p.grad = g
    return lam_e, lam_g


def encoder_generator_update(
    m: Members,
    networks,
    optimizer,
    x: torch.Tensor,
    z: torch.Tensor,
    reconstruction_loss: Callable[[torch.Tensor], torch.Tensor],
    params_e: list,
    params_g: list,
    rule: WeightRule,
    update_rule: bool,
    fused: bool = True,
) -> dict[str, torch.Tensor]:
    """One step of E and G together (`optimizer` holds both); `reconstruction_loss(G(E(x)))` is L_rec per member.
    Returns the detached loss terms and the lambdas used."""
    E, G, DX, DZ = networks
    fake_x, fake_z = G(z), E(x)
    rec = G(fake_z)
    adv_g, adv_e = adversarial_loss(DX, fake_x, m), adversarial_loss(DZ, fake_z, m)
    rec_loss = reconstruction_loss(rec)
    lam_e, lam_g = encoder_generator_gradients(
        m, params_e, params_g, fake_z, adv_e, adv_g, rec_loss, rule, update_rule, fused
    )
    optimizer.step()
    return {
        "adv_e": adv_e.detach(),
        "adv_g": adv_g.detach(),
        "rec": rec_loss.detach(),
        "lambda_e": lam_e,
        "lambda_g": lam_g,
    }


class DivergenceWatch:
    """The first iteration at which a logged value became non-finite, per member, kept on the device (no host
    synchronisation until :meth:`report`)."""

    def __init__(self, m: Members, device):
        self.first = torch.full((m.k,) if m.is_stacked else (), -1, dtype=torch.long, device=device)
        self.values: torch.Tensor | None = None  # the logged values at that iteration
        self.names: list[str] = []

    def update(self, iteration: int, logged: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.float() for v in logged.values()])  # [n_values] or [n_values, K]
        newly_bad = ~torch.isfinite(values).all(0) & (self.first < 0)
        self.first = torch.where(newly_bad, torch.full_like(self.first, iteration), self.first)
        self.values = values if self.values is None else torch.where(newly_bad, values, self.values)
        self.names = list(logged)

    def report(self) -> list[tuple[int, str, float] | None]:
        """Per member: None, or (iteration, name of the first non-finite value, that value)."""
        first = self.first.reshape(-1).tolist()
        out: list[tuple[int, str, float] | None] = [None] * len(first)
        for k, it in enumerate(first):
            if it >= 0:
                vals = dict(zip(self.names, self.values.reshape(len(self.names), -1)[:, k].tolist(), strict=True))
                name = next((n for n, v in vals.items() if not math.isfinite(v)), "loss")
                out[k] = (it, name, vals.get(name, float("nan")))
        return out
