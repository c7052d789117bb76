"""Faults a hostile test of the command line found: nothing is lost, wrong models are refused, every failure is one
line naming the file or key (exit 2 for bad input, 1 for I/O faults), never a traceback."""

import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, roc_auc_from_scores, tiny
from PIL import Image

from piad.cli import main
from piad.errors import CheckpointError, ConfigError, PiadIOError, TrainingDiverged
from piad.run.checkpoint import load_checkpoint
from piad.run.config import make_config
from piad.run.rundir import atomic_write_text
from piad.run.training import Trainer, train

SYNTH = ["train", "--benchmark", "synthetic", "--device", "cpu", "--no-progress"]


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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


def bomb_png(path: Path, size: int = 20000) -> Path:
    """A tiny PNG whose header claims size x size pixels (PIL refuses it as a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * (size + 1)))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A run whose loss became NaN at iteration 3 (its checkpoint of iteration 2 is kept)."""
    run = tmp_path_factory.mktemp("diverged") / "run"
    mp = pytest.MonkeyPatch()
    original = Trainer.reconstruction_loss
    mp.setattr(
        Trainer,
        "reconstruction_loss",
        lambda self, x, idx, rec: original(self, x, idx, rec) * (float("nan") if self.iteration == 2 else 1),
    )
    try:
        with pytest.raises(TrainingDiverged):
            train(tiny(), run, progress=False)
    finally:
        mp.undo()
    return run


# 1 ------------------------------------------------------------------------------------------------------------------
def test_refused_overwrite_loses_nothing(run_copy, capsys):
    before = files_of(run_copy)
    rc = main(
        [*SYNTH, "--iterations", "4", "--out", str(run_copy), "--overwrite", "--set", "vgg_weights=/missing/vgg.pth"]
    )
    assert rc == 2
    one_line_error(capsys, "vgg_weights", "/missing/vgg.pth")
    assert files_of(run_copy) == before


# 2 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("normal_class", 5), ("channels", 3)])
def test_a_checkpoint_of_another_config_is_refused_by_evaluate_and_score(run_copy, tmp_path, capsys, key, value):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg[key] = value  # the run's config; its checkpoint was written by another
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert main(["evaluate", "--out", str(run_copy), "--device", "cpu"]) == 2
    one_line_error(capsys, "another config", key, "latest.pt")
    img = image(tmp_path / "x.png", 20, 20)
    assert main(["score", "--checkpoint", str(run_copy), str(img), "--device", "cpu"]) == 2
    one_line_error(capsys, "another config", key)


# 3 ------------------------------------------------------------------------------------------------------------------
def test_oversized_image_is_skipped_by_score(finished, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    image(imgs / "ok.png", 20, 30)
    bomb_png(imgs / "huge.png")
    assert (imgs / "huge.png").stat().st_size < 100_000
    assert main(["score", "--checkpoint", str(finished), str(imgs), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "ok.png" in out and "huge.png" not in out
    assert "skipped" in err and "huge.png" in err and "too large" in err and "Traceback" not in err


def test_oversized_image_in_training_data_is_one_line_error(tmp_path, capsys):
    root = tmp_path / "data"
    for i in range(3):
        image(root / "train" / f"{i}.png", 8, 8, seed=i)
    image(root / "test" / "normal" / "0.png", 8, 8, seed=5)
    image(root / "test" / "odd" / "0.png", 8, 8, seed=6)
    bomb_png(root / "train" / "huge.png")
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--benchmark",
            "folder",
            "--data-root",
            str(root),
            "--iterations",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 2
    one_line_error(capsys, "huge.png", "too large")
    assert not out.exists()


# 4 ------------------------------------------------------------------------------------------------------------------
def _fd_path(fd) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_full_disk_during_checkpoint_write_is_one_line_and_keeps_the_old_checkpoint(run_copy, monkeypatch, capsys):
    fsync = os.fsync

    def full(fd):
        if ".latest.pt." in _fd_path(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    rc = main([*SYNTH, "--iterations", "6", "--out", str(run_copy), "--resume"])
    assert rc == 1
    one_line_error(capsys, "disk is full", str(run_copy / "checkpoints" / "latest.pt"))
    monkeypatch.undo()
    assert int(load_checkpoint(run_copy / "checkpoints" / "latest.pt")["iteration"]) == 4
    assert not (run_copy / ".lock").exists() and not list(run_copy.rglob("*.tmp"))


def test_full_disk_when_locking_is_one_line_and_leaves_no_lock_file(tmp_path, monkeypatch, capsys):
    write = os.write

    def full(fd, data):
        if _fd_path(fd).endswith("/.lock"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(os, "write", full)
    out = tmp_path / "run"
    assert main([*SYNTH, "--iterations", "2", "--out", str(out)]) == 1
    one_line_error(capsys, "disk is full", ".lock")
    assert not out.exists()


# 5, 6 ---------------------------------------------------------------------------------------------------------------
def test_anomaly_map_names_mirror_relative_paths_and_never_collide(finished, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    for i, rel in enumerate(["train/0000.png", "test/normal/0000.png", "a.png", "a.jpg"]):
        image(imgs / rel, 12, 12, seed=i)
    maps = tmp_path / "maps"
    assert main(["score", "--checkpoint", str(finished), str(imgs), "--maps", str(maps), "--device", "cpu"]) == 0
    written = sorted(str(p.relative_to(maps)) for p in maps.rglob("*_map.png"))
    assert len(written) == 4 and len(set(written)) == 4
    assert "train/0000_map.png" in written and "test/normal/0000_map.png" in written
    assert (
        np.asarray(Image.open(maps / "train/0000_map.png")) != np.asarray(Image.open(maps / "test/normal/0000_map.png"))
    ).any()


def test_anomaly_map_colours_are_fixed_by_the_model_with_a_colour_bar(finished, tmp_path):
    from piad.data import load_for_config
    from piad.run.evaluation import AnomalyScorer

    a = image(tmp_path / "in" / "a.png", 40, 60, seed=1)
    noise = tmp_path / "in2" / "noise.png"
    noise.parent.mkdir()
    Image.fromarray(np.random.default_rng(9).choice([0, 255], (16, 16)).astype(np.uint8)).save(noise)
    alone, together = tmp_path / "alone", tmp_path / "together"
    assert main(["score", "--checkpoint", str(finished), str(a), "--maps", str(alone), "--device", "cpu"]) == 0
    assert (
        main(["score", "--checkpoint", str(finished), str(a), str(noise), "--maps", str(together), "--device", "cpu"])
        == 0
    )
    one = np.asarray(Image.open(alone / "a_map.png"))
    assert one.shape[:2] == (40, 60)  # the input image's size
    assert np.array_equal(one, np.asarray(Image.open(together / "in" / "a_map.png")))
    assert Image.open(alone / "colorbar.png").size[1] > 100
    # the scale stored with the checkpoint is the 99th percentile of per-location errors over training images
    scorer = AnomalyScorer.from_checkpoint(finished / "checkpoints" / "latest.pt")
    train_x = load_for_config(scorer.cfg).train[:256]
    expected = np.quantile(scorer.anomaly_map(train_x).flatten().numpy(), 0.99)
    assert scorer.map_scale["hi"] == pytest.approx(expected, rel=1e-4)
    scorer.map_scale = None  # a checkpoint of an older piad: derived from the run's data
    assert scorer.map_scale_top() == pytest.approx(expected, rel=1e-4)


# 7 ------------------------------------------------------------------------------------------------------------------
def test_output_paths_of_the_wrong_kind_are_one_line_errors(finished, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main([*SYNTH, "--iterations", "2", "--out", str(a_file)]) == 2
    one_line_error(capsys, str(a_file))
    img = image(tmp_path / "x.png", 10, 10)
    assert main(["score", "--checkpoint", str(finished), str(img), "--csv", str(tmp_path)]) == 2
    one_line_error(capsys, "--csv", "folder")
    assert main(["score", "--checkpoint", str(finished), str(img), "--maps", str(a_file)]) == 2
    one_line_error(capsys, "--maps", "file")


def test_output_in_a_read_only_folder_is_one_line_permission_error(tmp_path, monkeypatch, capsys):
    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    out = tmp_path / "ro" / "run"
    assert main([*SYNTH, "--iterations", "2", "--out", str(out)]) == 1
    one_line_error(capsys, "permission denied", str(out))


# 8 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("weight_decay", "-1"),
        ("weight_decay", "inf"),
        ("eps_drift", "nan"),
        ("eps_drift", "-0.5"),
        ("seed", "-1"),
        ("split_seed", "-1"),
    ],
)
def test_every_numeric_key_is_validated(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        make_config("synthetic", {key: value})


# 9, 10 --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["0", "-3"])
def test_score_batch_size_must_be_positive(finished, tmp_path, capsys, size):
    img = image(tmp_path / "x.png", 10, 10)
    with pytest.raises(SystemExit) as e:
        main(["score", "--checkpoint", str(finished), str(img), "--batch-size", size])
    assert e.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_score_on_a_folder_without_images_is_an_error(finished, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["score", "--checkpoint", str(finished), str(tmp_path / "empty")]) == 2
    one_line_error(capsys, "no image files", "empty")


# 11 -----------------------------------------------------------------------------------------------------------------
CONTENDER = """
import os, sys, time
from pathlib import Path
from piad.errors import RunDirectoryError
from piad.run.rundir import RunLock
run, deadline = Path(sys.argv[1]), time.time() + float(sys.argv[2])
held = overlaps = 0
while time.time() < deadline:
    try:
        with RunLock(run):
            held += 1
            try:
                os.close(os.open(run / "holder", os.O_CREAT | os.O_EXCL))   # fails if another process holds it too
            except FileExistsError:
                overlaps += 1
                continue
            time.sleep(0.001)
            os.unlink(run / "holder")
    except RunDirectoryError:
        pass
print(held, overlaps)
"""


def test_run_lock_has_one_holder_at_a_time_under_contention(tmp_path):
    (tmp_path / "run").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path / "run"), "1.5"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert sum(h for h, _ in results) > 20  # the lock changed hands many times
    assert sum(o for _, o in results) == 0, results


# 12 -----------------------------------------------------------------------------------------------------------------
def test_relative_paths_are_stored_absolute(tmp_path, monkeypatch):
    from piad.run.evaluation import evaluate
    from piad.run.resources import resolve_vgg_state_dict

    work = tmp_path / "work"
    (work / "weights").mkdir(parents=True)
    torch.save(resolve_vgg_state_dict("random", "relu2_1")[0], work / "weights" / "vgg.pth")
    monkeypatch.chdir(work)
    train(tiny(vgg_weights="weights/vgg.pth", data_root="weights"), "run", progress=False)
    saved = json.loads((work / "run" / "config.json").read_text())
    assert saved["vgg_weights"] == str(work / "weights" / "vgg.pth") and saved["data_root"] == str(work / "weights")
    here = evaluate("run")["roc_auc"]
    monkeypatch.chdir(tmp_path)  # elsewhere the same weights and data are found: the same ROC AUC
    assert evaluate(work / "run")["roc_auc"] == here == pytest.approx(roc_auc_from_scores(work / "run"), abs=1e-6)


# 13 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_result_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_run_files_are_readable_by_others_under_the_usual_umask(finished):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("config.json", "metrics.json", "scores.csv", "checkpoints/latest.pt", "samples/latest.png"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_unreadable_checkpoint_says_permission_denied(finished, monkeypatch):
    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(PiadIOError, match="permission denied") as e:
        load_checkpoint(finished / "checkpoints" / "latest.pt")
    assert "truncated" not in str(e.value) and e.value.exit_code == 1


# 14 -----------------------------------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for SIGKILL: the process stops in the middle of a write."""


def test_snapshot_killed_mid_write_is_written_on_resume_and_temp_files_are_removed(tmp_path, monkeypatch):
    import piad.run.rundir

    write = piad.run.rundir.atomic_write_bytes

    def killed_on_snapshot(path, data):
        path = Path(path)
        if path.name == "iter_0000004.pt":
            (path.parent / f".{path.name}.x1y2z3.tmp").write_bytes(data[: len(data) // 2])
            raise Killed()
        return write(path, data)

    monkeypatch.setattr(piad.run.rundir, "atomic_write_bytes", killed_on_snapshot)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny(), run, progress=False)
    monkeypatch.undo()
    (run / "checkpoints" / ".latest.pt.a1b2c3.tmp").write_bytes(b"\0" * 2_000_000)
    train(tiny(), run, resume=True, progress=False)
    ckpt = run / "checkpoints"
    snap, latest = load_checkpoint(ckpt / "iter_0000004.pt"), load_checkpoint(ckpt / "latest.pt")
    assert snap["iteration"] == latest["iteration"] == 4
    for net in latest["networks"]:
        for k, v in latest["networks"][net].items():
            assert torch.equal(snap["networks"][net][k], v)
    assert not list(run.rglob("*.tmp"))


# 15 -----------------------------------------------------------------------------------------------------------------
def test_divergence_before_any_checkpoint_does_not_claim_one_is_kept(tmp_path, monkeypatch):
    original = Trainer.reconstruction_loss
    monkeypatch.setattr(Trainer, "reconstruction_loss", lambda *a: original(*a) * float("nan"))
    with pytest.raises(TrainingDiverged) as e:
        train(tiny(), tmp_path / "run", progress=False)
    assert "kept" not in str(e.value) and "No checkpoint" in str(e.value)


def test_divergence_names_the_kept_checkpoint(diverged):
    err = json.loads((diverged / "metrics.json").read_text())["error"]
    assert "latest.pt, iteration 2) is kept" in err


def test_evaluate_on_a_diverged_run_does_not_say_resume(diverged, capsys):
    assert main(["evaluate", "--out", str(diverged), "--device", "cpu"]) == 2
    err = one_line_error(capsys, "diverged", "--overwrite")
    assert "Resume it" not in err


def test_score_on_a_diverged_run_warns(diverged, tmp_path, capsys):
    img = image(tmp_path / "x.png", 10, 10)
    assert main(["score", "--checkpoint", str(diverged), str(img), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "diverged" in err


def test_refused_run_leaves_no_empty_directory(tmp_path, capsys):
    out = tmp_path / "new"
    assert main([*SYNTH, "--iterations", "2", "--out", str(out), "--set", "vgg_weights=/missing/vgg.pth"]) == 2
    one_line_error(capsys, "vgg_weights")
    assert not out.exists()


def test_checkpoint_errors_are_short(finished, tmp_path):
    from piad.run.evaluation import AnomalyScorer

    state = torch.load(finished / "checkpoints" / "latest.pt", weights_only=True)
    cfg = json.loads(state["config"])
    cfg["e_widths"] = [4, 4, 4]  # the networks no longer match the saved config
    state["config"] = json.dumps(cfg)
    torch.save(state, tmp_path / "altered.pt")
    with pytest.raises(CheckpointError) as e:
        AnomalyScorer.from_checkpoint(tmp_path / "altered.pt")
    msg = str(e.value)
    assert "altered.pt" in msg and len(msg.splitlines()) == 1 and len(msg) < 400, msg
    trainer = Trainer(make_config("synthetic", {"e_widths": "4,4,4"}), tmp_path / "t", progress=False)
    with pytest.raises(CheckpointError) as e:
        trainer.load_state_dict(state)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and len(msg) < 400, msg
