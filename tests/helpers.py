"""Small utilities shared by tests (not fixtures)."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def networks_of(run_dir) -> dict:
    state = torch.load(Path(run_dir) / "checkpoints" / "latest.pt", weights_only=True)
    return state["networks"]


def assert_same_networks(a: dict, b: dict, atol: float = 0.0) -> None:
    for net in a:
        for k in a[net]:
            if atol == 0:
                assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
            else:
                assert torch.allclose(a[net][k], b[net][k], atol=atol), f"{net}.{k} differs"


def log_rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "log.csv") as f:
        return list(csv.DictReader(f))


def all_finite(rows) -> bool:
    return all(math.isfinite(float(v)) for r in rows for k, v in r.items() if v != "")


def run_cli(*args, timeout=300, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "piad.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
