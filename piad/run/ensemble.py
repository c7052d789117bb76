"""Batched one-class ensembles: K independent PIAD models trained in one process (issue #6).

Typical uses: all classes of a benchmark, or all runs of one class. The K members share the architecture (every
config key except the member keys below must agree) but nothing else: each has its own training images and
:class:`~piad.run.training.IndexSampler`, its own four networks, its own Adam moments, its own weight policies
(lambda_E, lambda_G per member) and its own noise generator. Member k is initialised exactly like
``piad.run.training.Trainer(configs[k])`` (same seeding order, same sampler / noise / display seeds), so a batched
run reproduces K separate runs up to floating-point rounding (tests/test_ensemble.py checks weights and ROC AUCs).

How it is batched: the parameters of the K copies of each network are stacked along a new leading dimension
(:class:`piad.run.stacked.StackedModule`, ``torch.func.stack_module_state``) and the networks are evaluated with
``torch.func.functional_call`` under ``torch.vmap`` (convolutions become grouped convolutions, linear layers batched
matmuls). ``mode="loop"`` evaluates the members one after the other on the same stacked parameters (a fallback
that needs no vmap; same results). Losses and gradients are those of the Trainer: :mod:`piad.model.objective`
with K stacked members (the members touch disjoint slices of the stacked parameters, so
d(sum_k L_k)/d theta_k = dL_k/d theta_k; `fused_eg=False` takes two passes through E on every iteration). One Adam
over stacked tensors equals K Adams because Adam, including its L2 weight decay, is elementwise and all members
take their steps together (same step count).

The frozen VGG of the perceptual distance is shared (one big batch) when all members resolve to identical VGG
weights and statistics (a weights file or ImageNet); with ``vgg_weights="random"`` (seeded per member) each member
gets its own VGG, evaluated under vmap as well.

Each member's run directory has the layout of :mod:`piad.run.rundir` (checkpoints/latest.pt in the Trainer's
format), so ``piad.run.evaluation.evaluate`` and ``AnomalyScorer.from_checkpoint`` work unchanged, and a member
can even be resumed alone with ``piad train --resume``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from piad.data import OneClassData, load_for_config
from piad.errors import ConfigError, PiadError, RunDirectoryError
from piad.model.networks import PIADNetworks
from piad.model.objective import DivergenceWatch, Members, WeightRule
from piad.model.weighting import GradientNormalizingWeights, weight_indices
from piad.run import fitloop
from piad.run.captured import resolve_step_mode
from piad.run.checkpoint import global_rng_state, load_checkpoint, restore_missing_snapshot, save_run_checkpoints
from piad.run.config import ExperimentConfig
from piad.run.distance import make_distance
from piad.run.memory import check_training_memory
from piad.run.rundir import (
    RunLock,
    append_log_row,
    append_policy_rows,
    check_run_directory,
    discard_overwrite,
    latest_checkpoint,
    overwrite_beside,
    prepare_run,
    recover_overwrite,
    save_sample_grid,
    write_diverged,
)
from piad.run.stacked import DistanceFeatures, StackedModule, member_adam_state, same_state, stack_adam_states
from piad.run.steps import AlternatingSteps
from piad.run.training import (
    FEATURE_CACHE_LIMIT_BYTES,
    MAP_SCALE_IMAGES,
    IndexSampler,
    anomaly_map_scale,
    resolve_device,
    seed_everything,
)

# config keys that may differ between members (everything else defines the shared architecture/schedule)
MEMBER_KEYS = {"normal_class", "run", "seed", "split_seed", "data_root", "download"}


def _check_compatible(configs: Sequence[ExperimentConfig]) -> None:
    ref = configs[0].to_dict()
    for i, c in enumerate(configs[1:], 1):
        d = c.to_dict()
        diff = sorted(k for k in ref if k not in MEMBER_KEYS and ref[k] != d[k])
        if diff:
            raise ConfigError(
                f"ensemble member {i} differs from member 0 in {diff}; members may differ only in "
                f"{sorted(MEMBER_KEYS)} (architecture, schedule and distance must be shared)."
            )


class EnsembleTrainer(AlternatingSteps):
    """K PIAD models with stacked parameters, trained in lock-step (see the module docstring)."""

    def __init__(
        self,
        configs: Sequence[ExperimentConfig],
        out_dirs,
        device="cpu",
        datas: Sequence[OneClassData] | None = None,
        progress: bool = False,
        mode: str = "vmap",
        fused_eg: bool = True,
        cuda_graph: bool | None = None,
    ):
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
                raise ConfigError(
                    f"data images have shape {tuple(d.train.shape[1:])} but the config expects "
                    f"(channels, image_size, image_size) = {expected}."
                )
        self.datas = datas
        # -- per member, in the Trainer's order: seed, networks, distance, policies, sampler, noise, display
        nets, dists, self.samplers, self.noises, self.display_z, self.display_x = [], [], [], [], [], []
        self.policy_e, self.policy_g = [], []
        for c, d in zip(self.cfgs, datas, strict=True):
            seed = c.resolved_seed()
            seed_everything(seed)
            nets.append(PIADNetworks(c).to(dev))
            dists.append(make_distance(c, seed).to(dev))
            self.policy_e.append(
                GradientNormalizingWeights(c.weight_policy, c.lambda_e, c.policy_history, c.policy_ema).to(dev)
            )
            self.policy_g.append(
                GradientNormalizingWeights(c.weight_policy, c.lambda_g, c.policy_history, c.policy_ema).to(dev)
            )
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
        self.shared_distance = same_state(dists)
        self.vfeatures = (
            None if self.shared_distance else StackedModule([DistanceFeatures(d) for d in dists], mode, trainable=False)
        )
        adam = dict(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        if dev.type == "cuda":
            adam["fused"] = True
        self.opt_eg = torch.optim.Adam(self.E.params + self.G.params, lr=cfg.lr_eg, **adam)
        self.opt_dx = torch.optim.Adam(self.DX.params, lr=cfg.lr_d, **adam)
        self.opt_dz = torch.optim.Adam(self.DZ.params, lr=cfg.lr_d, **adam)
        self.members = Members.stacked(self.noises)
        self.rule = WeightRule(
            self.policy_e, self.policy_g, weight_indices(nets[0].encoder), weight_indices(nets[0].generator)
        )
        # all members' training images in one tensor; a member's sampler indices are shifted by its offset
        sizes = [d.train.shape[0] for d in datas]
        self.offsets = torch.tensor([0] + sizes[:-1], device=dev).cumsum(0)
        self.train_x = torch.cat([d.train for d in datas]).to(dev)
        self.train_f = self._feature_cache() if cfg.cache_features else None
        self.iteration = 0
        self.elapsed = 0.0
        self.watch = DivergenceWatch(self.members, dev)
        self._last: dict[str, torch.Tensor] = {}
        self.diverged: dict[int, str] = {}
        self.step_mode = resolve_step_mode(cuda_graph, dev)  # piad.run.captured

    # -- distance -----------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) for x [K, B, C, H, W] -> [K*B, ...] (each member's own VGG when they differ)."""
        if self.shared_distance:
            return self.distance.features(x.flatten(0, 1))
        return self.vfeatures(x).flatten(0, 1)

    @torch.no_grad()
    def _feature_cache(self) -> torch.Tensor | None:
        probe = self.distance.features(self.train_x[:1])
        per_image = probe[0].numel() * probe.element_size()
        if max(d.train.shape[0] for d in self.datas) * per_image > FEATURE_CACHE_LIMIT_BYTES:
            return None
        if self.shared_distance:
            return torch.cat([self.distance.features(b) for b in self.train_x.split(256)])
        out, start = [], 0
        for k, d in enumerate(self.datas):
            xs = self.train_x[start : start + d.train.shape[0]]
            start += d.train.shape[0]
            out.append(torch.cat([self.vfeatures.member(k, b) for b in xs.split(256)]))
        return torch.cat(out)

    def reconstruction_loss(self, x, idx, rec) -> torch.Tensor:
        """Per-member mean distance (the configured one), shape [K]."""
        fx = self.train_f[idx] if self.train_f is not None else self.features(x)
        return self.members.mean(self.distance.compare(fx, self.features(rec)))

    # -- random streams -------------------------------------------------------------------------------------------
    def _batch(self):
        idx = torch.cat([s.next() for s in self.samplers]).view(self.k, -1)
        idx = (idx + self.offsets[:, None]).flatten()
        return self.train_x[idx].view(self.k, self.cfg.batch_size, *self.train_x.shape[1:]), idx

    def _z(self) -> torch.Tensor:
        return torch.stack(
            [torch.randn(self.cfg.batch_size, *self.latent_shape, generator=g, device=self.device) for g in self.noises]
        )

    # -- the two steps (piad.run.steps over piad.model.objective) ------------------------------------------------
    def modules(self):
        return self.E, self.G, self.DX, self.DZ

    def eg_params(self):
        return self.E.params, self.G.params

    # -- per-member state, in piad.run.training.Trainer's checkpoint format -----------------------------------------
    def member_state_dict(self, k: int) -> dict:
        return {
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "config": self.cfgs[k].to_json(),
            "networks": {
                "encoder": self.E.member_state_dict(k),
                "generator": self.G.member_state_dict(k),
                "image_critic": self.DX.member_state_dict(k),
                "latent_critic": self.DZ.member_state_dict(k),
            },
            "optimizers": {
                "eg": member_adam_state(self.opt_eg, k),
                "dx": member_adam_state(self.opt_dx, k),
                "dz": member_adam_state(self.opt_dz, k),
            },
            "policy": {"e": self.policy_e[k].state_dict(), "g": self.policy_g[k].state_dict()},
            "rng": {
                "global": global_rng_state(),
                "sampler": self.samplers[k].state_dict(),
                "noise": self.noises[k].get_state(),
            },
        }

    def load_member_state_dicts(self, states: Sequence[dict]) -> None:
        """Resume: every member from its own Trainer-format checkpoint (all at the same iteration)."""
        try:
            its = {int(s["iteration"]) for s in states}
            if len(its) != 1:
                raise RunDirectoryError(
                    f"ensemble members are at different iterations {sorted(its)}; resume them "
                    "separately with `piad train --resume`."
                )
            for k, s in enumerate(states):
                for stacked, key in (
                    (self.E, "encoder"),
                    (self.G, "generator"),
                    (self.DX, "image_critic"),
                    (self.DZ, "latent_critic"),
                ):
                    stacked.load_member_state_dict(k, s["networks"][key])
                self.policy_e[k].load_state_dict(s["policy"]["e"], self.device)
                self.policy_g[k].load_state_dict(s["policy"]["g"], self.device)
                self.samplers[k].load_state_dict(s["rng"]["sampler"])
                self.noises[k].set_state(s["rng"]["noise"])
            for opt, key in ((self.opt_eg, "eg"), (self.opt_dx, "dx"), (self.opt_dz, "dz")):
                opt.load_state_dict(stack_adam_states([s["optimizers"][key] for s in states]))
            self.iteration = its.pop()
            self.elapsed = max(float(s["elapsed"]) for s in states)
            self._static_step = None  # piad.run.captured: static copies are taken again from the loaded state
        except PiadError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            from piad.errors import CheckpointError

            raise CheckpointError(
                f"a member's checkpoint lacks the state needed to resume training ({type(e).__name__}: {e}); resume "
                "the runs separately with `piad train --resume`, or train again with --overwrite."
            ) from None

    def save(self, k: int) -> None:
        dev = self.display_x[k].device
        scale = anomaly_map_scale(
            lambda b: self.G.member(k, self.E.member(k, b)),
            self.member_distances[k],
            self.datas[k].train[:MAP_SCALE_IMAGES].to(dev),
        )
        if not math.isfinite(scale["hi"]):  # finite weights that no longer reconstruct anything: diverged
            self.diverged[k] = f"training diverged at iteration {self.iteration}: anomaly map = {scale['hi']}"
            write_diverged(self.outs[k], self.diverged[k], self.iteration, "anomaly map of the training images")
            return
        save_run_checkpoints(self.outs[k], {**self.member_state_dict(k), "map_scale": scale})

    # -- logs and samples ---------------------------------------------------------------------------------------
    def _log_rows(self) -> None:
        vals = {key: v.detach().float().cpu().tolist() for key, v in self._last.items()}
        for k, out in enumerate(self.outs):
            if k not in self.diverged:
                append_log_row(
                    out,
                    {
                        "iteration": self.iteration,
                        "seconds": round(self.elapsed, 3),
                        **{key: v[k] for key, v in vals.items()},
                    },
                )

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
        for k, bad in enumerate(self.watch.report()):
            if bad is not None and k not in self.diverged:
                b, name, value = bad
                self.diverged[k] = f"training diverged at iteration {b}: {name} = {value}"
                write_diverged(self.outs[k], self.diverged[k], b, name)

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
        live = [str(latest_checkpoint(o)) for k, o in enumerate(self.outs) if k not in self.diverged]
        return ", ".join(live) if live else "(every member diverged; nothing saved)"

    def fit(self) -> None:
        """Train all members to cfg.iterations (piad.run.fitloop.fit: logs, samples, checkpoints, SIGINT/SIGTERM)."""
        fitloop.fit(self)


def train_ensemble(
    configs: Sequence[ExperimentConfig],
    out_dirs,
    device="cpu",
    datas: Sequence[OneClassData] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    mode: str = "vmap",
    cuda_graph: bool | None = None,
) -> EnsembleTrainer:
    """Train K PIAD models together; member k's run directory is `out_dirs[k]` (layout of piad.run.training.train).

    Refuses directories holding results or checkpoints unless `resume` (all members must be at the same
    iteration) or `overwrite`. Members that diverge get a "diverged" metrics.json; the others finish. Evaluate
    each member afterwards with ``piad.run.evaluation.evaluate(out_dir)``.
    """
    from contextlib import ExitStack

    outs = [Path(o) for o in out_dirs]
    cfgs = [c.validate().with_absolute_paths() for c in configs]
    if cfgs:
        check_training_memory(cfgs[0], resolve_device(device), members=len(cfgs))  # absurd sizes: one line
    with ExitStack() as stack:
        for out in outs:
            stack.enter_context(RunLock(out))
            recover_overwrite(out)
        states = []
        for cfg, out in zip(cfgs, outs, strict=True):
            latest = latest_checkpoint(out)
            check_run_directory(out, resume, overwrite)
            states.append(
                load_checkpoint(latest, cfg.to_dict()) if resume and not overwrite and latest.exists() else None
            )
        if resume and any(s is None for s in states) and any(s is not None for s in states):
            raise RunDirectoryError("resume: some members have checkpoints and others not; resume them separately.")
        # with overwrite, each new run is trained beside the old one, which it replaces only once it has finished
        works = [stack.enter_context(overwrite_beside(out, overwrite)) for out in outs]
        trainer = EnsembleTrainer(cfgs, works, device, datas=datas, progress=progress, mode=mode, cuda_graph=cuda_graph)
        resumed = any(s is not None for s in states)
        if resumed:
            trainer.load_member_state_dicts(states)
        for cfg, out, state in zip(cfgs, works, states, strict=True):
            # only now, with the new runs' config, data and weights resolved, is anything written
            prepare_run(out, cfg.to_json(), overwrite, trainer.iteration if resumed else None, cfg.iterations)
            if resumed:
                restore_missing_snapshot(out, state)
        trainer.fit()
        for k in trainer.diverged:
            if works[k] != outs[k]:  # a new run that diverged does not replace the old one
                discard_overwrite(outs[k])
    trainer.outs = outs
    return trainer
