"""Up-front checks of sizes that cannot fit: a config whose networks or batches need more memory than the device has
is refused in one line before anything is loaded or written (instead of an allocation failure, or the out-of-memory
killer, after the run has started).

The estimate is a lower bound (weights, gradients and Adam's two moments of every network, plus a few image- and
latent-sized tensors per sample of a batch), compared with the device's total memory: a refusal means the run
could not fit on this device at all; a run that passes may still need more than is free.
"""

from __future__ import annotations

import os

import torch

from piad.errors import ConfigError

FLOAT_BYTES = 4
PER_PARAMETER = 4 * FLOAT_BYTES  # the weight, its gradient, Adam's exp_avg and exp_avg_sq
IMAGES_PER_SAMPLE = 6  # x, G(z), G(E(x)), the gradient-penalty interpolate and gradients of two of them


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def parameter_count(cfg) -> int:
    """Parameters of E, G, D_X and D_Z of `cfg`, counted without allocating them (torch's meta device)."""
    from piad.model.networks import PIADNetworks

    with torch.device("meta"):
        nets = PIADNetworks(cfg)
    return sum(p.numel() for p in nets.parameters())


def training_bytes(cfg, members: int = 1) -> tuple[int, int]:
    """(lower bound of the bytes training `members` runs of `cfg` needs, parameter count of one run)."""
    params = parameter_count(cfg)
    image = cfg.channels * cfg.image_size**2
    latent = cfg.latent_dim * cfg.latent_size**2
    per_batch = cfg.batch_size * (IMAGES_PER_SAMPLE * image + 4 * latent) * FLOAT_BYTES
    return members * (params * PER_PARAMETER + per_batch), params


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def device_memory(device) -> tuple[int | None, str]:
    """(total bytes of memory of `device`, a description), None where it cannot be told."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            props = torch.cuda.get_device_properties(dev)
        except (RuntimeError, AssertionError, ValueError):
            return None, str(dev)
        return int(props.total_memory), f"{dev} ({props.name})"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, str(dev)
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        return limit, f"{dev.type} (a memory limit of this process' control group)"
    return int(total), f"{dev.type} (this machine's memory)"


def check_training_memory(cfg, device: torch.device, members: int = 1) -> None:
    """ConfigError in one line if training `members` runs of `cfg` cannot fit in `device`'s memory (a resolved
    device: piad.run.training.resolve_device)."""
    need, params = training_bytes(cfg, members)
    total, where = device_memory(device)
    if total is None or need <= total:
        return
    raise ConfigError(
        f"this config needs at least {format_bytes(need)} of memory ({params:,} parameters"
        + (f" per run, {members} runs" if members > 1 else "")
        + f", batch_size={cfg.batch_size} of {cfg.channels}x{cfg.image_size}x{cfg.image_size} images, "
        f"latent_dim={cfg.latent_dim}), but {where} has {format_bytes(total)}. Lower batch_size, latent_dim or the "
        "widths (--set key=value)."
    )
