"""Faults of the third hostile round of the command line (issue 32): a refused or failed --overwrite leaves the
finished run byte-identical, special files are never read, memory and threads are bounded, and every failure is one
line naming the file, key or flag (exit 2 for bad input, 1 for I/O faults, 130 on interrupt), never a traceback."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, tiny
from PIL import Image

from piad.cli import main
from piad.run.config import make_config
from piad.run.training import Trainer, train

SYNTH = ["train", "--benchmark", "synthetic", "--device", "cpu", "--no-progress"]
# the small settings ($S) on digits: random VGG, no statistics, a shallow layer, narrow widths, batch 8
SMALL = [
    "vgg_weights=random",
    "feature_stats=none",
    "layer=relu2_1",
    "g_widths=8,8,8,8",
    "e_widths=8,8,8,8",
    "dx_widths=8,8,8,8",
    "dz_hidden=16,16",
    "batch_size=8",
]


def files_of(folder: Path) -> dict:
    """Every file below `folder` (hidden ones included) with its bytes, and every folder."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = p.read_bytes() if p.is_file() else "<dir>"
    return out


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def big_png(path: Path, width: int, height: int) -> Path:
    """A valid RGB PNG of width x height pixels (all grey), written row by row: a few hundred KB on disk whatever
    its size, like the issue's 140 KB 12000x12000 image."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\0" + b"\x80" * (3 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return path


def piad_in_child(args, timeout=240) -> tuple[subprocess.CompletedProcess, int]:
    """`piad ARGS` in a child process (a hang fails the test at `timeout`); returns it and its peak memory (bytes):
    the high-water mark of its own address space (VmHWM; ru_maxrss would count the forking parent's pages too)."""
    code = (
        "import resource, sys\n"
        "from piad.cli import main\n"
        "try:\n"
        "    rc = main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')]\n"
        "peak = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "sys.stderr.write(f'\\nPEAK_RSS_KB={peak}\\n')\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    peak = int(p.stderr.rsplit("PEAK_RSS_KB=", 1)[1].split()[0]) * 1024 if "PEAK_RSS_KB=" in p.stderr else 0
    p.stderr = p.stderr.split("\nPEAK_RSS_KB=")[0].strip()
    return p, peak


# 1 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting, key", [("batch_size=100000000", "batch_size"), ("latent_dim=1000000000", "latent_dim")]
)
def test_overwrite_with_absurd_sizes_is_refused_up_front_and_keeps_the_run(run_copy, capsys, setting, key):
    before = files_of(run_copy)
    rc = main([*SYNTH, "--iterations", "3", "--out", str(run_copy), "--overwrite", "--set", setting])
    assert rc == 2
    one_line_error(capsys, key, "memory")
    assert files_of(run_copy) == before


def test_absurd_sizes_on_digits_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "np1" / "run"
    args = ["train", "--benchmark", "digits", "--normal-class", "3", "--iterations", "3", "--device", "cpu"]
    assert main([*args, "--no-progress", "--set", *SMALL, "batch_size=100000000", "--out", str(out)]) == 2
    one_line_error(capsys, "batch_size=100000000", "Lower batch_size")
    assert not (tmp_path / "np1").exists()


class Boom(Exception):
    pass


def _fail_at_iteration_2(kind):
    step = Trainer.train_iteration

    def failing(self):
        if self.iteration == 2:
            if kind == "memory":
                raise RuntimeError(
                    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 409600000000 bytes"
                )
            if kind == "nan":
                self._last = {"rec": torch.tensor(float("nan"))}
                self.watch.update(self.iteration + 1, self._last)
                self.iteration += 1
                return
            if kind == "signal":
                os.kill(os.getpid(), signal.SIGINT)
        step(self)

    return failing


@pytest.mark.parametrize(
    "kind, code, needle",
    [("memory", 1, "out of memory"), ("nan", 2, "diverged"), ("signal", 130, "interrupted")],
)
def test_overwrite_that_fails_after_it_started_keeps_the_run_byte_identical(
    run_copy, monkeypatch, capsys, kind, code, needle
):
    before = files_of(run_copy)
    monkeypatch.setattr(Trainer, "train_iteration", _fail_at_iteration_2(kind))
    rc = main([*SYNTH, "--iterations", "6", "--seed", "5", "--out", str(run_copy), "--overwrite"])
    assert rc == code
    err = one_line_error(capsys, needle)
    if code != 1:
        assert "unchanged" in err and "--resume" not in err
    assert files_of(run_copy) == before


def test_overwrite_that_finishes_replaces_the_run_and_keeps_other_files(run_copy, capsys):
    (run_copy / "notes.txt").write_text("mine")
    old = (run_copy / "checkpoints" / "latest.pt").read_bytes()
    assert main([*SYNTH, "--iterations", "2", "--seed", "9", "--out", str(run_copy), "--overwrite"]) == 0
    names = sorted(p.name for p in run_copy.iterdir())
    assert names == ["checkpoints", "config.json", "log.csv", "notes.txt", "samples"]  # old results are gone
    assert (run_copy / "checkpoints" / "latest.pt").read_bytes() != old
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["iter_0000002.pt", "latest.pt"]
    assert json.loads((run_copy / "config.json").read_text())["seed"] == 9


def test_an_overwrite_killed_before_its_end_is_undone_and_one_killed_while_swapping_is_completed(run_copy):
    from piad.run import rundir

    before = files_of(run_copy)
    staging = rundir.begin_overwrite(run_copy)  # killed while training the new run
    (staging / "config.json").write_text("{}")
    rundir.recover_overwrite(run_copy)
    assert files_of(run_copy) == before
    staging = rundir.begin_overwrite(run_copy)  # killed in the middle of the swap
    (staging / "config.json").write_text('{"new": 1}')
    (staging / rundir.COMPLETE).write_text("")
    (run_copy / rundir.REPLACED).mkdir()
    os.replace(run_copy / "metrics.json", run_copy / rundir.REPLACED / "metrics.json")
    rundir.recover_overwrite(run_copy)
    assert sorted(p.name for p in run_copy.iterdir()) == ["config.json"]
    assert json.loads((run_copy / "config.json").read_text()) == {"new": 1}


# 2 ------------------------------------------------------------------------------------------------------------------
def test_keys_owned_by_flags_are_honoured_in_set(monkeypatch):
    import piad.run.training

    seen = {}
    monkeypatch.setattr(piad.run.training, "train", lambda cfg, out, **kw: seen.setdefault("cfg", cfg))
    assert (
        main(["train", "--benchmark", "digits", "--out", "x", "--set", "normal_class=7", "run=4", "iterations=5"]) == 0
    )
    cfg = seen["cfg"]
    assert (cfg.normal_class, cfg.run, cfg.iterations) == (7, 4, 5)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--set", "normal_class=x"], ["normal_class", "'x'"]),
        (["--iterations", "5", "--set", "iterations=abc"], ["iterations=abc", "--iterations 5"]),
        (["--normal-class", "3", "--set", "normal_class=7"], ["normal_class=7", "--normal-class 3"]),
    ],
)
def test_keys_owned_by_flags_are_refused_when_bad_or_contradicting(tmp_path, capsys, args, needles):
    out = tmp_path / "run"
    assert main(["train", "--benchmark", "digits", "--out", str(out), *args]) == 2
    one_line_error(capsys, *needles)
    assert not out.exists()


# 3 ------------------------------------------------------------------------------------------------------------------
def test_a_fifo_named_like_an_image_is_never_read_by_score(finished, tmp_path):
    folder = tmp_path / "in"
    image(folder / "a.png", 12, 12)
    os.mkfifo(folder / "pipe.png")
    p, _ = piad_in_child(["score", "--checkpoint", finished, folder, "--device", "cpu"], timeout=120)
    assert p.returncode == 0, p.stderr
    assert "a.png" in p.stdout and "pipe.png" not in p.stdout
    assert "pipe.png" in p.stderr and "FIFO" in p.stderr and "Traceback" not in p.stderr
    p, _ = piad_in_child(["score", "--checkpoint", finished, folder / "pipe.png", "--device", "cpu"], timeout=120)
    assert p.returncode == 2 and "not a regular file" in p.stderr and "Traceback" not in p.stderr


def test_a_fifo_in_a_folder_dataset_is_one_line_error_and_leaves_no_lock(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        image(root / "train" / f"{i}.png", 8, 8, seed=i)
    image(root / "test" / "normal" / "0.png", 8, 8, seed=5)
    image(root / "test" / "odd" / "0.png", 8, 8, seed=6)
    os.mkfifo(root / "train" / "pipe.png")
    out = tmp_path / "run"
    args = ["train", "--benchmark", "folder", "--data-root", root, "--iterations", "1", "--device", "cpu"]
    p, _ = piad_in_child([*args, "--no-progress", "--out", out], timeout=120)
    assert p.returncode == 2, p.stderr
    assert "pipe.png" in p.stderr and "FIFO" in p.stderr and len(p.stderr.splitlines()) == 1
    assert not out.exists()


TERMINATED_WHILE_LOADING = """
import os, signal, sys
import piad.run.training
def terminated(cfg):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while the data load, before the fit loop handles signals
    raise AssertionError("SIGTERM did not stop the command")
piad.run.training.load_for_config = terminated
from piad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_before_training_unwinds_and_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-c", TERMINATED_WHILE_LOADING, *SYNTH, "--iterations", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=REPO,
    )
    assert p.returncode == 130, p.stderr
    assert "SIGTERM" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_only_regular_files_are_images(tmp_path):
    import threading

    from piad.data._io import decode_image
    from piad.errors import DataError

    os.mkfifo(tmp_path / "p.png")
    done = threading.Event()

    def unblock():  # a reader blocked on the FIFO (the fault) is released after 20 s, so the test fails, not hangs
        if not done.wait(20):
            os.close(os.open(tmp_path / "p.png", os.O_WRONLY))

    threading.Thread(target=unblock, daemon=True).start()
    try:
        with pytest.raises(DataError, match="FIFO"):
            decode_image(tmp_path / "p.png", 8, 3)
    finally:
        done.set()
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(DataError, match="loop"):
        decode_image(tmp_path / "loop.png", 8, 3)


# 4 ------------------------------------------------------------------------------------------------------------------
def test_threads_beyond_the_cpus_are_refused(finished, tmp_path, capsys):
    img = image(tmp_path / "x.png", 10, 10)
    assert main(["score", "--checkpoint", str(finished), str(img), "--threads", "100000"]) == 2
    one_line_error(capsys, "--threads 100000")


@pytest.mark.parametrize("size", ["100000", "0", "-4"])
def test_feature_stats_image_size_is_bounded(tmp_path, capsys, size):
    image(tmp_path / "imgs" / "a.png", 20, 20)
    with pytest.raises(SystemExit) as e:
        main(
            ["feature-stats", "--images", str(tmp_path / "imgs"), "--vgg-weights", "random", "--layer", "relu1_1"]
            + ["--image-size", size, "--output", str(tmp_path / "s.pt")]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and "Traceback" not in err


def test_feature_stats_that_cannot_fit_in_memory_are_refused(tmp_path, capsys):
    image(tmp_path / "imgs" / "a.png", 20, 20)
    args = ["feature-stats", "--images", str(tmp_path / "imgs"), "--vgg-weights", "random", "--layer", "relu1_1"]
    assert main([*args, "--image-size", "4096", "--batch-size", "4096", "--output", str(tmp_path / "s.pt")]) == 2
    one_line_error(capsys, "--batch-size", "memory")
    assert not (tmp_path / "s.pt").exists()


def test_feature_stats_memory_is_bounded_by_the_batch(tmp_path):
    """Images are decoded a batch at a time: 300 images at 256x256 took 240 MB at once as float32 (and copies)."""
    for i in range(300):
        image(tmp_path / "imgs" / f"{i}.png", 16, 16, seed=i)
    for i in range(2):
        image(tmp_path / "two" / f"{i}.png", 16, 16, seed=i)
    peaks = {}
    for name in ("imgs", "two"):
        args = ["feature-stats", "--images", tmp_path / name, "--vgg-weights", "random", "--layer", "relu1_1"]
        p, peaks[name] = piad_in_child(
            [*args, "--image-size", "256", "--batch-size", "2", "--output", tmp_path / f"{name}.pt"]
        )
        assert p.returncode == 0, p.stderr
    assert peaks["imgs"] - peaks["two"] < 60e6, peaks


def test_a_huge_image_is_refused_in_one_line_with_bounded_memory(finished, tmp_path):
    """The issue's 12000x12000 PNG of 140 KB: refused before decoding (it took 9.8 GB and printed PIL's warning)."""
    huge = big_png(tmp_path / "in" / "huge.png", 12000, 12000)
    image(tmp_path / "in" / "ok.png", 12, 12)
    assert huge.stat().st_size < 1_000_000
    args = ["score", "--checkpoint", finished, tmp_path / "in", "--maps", tmp_path / "maps", "--device", "cpu"]
    p, peak = piad_in_child(args)
    assert p.returncode == 0, p.stderr
    assert "huge.png" in p.stderr and "too large" in p.stderr
    assert "Warning" not in p.stderr and "Traceback" not in p.stderr
    assert peak < 1.0e9, peak


def test_maps_of_a_large_image_are_drawn_reduced_with_bounded_memory(finished, tmp_path):
    big = big_png(tmp_path / "in" / "big.png", 9000, 8000)  # 72 Mpx: under the limit, decoded and scored
    args = ["score", "--checkpoint", finished, big, "--maps", tmp_path / "maps", "--device", "cpu"]
    p, peak = piad_in_child(args)
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr and "Traceback" not in p.stderr
    assert peak < 1.5e9, peak  # (5.5 GB before maps were drawn reduced)
    with Image.open(tmp_path / "maps" / "big_map.png") as m:
        assert m.size == (2048, 1820)


# 6 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["[1, 2]", '"str"', '{"status": "ok", "iterations": "abc"}', '{"status": "ok", "iterations": null}']
)
def test_is_finished_reads_json_of_any_shape(tmp_path, text):
    from piad.experiments.grid import NOTEBOOK, is_finished

    (tmp_path / "metrics.json").write_text(text)
    (tmp_path / NOTEBOOK).write_text("{}")
    assert is_finished(tmp_path, 10) is False


def test_status_reads_files_of_the_wrong_shape_and_asks_the_lock(tmp_path):
    from piad.experiments import status
    from piad.experiments.grid import NOTEBOOK
    from piad.run.rundir import RunLock

    res, work = tmp_path / "res", tmp_path / "work"
    res.mkdir()
    (res / "metrics.json").write_text('"str"')
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "latest.pt").write_bytes(b"x")
    (work / status.JOB_FILE).write_text("[1]")
    (work / NOTEBOOK).write_text('{"cells": "x"}')
    (work / "metrics.json").write_text("[1, 2]")
    (work / ".lock").write_text(str(os.getpid()))  # a stale lock whose PID now belongs to a live process
    assert status.run_state(res, work, 10)[0] == "interrupted"
    with RunLock(work):
        state, detail = status.run_state(res, work, 10)
    assert state == "running" and str(os.getpid()) in detail
    (work / NOTEBOOK).write_text('{"cells": [1, {"outputs": "x"}, {"outputs": [2, {"output_type": "error"}]}]}')
    assert status.run_state(res, work, 10)[0] == "failed"
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "submitted.json").write_text('{"digits/0/0": 5, "digits/0/1": {"id": "7", "folder": "f"}}')
    assert status.read_submitted(tmp_path / "submitit") == {"digits/0/1": {"id": "7", "folder": "f"}}
    import socket

    (work / status.JOB_FILE).write_text(json.dumps({"pid": "abc", "host": socket.gethostname()}))
    assert status.run_state(res, work, 10)[0] == "failed"  # the notebook's error; the job's PID is unreadable


# 9 ------------------------------------------------------------------------------------------------------------------
BAD_NAME = b"bad\xff\xfename.jpg"


def _folder_dataset(root: Path, bad: bool = True) -> Path:
    for i in range(4):
        image(root / "train" / f"{i}.png", 8, 8, seed=i)
    image(root / "test" / "normal" / "0.png", 8, 8, seed=5)
    image(root / "test" / "odd" / "0.png", 8, 8, seed=6)
    if bad:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.fsencode(root / "train") + b"/" + BAD_NAME, "JPEG")
    return root


def test_file_names_that_are_not_utf8_are_read_described_and_written(finished, tmp_path, capsys):
    root = _folder_dataset(tmp_path / "data")
    assert main(["data", "describe", "--benchmark", "folder", "--data-root", str(root)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    out = tmp_path / "scores.csv"
    assert main(["score", "--checkpoint", str(finished), str(root / "train"), "--csv", str(out)]) == 0
    rows = out.read_bytes().splitlines()
    assert len(rows) == 6 and any(BAD_NAME in r for r in rows)


def test_folder_training_reads_file_names_that_are_not_utf8(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "data")
    widths = ["g_widths=4,4,4,4", "e_widths=4,4,4,4", "dx_widths=4,4,4,4", "dz_hidden=8,8", "latent_dim=8"]
    args = ["train", "--benchmark", "folder", "--data-root", str(root), "--iterations", "1", "--device", "cpu"]
    assert main([*args, "--no-progress", "--out", str(tmp_path / "run"), "--set", *SMALL, *widths]) == 0


# 10 -----------------------------------------------------------------------------------------------------------------
def test_score_csv_refuses_an_existing_file_and_never_replaces_an_input(finished, tmp_path, capsys):
    folder = tmp_path / "ovw"
    a = image(folder / "a.jpg", 12, 12)
    original = a.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["score", "--checkpoint", str(finished), str(folder), "--csv", str(a), *extra]) == 2
        one_line_error(capsys, "--csv", "a.jpg")
        assert a.read_bytes() == original
    csv = tmp_path / "old.csv"
    csv.write_text("keep")
    assert main(["score", "--checkpoint", str(finished), str(folder), "--csv", str(csv)]) == 2
    one_line_error(capsys, "--csv", "exists", "--overwrite")
    assert csv.read_text() == "keep"
    assert main(["score", "--checkpoint", str(finished), str(folder), "--csv", str(csv), "--overwrite"]) == 0
    assert csv.read_text().startswith("path,score")


# 11 -----------------------------------------------------------------------------------------------------------------
def test_every_truncation_of_a_checkpoint_is_reported_as_truncated(finished, tmp_path):
    from piad.errors import CheckpointError
    from piad.run.checkpoint import load_checkpoint

    data = (finished / "checkpoints" / "latest.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    for n in range(0, len(data), max(1, len(data) // 150)):
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated") as e:
            load_checkpoint(cut)
        assert e.value.exit_code == 2


# 12 -----------------------------------------------------------------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("key", ["vgg_weights", "feature_stats"])
@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_a_bad_weights_or_statistics_file_is_one_line_without_torch_advice(tmp_path, capsys, key, content):
    bad = tmp_path / "bad.pt"
    if content == "garbage":
        bad.write_bytes(b"\x80\x02garbage" * 50)
    else:
        torch.save({"x": Payload()}, bad)
    out = tmp_path / "run"
    assert main([*SYNTH, "--iterations", "2", "--out", str(out), "--set", f"{key}={bad}"]) == 2
    err = one_line_error(capsys, key, str(bad))
    assert "weights_only=False" not in err and "file an issue" not in err.lower() and "pwned" not in err
    assert not out.exists()


# 13 -----------------------------------------------------------------------------------------------------------------
def test_a_refused_run_leaves_no_empty_parent_folders(tmp_path, capsys):
    out = tmp_path / "np1" / "np2" / "run"
    assert main([*SYNTH, "--iterations", "2", "--out", str(out), "--set", "vgg_weights=/missing/vgg.pth"]) == 2
    one_line_error(capsys, "vgg_weights")
    assert not (tmp_path / "np1").exists()
    args = ["train", "--benchmark", "folder", "--data-root", str(tmp_path / "nope"), "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 2
    one_line_error(capsys, "data_root")
    assert not (tmp_path / "np1").exists()


# 14 -----------------------------------------------------------------------------------------------------------------
def test_map_names_are_unique_by_construction(finished, tmp_path, capsys):
    import hashlib

    folder = tmp_path / "imgs"
    names = ["a.jpg", "a.png"]
    names += [f"a_{hashlib.sha1(str((folder / n).resolve()).encode()).hexdigest()[:8]}.png" for n in names]
    names += ["a.png.jpg"]
    for i, n in enumerate(names):
        image(folder / n, 12, 12, seed=i)
    maps = tmp_path / "maps"
    assert main(["score", "--checkpoint", str(finished), str(folder), "--maps", str(maps), "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert len(list(maps.glob("*_map*.png"))) == 5
    again = ["score", "--checkpoint", str(finished), str(folder), "--maps", str(maps), "--device", "cpu"]
    assert main(again) == 2  # never replaced silently
    one_line_error(capsys, "--maps", "--overwrite")
    assert main([*again, "--overwrite"]) == 0


# 5 ------------------------------------------------------------------------------------------------------------------
def test_curve_marks_a_snapshot_with_nan_scores_as_diverged(run_copy, capsys):
    snap = run_copy / "checkpoints" / "iter_0000002.pt"
    state = torch.load(snap, weights_only=True)
    for v in state["networks"]["generator"].values():
        v.fill_(float("nan"))
    torch.save(state, snap)
    assert main(["curve", "--out", str(run_copy), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "diverged" in out and "diverged" in err
    rows = (run_copy / "curve.csv").read_text().splitlines()
    assert rows[1].startswith("2,nan") and not rows[2].endswith("nan")


def test_a_checkpoint_that_reconstructs_nothing_is_not_kept_as_good(tmp_path, monkeypatch):
    import piad.run.training
    from piad.errors import TrainingDiverged
    from piad.run.checkpoint import load_checkpoint

    scale = piad.run.training.anomaly_map_scale

    def broken_at_4(reconstruct, distance, images):
        s = scale(reconstruct, distance, images)
        return {**s, "hi": float("nan")} if len(list((tmp_path / "run" / "checkpoints").glob("*.pt"))) > 1 else s

    monkeypatch.setattr(piad.run.training, "anomaly_map_scale", broken_at_4)
    with pytest.raises(TrainingDiverged, match="anomaly map") as e:
        train(tiny(), tmp_path / "run", progress=False)
    assert "iteration 2) is kept" in str(e.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["iteration"] == 2
    assert not (tmp_path / "run" / "checkpoints" / "iter_0000004.pt").exists()


def test_curve_of_a_run_that_diverged_before_any_snapshot_says_so(tmp_path, monkeypatch, capsys):
    from piad.run.rundir import write_diverged

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(tiny().to_json())
    write_diverged(run, "training diverged at iteration 1", 1, "critic_x")
    assert main(["curve", "--out", str(run), "--device", "cpu"]) == 2
    err = one_line_error(capsys, "diverged at iteration 1", "--overwrite")
    assert "train the run first" not in err


# 15 -----------------------------------------------------------------------------------------------------------------
def test_score_batch_size_beyond_any_memory_is_an_argument_error(finished, tmp_path, capsys):
    img = image(tmp_path / "x.png", 10, 10)
    with pytest.raises(SystemExit) as e:
        main(["score", "--checkpoint", str(finished), str(img), "--batch-size", "99999999999999999999"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "Traceback" not in err


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**70)])
def test_data_describe_refuses_split_seeds_that_train_refuses(capsys, seed):
    assert main(["data", "describe", "--benchmark", "coil100", "--split-seed", seed]) == 2
    one_line_error(capsys, "--split-seed")


def test_resume_from_a_checkpoint_without_its_rng_is_one_line(run_copy, capsys):
    latest = run_copy / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    del state["rng"]
    torch.save(state, latest)
    (run_copy / "metrics.json").unlink()
    assert main([*SYNTH, "--iterations", "6", "--out", str(run_copy), "--resume"]) == 2
    one_line_error(capsys, "resume", "rng")


@pytest.mark.parametrize(
    "name, value, good",
    [("overrides", "abc", None), ("overrides", "n_dis=3 batch_size=16", {"n_dis": "3", "batch_size": "16"})]
    + [("overrides", '{"n_dis": 3}', {"n_dis": 3}), ("threads", "abc", None), ("threads", 10**6, None)]
    + [("threads", "1", 1)],
)
def test_notebook_parameters_are_checked_by_name(name, value, good):
    from piad.errors import ConfigError
    from piad.run.config import overrides_parameter, threads_parameter

    parse = overrides_parameter if name == "overrides" else threads_parameter
    if good is None:
        with pytest.raises(ConfigError, match=f"parameter '{name}'"):
            parse(value)
    else:
        assert parse(value) == good


def test_the_training_notebook_checks_its_threads_parameter():
    nb = json.loads((REPO / "notebooks" / "train_evaluate.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "threads_parameter(threads)" in code and "int(threads)" not in code


# 16 -----------------------------------------------------------------------------------------------------------------
def test_csv_inside_a_file_names_the_file(finished, tmp_path, capsys):
    img = image(tmp_path / "x.png", 10, 10)
    (tmp_path / "file").write_text("x")
    assert main(["score", "--checkpoint", str(finished), str(img), "--csv", str(tmp_path / "file" / "x.csv")]) == 2
    err = one_line_error(capsys, "--csv", "is a file, not a folder")
    assert "exists and is not a folder" not in err


@pytest.mark.parametrize("kind", ["file", "missing", "plain folder"])
def test_curve_out_of_the_wrong_kind(tmp_path, capsys, kind):
    out = tmp_path / "x"
    if kind == "file":
        out.write_text("x")
    elif kind == "plain folder":
        out.mkdir()
    assert main(["curve", "--out", str(out), "--device", "cpu"]) == 2
    err = one_line_error(capsys, str(out))
    assert "train the run first" not in err


def test_score_of_a_missing_path_is_bad_input(finished, capsys):
    assert main(["score", "--checkpoint", str(finished), "/nonexistent/x.png"]) == 2
    err = one_line_error(capsys, "/nonexistent/x.png", "does not exist")
    assert "Delete or replace" not in err


def test_a_diverged_run_is_not_resumed(run_copy, capsys):
    from piad.run.rundir import write_diverged

    write_diverged(run_copy, "training diverged at iteration 3: critic_x = nan", 3, "critic_x")
    for extra in ([], ["--resume"]):
        assert main([*SYNTH, "--iterations", "6", "--out", str(run_copy), *extra]) == 2
        err = one_line_error(capsys, "diverged", "--overwrite", "lr_d", "lr_eg")
        assert "Pass resume=True" not in err and "--resume to continue" not in err


def test_a_symlink_loop_in_a_folder_dataset_is_bad_input(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "data", bad=False)
    (root / "train" / "loop.png").symlink_to(root / "train" / "loop.png")
    args = ["train", "--benchmark", "folder", "--data-root", str(root), "--iterations", "1", "--device", "cpu"]
    assert main([*args, "--no-progress", "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "loop.png", "loop")


@pytest.mark.parametrize(
    "args, needle",
    [(["--benchmarks", "nope"], "--benchmarks nope"), (["--classes", "99"], "--classes 99")]
    + [(["--runs", "7"], "--runs 7"), (["--iterations", "0"], "--iterations 0")],
)
def test_reproduce_refuses_a_selection_of_no_runs(tmp_path, capsys, args, needle):
    rc = main(["reproduce", "--profile", "smoke", "--dry-run", "--results-dir", str(tmp_path / "r"), *args])
    assert rc == 2
    one_line_error(capsys, needle)


def test_summaries_name_a_damaged_metrics_or_curve_file(tmp_path, capsys):
    from piad.experiments.learning_curves import collect_curves
    from piad.experiments.runs import collect

    for i, (metrics, curve) in enumerate([("[1, 2]", None), ('{"status": "ok", "roc_auc": 0.5}', b"\xff\x00garbage")]):
        d = tmp_path / "digits" / "0" / str(i)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"benchmark": "digits", "normal_class": 0, "run": i}))
        (d / "metrics.json").write_text(metrics)
        if curve is not None:
            (d / "curve.csv").write_bytes(curve)
    collect(tmp_path)
    collect_curves(tmp_path)
    out = capsys.readouterr().out
    assert str(tmp_path / "digits" / "0" / "0" / "metrics.json") in out
    assert str(tmp_path / "digits" / "0" / "1" / "curve.csv") in out


def test_a_full_data_cache_is_one_line_not_a_python_warning(tmp_path, monkeypatch, capsys):
    import errno

    from piad.data import _cache

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_cache.tempfile, "mkstemp", full)
    _cache.save_atomic({"x": 1}, tmp_path / "c.pt")
    err = capsys.readouterr().err.strip()
    assert err.startswith("piad: warning:") and "disk is full" in err and len(err.splitlines()) == 1


def test_n_dis_is_bounded():
    from piad.errors import ConfigError

    with pytest.raises(ConfigError, match="n_dis"):
        make_config("synthetic", {"n_dis": 100000000})


def test_a_stop_request_is_honoured_inside_a_long_critic_loop(tmp_path, monkeypatch):
    from piad.errors import TrainingInterrupted
    from piad.run import fitloop

    monkeypatch.setattr(fitloop, "STOP_GRACE_S", 0.0)
    steps = []
    step = Trainer.critic_step

    def critic_step(self):
        step(self)
        steps.append(self.iteration)
        if len(steps) == 30 + 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the 3rd of 30 critic steps of iteration 2

    monkeypatch.setattr(Trainer, "critic_step", critic_step)
    with pytest.raises(TrainingInterrupted, match="abandoned"):
        train(tiny(n_dis=30, checkpoint_every=1), tmp_path / "run", progress=False)
    assert len(steps) == 30 + 3  # stopped right after that critic step, not after 27 more
    assert torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)["iteration"] == 1


def test_results_copies_follow_the_umask(tmp_path):
    from piad.experiments.jobs import tidy_results

    (tmp_path / "a.csv").write_text("x")
    os.chmod(tmp_path / "a.csv", 0o600)
    old = os.umask(0o027)
    try:
        tidy_results(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o640


def test_an_ensemble_overwrite_that_fails_keeps_every_run(tmp_path):
    from piad.run.ensemble import EnsembleTrainer, train_ensemble

    cfgs = [tiny(run=r, iterations=2) for r in (0, 1)]
    outs = [tmp_path / f"m{r}" for r in (0, 1)]
    train_ensemble(cfgs, outs)
    before = [files_of(o) for o in outs]
    mp = pytest.MonkeyPatch()
    step = EnsembleTrainer.train_iteration

    def boom(self):
        if self.iteration == 1:
            raise Boom("the device failed")
        step(self)

    mp.setattr(EnsembleTrainer, "train_iteration", boom)
    try:
        with pytest.raises(Boom):
            train_ensemble([tiny(run=r, iterations=2, seed=7 + r) for r in (0, 1)], outs, overwrite=True)
    finally:
        mp.undo()
    assert [files_of(o) for o in outs] == before


def test_reproduce_status_reads_result_files_of_any_shape(tmp_path, capsys):
    from piad.experiments.grid import NOTEBOOK

    res, work = tmp_path / "results", tmp_path / "runs"
    for i, text in enumerate(["[1, 2]", '"str"', '{"status": "ok", "iterations": "abc"}', "null"]):
        d = res / "digits" / str(i) / "0"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(text)
        (d / NOTEBOOK).write_text('{"cells": "x"}')
        w = work / "digits" / str(i) / "0"
        w.mkdir(parents=True)
        (w / ".submitit_job.json").write_text("[1]")
        (w / NOTEBOOK).write_text('{"cells": "x"}')
        (w / "metrics.json").write_text(text)
    (work / "submitit").mkdir()
    (work / "submitit" / "submitted.json").write_text('{"digits/0/0": 5}')
    args = ["reproduce", "--profile", "smoke", "--status", "--results-dir", str(res), "--work-dir", str(work)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and out.startswith("profile smoke:")
