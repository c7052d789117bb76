"""The run directory keeps what it holds (book: Reproduce; piad.run.rundir): a write interrupted between its
temporary file and the final name leaves the old file, and finished results are not written over."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

import piad.run.rundir as rundir
from piad.errors import RunDirectoryError
from piad.run.checkpoint import load_checkpoint, save_run_checkpoints
from piad.run.config import make_config
from piad.run.training import train


class Killed(BaseException):
    """Stands for SIGKILL: the process stops at this point (a BaseException, so no `except Exception` handles it)."""


@pytest.fixture
def kill_at_rename(monkeypatch):
    """`arm(name)`: from now on, os.replace and os.rename onto a file called `name` stop the process; what the
    temporary file held at that moment is recorded in `seen` (source, destination, bytes)."""
    seen = []
    real_replace, real_rename = os.replace, os.rename

    def arm(name: str):
        def stopping(real):
            def rename(src, dst, *a, **k):
                if os.path.basename(os.fspath(dst)) != name:
                    return real(src, dst, *a, **k)
                with open(src, "rb") as f:
                    seen.append((os.fspath(src), os.fspath(dst), f.read()))
                raise Killed()

            return rename

        monkeypatch.setattr(os, "replace", stopping(real_replace))
        monkeypatch.setattr(os, "rename", stopping(real_rename))

    return arm, seen


def test_a_write_killed_before_its_rename_leaves_the_old_file(tmp_path, kill_at_rename):
    """The new content goes, complete, to a temporary file in the same folder, and reaches the final name only by
    a rename; a write that does not end in a rename (a copy onto the target, an in-place write) fails here."""
    arm, seen = kill_at_rename
    target = tmp_path / "metrics.json"
    target.write_text('{"roc_auc": 0.75}\n')
    arm("metrics.json")
    with pytest.raises(Killed):
        rundir.atomic_write_json(target, {"roc_auc": 0.5})
    assert target.read_text() == '{"roc_auc": 0.75}\n'  # the old file, intact
    ((src, dst, data),) = seen
    assert dst == str(target) and os.path.dirname(src) == str(tmp_path) and src != dst  # same folder: atomic
    assert json.loads(data) == {"roc_auc": 0.5}  # the temporary file was complete before the rename


@pytest.mark.parametrize("killed_on", ["iter_0000008.pt", "latest.pt"])
def test_a_checkpoint_killed_before_its_rename_leaves_the_previous_checkpoint(tmp_path, kill_at_rename, killed_on):
    """Killed while writing iteration 8's snapshot or its latest.pt: latest.pt still holds iteration 4, whole."""
    arm, seen = kill_at_rename
    run = tmp_path / "run"
    old = {"iteration": 4, "config": "{}", "networks": {"generator": {"w": torch.ones(3)}}}
    new = {"iteration": 8, "config": "{}", "networks": {"generator": {"w": torch.zeros(3)}}}
    save_run_checkpoints(run, old)
    arm(killed_on)
    with pytest.raises(Killed):
        save_run_checkpoints(run, new)
    latest = load_checkpoint(rundir.latest_checkpoint(run))
    assert latest["iteration"] == 4 and torch.equal(latest["networks"]["generator"]["w"], torch.ones(3))
    assert load_checkpoint(rundir.snapshot_path(run, 4))["iteration"] == 4
    assert rundir.snapshot_path(run, 8).exists() == (killed_on == "latest.pt")  # the snapshot goes first
    assert [os.path.basename(dst) for _, dst, _ in seen] == [killed_on]


def test_finished_results_are_refused_when_the_checkpoints_are_gone(tmp_path):
    """A run directory with evaluated results (metrics.json) and no checkpoint: a new training into it is refused
    before it writes anything, so no old metrics.json ends up beside a new config.json."""
    out = tmp_path / "run"
    out.mkdir()
    metrics = json.dumps({"status": "ok", "roc_auc": 0.71, "iterations": 20})
    (out / "metrics.json").write_text(metrics)
    (out / "config.json").write_text('{"the": "config of the finished run"}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunDirectoryError, match="finished results"):
        train(make_config("synthetic", {"iterations": 2}), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, nothing removed
    with pytest.raises(RunDirectoryError, match="finished results"):
        rundir.check_run_directory(out, resume=False, overwrite=False)
    rundir.check_run_directory(out, resume=False, overwrite=True)  # what --overwrite is for


def test_a_diverged_runs_record_is_no_finished_result(tmp_path):
    out = tmp_path / "run"
    rundir.write_diverged(out, "training diverged at iteration 7: loss = nan", 7, "loss")
    assert rundir.diverged_status(out)["iteration"] == 7 and not rundir.has_results(out)
    rundir.check_run_directory(out, resume=False, overwrite=False)  # may be trained again


def test_resuming_finished_results_without_a_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    old = json.dumps({"status": "ok", "roc_auc": 0.71, "iterations": 20})
    (out / "metrics.json").write_text(old)
    with pytest.raises(RunDirectoryError, match="no checkpoint to resume from.*--overwrite"):
        train(make_config("synthetic", {"iterations": 1, "n_dis": 1}), out, resume=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # nothing written beside the old results
    assert (out / "metrics.json").read_text() == old
    rundir.check_run_directory(out, resume=False, overwrite=True)  # --overwrite may train it again


def _run_files(folder, tag):
    folder.mkdir(parents=True, exist_ok=True)
    for name in (rundir.CONFIG, rundir.METRICS, rundir.LOG):
        (folder / name).write_text(f"{tag} {name}")
    (folder / rundir.CHECKPOINTS).mkdir(exist_ok=True)
    (folder / rundir.CHECKPOINTS / "last.pt").write_text(tag)


def _tags(folder):
    return {name: (folder / name).read_text().split()[0] for name in (rundir.CONFIG, rundir.METRICS, rundir.LOG)}


def test_commit_overwrite_replaces_the_run_and_keeps_other_files(tmp_path):
    _run_files(tmp_path, "old")
    (tmp_path / "notes.txt").write_text("mine")
    staging = rundir.begin_overwrite(tmp_path)
    _run_files(staging, "new")
    rundir.commit_overwrite(tmp_path)
    assert set(_tags(tmp_path).values()) == {"new"} and (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / rundir.CHECKPOINTS / "last.pt").read_text() == "new"
    assert not (tmp_path / rundir.STAGING).exists() and not (tmp_path / rundir.REPLACED).exists()


@pytest.mark.parametrize("finished", [True, False])
def test_recovery_completes_a_swap_of_a_finished_new_run_and_undoes_an_unfinished_one(tmp_path, finished):
    """A kill in the middle of the swap: half the old entries already in REPLACED, the new run in STAGING."""
    _run_files(tmp_path, "old")
    staging, replaced = tmp_path / rundir.STAGING, tmp_path / rundir.REPLACED
    _run_files(staging, "new")
    if finished:
        (staging / rundir.COMPLETE).write_text("")
    replaced.mkdir()
    os.replace(tmp_path / rundir.METRICS, replaced / rundir.METRICS)
    rundir.recover_overwrite(tmp_path)
    assert set(_tags(tmp_path).values()) == {"new" if finished else "old"}
    assert not staging.exists() and not replaced.exists()


def test_the_lock_probe_never_blocks_on_a_fifo(tmp_path):
    """A FIFO where the lock file should be: opened without blocking (O_NONBLOCK), so status cannot hang."""
    import threading

    os.mkfifo(tmp_path / rundir.LOCK)
    done = []
    t = threading.Thread(target=lambda: done.append(rundir.lock_holder(tmp_path)), daemon=True)
    t.start()
    t.join(5)
    blocked = not done
    if blocked:  # unblock the probe before failing: open the FIFO's other end
        fd = os.open(tmp_path / rundir.LOCK, os.O_WRONLY | os.O_NONBLOCK)
        t.join(5)
        os.close(fd)
    assert not blocked, "lock_holder blocked on a FIFO"
    assert done == [None]  # nobody holds a lock on it


def test_a_resume_keeps_the_log_rows_up_to_its_checkpoint_and_drops_the_later_ones(tmp_path):
    for name in (rundir.LOG, rundir.POLICY):
        rows = ["iteration,value", *(f"{i},{i / 10}" for i in (10, 20, 30, 40)), ""]
        (tmp_path / name).write_text("\n".join(rows))
    rundir.truncate_logs(tmp_path, 30)
    for name in (rundir.LOG, rundir.POLICY):
        assert (tmp_path / name).read_text() == "iteration,value\n10,1.0\n20,2.0\n30,3.0\n"


def test_snapshots_with_every_are_the_multiples_only(tmp_path):
    (tmp_path / rundir.CHECKPOINTS).mkdir()
    for i in (10, 20, 25, 30):
        rundir.snapshot_path(tmp_path, i).write_bytes(b"")
    assert [i for i, _ in rundir.snapshots(tmp_path, every=10)] == [10, 20, 30]
    assert [i for i, _ in rundir.snapshots(tmp_path)] == [10, 20, 25, 30]


@pytest.mark.parametrize(("content", "shown"), [("4242\n", "process 4242"), ("", "process ?")])
def test_a_held_lock_names_its_owner_or_a_question_mark(tmp_path, content, shown):
    import fcntl

    (tmp_path / rundir.LOCK).write_text(content)
    fd = os.open(tmp_path / rundir.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another owner holds it
    try:
        with pytest.raises(RunDirectoryError, match=rf"in use by {re.escape(shown)} \("):
            rundir.RunLock(tmp_path).acquire()
    finally:
        os.close(fd)


def test_clear_run_removes_every_run_entry_and_nothing_else(tmp_path):
    _run_files(tmp_path, "old")
    (tmp_path / "notes.txt").write_text("mine")
    rundir.clear_run(tmp_path)
    assert not rundir.holds_run(tmp_path) and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_kept_curve_points_read_back_as_written_and_a_new_point_replaces_its_iteration(tmp_path):
    rundir.keep_curve_points(tmp_path, {8: (0.9125, "1024:17"), 4: (0.5, "512:3")})
    rundir.keep_curve_points(tmp_path, {8: (0.875, "2048:99")})  # the snapshot at 8 was scored again
    assert rundir.curve_points(tmp_path) == {4: (0.5, "512:3"), 8: (0.875, "2048:99")}
    rows = (tmp_path / rundir.CURVE_POINTS).read_text().splitlines()
    assert rows == ["iteration,roc_auc,snapshot", "4,0.5,512:3", "8,0.875,2048:99"]


def test_policy_rows_hold_each_layers_latest_stds_and_lambda_of_e_and_g(tmp_path):
    """policy.csv (book: Method > Weight policy): one row per layer of E and of G with the last recorded gradient
    stds and lambda; the header once, rows appended at every record."""
    import csv
    from types import SimpleNamespace

    pol_e = SimpleNamespace(
        adv=[torch.tensor([9.0, 9.0]), torch.tensor([0.5, 0.25])],
        rec=[torch.tensor([9.0, 9.0]), torch.tensor([2.0, 4.0])],
        weight=torch.tensor(3.0),
    )
    pol_g = SimpleNamespace(adv=[torch.tensor([1.5])], rec=[torch.tensor([0.125])], weight=torch.tensor(0.75))
    rundir.append_policy_rows(tmp_path, 10, pol_e, pol_g)
    rundir.append_policy_rows(tmp_path, 20, pol_e, pol_g)
    with open(tmp_path / rundir.POLICY, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "network", "layer", "adv_std", "rec_std", "lambda"]
    body = [
        ["10", "E", "0", "0.5", "2", "3"],
        ["10", "E", "1", "0.25", "4", "3"],
        ["10", "G", "0", "1.5", "0.125", "0.75"],
    ]
    assert rows[1:] == body + [["20", *r[1:]] for r in body]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc/self/status (not Linux)")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_the_umask_is_read_without_changing_it_where_linux_shows_it(monkeypatch, mask):
    """Setting the umask to read it would race with other threads creating files: on Linux it is read from /proc."""
    old = os.umask(mask)
    try:

        def no_umask(*a):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(rundir.os, "umask", no_umask)
        assert rundir.current_umask() == mask
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_a_lock_whose_file_was_removed_releases_without_error_and_frees_the_folder(tmp_path):
    """The run folder's .lock may be deleted while held (a folder cleared by hand): leaving the run still works."""
    with rundir.RunLock(tmp_path) as lock:
        lock.path.unlink()
    assert not lock.held
    with rundir.RunLock(tmp_path) as again:  # and the folder can be locked again
        assert again.held


def test_a_failed_overwrite_says_the_old_run_is_kept_in_each_errors_own_words(tmp_path):
    """overwrite_beside: whatever stops the new run, the old run's files stay byte-identical and the error says so,
    as one sentence that reads on from the error's own words."""
    from piad.errors import PiadError, TrainingDiverged, TrainingInterrupted

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"old": true}')
    kept = f"the new run was discarded and {str(out)!r} keeps its previous run unchanged"
    diverged = TrainingDiverged(3, "rec", float("nan"))
    cases = [
        (diverged, f"{diverged.headline()}. T{kept[1:]}; train again with {diverged.advice()}."),
        (
            TrainingInterrupted("stop requested; resume it"),
            f"interrupted (stop requested); {kept}. Run the command again",
        ),
        (PiadError("the data is unreadable."), f"the data is unreadable; {kept}."),
    ]
    for error, message in cases:
        with pytest.raises(type(error)) as raised:
            with rundir.overwrite_beside(out, overwrite=True) as new:
                assert new != out and new.parent == out
                (new / "config.json").write_text('{"new": true}')
                raise error
        assert str(raised.value).startswith(message) and raised.value.overwrite_noted
        assert sorted(p.name for p in out.iterdir()) == ["config.json"]
        assert (out / "config.json").read_text() == '{"old": true}'


def test_json_files_are_written_with_sorted_keys_two_space_indent_and_a_final_newline(tmp_path):
    """The same content gives the same bytes whatever order a dict was built in (committed results diff cleanly)."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    rundir.atomic_write_json(a, {"z": 1, "a": {"y": 2, "b": 3}, "path": tmp_path})
    rundir.atomic_write_json(b, {"path": tmp_path, "a": {"b": 3, "y": 2}, "z": 1})
    text = a.read_text()
    assert text == b.read_text() and text.endswith("}\n")
    assert text.index('"a"') < text.index('"path"') < text.index('"z"') and text.index('"b"') < text.index('"y"')
    assert json.loads(text) == {"a": {"b": 3, "y": 2}, "path": str(tmp_path), "z": 1}  # default=str for paths
    assert '\n  "a": {\n    "b": 3,' in text
