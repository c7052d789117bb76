"""Baseline for benchmarks/train_speed.py: the authors' per-iteration recipe, re-implemented (not copied).

It uses piad's networks, distance and losses, so the math is that of piad.run.training.Trainer; what differs is how
the work is organised, as described for the authors' public code:

* one model per process;
* training images are kept as uint8 arrays and go through a torch DataLoader every batch: per sample
  PIL image -> (Resize) -> ToTensor -> Normalize(0.5, 0.5), then collated and copied to the device;
* the VGG features of the real batch are recomputed every iteration (no feature cache);
* every loss is read with `.item()` every step for logging (a host synchronisation each time);
* the weight rule's gradient statistics are computed in NumPy on the CPU (`grad.cpu().numpy().std()`), with the
  EMA and the median in NumPy;
* the networks use torch's own layers: nn.AvgPool2d(2) where piad's AvgPool2x2 pools by a depthwise
  convolution on CPU (same values);
* the reconstruction loss is back-propagated with `backward(retain_graph=True)`, the `.grad` of E and G are
  scaled by lambda_E / lambda_G, then the adversarial losses are back-propagated into the same `.grad`
  (which also computes the critics' weight gradients, thrown away at their next step).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import autograd

from piad.model.networks import AvgPool2x2, PIADNetworks
from piad.model.objective import critic_loss
from piad.run.distance import make_distance
from piad.run.training import seed_everything


class _UInt8Images(torch.utils.data.Dataset):
    """uint8 HxW(xC) arrays, converted to PIL and transformed per sample (torchvision-dataset style)."""

    def __init__(self, images_u8: np.ndarray, transform):
        self.images, self.transform = images_u8, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = self.images[i]
        return self.transform(Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB"))


def _to_uint8(train: torch.Tensor, source_size: int) -> np.ndarray:
    """[-1, 1] float images -> uint8 arrays at `source_size` (e.g. 28 for MNIST, resized back to 32 per sample)."""
    x = train
    if source_size != x.shape[-1]:
        x = torch.nn.functional.interpolate(
            x, size=(source_size, source_size), mode="bilinear", align_corners=False, antialias=True
        )
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return u8[..., 0] if u8.shape[-1] == 1 else u8


def _torch_pooling(module: torch.nn.Module) -> None:
    """Swap piad's AvgPool2x2 for torch's nn.AvgPool2d(2), as in the authors' networks."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, AvgPool2x2):
                setattr(parent, name, torch.nn.AvgPool2d(2))


class NumpyWeightPolicy:
    """The gradient-normalising weight rule with its statistics in NumPy (host copies of every gradient)."""

    def __init__(self, history: int, ema: float):
        self.history, self.ema = history, ema
        self.adv: list[np.ndarray] = []
        self.rec: list[np.ndarray] = []
        self.value = 1.0

    def step(self, adv_grads, rec_grads) -> float:
        self.adv.append(np.array([g.cpu().numpy().std() for g in adv_grads]))
        self.rec.append(np.array([g.cpu().numpy().std() for g in rec_grads]))
        self.adv, self.rec = self.adv[-self.history :], self.rec[-self.history :]
        a, r = self._ema(np.stack(self.adv)), self._ema(np.stack(self.rec))
        self.value = float(np.median(a / r))
        return self.value

    def _ema(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        out[0] = x[0]
        for t in range(1, len(x)):
            out[t] = self.ema * x[t] + (1 - self.ema) * out[t - 1]
        return out


class AuthorsStyleTrainer:
    """One model, one process, the authors' per-iteration recipe (see the module docstring)."""

    def __init__(self, cfg, train: torch.Tensor, device, source_size: int | None = None, num_workers: int = 0):
        from torchvision import transforms

        self.cfg, self.device = cfg, torch.device(device)
        seed = cfg.resolved_seed()
        seed_everything(seed)
        self.nets = PIADNetworks(cfg).to(self.device)
        _torch_pooling(self.nets)
        self.distance = make_distance(cfg, seed).to(self.device)
        n = self.nets
        self.E, self.G, self.DX, self.DZ = n.encoder, n.generator, n.image_critic, n.latent_critic
        adam = dict(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.opt_eg = torch.optim.Adam(list(self.E.parameters()) + list(self.G.parameters()), lr=cfg.lr_eg, **adam)
        self.opt_dx = torch.optim.Adam(self.DX.parameters(), lr=cfg.lr_d, **adam)
        self.opt_dz = torch.optim.Adam(self.DZ.parameters(), lr=cfg.lr_d, **adam)
        self.w_e = [p for name, p in self.E.named_parameters() if name.endswith("weight") and p.dim() > 1]
        self.w_g = [p for name, p in self.G.named_parameters() if name.endswith("weight") and p.dim() > 1]
        self.policy_e = NumpyWeightPolicy(cfg.policy_history, cfg.policy_ema)
        self.policy_g = NumpyWeightPolicy(cfg.policy_history, cfg.policy_ema)
        size = cfg.image_size
        src = source_size or size
        tf = [transforms.Resize((size, size))] if src != size else []
        norm = (0.5,) * cfg.channels
        tf += [transforms.ToTensor(), transforms.Normalize(norm, norm)]
        ds = _UInt8Images(_to_uint8(train, src), transforms.Compose(tf))
        self.loader = torch.utils.data.DataLoader(
            ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=num_workers
        )
        self._it = iter(self.loader)
        self.iteration = 0
        self.log: dict[str, float] = {}

    def _batch(self) -> torch.Tensor:
        try:
            x = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            x = next(self._it)
        return x.to(self.device)

    def _z(self) -> torch.Tensor:
        return torch.randn(self.cfg.batch_size, *self.nets.latent_shape, device=self.device)

    def critic_step(self) -> None:
        cfg = self.cfg
        x = self._batch()
        z = self._z()
        fake_x, fake_z = self.G(z).detach(), self.E(x).detach()
        for critic, opt, real, fake, tag in (
            (self.DX, self.opt_dx, x, fake_x, "x"),
            (self.DZ, self.opt_dz, z, fake_z, "z"),
        ):
            loss, parts = critic_loss(critic, real, fake, cfg.gp_weight, cfg.eps_drift)
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.log[f"critic_{tag}"] = loss.item()
            self.log[f"wasserstein_{tag}"] = parts["wasserstein"].item()
            self.log[f"gp_{tag}"] = parts["gradient_penalty"].item()

    def encoder_generator_step(self) -> None:
        cfg, it = self.cfg, self.iteration + 1
        x = self._batch()
        z = self._z()
        fake_x, fake_z = self.G(z), self.E(x)
        rec = self.G(fake_z)
        adv_g, adv_e = -self.DX(fake_x).mean(), -self.DZ(fake_z).mean()
        rec_loss = self.distance(x, rec).mean()  # VGG of the real batch recomputed every iteration
        self.opt_eg.zero_grad()
        if it % cfg.policy_every == 0 and cfg.weight_policy == "gradient_normalizing":
            ga_e = autograd.grad(adv_e, self.w_e, retain_graph=True)
            ga_g = autograd.grad(adv_g, self.w_g, retain_graph=True)
            rec_loss.backward(retain_graph=True)
            lam_e = self.policy_e.step(ga_e, [p.grad for p in self.w_e])
            lam_g = self.policy_g.step(ga_g, [p.grad for p in self.w_g])
        else:
            rec_loss.backward(retain_graph=True)
            lam_e, lam_g = (
                (cfg.lambda_e, cfg.lambda_g)
                if cfg.weight_policy == "manual"
                else (self.policy_e.value, self.policy_g.value)
            )
        for p in self.E.parameters():
            p.grad.mul_(lam_e)
        for p in self.G.parameters():
            p.grad.mul_(lam_g)
        (adv_e + adv_g).backward()
        self.opt_eg.step()
        self.log.update(adv_e=adv_e.item(), adv_g=adv_g.item(), rec=rec_loss.item(), lambda_e=lam_e, lambda_g=lam_g)

    def train_iteration(self) -> None:
        for _ in range(self.cfg.n_dis):
            self.critic_step()
        self.encoder_generator_step()
        self.iteration += 1
