"""Training loop: n_dis critic steps, then one E+G step with the weighted reconstruction loss (book: Method >
Training, spec-iteration).

A run directory holds `config.json` (resolved config), `checkpoints/latest.pt` (full resumable state, written
atomically), `checkpoints/iter_*.pt` (weight snapshots), `log.csv` (losses, lambda_E, lambda_G), `policy.csv`
(per-layer gradient stds of the weight rule), `samples/*.png` (rows: G(z), x, G(E(x))).
"""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import autograd

from piad.run import fitloop
from piad.model.adversarial import adversarial_loss, critic_loss
from piad.run.checkpoint import (global_rng_state, load_checkpoint, restore_missing_snapshot, save_run_checkpoints,
                             set_global_rng_state, short_error)
from piad.run.config import ExperimentConfig, load_config
from piad.data import OneClassData, check_benchmark_class, load_for_config
from piad.errors import ConfigError, RunDirectoryError, TrainingDiverged
from piad.errors import TrainingInterrupted  # noqa: F401  (re-exported: piad.run.training.TrainingInterrupted)
from piad.model.networks import PIADNetworks
from piad.run.distance import make_distance
from piad.run.runio import RunLock, atomic_write_bytes, atomic_write_json, atomic_write_text, io_errors, \
    remove_stale_temp_files
from piad.model.weighting import GradientNormalizingWeights

LOG_COLUMNS = ["iteration", "seconds", "critic_x", "critic_z", "wasserstein_x", "wasserstein_z", "gp_x", "gp_z",
               "adv_e", "adv_g", "rec", "lambda_e", "lambda_g"]
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
        raise ConfigError(f"device={device!r} is not a torch device: use 'cpu', 'cuda', 'cuda:0', 'mps' or "
                          "'auto'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
    return dev


class IndexSampler:
    """Batches of training indices: seeded random permutations per epoch, incomplete last batches dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: Optional[torch.Tensor] = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.batch_size > self.perm.numel():
            reps = max(1, math.ceil(self.batch_size / self.n))
            self.perm = torch.cat([torch.randperm(self.n, generator=self.generator) for _ in range(reps)]
                                  ).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "pos": self.pos,
                "perm": None if self.perm is None else self.perm.cpu()}

    def load_state_dict(self, s: dict) -> None:
        self.generator.set_state(s["generator"])
        self.pos = int(s["pos"])
        self.perm = None if s["perm"] is None else s["perm"].to(self.device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


class Trainer:
    """Holds the networks, optimisers, weight policies and random streams of one run."""

    def __init__(self, cfg: ExperimentConfig, out_dir, device="cpu", data: Optional[OneClassData] = None,
                 progress: bool = True, channels_last: bool = False):
        self.cfg = cfg.validate()
        self.out = Path(out_dir)
        self.device = resolve_device(device)
        self.progress = progress
        self.data = data if data is not None else load_for_config(cfg)
        expected = (cfg.channels, cfg.image_size, cfg.image_size)
        if tuple(self.data.train.shape[1:]) != expected:
            raise ConfigError(f"data images have shape {tuple(self.data.train.shape[1:])} but the config expects "
                              f"(channels, image_size, image_size) = {expected}.")
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
        self.weight_idx_e = _weight_indices(E)
        self.weight_idx_g = _weight_indices(G)
        self.policy_e = GradientNormalizingWeights(cfg.weight_policy, cfg.lambda_e, cfg.policy_history,
                                                   cfg.policy_ema).to(self.device)
        self.policy_g = GradientNormalizingWeights(cfg.weight_policy, cfg.lambda_g, cfg.policy_history,
                                                   cfg.policy_ema).to(self.device)
        self.train_x = self.data.train.to(self.device)
        self.sampler = IndexSampler(self.train_x.shape[0], cfg.batch_size, seed + 1, self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(seed + 2)
        g = torch.Generator().manual_seed(seed + 3)
        self.display_z = torch.randn(8, *self.nets.latent_shape, generator=g).to(self.device)
        self.display_x = self.data.train[torch.randperm(len(self.data.train), generator=g)[:8]].to(self.device)
        self.iteration = 0
        self.elapsed = 0.0
        self.saved_iteration: Optional[int] = None     # iteration of the last checkpoint written or resumed
        self.train_f = self._feature_cache() if cfg.cache_features else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True      # fixed shapes: let cuDNN pick the fastest algorithms
        if channels_last:                              # NHWC: faster oneDNN convolutions/pooling on CPU
            cl = torch.channels_last
            self.nets.to(memory_format=cl)
            self.distance.to(memory_format=cl)
            self.train_x = self.train_x.contiguous(memory_format=cl)
            if self.train_f is not None and self.train_f.dim() == 4:
                self.train_f = self.train_f.contiguous(memory_format=cl)
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._first_bad_values: Optional[torch.Tensor] = None
        self._last: dict[str, torch.Tensor] = {}

    # -- building blocks --------------------------------------------------------------------------------------
    def modules(self):
        n = self.nets
        return n.encoder, n.generator, n.image_critic, n.latent_critic

    @torch.no_grad()
    def _feature_cache(self) -> Optional[torch.Tensor]:
        """f(x) of every training image, computed once: the real images never change during training."""
        probe = self.distance.features(self.train_x[:1])
        size = probe[0].numel() * probe.element_size() * self.train_x.shape[0]
        if size > FEATURE_CACHE_LIMIT_BYTES:
            return None
        return torch.cat([self.distance.features(b) for b in self.train_x.split(256)])

    def _batch(self):
        idx = self.sampler.next()
        return self.train_x[idx], idx

    def _z(self) -> torch.Tensor:
        return torch.randn(self.cfg.batch_size, *self.nets.latent_shape, generator=self.noise, device=self.device)

    def critic_step(self) -> None:
        cfg, (E, G, DX, DZ) = self.cfg, self.modules()
        x, _ = self._batch()
        z = self._z()
        with torch.no_grad():
            fake_x, fake_z = G(z), E(x)
        for critic, opt, real, fake, tag in ((DX, self.opt_dx, x, fake_x, "x"), (DZ, self.opt_dz, z, fake_z, "z")):
            loss, parts = critic_loss(critic, real, fake, cfg.gp_weight, cfg.eps_drift, generator=self.noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self._last[f"critic_{tag}"] = loss.detach()
            self._last[f"wasserstein_{tag}"] = parts["wasserstein"]
            self._last[f"gp_{tag}"] = parts["gradient_penalty"]

    def reconstruction_loss(self, x, idx, rec) -> torch.Tensor:
        if self.train_f is not None:
            return self.distance.from_features(self.train_f[idx], rec).mean()
        return self.distance(x, rec).mean()

    def encoder_generator_step(self, iteration: int) -> None:
        E, G, DX, DZ = self.modules()
        x, idx = self._batch()
        z = self._z()
        fake_x, fake_z = G(z), E(x)
        rec = G(fake_z)
        adv_g, adv_e = adversarial_loss(DX, fake_x), adversarial_loss(DZ, fake_z)
        rec_loss = self.reconstruction_loss(x, idx, rec)
        if iteration % self.cfg.policy_every == 0:
            self._eg_grads_with_policy(iteration, adv_e, adv_g, rec_loss)
        else:
            self._eg_grads_fused(fake_z, adv_e, adv_g, rec_loss)
        self.opt_eg.step()
        self._last.update(adv_e=adv_e.detach(), adv_g=adv_g.detach(), rec=rec_loss.detach(),
                          lambda_e=self.policy_e.weight, lambda_g=self.policy_g.weight)

    def _eg_grads_fused(self, fake_z, adv_e, adv_g, rec_loss) -> None:
        """lambda * dL_rec + dL_adv with one backward pass through E.

        The two E terms are summed at the latent E(x) and pushed through E once; by linearity this is the gradient
        of the two-pass recipe (up to float rounding).
        """
        lam_e, lam_g = self.policy_e.weight, self.policy_g.weight
        g_fz_rec, *g_rec_g = autograd.grad(rec_loss, [fake_z] + self.params_g, retain_graph=True)
        (g_fz_adv,) = autograd.grad(adv_e, fake_z, retain_graph=True)
        g_adv_g = list(autograd.grad(adv_g, self.params_g))
        g_e = autograd.grad(fake_z, self.params_e, grad_outputs=g_fz_rec * lam_e + g_fz_adv)
        g_g = list(torch._foreach_mul(g_rec_g, lam_g))
        torch._foreach_add_(g_g, g_adv_g)
        for p, gr in zip(self.params_e + self.params_g, list(g_e) + g_g):
            p.grad = gr

    def _eg_grads_with_policy(self, iteration: int, adv_e, adv_g, rec_loss) -> None:
        """Separate gradients of L_rec and L_adv (the weight rule needs both), rule update, combination."""
        ne = len(self.params_e)
        g_rec = autograd.grad(rec_loss, self.params_e + self.params_g, retain_graph=True)
        g_adv_e = autograd.grad(adv_e, self.params_e)
        g_adv_g = autograd.grad(adv_g, self.params_g)
        g_rec_e, g_rec_g = g_rec[:ne], g_rec[ne:]
        for policy, widx, ga, gr in ((self.policy_e, self.weight_idx_e, g_adv_e, g_rec_e),
                                     (self.policy_g, self.weight_idx_g, g_adv_g, g_rec_g)):
            policy.step([ga[i] for i in widx], [gr[i] for i in widx])
        self._log_policy(iteration)
        lam_e, lam_g = self.policy_e.weight, self.policy_g.weight
        for params, g_r, g_a, lam in ((self.params_e, g_rec_e, g_adv_e, lam_e), (self.params_g, g_rec_g, g_adv_g, lam_g)):
            g = list(torch._foreach_mul(list(g_r), lam))
            torch._foreach_add_(g, list(g_a))
            for p, gr in zip(params, g):
                p.grad = gr

    def train_iteration(self) -> None:
        it = self.iteration + 1
        for _ in range(self.cfg.n_dis):
            self.critic_step()
        self.encoder_generator_step(it)
        values = torch.stack([v.float() for v in self._last.values()])
        newly_bad = ~torch.isfinite(values).all() & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, torch.full_like(self._first_bad, it), self._first_bad)
        self._first_bad_values = values if self._first_bad_values is None else \
            torch.where(newly_bad, values, self._first_bad_values)
        self.iteration = it

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        E, G, DX, DZ = self.modules()
        return {
            "iteration": self.iteration, "elapsed": self.elapsed, "config": self.cfg.to_json(),
            "networks": {"encoder": E.state_dict(), "generator": G.state_dict(), "image_critic": DX.state_dict(),
                         "latent_critic": DZ.state_dict()},
            "optimizers": {"eg": self.opt_eg.state_dict(), "dx": self.opt_dx.state_dict(),
                           "dz": self.opt_dz.state_dict()},
            "policy": {"e": self.policy_e.state_dict(), "g": self.policy_g.state_dict()},
            "rng": {"global": global_rng_state(), "sampler": self.sampler.state_dict(),
                    "noise": self.noise.get_state()},
        }

    def load_state_dict(self, s: dict) -> None:
        E, G, DX, DZ = self.modules()
        try:
            for m, k in ((E, "encoder"), (G, "generator"), (DX, "image_critic"), (DZ, "latent_critic")):
                m.load_state_dict(s["networks"][k])
            self.opt_eg.load_state_dict(s["optimizers"]["eg"])
            self.opt_dx.load_state_dict(s["optimizers"]["dx"])
            self.opt_dz.load_state_dict(s["optimizers"]["dz"])
        except (KeyError, RuntimeError, ValueError) as e:
            from piad.errors import CheckpointError
            raise CheckpointError(f"checkpoint does not fit the networks of this config ({short_error(e)}); use "
                                  "the run's own checkpoint or train again with --overwrite.") from None
        self.policy_e.load_state_dict(s["policy"]["e"], self.device)
        self.policy_g.load_state_dict(s["policy"]["g"], self.device)
        set_global_rng_state(s["rng"]["global"])
        self.sampler.load_state_dict(s["rng"]["sampler"])
        self.noise.set_state(s["rng"]["noise"])
        self.iteration, self.elapsed = int(s["iteration"]), float(s["elapsed"])
        self.saved_iteration = self.iteration

    def save(self) -> None:
        """A weights-only snapshot iter_XXXXXXX.pt and latest.pt (full state), atomically, with the map scale."""
        self._check_weights()
        E, G = self.nets.encoder, self.nets.generator
        state = {**self.state_dict(), "map_scale": anomaly_map_scale(lambda b: G(E(b)), self.distance, self.train_x)}
        save_run_checkpoints(self.out / "checkpoints", state)
        self.saved_iteration = self.iteration

    def kept_checkpoint(self) -> Optional[str]:
        """Where the last good checkpoint is, for TrainingDiverged (None if there is none)."""
        if self.saved_iteration is None:
            return None
        return f"{self.out / 'checkpoints' / 'latest.pt'}, iteration {self.saved_iteration}"

    def _check_weights(self) -> None:
        for name, p in self.nets.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(self.iteration, f"weight {name}", float("nan"), self.kept_checkpoint())

    def _check_losses(self) -> None:
        """Raise TrainingDiverged naming the first iteration and loss that became non-finite (one sync)."""
        bad = int(self._first_bad)
        if bad >= 0:
            vals = dict(zip(self._last, self._first_bad_values.tolist()))
            name = next(k for k, v in vals.items() if not math.isfinite(v))
            raise TrainingDiverged(bad, name, vals[name], self.kept_checkpoint())

    # -- logging ------------------------------------------------------------------------------------------------
    def _log_row(self) -> None:
        append_log_row(self.out, {"iteration": self.iteration, "seconds": round(self.elapsed, 3),
                                  **{k: float(v) for k, v in self._last.items()}})

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
        return {"rec": f"{float(self._last['rec']):.4f}", "lam_e": f"{float(self.policy_e.weight):.3g}",
                "lam_g": f"{float(self.policy_g.weight):.3g}"}

    def checkpoint_hint(self) -> str:
        return str(self.out / "checkpoints" / "latest.pt")

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


def save_sample_grid(out: Path, iteration: int, grid: torch.Tensor) -> None:
    """`out/samples/iter_XXXXXXX.png` and `latest.png` (rows: G(z), x, G(E(x))), written atomically."""
    import io
    from torchvision.utils import save_image
    buf = io.BytesIO()
    save_image(grid.cpu(), buf, format="png", nrow=8, padding=1)
    for name in (f"iter_{iteration:07d}.png", "latest.png"):
        atomic_write_bytes(out / "samples" / name, buf.getvalue())


def append_log_row(out: Path, row: dict) -> None:
    """One row of `out/log.csv` (LOG_COLUMNS; the header when the file is new)."""
    path = out / "log.csv"
    new = not path.exists()
    with io_errors(path), open(path, "a", newline="") as f:
        w = csv.DictWriter(f, LOG_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in LOG_COLUMNS})


def append_policy_rows(out: Path, iteration: int, policy_e, policy_g) -> None:
    """The weight rule's latest per-layer gradient stds and lambdas of E and G, appended to `out/policy.csv`."""
    path = out / "policy.csv"
    new = not path.exists()
    with io_errors(path), open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["iteration", "network", "layer", "adv_std", "rec_std", "lambda"])
        for name, pol in (("E", policy_e), ("G", policy_g)):
            a, r = pol.adv[-1].tolist(), pol.rec[-1].tolist()
            lam = float(pol.weight)
            for layer, (ai, ri) in enumerate(zip(a, r)):
                w.writerow([iteration, name, layer, f"{ai:.6g}", f"{ri:.6g}", f"{lam:.6g}"])


def truncate_logs(out: Path, iteration: int) -> None:
    """After a resume, drop log rows written after the checkpoint's iteration (they will be written again)."""
    for name in ("log.csv", "policy.csv"):
        path = out / name
        if path.exists():
            lines = path.read_text().splitlines()
            kept = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= iteration]
            atomic_write_text(path, "\n".join(kept) + "\n")


def _weight_indices(module) -> list[int]:
    return [i for i, (n, p) in enumerate(module.named_parameters()) if n.endswith("weight") and p.dim() > 1]


def train(cfg: ExperimentConfig, out_dir, device="cpu", resume: bool = False, overwrite: bool = False,
          data: Optional[OneClassData] = None, progress: bool = True, channels_last: bool = False) -> Trainer:
    """Train one PIAD model into `out_dir` (see module docstring); returns the finished Trainer.

    A directory with finished results (metrics.json) or a checkpoint is refused unless `resume` or `overwrite`.
    With `overwrite`, nothing is removed before the new run's config, data and weights are all resolved. Paths in
    the config are stored absolute.
    """
    out = Path(out_dir)
    cfg = cfg.validate().with_absolute_paths()
    if data is None:
        check_benchmark_class(cfg.benchmark, cfg.normal_class)   # refuse before any file is written
    with RunLock(out):
        latest = out / "checkpoints" / "latest.pt"
        check_run_directory(out, resume, overwrite)
        state = load_checkpoint(latest, cfg.to_dict()) if resume and not overwrite and latest.exists() else None
        if state is not None and int(state["iteration"]) > cfg.iterations:
            raise ConfigError(f"iterations={cfg.iterations} is below the checkpoint's iteration "
                              f"{int(state['iteration'])}; pass at least that many.")
        trainer = Trainer(cfg, out, device, data=data, progress=progress, channels_last=channels_last)
        if overwrite:
            _clear_run(out)           # only now: the new run's config, data and weights are resolved
        for folder in (out, out / "checkpoints", out / "samples"):
            remove_stale_temp_files(folder)
        atomic_write_text(out / "config.json", cfg.to_json() + "\n")
        if state is not None:
            trainer.load_state_dict(state)
            restore_missing_snapshot(out / "checkpoints", state)
            truncate_logs(out, trainer.iteration)
            if trainer.iteration < cfg.iterations:
                (out / "metrics.json").unlink(missing_ok=True)   # results of a shorter run are superseded
        else:
            for name in ("log.csv", "policy.csv"):
                (out / name).unlink(missing_ok=True)
        try:
            trainer.fit()
        except TrainingDiverged as e:
            atomic_write_json(out / "metrics.json", {"status": "diverged", "error": str(e), "iteration": e.iteration,
                                                     "what": e.what, "roc_auc": None})
            raise
        return trainer


def check_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """RunDirectoryError if `out` holds finished results or a checkpoint and neither resume nor overwrite is set."""
    if overwrite:
        return
    if _has_results(out) and not resume:
        raise RunDirectoryError(f"run directory {str(out)!r} already holds finished results (metrics.json). "
                                "Pass overwrite=True / --overwrite to replace them, or choose another --out.")
    if (out / "checkpoints" / "latest.pt").exists() and not resume:
        raise RunDirectoryError(f"run directory {str(out)!r} already holds a checkpoint. Pass resume=True / "
                                "--resume to continue it, overwrite=True / --overwrite to start again, or "
                                "choose another --out.")


def _has_results(out: Path) -> bool:
    """True if the run directory holds evaluated results (a diverged run's metrics do not count)."""
    try:
        return json.loads((out / "metrics.json").read_text()).get("status") != "diverged"
    except (OSError, ValueError):
        return False


def _clear_run(out: Path) -> None:
    import shutil
    with io_errors(out, "clear the run directory"):
        for name in ("checkpoints", "samples"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("metrics.json", "scores.csv", "log.csv", "policy.csv", "config.json"):
            (out / name).unlink(missing_ok=True)


def load_run_config(out_dir) -> ExperimentConfig:
    path = Path(out_dir) / "config.json"
    if not path.exists():
        raise RunDirectoryError(f"{str(out_dir)!r} has no config.json: is it a piad run directory (piad train "
                                "--out DIR)?")
    return load_config(path)


def run_summary(out_dir) -> dict:
    """iteration reached and config of a run directory (for progress displays)."""
    cfg = load_run_config(out_dir)
    latest = Path(out_dir) / "checkpoints" / "latest.pt"
    it = int(load_checkpoint(latest)["iteration"]) if latest.exists() else 0
    return {"iteration": it, "iterations": cfg.iterations, "config": json.loads(cfg.to_json())}
