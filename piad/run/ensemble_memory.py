"""How many ensemble members fit on a CUDA device (issue 30): measured, not guessed.

`probe_member_memory` trains one static-step iteration (piad.run.captured) of a 1-member and of a 2-member
ensemble of the same config and reads the device's peak memory: the difference is what one more member costs, the
rest is shared (the frozen VGG when members share it, the CUDA context's workspaces). `members_that_fit` turns that
into K under a fraction of the free memory, capped at ENSEMBLE_MAX.
"""

from __future__ import annotations

import os
import tempfile

import torch

ENSEMBLE_MAX = 40  # the widest ensemble the reproduce runner forms on its own (a large card: K = 20-40)
MEMORY_FRACTION = 0.8  # of the free device memory, the rest left to the allocator's fragmentation and cuDNN


def members_that_fit(
    shared_bytes: int, per_member_bytes: int, free_bytes: int, cap: int = ENSEMBLE_MAX, fraction=MEMORY_FRACTION
) -> int:
    """The largest K in [1, cap] with shared + K * per_member <= fraction * free."""
    if per_member_bytes <= 0:
        return cap
    k = int((fraction * free_bytes - shared_bytes) // per_member_bytes)
    return max(1, min(cap, k))


def probe_member_memory(cfg, device, data=None, iterations: int = 2) -> tuple[int, int]:
    """(shared bytes, bytes per member) of ensemble training with `cfg` on a CUDA `device`, from the peak memory of
    `iterations` iterations with 1 and with 2 members."""
    from piad.data import load_for_config
    from piad.run.ensemble import EnsembleTrainer

    dev = torch.device(device)
    data = data if data is not None else load_for_config(cfg)
    peaks = []
    for k in (1, 2):
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        with tempfile.TemporaryDirectory(prefix="piad_probe_") as tmp:
            outs = [f"{tmp}/{i}" for i in range(k)]
            for o in outs:
                os.makedirs(o)
            t = EnsembleTrainer([cfg] * k, outs, dev, datas=[data] * k)
            t.step_mode = "static"
            for _ in range(iterations):
                t.train_iteration()
            torch.cuda.synchronize(dev)
            peaks.append(torch.cuda.max_memory_allocated(dev) - before)
            del t
    per_member = max(0, peaks[1] - peaks[0])
    return max(0, peaks[0] - per_member), per_member


def ensemble_size_by_memory(cfg, device, data=None, cap: int = ENSEMBLE_MAX) -> int:
    """K for `cfg` on a CUDA device: members_that_fit over the measured costs and the free memory now."""
    shared, per_member = probe_member_memory(cfg, device, data)
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return members_that_fit(shared, per_member, free, cap)
