"""`piad reproduce --status`: each state of a run read from its result and work folders (piad.experiments.status),
one folder layout per state, every state of STATES covered."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from piad.experiments import status
from piad.experiments.grid import NOTEBOOK
from piad.run.rundir import RunLock, write_diverged

ITERATIONS = 10


def finished(res, work):
    res.mkdir(parents=True)
    (res / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.6, "iterations": ITERATIONS}))
    (res / NOTEBOOK).write_text("{}")


HELD: list[RunLock] = []  # locks taken by a case, released after it


def running(res, work):
    work.mkdir(parents=True)
    HELD.append(RunLock(work).acquire())  # this process holds the run's lock (the lock tells, not the PID in its file)
    (work / "log.csv").write_text("iteration,seconds\n3,0.1\n")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def with_checkpoint(work):
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "latest.pt").write_bytes(b"x")
    (work / ".lock").write_text(str(dead_pid()))  # the process that held the lock is gone


def diverged(res, work):
    """Training diverged after a checkpoint: metrics.json says so, the kept checkpoint is still there."""
    with_checkpoint(work)
    write_diverged(work, "training diverged at iteration 7: rec = nan", 7, "rec")


def notebook_error(res, work):
    work.mkdir(parents=True)
    error = {"output_type": "error", "ename": "DataError", "evalue": "no MNIST files", "traceback": []}
    (work / NOTEBOOK).write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [error]}]}))


def interrupted(res, work):
    with_checkpoint(work)
    (work / "log.csv").write_text("iteration,seconds\n5,0.1\n")


def missing(res, work):
    pass


def stale_results(res, work):
    res.mkdir(parents=True)
    (res / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.6, "iterations": 4}))
    (res / NOTEBOOK).write_text("{}")


CASES = {
    "finished": (finished, "finished", ""),
    "running": (running, "running", f"iteration 3/{ITERATIONS}, lock held by process {os.getpid()}"),
    "diverged": (diverged, "failed", "training diverged at iteration 7: rec = nan"),
    "notebook error": (notebook_error, "failed", "DataError: no MNIST files"),
    "interrupted": (interrupted, "interrupted", f"iteration 5/{ITERATIONS} in the checkpoint: resumes"),
    "missing": (missing, "missing", ""),
    "results of a shorter run": (stale_results, "missing", f"results of 4 iterations, not {ITERATIONS}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_state_from_its_folders(tmp_path, case):
    make, state, detail = CASES[case]
    res, work = tmp_path / "results" / "run", tmp_path / "work" / "run"
    make(res, work)
    try:
        got_state, got_detail = status.run_state(res, work, ITERATIONS)
    finally:
        while HELD:
            HELD.pop().release()
    assert got_state == state
    assert detail in got_detail if detail else got_detail == ""


def test_every_state_is_covered():
    assert {state for _, state, _ in CASES.values()} == set(status.STATES)


def test_a_diverged_run_is_failed_even_with_a_checkpoint_to_resume(tmp_path):
    """Resuming a diverged run would diverge again from the same state: it is reported failed, not interrupted."""
    res, work = tmp_path / "results" / "run", tmp_path / "work" / "run"
    diverged(res, work)
    assert (work / "checkpoints" / "latest.pt").exists()
    state, detail = status.run_state(res, work, ITERATIONS)
    assert state == "failed" and str(work / "metrics.json") in detail
