"""Gradient-normalising weight policy: lambda_N for one network N in {E, G} (book: Method > Weight policy,
spec-weight-policy).

Every T iterations, for each weight tensor W_l of N: a_l = std(dL_adv/dW_l), r_l = std(dL_rec/dW_l) are recorded;
the last `history` records per layer are smoothed by an EMA (factor `ema`, starting from the oldest record), and
lambda_N = median over layers and kept time points of smoothed(a) / smoothed(r).
Statistics stay on the gradients' device (no host synchronisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GRADIENT_NORMALIZING, MANUAL = "gradient_normalizing", "manual"


def weight_indices(module: torch.nn.Module) -> list[int]:
    """Positions, in `module.parameters()`, of the conv/linear weight tensors (not biases)."""
    return [i for i, (name, p) in enumerate(module.named_parameters()) if name.endswith("weight") and p.dim() > 1]


def weight_tensors(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The conv/linear weight tensors of a network (not biases), in registration order."""
    params = list(module.parameters())
    return [params[i] for i in weight_indices(module)]


def ema_from_oldest(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_0 = x_0, s_t = alpha x_t + (1 - alpha) s_{t-1}, along dim 0 (vectorised as a triangular matmul)."""
    n = x.shape[0]
    t = torch.arange(n, device=x.device, dtype=x.dtype)
    powers = (1 - alpha) ** (t[:, None] - t[None, :]).clamp(min=0)  # (1-a)^(t-k)
    w = torch.where(t[:, None] >= t[None, :], alpha * powers, torch.zeros((), dtype=x.dtype, device=x.device))
    w[:, 0] = powers[:, 0]  # x_0 carries weight (1-a)^t
    return w @ x


class GradientNormalizingWeights:
    """Holds the per-layer gradient-std histories of one network and its reconstruction weight lambda.

    mode="gradient_normalizing": lambda = 1 until the first `update`; mode="manual": lambda = `manual_weight` forever.
    """

    def __init__(
        self,
        mode: str = GRADIENT_NORMALIZING,
        manual_weight: float | None = None,
        history: int = 200,
        ema: float = 0.05,
    ):
        if mode not in (GRADIENT_NORMALIZING, MANUAL):
            raise ValueError(f"weight policy mode={mode!r}: expected {GRADIENT_NORMALIZING!r} or {MANUAL!r}")
        if mode == MANUAL and manual_weight is None:
            raise ValueError("weight policy mode='manual' needs manual_weight")
        self.mode, self.history, self.ema = mode, history, ema
        self._lambda = torch.tensor(float(manual_weight) if mode == MANUAL else 1.0)
        self.adv: torch.Tensor | None = None  # (n_records, n_layers)
        self.rec: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """lambda as a 0-dim tensor (no synchronisation)."""
        return self._lambda

    def __float__(self) -> float:
        return float(self._lambda)

    @staticmethod
    def _stds(grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([g.detach().float().std(unbiased=False) for g in grads])

    def record(self, adv_grads: Sequence[torch.Tensor], rec_grads: Sequence[torch.Tensor]) -> None:
        """Append a_l, r_l for every layer (gradients of L_adv and of the unweighted L_rec w.r.t. each W_l)."""
        if len(adv_grads) != len(rec_grads):
            raise ValueError("adv_grads and rec_grads must list the same weight tensors")
        a, r = self._stds(adv_grads)[None], self._stds(rec_grads)[None]
        self.adv = a if self.adv is None else torch.cat([self.adv, a])[-self.history :]
        self.rec = r if self.rec is None else torch.cat([self.rec, r])[-self.history :]

    def update(self) -> torch.Tensor:
        """Recompute lambda from the kept history (manual mode: unchanged)."""
        if self.mode == GRADIENT_NORMALIZING and self.adv is not None:
            ratios = ema_from_oldest(self.adv, self.ema) / ema_from_oldest(self.rec, self.ema)
            self._lambda = torch.quantile(ratios.flatten(), 0.5)  # = numpy median (mean of middle pair)
        return self._lambda

    def step(self, adv_grads, rec_grads) -> torch.Tensor:
        self.record(adv_grads, rec_grads)
        return self.update()

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "lambda": self._lambda.detach().cpu(),
            "history": self.history,
            "ema": self.ema,
            "adv": None if self.adv is None else self.adv.detach().cpu(),
            "rec": None if self.rec is None else self.rec.detach().cpu(),
        }

    def load_state_dict(self, state: dict, device=None) -> None:
        self.mode, self.history, self.ema = state["mode"], int(state["history"]), float(state["ema"])
        self._lambda = state["lambda"].to(device)
        self.adv = None if state["adv"] is None else state["adv"].to(device)
        self.rec = None if state["rec"] is None else state["rec"].to(device)

    def to(self, device) -> GradientNormalizingWeights:
        self._lambda = self._lambda.to(device)
        if self.adv is not None:
            self.adv, self.rec = self.adv.to(device), self.rec.to(device)
        return self
