"""Training one model: n_dis critic steps, then one E+G step with the weighted reconstruction loss (book: Method >
Training, spec-iteration; the math is piad.model.objective with one member).

`train` fills a run directory (layout: piad.run.rundir) with the config, resumable checkpoints, weight snapshots,
the logs and sample grids.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from piad.data import OneClassData, check_benchmark_class, load_for_config
from piad.errors import ConfigError, PiadError, TrainingDiverged
from piad.model.networks import PIADNetworks
from piad.model.objective import DivergenceWatch, Members, WeightRule
from piad.model.weighting import GradientNormalizingWeights, weight_indices
from piad.run import fitloop
from piad.run.captured import resolve_step_mode
from piad.run.checkpoint import (
    global_rng_state,
    load_checkpoint,
    restore_missing_snapshot,
    save_run_checkpoints,
    set_global_rng_state,
    short_error,
)
from piad.run.config import ExperimentConfig
from piad.run.distance import make_distance
from piad.run.memory import check_training_memory
from piad.run.rundir import (
    RunLock,
    append_log_row,
    append_policy_rows,
    check_run_directory,
    latest_checkpoint,
    overwrite_beside,
    prepare_run,
    recover_overwrite,
    save_sample_grid,
    write_diverged,
)
from piad.run.steps import AlternatingSteps

FEATURE_CACHE_LIMIT_BYTES = 4 << 30
# The anomaly maps' colour scale is fixed by the model: its top is this quantile of the per-location errors over
# the first MAP_SCALE_IMAGES training images, computed at every checkpoint and stored in it.
MAP_SCALE_QUANTILE = 0.99
MAP_SCALE_IMAGES = 256


def resolve_device(device) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; anything else is passed to torch.device."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device={device!r} is not a torch device: use 'cpu', 'cuda', 'cuda:0', 'mps' or 'auto'."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
    return dev


class IndexSampler:
    """Batches of training indices: seeded random permutations per epoch, incomplete last batches dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.batch_size > self.perm.numel():
            reps = max(1, math.ceil(self.batch_size / self.n))
            self.perm = torch.cat([torch.randperm(self.n, generator=self.generator) for _ in range(reps)]).to(
                self.device
            )
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "pos": self.pos,
            "perm": None if self.perm is None else self.perm.cpu(),
        }

    def load_state_dict(self, s: dict) -> None:
        self.generator.set_state(s["generator"])
        self.pos = int(s["pos"])
        self.perm = None if s["perm"] is None else s["perm"].to(self.device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer(AlternatingSteps):
    """Holds the networks, optimisers, weight policies and random streams of one run."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir,
        device="cpu",
        data: OneClassData | None = None,
        progress: bool = True,
        channels_last: bool = False,
        bf16: bool = False,
        cuda_graph: bool | None = None,
    ):
        self.cfg = cfg.validate()
        self.out = Path(out_dir)
        self.device = resolve_device(device)
        self.progress = progress
        self.data = data if data is not None else load_for_config(cfg)
        expected = (cfg.channels, cfg.image_size, cfg.image_size)
        if tuple(self.data.train.shape[1:]) != expected:
            raise ConfigError(
                f"data images have shape {tuple(self.data.train.shape[1:])} but the config expects "
                f"(channels, image_size, image_size) = {expected}."
            )
        seed = cfg.resolved_seed()
        seed_everything(seed)
        self.nets = PIADNetworks(cfg).to(self.device)
        self.distance = make_distance(cfg, seed).to(self.device)
        E, G, DX, DZ = self.modules()
        adam = dict(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        if self.device.type == "cuda":
            adam["fused"] = True
        self.params_e, self.params_g = list(E.parameters()), list(G.parameters())
        self.opt_eg = torch.optim.Adam(self.params_e + self.params_g, lr=cfg.lr_eg, **adam)
        self.opt_dx = torch.optim.Adam(DX.parameters(), lr=cfg.lr_d, **adam)
        self.opt_dz = torch.optim.Adam(DZ.parameters(), lr=cfg.lr_d, **adam)
        self.policy_e = GradientNormalizingWeights(
            cfg.weight_policy, cfg.lambda_e, cfg.policy_history, cfg.policy_ema
        ).to(self.device)
        self.policy_g = GradientNormalizingWeights(
            cfg.weight_policy, cfg.lambda_g, cfg.policy_history, cfg.policy_ema
        ).to(self.device)
        self.rule = WeightRule([self.policy_e], [self.policy_g], weight_indices(E), weight_indices(G))
        self.train_x = self.data.train.to(self.device)
        self.sampler = IndexSampler(self.train_x.shape[0], cfg.batch_size, seed + 1, self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(seed + 2)
        self.members = Members.one(self.noise)
        g = torch.Generator().manual_seed(seed + 3)
        self.display_z = torch.randn(8, *self.nets.latent_shape, generator=g).to(self.device)
        self.display_x = self.data.train[torch.randperm(len(self.data.train), generator=g)[:8]].to(self.device)
        self.iteration = 0
        self.elapsed = 0.0
        self.saved_iteration: int | None = None  # iteration of the last checkpoint written or resumed
        self.train_f = self._feature_cache() if cfg.cache_features else None
        self.channels_last = channels_last
        self.bf16 = bf16  # bf16 autocast of the training steps (book: Performance)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest algorithms
        if channels_last:  # NHWC: faster oneDNN convolutions/pooling on CPU
            cl = torch.channels_last
            self.nets.to(memory_format=cl)
            self.distance.to(memory_format=cl)
            self.train_x = self.train_x.contiguous(memory_format=cl)
            if self.train_f is not None and self.train_f.dim() == 4:
                self.train_f = self.train_f.contiguous(memory_format=cl)
        self.watch = DivergenceWatch(self.members, self.device)
        self._last: dict[str, torch.Tensor] = {}
        self.step_mode = resolve_step_mode(cuda_graph, self.device)  # piad.run.captured

    # -- building blocks --------------------------------------------------------------------------------------
    def modules(self):
        n = self.nets
        return n.encoder, n.generator, n.image_critic, n.latent_critic

    def eg_params(self):
        return self.params_e, self.params_g

    @torch.no_grad()
    def _feature_cache(self) -> torch.Tensor | None:
        """f(x) of every training image, computed once: the real images never change during training."""
        probe = self.distance.features(self.train_x[:1])
        size = probe.numel() * probe.element_size() * self.train_x.shape[0]  # probe: one image's features
        if size > FEATURE_CACHE_LIMIT_BYTES:
            return None
        return torch.cat([self.distance.features(b) for b in self.train_x.split(256)])

    def _batch(self):
        idx = self.sampler.next()
        return self.train_x[idx], idx

    def _z(self) -> torch.Tensor:
        return torch.randn(self.cfg.batch_size, *self.nets.latent_shape, generator=self.noise, device=self.device)

    def reconstruction_loss(self, x, idx, rec) -> torch.Tensor:
        if self.train_f is not None:
            return self.distance.from_features(self.train_f[idx], rec).mean()
        return self.distance(x, rec).mean()

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        E, G, DX, DZ = self.modules()
        return {
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "config": self.cfg.to_json(),
            "networks": {
                "encoder": E.state_dict(),
                "generator": G.state_dict(),
                "image_critic": DX.state_dict(),
                "latent_critic": DZ.state_dict(),
            },
            "optimizers": {
                "eg": self.opt_eg.state_dict(),
                "dx": self.opt_dx.state_dict(),
                "dz": self.opt_dz.state_dict(),
            },
            "policy": {"e": self.policy_e.state_dict(), "g": self.policy_g.state_dict()},
            "rng": {
                "global": global_rng_state(),
                "sampler": self.sampler.state_dict(),
                "noise": self.noise.get_state(),
            },
        }

    def load_state_dict(self, s: dict) -> None:
        E, G, DX, DZ = self.modules()
        try:
            for m, k in ((E, "encoder"), (G, "generator"), (DX, "image_critic"), (DZ, "latent_critic")):
                m.load_state_dict(s["networks"][k])
            self.opt_eg.load_state_dict(s["optimizers"]["eg"])
            self.opt_dx.load_state_dict(s["optimizers"]["dx"])
            self.opt_dz.load_state_dict(s["optimizers"]["dz"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            from piad.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint does not fit the networks of this config ({short_error(e)}); use "
                "the run's own checkpoint or train again with --overwrite."
            ) from None
        try:  # the resumable state: a checkpoint without it (a snapshot, an altered file) cannot be resumed
            self.policy_e.load_state_dict(s["policy"]["e"], self.device)
            self.policy_g.load_state_dict(s["policy"]["g"], self.device)
            set_global_rng_state(s["rng"]["global"])
            self.sampler.load_state_dict(s["rng"]["sampler"])
            self.noise.set_state(s["rng"]["noise"])
            self.iteration, self.elapsed = int(s["iteration"]), float(s["elapsed"])
        except PiadError:
            raise
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
            from piad.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint lacks the state needed to resume training ({short_error(e)}, e.g. the random number "
                "generators' key 'rng'); resume from the run's own latest.pt or train again with --overwrite."
            ) from None
        self.saved_iteration = self.iteration
        self._static_step = None  # piad.run.captured: static copies are taken again from the loaded state

    def save(self) -> None:
        """A weights-only snapshot iter_XXXXXXX.pt and latest.pt (full state), atomically, with the map scale."""
        self._check_weights()
        E, G = self.nets.encoder, self.nets.generator
        state = {**self.state_dict(), "map_scale": anomaly_map_scale(lambda b: G(E(b)), self.distance, self.train_x)}
        if not math.isfinite(state["map_scale"]["hi"]):  # finite weights, but they no longer reconstruct anything
            hi = state["map_scale"]["hi"]
            raise TrainingDiverged(self.iteration, "anomaly map of the training images", hi, self.kept_checkpoint())
        save_run_checkpoints(self.out, state)
        self.saved_iteration = self.iteration

    def kept_checkpoint(self) -> str | None:
        """Where the last good checkpoint is, for TrainingDiverged (None if there is none)."""
        if self.saved_iteration is None:
            return None
        return f"{latest_checkpoint(self.out)}, iteration {self.saved_iteration}"

    def _check_weights(self) -> None:
        for name, p in self.nets.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(self.iteration, f"weight {name}", float("nan"), self.kept_checkpoint())

    def _check_losses(self) -> None:
        """Raise TrainingDiverged naming the first iteration and loss that became non-finite (one sync)."""
        (bad,) = self.watch.report()
        if bad is not None:
            raise TrainingDiverged(*bad, self.kept_checkpoint())

    # -- logging ------------------------------------------------------------------------------------------------
    def _log_row(self) -> None:
        append_log_row(
            self.out,
            {
                "iteration": self.iteration,
                "seconds": round(self.elapsed, 3),
                **{k: float(v) for k, v in self._last.items()},
            },
        )

    def _log_policy(self, iteration: int) -> None:
        append_policy_rows(self.out, iteration, self.policy_e, self.policy_g)

    @torch.no_grad()
    def save_samples(self) -> None:
        E, G = self.nets.encoder, self.nets.generator
        grid = torch.cat([G(self.display_z), self.display_x, G(E(self.display_x))]).clamp(-1, 1)
        save_sample_grid(self.out, self.iteration, (grid + 1) / 2)

    # -- the loop (piad.run.fitloop) ----------------------------------------------------------------------------------
    check = _check_losses
    log = _log_row
    checkpoint = save

    def progress_label(self) -> str:
        return f"{self.cfg.benchmark}/{self.cfg.normal_class}/{self.cfg.run}"

    def progress_postfix(self) -> dict:
        return {
            "rec": f"{float(self._last['rec']):.4f}",
            "lam_e": f"{float(self.policy_e.weight):.3g}",
            "lam_g": f"{float(self.policy_g.weight):.3g}",
        }

    def checkpoint_hint(self) -> str:
        return str(latest_checkpoint(self.out))

    def fit(self) -> None:
        """Train to cfg.iterations with logs, samples and checkpoints (piad.run.fitloop.fit)."""
        fitloop.fit(self)


@torch.no_grad()
def anomaly_map_scale(reconstruct, distance, images: torch.Tensor) -> dict:
    """Top of the anomaly maps' colour scale, fixed by the model: the MAP_SCALE_QUANTILE quantile of the
    per-location errors (distance.anomaly_map) of the first MAP_SCALE_IMAGES `images` (training images) and their
    reconstructions `reconstruct(x)`. No random numbers are drawn."""
    x = images[:MAP_SCALE_IMAGES]
    maps = torch.cat([distance.anomaly_map(b, reconstruct(b)).float().flatten().cpu() for b in x.split(64)])
    hi = float(np.quantile(maps.numpy(), MAP_SCALE_QUANTILE))
    return {"hi": hi, "quantile": MAP_SCALE_QUANTILE, "n_images": int(x.shape[0])}


def train(
    cfg: ExperimentConfig,
    out_dir,
    device="cpu",
    resume: bool = False,
    overwrite: bool = False,
    data: OneClassData | None = None,
    progress: bool = True,
    channels_last: bool = False,
    bf16: bool = False,
    cuda_graph: bool | None = None,
) -> Trainer:
    """Train one PIAD model into `out_dir` (see module docstring); returns the finished Trainer.

    A directory with finished results (metrics.json) or a checkpoint is refused unless `resume` or `overwrite`.
    With `overwrite`, nothing is removed before the new run's config, data and weights are all resolved. Paths in
    the config are stored absolute. `cuda_graph`: record the iteration as a CUDA graph (piad.run.captured; None:
    its default, eager until a GPU check shows equality and a gain).
    """
    out = Path(out_dir)
    cfg = cfg.validate().with_absolute_paths()
    check_training_memory(cfg, resolve_device(device))  # absurd sizes: one line before any file is written
    if data is None:
        check_benchmark_class(cfg.benchmark, cfg.normal_class)  # refuse before any file is written
    with RunLock(out):
        recover_overwrite(out)
        latest = latest_checkpoint(out)
        check_run_directory(out, resume, overwrite)
        state = load_checkpoint(latest, cfg.to_dict()) if resume and not overwrite and latest.exists() else None
        if state is not None and int(state["iteration"]) > cfg.iterations:
            raise ConfigError(
                f"iterations={cfg.iterations} is below the checkpoint's iteration "
                f"{int(state['iteration'])}; pass at least that many."
            )
        # with --overwrite, the new run is trained beside the old one, which it replaces only once it has finished
        with overwrite_beside(out, overwrite) as work:
            trainer = Trainer(
                cfg, work, device, data, progress, channels_last=channels_last, bf16=bf16, cuda_graph=cuda_graph
            )
            if state is not None:
                trainer.load_state_dict(state)
            # only now, with the new run's config, data and weights resolved, is anything written
            prepare_run(work, cfg.to_json(), overwrite, None if state is None else trainer.iteration, cfg.iterations)
            if state is not None:
                restore_missing_snapshot(work, state)
            try:
                trainer.fit()
            except TrainingDiverged as e:
                write_diverged(work, str(e), e.iteration, e.what)
                raise
        trainer.out = out
        return trainer
