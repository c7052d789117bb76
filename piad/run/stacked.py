"""K copies of a module with stacked parameters, evaluated under torch.vmap or one after the other, and the
conversion between one stacked Adam state and K single-model ones (piad.run.ensemble)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from piad.errors import ConfigError, RunDirectoryError

MODES = ("vmap", "loop")


class StackedModule:
    """K copies of a module with stacked parameters; `self(x)` maps x [K, B, ...] -> [K, B, ...]."""

    def __init__(self, modules: Sequence[nn.Module], mode: str = "vmap", trainable: bool = True):
        if mode not in MODES:
            raise ConfigError(f"ensemble mode={mode!r}: expected one of {MODES}.")
        params, buffers = stack_module_state(list(modules))
        self.names = list(params)
        self.params = [params[n].detach().requires_grad_(trainable) for n in self.names]
        self.buffers = {n: b.detach() for n, b in buffers.items()}
        self.k = len(modules)
        self.base = copy.deepcopy(modules[0]).to("meta")
        self.mode = mode
        base = self.base

        def one(p, b, x):
            return functional_call(base, (p, b), (x,))

        self._one = one
        self._vmapped = torch.vmap(one, in_dims=(0, 0, 0))

    def param_dict(self) -> dict:
        return dict(zip(self.names, self.params, strict=True))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "vmap":
            return self._vmapped(self.param_dict(), self.buffers, x)
        return torch.stack([self.member(k, x[k]) for k in range(self.k)])

    def member(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Member k alone on an unbatched input [B, ...]."""
        return self._one(
            {n: p[k] for n, p in zip(self.names, self.params, strict=True)},
            {n: b[k] for n, b in self.buffers.items()},
            x,
        )

    def member_state_dict(self, k: int) -> dict:
        """Member k's state dict in the layout of the original module (parameters and buffers)."""
        sd = {}
        for key in self.base.state_dict().keys():
            src = dict(zip(self.names, self.params, strict=True)).get(key)
            src = self.buffers[key] if src is None else src
            sd[key] = src[k].detach().clone().cpu()
        return sd

    @torch.no_grad()
    def load_member_state_dict(self, k: int, sd: dict) -> None:
        own = {**dict(zip(self.names, self.params, strict=True)), **self.buffers}
        missing = set(own) ^ set(sd)
        if missing:
            raise RuntimeError(f"state dict keys differ: {sorted(missing)}")
        for key, t in sd.items():
            own[key][k].copy_(t)


def member_adam_state(opt: torch.optim.Optimizer, k: int) -> dict:
    """The state dict a single-model Adam over member k's parameters would have (same layout as Trainer's)."""
    sd = opt.state_dict()
    state = {}
    for i, s in sd["state"].items():
        state[i] = {name: (v.clone() if name == "step" or v.dim() == 0 else v[k].clone()) for name, v in s.items()}
    return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}


def stack_adam_states(members: Sequence[dict]) -> dict:
    """Inverse of `member_adam_state`: one stacked Adam state dict from K single-model ones."""
    first = members[0]
    state = {}
    for i, s in first["state"].items():
        state[i] = {}
        for name, v in s.items():
            if name == "step" or v.dim() == 0:
                if any(float(m["state"][i][name]) != float(v) for m in members):
                    raise RunDirectoryError(
                        "ensemble members are at different optimiser steps; resume them "
                        "separately with `piad train --resume`."
                    )
                state[i][name] = v.clone()
            else:
                state[i][name] = torch.stack([m["state"][i][name] for m in members])
    return {"state": state, "param_groups": copy.deepcopy(first["param_groups"])}


class DistanceFeatures(nn.Module):
    """Wraps a PerceptualDistance so that functional_call reaches its `features`."""

    def __init__(self, distance):
        super().__init__()
        self.d = distance

    def forward(self, x):
        return self.d.features(x)


def same_state(modules) -> bool:
    """True if all modules have the same state-dict keys and equal tensors."""
    ref = modules[0].state_dict()
    for m in modules[1:]:
        sd = m.state_dict()
        if sd.keys() != ref.keys() or not all(torch.equal(ref[k], sd[k]) for k in ref):
            return False
    return True
