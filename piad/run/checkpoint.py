"""Checkpoint files: plain tensors and primitives only, so `torch.load(weights_only=True)` can read them."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import numpy as np
import torch

from piad.errors import CheckpointError, os_error
from piad.run.rundir import atomic_torch_save, latest_checkpoint, snapshot_path

FORMAT = "piad-checkpoint-v1"
# keys that may differ between a checkpoint and the run that resumes it (they do not change the math so far)
RESUMABLE_KEYS = {"iterations", "checkpoint_every", "log_every", "sample_every", "data_root", "download"}


def global_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": json.dumps(random.getstate()),
    }


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path, state: dict) -> None:
    atomic_torch_save(path, {"format": FORMAT, **state})


def snapshot_of(state: dict) -> dict:
    """The weights-only snapshot of a full training state (networks, config, anomaly-map scale)."""
    return {
        "iteration": state["iteration"],
        "config": state["config"],
        "networks": state["networks"],
        "map_scale": state.get("map_scale"),
        "snapshot": True,
    }


def save_run_checkpoints(run, state: dict) -> None:
    """The run's `iter_XXXXXXX.pt` (snapshot), then `latest.pt` (full state). In this order a kill between or during
    the two writes leaves latest.pt at the previous checkpoint, and resuming writes the snapshot again."""
    save_checkpoint(snapshot_path(run, state["iteration"]), snapshot_of(state))
    save_checkpoint(latest_checkpoint(run), state)


def restore_missing_snapshot(run, state: dict) -> None:
    """On resume: write the snapshot of the resumed iteration if a kill (under an older piad) prevented it."""
    path = snapshot_path(run, state["iteration"])
    if not path.exists():
        save_checkpoint(path, snapshot_of(state))


def short_error(e: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, at most `limit` characters (torch's messages run to many lines)."""
    text = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# OSErrors of torch.load that are faults of the machine (exit 1); any other (EINVAL from a seek past the end of a
# truncated file, ...) means the file itself is bad
IO_FAULT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENXIO, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def unsafe_load_reason(e: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in piad's words: never torch's own text, which advises
    loading with weights_only=False (running whatever code the file holds) and to file an issue."""
    text = str(e)
    if "Weights only load failed" in text or "Unsupported global" in text or "unsupported" in text.lower():
        return "it holds Python objects other than tensors (loading them could run code), so it is refused"
    if isinstance(e, (EOFError, OSError)) or "zip" in text.lower() or "central directory" in text:
        return "it is truncated or not a file written by torch.save"
    return f"it is not a tensor file written by torch.save ({type(e).__name__})"


def load_checkpoint(
    path,
    expected_config: dict | None = None,  # pragma: no mutate (an annotation, never evaluated: mutants are equivalent)
    allowed_keys=RESUMABLE_KEYS,
) -> dict:
    """Read a checkpoint safely; check its format and, if given, that it belongs to `expected_config`
    (:func:`check_config`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        if e.errno in IO_FAULT_ERRNOS:  # permission denied, I/O error: the file may be fine
            raise os_error(e, path, "read") from None
        raise _unreadable(path, e) from None
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle of code, foreign format...
        raise _unreadable(path, e) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a {FORMAT} file (found "
            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})."
        )
    if expected_config is not None:
        check_config(path, state, expected_config, allowed_keys)
    return state


def _unreadable(path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {str(path)!r} cannot be read safely: {unsafe_load_reason(e)}. The file is truncated, corrupt or "
        "not a piad checkpoint; use another checkpoint (e.g. an iter_*.pt snapshot) or train again."
    )


def check_config(path, state: dict, expected_config: dict, allowed_keys=RESUMABLE_KEYS) -> None:
    """CheckpointError unless the checkpoint's saved config equals `expected_config` (keys in `allowed_keys` may
    differ). Every consumer (resume, evaluate, score in a run directory) goes through this check."""
    try:
        saved = json.loads(state["config"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"checkpoint {str(path)!r} carries no readable config; it cannot be matched to a "
            "run. Use a checkpoint written by `piad train`."
        ) from None
    expected = json.loads(json.dumps(expected_config))  # tuples -> lists, as saved
    diff = {k: (saved.get(k), v) for k, v in expected.items() if k not in allowed_keys and saved.get(k) != v}
    if diff:
        shown = dict(list(diff.items())[:4])
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by another config; differing keys "
            f"(checkpoint, run): {shown}{' ...' if len(diff) > 4 else ''}. Use the run's own "
            "checkpoint, a new --out directory, or --overwrite to train again."
        )
