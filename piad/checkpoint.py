"""Checkpoint files: plain tensors and primitives only, so `torch.load(weights_only=True)` can read them."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from piad.errors import CheckpointError
from piad.runio import atomic_torch_save

FORMAT = "piad-checkpoint-v1"
# keys that may differ between a checkpoint and the run that resumes it (they do not change the math so far)
RESUMABLE_KEYS = {"iterations", "checkpoint_every", "log_every", "sample_every", "data_root", "download"}


def global_rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": json.dumps(random.getstate())}


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path, state: dict) -> None:
    atomic_torch_save(path, {"format": FORMAT, **state})


def load_checkpoint(path, expected_config: dict | None = None) -> dict:
    """Read a checkpoint safely; check its format and, if given, that it belongs to `expected_config`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle of code, foreign format...
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read safely (torch.load weights_only=True): "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:300]}. The file is truncated, corrupt "
                              "or not a piad checkpoint; use another checkpoint (e.g. an iter_*.pt snapshot) or "
                              "train again.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {FORMAT} file (found "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}).")
    if expected_config is not None:
        saved = json.loads(state["config"])
        diff = {k: (saved.get(k), v) for k, v in expected_config.items()
                if k not in RESUMABLE_KEYS and saved.get(k) != v}
        if diff:
            raise CheckpointError(f"checkpoint {str(path)!r} was written by another config; differing keys "
                                  f"(checkpoint, requested): {diff}. Use a new --out directory or --overwrite.")
    return state
