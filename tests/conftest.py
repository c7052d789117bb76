"""Shared fixtures. Offline assets live beside the repository in ../shared/assets (or $PIAD_ASSETS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("PIAD_ASSETS") or REPO.parent / "shared" / "assets")
SUBSTITUTE_VGG = ASSETS / "vgg19_caffe_normalised_to_relu3_1.pth"
IMAGENET_STATS = ASSETS / "vgg19_imagenet_feature_stats.pt"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def asset(name: str) -> Path:
    """Path of an offline asset, or skip the test saying which file is missing and why."""
    p = ASSETS / name
    if not p.exists():
        pytest.skip(f"offline asset {p} is absent (see ../shared/assets/README.md); this test needs it")
    return p


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep piad's cache (feature statistics, preprocessed data) out of the user's home during tests."""
    old = os.environ.get("PIAD_CACHE")
    os.environ["PIAD_CACHE"] = str(tmp_path_factory.mktemp("piad_cache"))
    yield
    if old is None:
        os.environ.pop("PIAD_CACHE", None)
    else:
        os.environ["PIAD_CACHE"] = old


@pytest.fixture(scope="module")
def session_cache(tmp_path_factory):
    """One PIAD_CACHE shared by the data test modules of a session (the CIFAR-10 archive is extracted once);
    no $PIAD_DATA from the environment."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.getbasetemp() / "piad-data-cache"
    mp.setenv("PIAD_CACHE", str(path))
    mp.delenv("PIAD_DATA", raising=False)
    yield path
    mp.undo()
