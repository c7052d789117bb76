"""Batched one-class ensembles: K independent PIAD models trained in one process (issue #6).

Typical uses: all classes of a benchmark, or all runs of one class. The K members share the architecture (every
config key except the member keys below must agree) but nothing else: each has its own training images and
:class:`~piad.run.training.IndexSampler`, its own four networks, its own Adam moments, its own weight policies
(lambda_E, lambda_G per member) and its own noise generator. Member k is initialised exactly like
``piad.run.training.Trainer(configs[k])`` (same seeding order, same sampler / noise / display seeds), so a batched
run reproduces K separate runs up to floating-point rounding (tests/test_ensemble.py checks weights and ROC AUCs).

How it is batched: the parameters of the K copies of each network are stacked along a new leading dimension
(``torch.func.stack_module_state``) and the networks are evaluated with ``torch.func.functional_call`` under
``torch.vmap`` (convolutions become grouped convolutions, linear layers batched matmuls). Gradients are taken with
ordinary autograd on the vmapped graph (double backward of the gradient penalty included): the losses of different
members touch disjoint slices of the stacked parameters, so d(sum_k L_k)/d theta_k = dL_k/d theta_k. One Adam
over stacked tensors equals K Adams because Adam, including its L2 weight decay, is elementwise and all members
take their steps together (same step count). ``mode="loop"`` evaluates the members one after the other on the
same stacked parameters (a fallback that needs no vmap; same results). On iterations without a weight-rule
update, E is back-propagated once: lambda_E * dL_rec/dE(x) + dL_adv^E/dE(x) is formed at the latent and pushed
through E (linear, so the same gradient as two passes; `fused_eg=False` does two passes like the Trainer).

The frozen VGG of the perceptual distance is shared (one big batch) when all members resolve to identical VGG
weights and statistics (a weights file or ImageNet); with ``vgg_weights="random"`` (seeded per member) each member
gets its own VGG, evaluated under vmap as well.

Each member's run directory has the layout of :func:`piad.run.training.train` (config.json, checkpoints/latest.pt
in the Trainer's format, iter_*.pt snapshots, log.csv, policy.csv, samples/), so ``piad.run.evaluation.evaluate`` and
``AnomalyScorer.from_checkpoint`` work unchanged, and a member can even be resumed alone with ``piad train
--resume``.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import autograd, nn
from torch.func import functional_call, stack_module_state

from piad.run import fitloop
from piad.run.checkpoint import global_rng_state, load_checkpoint, restore_missing_snapshot, save_run_checkpoints
from piad.run.config import ExperimentConfig
from piad.data import OneClassData, load_for_config
from piad.errors import ConfigError, RunDirectoryError
from piad.model.networks import PIADNetworks
from piad.run.distance import make_distance
from piad.run.runio import RunLock, atomic_write_json, atomic_write_text, remove_stale_temp_files
from piad.run.training import (FEATURE_CACHE_LIMIT_BYTES, MAP_SCALE_IMAGES, IndexSampler, _clear_run, _weight_indices,
                           anomaly_map_scale, append_log_row, append_policy_rows, check_run_directory, resolve_device,
                           save_sample_grid, seed_everything, truncate_logs)
from piad.model.weighting import GradientNormalizingWeights

# config keys that may differ between members (everything else defines the shared architecture/schedule)
MEMBER_KEYS = {"normal_class", "run", "seed", "split_seed", "data_root", "download"}
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
        return dict(zip(self.names, self.params))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "vmap":
            return self._vmapped(self.param_dict(), self.buffers, x)
        return torch.stack([self.member(k, x[k]) for k in range(self.k)])

    def member(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Member k alone on an unbatched input [B, ...]."""
        return self._one({n: p[k] for n, p in zip(self.names, self.params)},
                         {n: b[k] for n, b in self.buffers.items()}, x)

    def member_state_dict(self, k: int) -> dict:
        """Member k's state dict in the layout of the original module (parameters and buffers)."""
        sd = {}
        for key in self.base.state_dict().keys():
            src = dict(zip(self.names, self.params)).get(key)
            src = self.buffers[key] if src is None else src
            sd[key] = src[k].detach().clone().cpu()
        return sd

    @torch.no_grad()
    def load_member_state_dict(self, k: int, sd: dict) -> None:
        own = {**dict(zip(self.names, self.params)), **self.buffers}
        missing = set(own) ^ set(sd)
        if missing:
            raise RuntimeError(f"state dict keys differ: {sorted(missing)}")
        for key, t in sd.items():
            own[key][k].copy_(t)


def _member_adam_state(opt: torch.optim.Optimizer, k: int) -> dict:
    """The state dict a single-model Adam over member k's parameters would have (same layout as Trainer's)."""
    sd = opt.state_dict()
    state = {}
    for i, s in sd["state"].items():
        state[i] = {name: (v.clone() if name == "step" or v.dim() == 0 else v[k].clone())
                    for name, v in s.items()}
    return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}


def _stack_adam_states(members: Sequence[dict]) -> dict:
    """Inverse of `_member_adam_state`: one stacked Adam state dict from K single-model ones."""
    first = members[0]
    state = {}
    for i, s in first["state"].items():
        state[i] = {}
        for name, v in s.items():
            if name == "step" or v.dim() == 0:
                if any(float(m["state"][i][name]) != float(v) for m in members):
                    raise RunDirectoryError("ensemble members are at different optimiser steps; resume them "
                                            "separately with `piad train --resume`.")
                state[i][name] = v.clone()
            else:
                state[i][name] = torch.stack([m["state"][i][name] for m in members])
    return {"state": state, "param_groups": copy.deepcopy(first["param_groups"])}


def _check_compatible(configs: Sequence[ExperimentConfig]) -> None:
    ref = configs[0].to_dict()
    for i, c in enumerate(configs[1:], 1):
        d = c.to_dict()
        diff = sorted(k for k in ref if k not in MEMBER_KEYS and ref[k] != d[k])
        if diff:
            raise ConfigError(f"ensemble member {i} differs from member 0 in {diff}; members may differ only in "
                              f"{sorted(MEMBER_KEYS)} (architecture, schedule and distance must be shared).")


class _Features(nn.Module):
    """Wraps a PerceptualDistance so that functional_call reaches its `features`."""

    def __init__(self, distance):
        super().__init__()
        self.d = distance

    def forward(self, x):
        return self.d.features(x)


def _same_state(modules) -> bool:
    ref = modules[0].state_dict()
    for m in modules[1:]:
        sd = m.state_dict()
        if sd.keys() != ref.keys() or not all(torch.equal(ref[k], sd[k]) for k in ref):
            return False
    return True


class EnsembleTrainer:
    """K PIAD models with stacked parameters, trained in lock-step (see the module docstring)."""

    def __init__(self, configs: Sequence[ExperimentConfig], out_dirs, device="cpu",
                 datas: Optional[Sequence[OneClassData]] = None, progress: bool = False, mode: str = "vmap",
                 fused_eg: bool = True):
        if len(configs) == 0:
            raise ConfigError("an ensemble needs at least one config")
        self.cfgs = [c.validate() for c in configs]
        _check_compatible(self.cfgs)
        self.cfg = cfg = self.cfgs[0]
        self.k = K = len(configs)
        self.outs = [Path(o) for o in out_dirs]
        if len(self.outs) != K:
            raise ConfigError(f"{K} configs but {len(self.outs)} out_dirs")
        if len({str(o.resolve()) for o in self.outs}) != K:
            raise ConfigError("ensemble members need distinct out_dirs")
        self.device = dev = resolve_device(device)
        self.progress = progress
        datas = list(datas) if datas is not None else [load_for_config(c) for c in self.cfgs]
        expected = (cfg.channels, cfg.image_size, cfg.image_size)
        for d in datas:
            if tuple(d.train.shape[1:]) != expected:
                raise ConfigError(f"data images have shape {tuple(d.train.shape[1:])} but the config expects "
                                  f"(channels, image_size, image_size) = {expected}.")
        self.datas = datas
        # -- per member, in the Trainer's order: seed, networks, distance, policies, sampler, noise, display
        nets, dists, self.samplers, self.noises, self.display_z, self.display_x = [], [], [], [], [], []
        self.policy_e, self.policy_g = [], []
        for c, d in zip(self.cfgs, datas):
            seed = c.resolved_seed()
            seed_everything(seed)
            nets.append(PIADNetworks(c).to(dev))
            dists.append(make_distance(c, seed).to(dev))
            self.policy_e.append(GradientNormalizingWeights(c.weight_policy, c.lambda_e, c.policy_history,
                                                            c.policy_ema).to(dev))
            self.policy_g.append(GradientNormalizingWeights(c.weight_policy, c.lambda_g, c.policy_history,
                                                            c.policy_ema).to(dev))
            self.samplers.append(IndexSampler(d.train.shape[0], c.batch_size, seed + 1, dev))
            self.noises.append(torch.Generator(device=dev).manual_seed(seed + 2))
            g = torch.Generator().manual_seed(seed + 3)
            self.display_z.append(torch.randn(8, *nets[-1].latent_shape, generator=g).to(dev))
            self.display_x.append(d.train[torch.randperm(len(d.train), generator=g)[:8]].to(dev))
        self.latent_shape = nets[0].latent_shape
        self.mode, self.fused_eg = mode, fused_eg
        self.E = StackedModule([n.encoder for n in nets], mode)
        self.G = StackedModule([n.generator for n in nets], mode)
        self.DX = StackedModule([n.image_critic for n in nets], mode)
        self.DZ = StackedModule([n.latent_critic for n in nets], mode)
        self.distance = dists[0]
        self.member_distances = dists
        self.shared_distance = _same_state(dists)
        self.vfeatures = None if self.shared_distance else StackedModule([_Features(d) for d in dists], mode,
                                                                         trainable=False)
        adam = dict(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        if dev.type == "cuda":
            adam["fused"] = True
        self.opt_eg = torch.optim.Adam(self.E.params + self.G.params, lr=cfg.lr_eg, **adam)
        self.opt_dx = torch.optim.Adam(self.DX.params, lr=cfg.lr_d, **adam)
        self.opt_dz = torch.optim.Adam(self.DZ.params, lr=cfg.lr_d, **adam)
        self.weight_idx_e = _weight_indices(nets[0].encoder)
        self.weight_idx_g = _weight_indices(nets[0].generator)
        # all members' training images in one tensor; a member's sampler indices are shifted by its offset
        sizes = [d.train.shape[0] for d in datas]
        self.offsets = torch.tensor([0] + sizes[:-1], device=dev).cumsum(0)
        self.train_x = torch.cat([d.train for d in datas]).to(dev)
        self.train_f = self._feature_cache() if cfg.cache_features else None
        self.iteration = 0
        self.elapsed = 0.0
        self._first_bad = torch.full((K,), -1, dtype=torch.long, device=dev)
        self._first_bad_values: Optional[torch.Tensor] = None
        self._last: dict[str, torch.Tensor] = {}
        self.diverged: dict[int, str] = {}

    # -- distance -----------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) for x [K, B, C, H, W] -> [K*B, ...] (each member's own VGG when they differ)."""
        if self.shared_distance:
            return self.distance.features(x.flatten(0, 1))
        return self.vfeatures(x).flatten(0, 1)

    @torch.no_grad()
    def _feature_cache(self) -> Optional[torch.Tensor]:
        probe = self.distance.features(self.train_x[:1])
        per_image = probe[0].numel() * probe.element_size()
        if max(d.train.shape[0] for d in self.datas) * per_image > FEATURE_CACHE_LIMIT_BYTES:
            return None
        if self.shared_distance:
            return torch.cat([self.distance.features(b) for b in self.train_x.split(256)])
        out, start = [], 0
        for k, d in enumerate(self.datas):
            xs = self.train_x[start:start + d.train.shape[0]]
            start += d.train.shape[0]
            out.append(torch.cat([self.vfeatures.member(k, b) for b in xs.split(256)]))
        return torch.cat(out)

    def reconstruction_loss(self, x, idx, rec) -> torch.Tensor:
        """Per-member mean relative-perceptual-L1 (or the configured distance), shape [K]."""
        d0 = self.distance
        fx = self.train_f[idx] if self.train_f is not None else self.features(x)
        if self.shared_distance:
            d = d0.from_features(fx, rec.flatten(0, 1))
        else:
            fy = self.features(rec)
            d = d0.error_map(fx, fy).flatten(1).mean(1)
            if d0.kind == "relative_perceptual_l1":
                d = d / (fx.detach().abs().flatten(1).mean(1) + d0.eps)
        return d.view(self.k, -1).mean(1)

    # -- random streams -------------------------------------------------------------------------------------------
    def _batch(self):
        idx = torch.cat([s.next() for s in self.samplers]).view(self.k, -1)
        idx = (idx + self.offsets[:, None]).flatten()
        return self.train_x[idx].view(self.k, self.cfg.batch_size, *self.train_x.shape[1:]), idx

    def _z(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.cfg.batch_size, *self.latent_shape, generator=g, device=self.device)
                            for g in self.noises])

    def _rand(self, shape) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.noises])

    # -- the two steps --------------------------------------------------------------------------------------------
    def _critic_loss(self, critic: StackedModule, real, fake):
        cfg = self.cfg
        d_real, d_fake = critic(real.detach()), critic(fake.detach())
        wasserstein = d_fake.flatten(1).mean(1) - d_real.flatten(1).mean(1)
        drift = (d_real ** 2).flatten(1).mean(1) + (d_fake ** 2).flatten(1).mean(1)
        a = self._rand((real.shape[1],) + (1,) * (real.dim() - 2))
        xhat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
        out = critic(xhat)
        (grad,) = autograd.grad(out.sum(), xhat, create_graph=True)
        gp = ((grad.flatten(2).norm(2, dim=2) - 1) ** 2).mean(1)
        total = wasserstein + cfg.gp_weight * gp + cfg.eps_drift * drift
        return total, wasserstein.detach(), gp.detach()

    def critic_step(self) -> None:
        x, _ = self._batch()
        z = self._z()
        with torch.no_grad():
            fake_x, fake_z = self.G(z), self.E(x)
        for critic, opt, real, fake, tag in ((self.DX, self.opt_dx, x, fake_x, "x"),
                                             (self.DZ, self.opt_dz, z, fake_z, "z")):
            loss, w, gp = self._critic_loss(critic, real, fake)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            self._last[f"critic_{tag}"] = loss.detach()
            self._last[f"wasserstein_{tag}"] = w
            self._last[f"gp_{tag}"] = gp

    def encoder_generator_step(self, iteration: int) -> None:
        K = self.k
        x, idx = self._batch()
        z = self._z()
        fake_x, fake_z = self.G(z), self.E(x)
        rec = self.G(fake_z)
        adv_g = -self.DX(fake_x).flatten(1).mean(1)
        adv_e = -self.DZ(fake_z).flatten(1).mean(1)
        rec_loss = self.reconstruction_loss(x, idx, rec)
        pe, pg = self.E.params, self.G.params
        ne = len(pe)
        if iteration % self.cfg.policy_every == 0 or not self.fused_eg:
            g_rec = autograd.grad(rec_loss.sum(), pe + pg, retain_graph=True)
            g_adv_e = autograd.grad(adv_e.sum(), pe)
            g_adv_g = autograd.grad(adv_g.sum(), pg)
            g_rec_e, g_rec_g = g_rec[:ne], g_rec[ne:]
            if iteration % self.cfg.policy_every == 0:
                for policies, widx, ga, gr in ((self.policy_e, self.weight_idx_e, g_adv_e, g_rec_e),
                                               (self.policy_g, self.weight_idx_g, g_adv_g, g_rec_g)):
                    for k, pol in enumerate(policies):
                        pol.step([ga[i][k] for i in widx], [gr[i][k] for i in widx])
                self._log_policy(iteration)
            lam_e, lam_g = self._lambdas()
            for params, g_r, g_a, lam in ((pe, g_rec_e, g_adv_e, lam_e), (pg, g_rec_g, g_adv_g, lam_g)):
                for p, gr, ga in zip(params, g_r, g_a):
                    p.grad = gr * lam.view(K, *([1] * (gr.dim() - 1))) + ga
        else:
            # one backward through E: combine the gradients at the latent E(x) first (linear, same math)
            lam_e, lam_g = self._lambdas()
            g = autograd.grad(rec_loss.sum(), [fake_z] + pg, retain_graph=True)
            (g_fz_adv,) = autograd.grad(adv_e.sum(), fake_z, retain_graph=True)
            g_adv_g = autograd.grad(adv_g.sum(), pg)
            lam_z = lam_e.view(K, *([1] * (fake_z.dim() - 1)))
            g_e = autograd.grad(fake_z, pe, grad_outputs=g[0] * lam_z + g_fz_adv)
            for p, ge in zip(pe, g_e):
                p.grad = ge
            for p, gr, ga in zip(pg, g[1:], g_adv_g):
                p.grad = gr * lam_g.view(K, *([1] * (gr.dim() - 1))) + ga
        self.opt_eg.step()
        self._last.update(adv_e=adv_e.detach(), adv_g=adv_g.detach(), rec=rec_loss.detach(),
                          lambda_e=lam_e, lambda_g=lam_g)

    def _lambdas(self):
        return (torch.stack([p.weight for p in self.policy_e]).to(self.device),
                torch.stack([p.weight for p in self.policy_g]).to(self.device))

    def train_iteration(self) -> None:
        it = self.iteration + 1
        for _ in range(self.cfg.n_dis):
            self.critic_step()
        self.encoder_generator_step(it)
        values = torch.stack([v.float() for v in self._last.values()])          # [n_values, K]
        newly_bad = ~torch.isfinite(values).all(0) & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, torch.full_like(self._first_bad, it), self._first_bad)
        self._first_bad_values = values if self._first_bad_values is None else \
            torch.where(newly_bad, values, self._first_bad_values)
        self.iteration = it

    # -- per-member state, in piad.run.training.Trainer's checkpoint format -----------------------------------------
    def member_state_dict(self, k: int) -> dict:
        return {
            "iteration": self.iteration, "elapsed": self.elapsed, "config": self.cfgs[k].to_json(),
            "networks": {"encoder": self.E.member_state_dict(k), "generator": self.G.member_state_dict(k),
                         "image_critic": self.DX.member_state_dict(k),
                         "latent_critic": self.DZ.member_state_dict(k)},
            "optimizers": {"eg": _member_adam_state(self.opt_eg, k), "dx": _member_adam_state(self.opt_dx, k),
                           "dz": _member_adam_state(self.opt_dz, k)},
            "policy": {"e": self.policy_e[k].state_dict(), "g": self.policy_g[k].state_dict()},
            "rng": {"global": global_rng_state(), "sampler": self.samplers[k].state_dict(),
                    "noise": self.noises[k].get_state()},
        }

    def load_member_state_dicts(self, states: Sequence[dict]) -> None:
        """Resume: every member from its own Trainer-format checkpoint (all at the same iteration)."""
        its = {int(s["iteration"]) for s in states}
        if len(its) != 1:
            raise RunDirectoryError(f"ensemble members are at different iterations {sorted(its)}; resume them "
                                    "separately with `piad train --resume`.")
        for k, s in enumerate(states):
            for stacked, key in ((self.E, "encoder"), (self.G, "generator"), (self.DX, "image_critic"),
                                 (self.DZ, "latent_critic")):
                stacked.load_member_state_dict(k, s["networks"][key])
            self.policy_e[k].load_state_dict(s["policy"]["e"], self.device)
            self.policy_g[k].load_state_dict(s["policy"]["g"], self.device)
            self.samplers[k].load_state_dict(s["rng"]["sampler"])
            self.noises[k].set_state(s["rng"]["noise"])
        for opt, key in ((self.opt_eg, "eg"), (self.opt_dx, "dx"), (self.opt_dz, "dz")):
            opt.load_state_dict(_stack_adam_states([s["optimizers"][key] for s in states]))
        self.iteration = its.pop()
        self.elapsed = max(float(s["elapsed"]) for s in states)

    def save(self, k: int) -> None:
        dev = self.display_x[k].device
        scale = anomaly_map_scale(lambda b: self.G.member(k, self.E.member(k, b)), self.member_distances[k],
                                  self.datas[k].train[:MAP_SCALE_IMAGES].to(dev))
        save_run_checkpoints(self.outs[k] / "checkpoints", {**self.member_state_dict(k), "map_scale": scale})

    # -- logs and samples ---------------------------------------------------------------------------------------
    def _log_rows(self) -> None:
        vals = {key: v.detach().float().cpu().tolist() for key, v in self._last.items()}
        for k, out in enumerate(self.outs):
            if k not in self.diverged:
                append_log_row(out, {"iteration": self.iteration, "seconds": round(self.elapsed, 3),
                                     **{key: v[k] for key, v in vals.items()}})

    def _log_policy(self, iteration: int) -> None:
        for k, out in enumerate(self.outs):
            append_policy_rows(out, iteration, self.policy_e[k], self.policy_g[k])

    @torch.no_grad()
    def save_samples(self) -> None:
        for k, out in enumerate(self.outs):
            if k in self.diverged:
                continue
            rec = self.G.member(k, self.E.member(k, self.display_x[k]))
            grid = torch.cat([self.G.member(k, self.display_z[k]), self.display_x[k], rec]).clamp(-1, 1)
            save_sample_grid(out, self.iteration, (grid + 1) / 2)

    def _check(self) -> None:
        """Members whose losses or weights went non-finite are marked diverged (the others continue)."""
        bad = self._first_bad.tolist()
        for k, b in enumerate(bad):
            if b >= 0 and k not in self.diverged:
                vals = dict(zip(self._last, self._first_bad_values[:, k].tolist()))
                name = next((n for n, v in vals.items() if not math.isfinite(v)), "loss")
                self.diverged[k] = f"training diverged at iteration {b}: {name} = {vals.get(name, float('nan'))}"
                atomic_write_json(self.outs[k] / "metrics.json",
                                  {"status": "diverged", "error": self.diverged[k], "iteration": b, "what": name,
                                   "roc_auc": None})

    # -- the loop (piad.run.fitloop) ----------------------------------------------------------------------------------
    check = _check
    log = _log_rows

    def checkpoint(self) -> None:
        for k in range(self.k):
            if k not in self.diverged:
                self.save(k)

    def progress_label(self) -> str:
        return f"ensemble x{self.k} {self.cfg.benchmark}"

    def progress_postfix(self) -> dict:
        return {"rec": f"{float(self._last['rec'].mean()):.4f}", "diverged": len(self.diverged)}

    def checkpoint_hint(self) -> str:
        live = [str(o / "checkpoints" / "latest.pt") for k, o in enumerate(self.outs) if k not in self.diverged]
        return ", ".join(live) if live else "(every member diverged; nothing saved)"

    def fit(self) -> None:
        """Train all members to cfg.iterations (piad.run.fitloop.fit: logs, samples, checkpoints, SIGINT/SIGTERM)."""
        fitloop.fit(self)


def train_ensemble(configs: Sequence[ExperimentConfig], out_dirs, device="cpu",
                   datas: Optional[Sequence[OneClassData]] = None, resume: bool = False, overwrite: bool = False,
                   progress: bool = False, mode: str = "vmap") -> EnsembleTrainer:
    """Train K PIAD models together; member k's run directory is `out_dirs[k]` (layout of piad.run.training.train).

    Refuses directories holding results or checkpoints unless `resume` (all members must be at the same
    iteration) or `overwrite`. Members that diverge get a "diverged" metrics.json; the others finish. Evaluate
    each member afterwards with ``piad.run.evaluation.evaluate(out_dir)``.
    """
    from contextlib import ExitStack
    outs = [Path(o) for o in out_dirs]
    cfgs = [c.validate().with_absolute_paths() for c in configs]
    with ExitStack() as stack:
        for out in outs:
            stack.enter_context(RunLock(out))
        states = []
        for cfg, out in zip(cfgs, outs):
            latest = out / "checkpoints" / "latest.pt"
            check_run_directory(out, resume, overwrite)
            states.append(load_checkpoint(latest, cfg.to_dict()) if resume and not overwrite and latest.exists()
                          else None)
        if resume and any(s is None for s in states) and any(s is not None for s in states):
            raise RunDirectoryError("resume: some members have checkpoints and others not; resume them separately.")
        trainer = EnsembleTrainer(cfgs, outs, device, datas=datas, progress=progress, mode=mode)
        for cfg, out, state in zip(cfgs, outs, states):
            if overwrite:
                _clear_run(out)       # only now: the new runs' config, data and weights are resolved
            for folder in (out, out / "checkpoints", out / "samples"):
                remove_stale_temp_files(folder)
            atomic_write_text(out / "config.json", cfg.to_json() + "\n")
            if state is None:
                for name in ("log.csv", "policy.csv"):
                    (out / name).unlink(missing_ok=True)
        if any(s is not None for s in states):
            trainer.load_member_state_dicts(states)
            for out, state in zip(outs, states):
                restore_missing_snapshot(out / "checkpoints", state)
                truncate_logs(out, trainer.iteration)
                if trainer.iteration < trainer.cfg.iterations:
                    (out / "metrics.json").unlink(missing_ok=True)
        trainer.fit()
        return trainer
