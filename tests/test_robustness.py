"""Long runs survive interruption, bad input is refused clearly, nothing is lost."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import REPO, assert_same_networks, networks_of, run_cli
from PIL import Image

from piad.errors import CheckpointError, ConfigError, RunDirectoryError, TrainingDiverged
from piad.run.checkpoint import load_checkpoint
from piad.run.config import load_config, make_config
from piad.run.rundir import RunLock
from piad.run.training import Trainer, train

SYNTH = ["train", "--benchmark", "synthetic", "--device", "cpu", "--no-progress"]


def tiny(**kw):
    return make_config("synthetic", {"iterations": 20, "checkpoint_every": 5, **kw})


def test_sigterm_saves_a_checkpoint_and_resume_matches_uninterrupted(tmp_path):
    n = 120
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli(*SYNTH, "--iterations", n, "--out", full).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "piad.cli", *SYNTH, "--iterations", str(n), "--out", str(cut)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (cut / "checkpoints" / "iter_0000010.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    stopped_at = int(torch.load(cut / "checkpoints" / "latest.pt", weights_only=True)["iteration"])
    assert 10 <= stopped_at < n
    r = run_cli(*SYNTH, "--iterations", n, "--out", cut, "--resume")
    assert r.returncode == 0, r.stderr
    assert_same_networks(networks_of(full), networks_of(cut))


KILLER = """
import sys, torch
from piad.run.checkpoint import save_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    save_checkpoint(path, {"iteration": i, "blob": torch.full((4_000_000,), float(i))})
"""


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7])
def test_sigkill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, delay):
    path = tmp_path / "latest.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(path)], cwd=REPO)
    deadline = time.time() + 120
    while not path.exists():
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)
    assert state["iteration"] >= 1 and torch.all(state["blob"] == float(state["iteration"]))


def test_injected_nan_stops_training_with_the_iteration_named(tmp_path, monkeypatch):
    original = Trainer.reconstruction_loss

    def poisoned(self, x, idx, rec):
        loss = original(self, x, idx, rec)
        return loss * float("nan") if self.iteration + 1 == 7 else loss

    monkeypatch.setattr(Trainer, "reconstruction_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"iteration 7.*rec") as e:
        train(tiny(), tmp_path, progress=False)
    assert e.value.iteration == 7
    assert int(load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["iteration"]) == 5  # last good one kept
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["roc_auc"] is None and metrics["iteration"] == 7


@pytest.mark.parametrize(
    "args, match",
    [
        (["--set", "colour=red"], "unknown config key"),
        (["--set", "batch_size=eight"], "'batch_size'"),
        (["--iterations", "-5"], "'iterations'"),
        (["--set", "image_size=24"], "'image_size'"),
        (["--set", "layer=relu7_1"], "'layer'"),
        (["--normal-class", "3"], "normal_class=3"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(tmp_path, capsys, args, match):
    from piad.cli import main

    out = tmp_path / "run"
    assert main([*SYNTH, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(match, err), err
    assert not out.exists()


def test_bad_config_file_is_refused(tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        load_config(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps({"benchmark": "mnist", "iterations": "x"}))
    with pytest.raises(ConfigError, match="'iterations'"):
        load_config(tmp_path / "d.json")


def test_truncated_foreign_and_code_carrying_checkpoints(tmp_path):
    train(tiny(iterations=5), tmp_path / "run", progress=False)
    good = (tmp_path / "run" / "checkpoints" / "latest.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a piad-checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "piad-checkpoint-v1", "evil": Image.new("L", (2, 2))}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="other than tensors") as e:  # refused, never torch's advice
        load_checkpoint(tmp_path / "code.pt")
    assert "weights_only=False" not in str(e.value)


def test_checkpoint_from_another_config_is_refused_on_resume(tmp_path):
    train(tiny(iterations=5), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another config.*lr_eg"):
        train(tiny(iterations=10, lr_eg=0.01), tmp_path, resume=True, progress=False)


def test_finished_results_are_not_overwritten_without_asking(tmp_path):
    from piad.run.evaluation import evaluate

    train(tiny(iterations=5), tmp_path, progress=False)
    evaluate(tmp_path)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(RunDirectoryError, match="--overwrite"):
        train(tiny(iterations=5), tmp_path, progress=False)
    assert (tmp_path / "metrics.json").read_text() == before
    train(tiny(iterations=5), tmp_path, overwrite=True, progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_existing_checkpoint_needs_resume_or_overwrite(tmp_path):
    train(tiny(iterations=5), tmp_path, progress=False)
    with pytest.raises(RunDirectoryError, match="--resume"):
        train(tiny(iterations=10), tmp_path, progress=False)


HOLDER = """
import sys, time
from piad.run.rundir import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_lock_refuses_a_second_writer_and_takes_over_stale_locks(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryError, match=f"in use by process {holder.pid}"):
            train(tiny(iterations=2), tmp_path, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".lock").read_text() == str(holder.pid)  # a killed holder leaves its lock file
    with RunLock(tmp_path) as lock:  # the holder is dead now: its lock is stale
        assert lock.held and (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_score_folder_with_mixed_sizes_and_a_corrupt_file(tmp_path):
    run = tmp_path / "run"
    train(tiny(iterations=2, checkpoint_every=2), run, progress=False)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(imgs / "a.png")
    Image.fromarray(rng.integers(0, 255, (7, 9), dtype=np.uint8)).save(imgs / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (100, 100, 4), dtype=np.uint8), "RGBA").save(imgs / "c.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out_csv, maps = tmp_path / "scores.csv", tmp_path / "maps"
    r = run_cli("score", "--checkpoint", run, imgs, "--csv", out_csv, "--maps", maps, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "broken.png" in r.stderr and "skipped" in r.stderr
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "path,score" and len(rows) == 4
    assert all(np.isfinite(float(row.split(",")[1])) for row in rows[1:])
    assert sorted(p.name for p in maps.iterdir()) == ["a_map.png", "b_map.png", "c_map.png", "colorbar.png"]
    assert [Image.open(maps / f"{n}_map.png").size for n in "abc"] == [(60, 40), (9, 7), (100, 100)]  # input sizes
