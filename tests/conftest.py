"""Shared fixtures. Offline assets live beside the repository in ../shared/assets (or $PIAD_ASSETS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("PIAD_ASSETS") or REPO.parent / "shared" / "assets")
SUBSTITUTE_VGG = ASSETS / "vgg19_caffe_normalised_to_relu3_1.pth"
IMAGENET_STATS = ASSETS / "vgg19_imagenet_feature_stats.pt"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def book_value(page: str, pattern: str) -> str:
    """The first group of `pattern` on book/`page` (e.g. "method/model.md"): a number the book states, for a test to
    compare with the code."""
    import re

    m = re.search(pattern, (REPO / "book" / page).read_text())
    assert m, f"book/{page} no longer says {pattern!r}"
    return m.group(1)


def load_script(path: str):
    """A script of the repository that is not part of the package (.ci/, benchmarks/), imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture(scope="session")
def slurm():
    """A one-node Slurm cluster on this machine (tests/slurm_cluster.py), started once per test run from Debian's
    packages when they are installed (skip with the reason otherwise) and stopped by PID at the end. Slurm's clients
    in this process and its jobs find it through $SLURM_CONF; jobs import this checkout's piad."""
    from slurm_cluster import SlurmCluster, Unavailable, installed

    cluster = SlurmCluster()
    try:
        cluster.start()
    except Unavailable as e:
        if os.environ.get("CI") and installed():  # CI installs the packages: there the tests must run, not skip
            pytest.fail(f"Slurm is installed but its test cluster did not start: {e}")
        pytest.skip(str(e))
    mp = pytest.MonkeyPatch()
    for key, value in cluster.env.items():
        mp.setenv(key, value)
    mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    try:
        yield cluster
    finally:
        mp.undo()
        cluster.stop()


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A trained and evaluated tiny run (helpers.tiny), shared read-only by the fault tests: copy it (`run_copy`)
    before changing it."""
    from helpers import tiny

    from piad.run.evaluation import evaluate
    from piad.run.training import train

    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(), run, progress=False)
    evaluate(run)
    return run


@pytest.fixture
def run_copy(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"
