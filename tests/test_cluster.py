"""`piad reproduce --executor slurm` through submitit's local executor, and `piad reproduce --status`.

submitit's LocalExecutor runs each job as a local process with the same pickling, signal handling and requeueing as
on Slurm, so a tiny smoke grid can go through it here: it must give the local executor's results, and a job that is
preempted, then killed, must resume from its checkpoints when the command is run again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from piad.cli import cluster_options, main
from piad.experiments import cluster, reproduce, status
from piad.experiments.grid import NOTEBOOK, is_finished, plan
from piad.experiments.profiles import get_profile
from piad.run.rundir import RunLock, latest_checkpoint

SMOKE = get_profile("smoke")


def _use_profile(monkeypatch, **changes):
    prof = dataclasses.replace(SMOKE, ablation=None, **changes)
    monkeypatch.setattr(reproduce, "get_profile", lambda name: prof)
    return prof


def _local_options(**kw):
    return cluster.ClusterOptions(cluster="local", gpus_per_job=0, cpus_per_job=1, time_limit_min=30, poll_s=0.2, **kw)


def _wait(cond, what: str, timeout: float = 240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _lock_pid(run: Path) -> int:
    try:
        return int((run / ".lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _log_rows(run: Path) -> list[list[str]]:
    """log.csv without its wall-clock column."""
    rows = [ln.split(",") for ln in (run / "log.csv").read_text().splitlines()]
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1 :] for r in rows]


# -- --status --------------------------------------------------------------------------------------------------------
def _error_notebook(path: Path, ename: str, evalue: str) -> None:
    cell = {
        "cell_type": "code",
        "execution_count": 3,
        "metadata": {},
        "source": "train(...)",
        "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "training\n"},
            {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": []},
        ],
    }
    nb = {
        "cells": [cell, {"cell_type": "code", "execution_count": None, "metadata": {}, "source": "x", "outputs": []}],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))


def test_status_reports_every_state_from_the_run_folders(tmp_path, monkeypatch, capsys):
    _use_profile(monkeypatch, benchmarks={"digits": [0, 1, 2]})  # 6 runs of 10 iterations
    res, work = tmp_path / "results", tmp_path / "runs"
    log = "iteration,seconds,rec\n1,0.1,2.0\n{it},0.2,1.5\n"
    done = res / "digits" / "0" / "0"  # finished
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.5, "iterations": 10}))
    (done / NOTEBOOK).write_text("{}")
    short = res / "digits" / "2" / "0"  # missing: results of a shorter run
    short.mkdir(parents=True)
    (short / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.5, "iterations": 4}))
    (short / NOTEBOOK).write_text("{}")
    running = work / "digits" / "0" / "1"  # this process holds its lock
    running.mkdir(parents=True)
    lock = RunLock(running).acquire()  # the lock itself tells (a PID in a stale lock file may have been reused)
    (running / "log.csv").write_text(log.format(it=3))
    _error_notebook(
        work / "digits" / "1" / "0" / NOTEBOOK,
        "TrainingDiverged",
        "Traceback...\ntraining diverged at iteration 7: loss = nan",
    )
    stopped = work / "digits" / "1" / "1"  # killed: stale lock, a checkpoint
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "latest.pt").write_bytes(b"x")
    (stopped / "log.csv").write_text(log.format(it=5))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stopped / ".lock").write_text(str(dead.pid))
    elsewhere = work / "digits" / "2" / "1"  # a job on another machine, writing now
    (elsewhere / "checkpoints").mkdir(parents=True)
    (elsewhere / "checkpoints" / "latest.pt").write_bytes(b"x")
    (elsewhere / "log.csv").write_text(log.format(it=8))
    (elsewhere / status.JOB_FILE).write_text(json.dumps({"host": "node-that-is-not-here", "pid": 1, "job_id": "77_3"}))
    args = ["reproduce", "--profile", "smoke", "--status", "--results-dir", str(res), "--work-dir", str(work)]
    try:
        assert main(args) == 0
    finally:
        lock.release()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "profile smoke: 6 runs: 1 finished, 2 running, 1 failed, 1 interrupted, 1 missing"
    body = {ln.split()[1]: (ln.split()[0], ln) for ln in lines[1:]}
    assert set(body) == {"digits/0/1", "digits/1/0", "digits/1/1", "digits/2/0", "digits/2/1"}
    assert body["digits/0/1"][0] == "running" and "iteration 3/10" in body["digits/0/1"][1]
    assert f"process {os.getpid()}" in body["digits/0/1"][1]
    assert body["digits/1/0"][0] == "failed"
    assert "TrainingDiverged: training diverged at iteration 7: loss = nan" in body["digits/1/0"][1]
    assert body["digits/1/1"][0] == "interrupted" and "iteration 5/10" in body["digits/1/1"][1]
    assert body["digits/2/0"][0] == "missing" and "results of 4 iterations, not 10" in body["digits/2/0"][1]
    assert body["digits/2/1"][0] == "running" and "job 77_3 on node-that-is-not-here" in body["digits/2/1"][1]
    # the job on the other machine stopped writing long ago: no longer running, its checkpoint resumes
    old = time.time() - status.RECENT_S - 60
    for f in elsewhere.rglob("*"):
        os.utime(f, (old, old))
    assert status.run_state(res / "digits/2/1", elsewhere, 10)[0] == "interrupted"


def test_slurm_help_documents_the_cluster_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--executor", "slurm", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--executor",
        "--status",
        "--partition",
        "--gpus-per-job",
        "--cpus-per-job",
        "--time-limit",
        "--array-parallelism",
        "--slurm-param",
        "--slurm-setup",
        "--max-timeouts",
        "--no-wait",
    ):
        assert flag in text, flag


def test_bad_cluster_flags_are_refused(capsys):
    assert main(["reproduce", "--profile", "smoke", "--executor", "slurm", "--slurm-param", "account"]) == 2
    assert "--slurm-param 'account': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["reproduce", "--profile", "smoke", "--executor", "slurm", "--time-limit", "0"]) == 2
    assert "--time-limit 0" in capsys.readouterr().err


def test_rerun_skips_runs_whose_job_is_alive_and_resubmits_cancelled_ones(tmp_path, monkeypatch):
    """Not submitted again: runs whose Slurm job is pending or running; submitted again: runs whose job was
    cancelled, even while their files are recent (a job on another node, killed a minute ago)."""
    prof = _use_profile(monkeypatch, benchmarks={"digits": [0, 1]})
    jobs = plan(prof)
    res, work, folder = tmp_path / "results", tmp_path / "runs", tmp_path / "runs" / "submitit"
    for key in ("digits/0/1", "digits/1/0"):  # written a moment ago by a job on another node
        (work / key / "checkpoints").mkdir(parents=True)
        (work / key / "checkpoints" / "latest.pt").write_bytes(b"x")
        (work / key / status.JOB_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "job_id": "9"}))
    folder.mkdir(parents=True)
    ids = {"digits/0/0": "5_0", "digits/0/1": "5_1", "digits/1/0": "5_2"}
    (folder / "submitted.json").write_text(json.dumps({k: {"id": i, "folder": str(folder)} for k, i in ids.items()}))
    states = {"5_0": "PENDING", "5_1": "RUNNING", "5_2": "CANCELLED"}  # as squeue or sacct report them
    monkeypatch.setattr(cluster, "slurm_states", lambda ids: {i: states[i] for i in ids if i in states})
    opts = cluster.ClusterOptions()
    busy = cluster.runs_in_progress(None, prof, jobs, res, work, 10, opts, folder)
    assert busy == {"digits/0/0", "digits/0/1"}
    local = cluster.runs_in_progress(None, prof, jobs, res, work, 10, _local_options(), folder)
    assert local == {"digits/0/1", "digits/1/0"}  # no Slurm to ask: the recent files decide


def test_slurm_executor_without_submitit_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    args = [
        "reproduce",
        "--profile",
        "smoke",
        "--executor",
        "slurm",
        "--classes",
        "0",
        "--runs",
        "0",
        "--no-summaries",
        "--results-dir",
        str(tmp_path / "r"),
        "--work-dir",
        str(tmp_path / "w"),
    ]
    assert main(args) == 2
    assert 'pip install "piad[cluster]"' in capsys.readouterr().err


def test_slurm_job_script_carries_the_flags(tmp_path, monkeypatch):
    submitit = pytest.importorskip(
        "submitit", reason="submitit (pip install 'piad[cluster]') runs the cluster executor"
    )
    from piad.cli import build_parser

    a = build_parser().parse_args(
        [
            "reproduce",
            "--profile",
            "paper",
            "--executor",
            "slurm",
            "--partition",
            "gpu",
            "--gpus-per-job",
            "1",
            "--cpus-per-job",
            "6",
            "--mem-gb",
            "64",
            "--time-limit",
            "720",
            "--array-parallelism",
            "12",
            "--slurm-param",
            "account=proj",
            "--slurm-param",
            "qos=high",
            "--slurm-setup",
            "module load cuda",
        ]
    )
    opts = cluster_options(a)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun existed
    ex = cluster.make_executor(submitit, opts, tmp_path, "piad-paper")
    script = ex._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in (
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=6",
        "--mem=64GB",
        "--time=720",
        "--account=proj",
        "--qos=high",
        "--signal=USR2@180",
        "--job-name=piad-paper",
    ):
        assert f"#SBATCH {line}\n" in script, line
    assert "\nmodule load cuda\n" in script
    assert ex._executor.parameters["array_parallelism"] == 12
    assert ex._executor.max_num_timeout == 20


@pytest.mark.skipif(bool(shutil.which("srun")), reason="Slurm is installed here")
def test_slurm_executor_without_slurm_says_where_to_run(tmp_path, capsys):
    pytest.importorskip("submitit", reason="submitit (pip install 'piad[cluster]') runs the cluster executor")
    args = [
        "reproduce",
        "--profile",
        "smoke",
        "--executor",
        "slurm",
        "--classes",
        "0",
        "--runs",
        "0",
        "--no-summaries",
        "--results-dir",
        str(tmp_path / "r"),
        "--work-dir",
        str(tmp_path / "w"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--executor slurm: Slurm's commands (sbatch, sinfo) are not on this machine's PATH" in err
    assert "login node" in err


# -- submitit ----------------------------------------------------------------------------------------------------------
def _endless_training(run: Path) -> subprocess.Popen:
    """`piad train` that checkpoints only when told to stop; returns once it trains."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piad.cli",
            "train",
            "--benchmark",
            "synthetic",
            "--iterations",
            "1000000",
            "--device",
            "cpu",
            "--out",
            str(run),
            "--no-progress",
            "--set",
            "checkpoint_every=1000000",
            "log_every=1",
            "sample_every=1000000",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _wait(lambda: _lock_pid(run) == child.pid and (run / "log.csv").exists(), "training to start", 120)
    except AssertionError:
        child.kill()
        raise
    return child


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_sigusr2_stops_training_with_a_checkpoint(tmp_path):
    """Slurm sends SIGUSR2 to every process of a job before its time limit or a preemption: training saves a
    checkpoint and stops instead of dying."""
    run = tmp_path / "run"
    child = _endless_training(run)
    try:
        child.send_signal(signal.SIGUSR2)
        assert child.wait(timeout=60) == 130
    finally:
        child.kill()
    assert (run / "checkpoints" / "latest.pt").exists()


def test_checkpoint_makes_the_training_process_save_and_requeues(tmp_path):
    """GridTask.checkpoint() (called by submitit on preemption or time-out) stops the job's training process with
    SIGTERM, which saves a checkpoint, and returns the same task for the requeue."""
    pytest.importorskip("submitit", reason="submitit (pip install 'piad[cluster]') runs the cluster executor")
    from piad.experiments.cluster_task import GridTask

    job = plan(SMOKE, benchmarks=["digits"], classes=[0], runs=[0])[0]
    run = tmp_path / "runs" / "digits" / "0" / "0"
    child = _endless_training(run)
    try:
        task = GridTask(SMOKE, [job], tmp_path / "results", tmp_path / "runs", "cpu", None, 1, 1)
        delayed = task.checkpoint()
        assert child.wait(timeout=60) == 130  # piad train: interrupted, checkpoint saved
    finally:
        child.kill()
    assert delayed.function is task
    assert (run / "checkpoints" / "latest.pt").exists()  # only the signal could have written it
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_submitit_local_grid_gives_the_local_executors_results(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="submitit (pip install 'piad[cluster]') runs the cluster executor")
    pytest.importorskip("papermill")
    prof = _use_profile(monkeypatch)
    kw = dict(benchmarks=["digits"], classes=[0], iterations=4, device="cpu", summaries=False, log=lambda m: None)
    todo = plan(prof, **{k: kw[k] for k in ("benchmarks", "classes")})
    assert [j.key for j in todo] == ["digits/0/0", "digits/0/1"]
    sub_res, sub_work = tmp_path / "sub", tmp_path / "sub_runs"
    # submitted first (2 jobs, running in the background), then the local executor on the same grid
    jobs = cluster.submit_grid(prof, todo, sub_res, sub_work, "cpu", 4, 1, _local_options(wait=False))
    assert len(jobs) == 2
    assert reproduce.reproduce("smoke", results_dir=tmp_path / "loc", work_dir=tmp_path / "loc_runs", jobs=2, **kw) == 0
    assert cluster.wait_for(jobs, _local_options(), log=lambda m: None) == []
    for j in todo:
        sub, loc = sub_res / j.experiment.name / "0" / str(j.run), tmp_path / "loc" / "digits" / "0" / str(j.run)
        a, b = (json.loads((d / "metrics.json").read_text()) for d in (sub, loc))
        assert a["iterations"] == b["iterations"] == 4
        for key in ("roc_auc", "roc_auc_per_group", "n_test_normal", "n_test_anomalous"):
            assert a[key] == b[key], key
        assert (sub / "config.json").read_text() == (loc / "config.json").read_text()
        assert _log_rows(sub) == _log_rows(loc)
        assert is_finished(sub, 4)
    lines = []
    assert (
        reproduce.reproduce(
            "smoke",
            results_dir=sub_res,
            work_dir=sub_work,
            executor="slurm",
            cluster=_local_options(),
            **{**kw, "log": lines.append},
        )
        == 0
    )
    assert "2 already finished, 0 to run" in lines[0] and not any("submitted" in ln for ln in lines)


@pytest.mark.slow
def test_preempted_then_killed_job_resumes_when_the_command_is_rerun(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="submitit (pip install 'piad[cluster]') runs the cluster executor")
    pytest.importorskip("papermill")
    if not Path("/proc/self/stat").exists():
        pytest.skip("finding the job's processes needs Linux /proc")
    prof = _use_profile(monkeypatch)
    n = 50
    res, work = tmp_path / "results", tmp_path / "runs"
    todo = plan(prof, benchmarks=["digits"], classes=[0], runs=[0])
    run = work / "digits" / "0" / "0"
    [(job, keys)] = cluster.submit_grid(prof, todo, res, work, "cpu", n, 1, _local_options(wait=False))
    try:
        _wait(lambda: (run / "checkpoints" / "iter_0000005.pt").exists(), "the first checkpoint")
        # preemption: Slurm sends SIGUSR2 to the job's process; it checkpoints and requeues itself
        kernel = _lock_pid(run)
        os.kill(_parent(kernel), signal.SIGUSR2)
        _wait(lambda: _lock_pid(run) not in (0, kernel), "the requeued job to train again")
        requeued = time.time()
        _wait(
            lambda: any(p.stat().st_mtime > requeued for p in run.glob("checkpoints/iter_*.pt")),
            "a checkpoint of the requeued job",
        )
        # then the job dies: its process killed outright (no checkpoint on the way out)
        kernel = _lock_pid(run)
        task = _parent(kernel)
        os.kill(task, signal.SIGKILL)
        job._process.kill()
        _wait(lambda: not _alive(kernel), "the training process to end with its job", 30)
    finally:
        job._process.kill()
    assert "Calling checkpoint method" in job.stdout() and "Requeued job" in job.stdout()
    snapshots = {p.name: p.stat().st_mtime_ns for p in run.glob("checkpoints/iter_*.pt")}
    last = max(int(name[5:12]) for name in snapshots)
    assert 5 < last < n
    # the kill may land between a snapshot and latest.pt (written in that order): resuming then starts before the
    # newest snapshot and writes it again, with the same weights
    resumed_from = torch.load(latest_checkpoint(run), weights_only=True)["iteration"]
    kept = {k: v for k, v in snapshots.items() if int(k[5:12]) <= resumed_from}
    assert kept
    redone = {k: torch.load(run / "checkpoints" / k, weights_only=True)["networks"] for k in snapshots if k not in kept}
    lines = []
    reproduce.reproduce("smoke", results_dir=res, work_dir=work, iterations=n, status=True, log=lines.append)
    assert lines[1].split()[:2] == ["interrupted", "digits/0/0"], lines
    # the same command again: the run is submitted again and resumes from its last checkpoint
    lines = []
    rc = reproduce.reproduce(
        "smoke",
        benchmarks=["digits"],
        classes=[0],
        runs=[0],
        iterations=n,
        device="cpu",
        results_dir=res,
        work_dir=work,
        summaries=False,
        executor="slurm",
        cluster=_local_options(),
        log=lines.append,
    )
    assert rc == 0, lines
    assert any(ln.startswith("submitted 1 job(s)") for ln in lines)
    metrics = json.loads((res / "digits" / "0" / "0" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["iterations"] == n
    after = {p.name: p.stat().st_mtime_ns for p in run.glob("checkpoints/iter_*.pt")}
    assert {k: after[k] for k in kept} == kept  # resumed: earlier checkpoints untouched
    for k, nets in redone.items():
        again = torch.load(run / "checkpoints" / k, weights_only=True)["networks"]
        for name, weights in nets.items():
            assert all(torch.equal(weights[t], again[name][t]) for t in weights), (k, name)
    assert f"iter_{n:07d}.pt" in after
