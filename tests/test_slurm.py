"""`piad reproduce --executor slurm` against a real Slurm: a one-node cluster on this machine (the `slurm` fixture,
tests/slurm_cluster.py; Debian's slurmctld, slurmd, slurm-client and munge, which .ci/run installs).

The grid goes through sbatch as a job array, Slurm's signals, requeue, squeue and scancel exactly as on a cluster.
Its results must equal the local executor's; a job preempted with USR2 must resume from its checkpoint to the same
metrics; a cancelled job must be reported and, when the command is run again, resubmitted alone; `--no-wait`
followed by a later call must run the summary notebooks. Where the packages are absent these tests skip, saying so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import pytest

from piad import cli
from piad.cli import main
from piad.experiments import cluster, reproduce

pytest.importorskip("submitit", reason="submitit (pip install 'piad[cluster]') runs the cluster executor")
pytest.importorskip("papermill")

N = 30  # training iterations of every run here: about 10 s on a CPU core, checkpoints every 5 (the smoke profile's)
RUNS = ("digits/0/0", "digits/0/1")
COMPARED = ("roc_auc", "roc_auc_per_group", "n_test_normal", "n_test_anomalous", "iterations", "status")


def _args(res: Path, work: Path, *extra: str) -> list[str]:
    return [
        "reproduce",
        "--profile",
        "smoke",
        "--benchmarks",
        "digits",
        "--no-ablation",
        "--classes",
        "0",
        "--iterations",
        str(N),
        "--device",
        "cpu",
        "--results-dir",
        str(res),
        "--work-dir",
        str(work),
        "--executor",
        "slurm",
        "--gpus-per-job",
        "0",
        "--cpus-per-job",
        "1",
        "--time-limit",
        "30",
        *extra,
    ]


@pytest.fixture
def quick_polls(monkeypatch):
    """The runner polls Slurm every 0.5 s instead of 30 s; an ended job's result is looked for 2 s, not 10 s."""
    real = cli.cluster_options
    monkeypatch.setattr(cli, "cluster_options", lambda a: dataclasses.replace(real(a), poll_s=0.5))
    monkeypatch.setattr(cluster, "TERMINAL_GRACE_S", 2)


def _wait(cond, what: str, timeout: float = 300.0, every: float = 0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _metrics(res: Path, key: str) -> dict:
    m = json.loads((res / key / "metrics.json").read_text())
    return {k: m.get(k) for k in COMPARED}


def _log_rows(run: Path) -> list[list[str]]:
    """log.csv without its wall-clock column."""
    rows = [ln.split(",") for ln in (run / "log.csv").read_text().splitlines()]
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1 :] for r in rows]


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    """The same two runs through the local executor: the results the Slurm path must reproduce."""
    root = tmp_path_factory.mktemp("local")
    rc = reproduce.reproduce(
        "smoke",
        benchmarks=["digits"],
        classes=[0],
        iterations=N,
        device="cpu",
        jobs=2,
        summaries=False,
        ablation=False,
        results_dir=root / "results",
        work_dir=root / "runs",
        log=lambda m: None,
    )
    assert rc == 0
    return root / "results"


class QueueWatch(threading.Thread):
    """Polls squeue: the largest number of tasks of one job array running at the same time."""

    def __init__(self, slurm):
        super().__init__(daemon=True)
        self.slurm, self.most, self.seen = slurm, 0, set()
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            running = [jid for jid, state in self.slurm.queue() if state == "RUNNING" and "_" in jid]
            self.seen.update(running)
            self.most = max(self.most, len(running))
            time.sleep(0.2)


# -- validation: no cluster needed -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--partition", ""], "--partition ''"),
        (["--slurm-setup", ""], "--slurm-setup ''"),
        (["--slurm-setup", "  "], "--slurm-setup '  '"),
        (["--slurm-param", "account="], "--slurm-param 'account='"),
        (["--slurm-param", "acc ount=x"], "--slurm-param 'acc ount=x'"),
        (["--jobs", "0"], "--jobs 0"),
        (["--mem-gb", "-5"], "--mem-gb -5.0"),
        (["--mem-gb", "0"], "--mem-gb 0.0"),
        (["--mem-gb", "nan"], "--mem-gb nan"),
        (["--mem-gb", "inf"], "--mem-gb inf"),
    ],
)
def test_bad_cluster_options_are_refused_in_one_line(flags, named, tmp_path, capsys):
    assert main(_args(tmp_path / "r", tmp_path / "w", *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "w").exists()


def test_slurm_that_is_not_configured_is_one_line(tmp_path, monkeypatch, capsys):
    """sbatch and sinfo exist but find no cluster: one line with Slurm's reason, before anything is prepared; a
    SLURM_CONF naming a missing file at once (Slurm's clients would retry for a minute)."""
    from slurm_cluster import _which

    if not _which("sinfo"):
        pytest.skip("Slurm's client commands are not installed here")
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("this machine has a Slurm configuration (/etc/slurm/slurm.conf)")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert main(_args(tmp_path / "r", tmp_path / "w", "--no-summaries")) == 2
    err = capsys.readouterr().err.strip()
    assert "--executor slurm: Slurm does not answer here (" in err and "\n" not in err, err
    assert "Could not establish a configuration source" in err and "SLURM_CONF" in err
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nowhere" / "slurm.conf"))
    t0 = time.time()
    assert main(_args(tmp_path / "r", tmp_path / "w", "--no-summaries")) == 2
    err = capsys.readouterr().err.strip()
    assert f"SLURM_CONF={tmp_path / 'nowhere' / 'slurm.conf'}: no such file" in err and "\n" not in err, err
    assert time.time() - t0 < 10
    assert not (tmp_path / "w").exists()


# -- the runner's wait and its summaries, with Slurm's answers given -------------------------------------------------
class _Job:
    """What the runner uses of a submitit job: its id and the paths of its result and its error log."""

    def __init__(self, folder: Path, job_id: str):
        self.job_id = job_id
        self.paths = type("Paths", (), {"result_pickle": folder / f"{job_id}_result.pkl"})()
        self.paths.stderr = folder / f"{job_id}_log.err"
        self.paths.stderr.write_text("slurmstepd: error: *** JOB CANCELLED ***\n")


def test_wait_ends_on_every_slurm_state(tmp_path, monkeypatch):
    """Cancelled, killed or lost jobs and jobs that can never start are failures with Slurm's word for it; the wait
    ends even when Slurm forgets a job (no accounting) or does not answer."""
    answers = {"1_0": "CANCELLED", "1_1": "OUT_OF_MEMORY", "1_2": "PENDING", "1_3": "RUNNING"}
    reasons = {"1_2": "PartitionConfig"}
    calls = []

    def fake_states(ids, out_reasons=None):
        calls.append(sorted(ids))
        assert len(calls) < 100, f"still waiting for {sorted(ids)} after {len(calls)} polls"
        if out_reasons is not None:
            out_reasons.update(reasons)
        if len(calls) == 3:
            answers.pop("1_3")  # the running job leaves Slurm's memory without a result
        return {i: answers[i] for i in ids if i in answers}

    monkeypatch.setattr(cluster, "slurm_states", fake_states)
    monkeypatch.setattr(cluster, "TERMINAL_GRACE_S", 0)
    monkeypatch.setattr(cluster, "LOST_AFTER_S", 0.3)
    jobs = [(_Job(tmp_path, f"1_{i}"), [f"digits/0/{i}"]) for i in range(4)]
    opts = cluster.ClusterOptions(poll_s=0.1)
    t0 = time.time()
    failures = cluster.wait_for(jobs, opts, log=lambda m: None)
    assert time.time() - t0 < 10
    assert len(failures) == 4, failures
    by_job = {f.split()[1]: f for f in failures}
    assert "CANCELLED (Slurm's state; no result)" in by_job["1_0"] and "JOB CANCELLED" in by_job["1_0"]
    assert "OUT_OF_MEMORY" in by_job["1_1"]
    assert "cannot start: Slurm keeps it pending for PartitionConfig" in by_job["1_2"]
    assert "scancel 1_2" in by_job["1_2"]
    assert "Slurm no longer knows the job and it left no result" in by_job["1_3"]

    monkeypatch.setattr(cluster, "slurm_states", lambda ids, out_reasons=None: None)  # Slurm silent
    monkeypatch.setattr(cluster, "NO_ANSWER_S", 0.3)
    failures = cluster.wait_for([(_Job(tmp_path, "2"), ["digits/1/0"])], opts, log=lambda m: None)
    assert len(failures) == 1 and "Slurm did not answer" in failures[0] and "digits/1/0" in failures[0]

    def ctrl_c(ids, out_reasons=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "slurm_states", ctrl_c)  # Ctrl-C while waiting: one line, exit 130, jobs go on
    with pytest.raises(cluster.WaitInterrupted, match=r"jobs \(3\) go on in Slurm") as e:
        cluster.wait_for([(_Job(tmp_path, "3"), ["digits/1/1"])], opts, log=lambda m: None)
    assert e.value.exit_code == 130


def _finished_runs(res: Path, keys, iterations: int) -> None:
    for key in keys:
        (res / key).mkdir(parents=True)
        (res / key / "metrics.json").write_text(json.dumps({"status": "ok", "iterations": iterations}))
        (res / key / "train_evaluate.ipynb").write_text("{}")


def test_no_wait_then_a_later_call_runs_the_summaries_once(tmp_path, monkeypatch):
    """Every run finished: the same --no-wait command submits the summary job (it used to say "run it again"
    forever); while that job is queued it is not submitted twice; once the summaries are newer than every result the
    command has nothing left to do. --summaries-only always runs them."""
    from piad.experiments.grid import plan
    from piad.experiments.profiles import get_profile

    prof = dataclasses.replace(get_profile("smoke"), ablation=None)
    res, work = tmp_path / "results", tmp_path / "runs"
    grid = plan(prof, benchmarks=["digits"], classes=[0])
    _finished_runs(res, [j.key for j in grid], N)
    submitted = []

    def fake_submit(profile, results_root, device, refresh, opts, folder, log):
        submitted.append(results_root)
        cluster._record_submitted(folder, {cluster.SUMMARIES_KEY: {"id": str(len(submitted)), "folder": str(folder)}})
        return []

    queue = {}
    monkeypatch.setattr(cluster, "_submit_summaries", fake_submit)
    monkeypatch.setattr(cluster, "slurm_states", lambda ids, reasons=None: {i: queue[i] for i in ids if i in queue})
    monkeypatch.setattr(cluster, "require_submitit", lambda: None)
    opts = cluster.ClusterOptions(wait=False)

    def call(**kw) -> list[str]:
        lines = []
        assert cluster.run_grid(prof, grid, [], res, work, "cpu", N, None, opts, log=lines.append, **kw) == 0
        return lines

    call()
    assert submitted == [res]
    queue["1"] = "RUNNING"
    assert "summary notebooks: job 1 is queued or running already; not submitted again" in call()
    assert submitted == [res]
    del queue["1"]
    (res / "results.ipynb").write_text("{}")  # what the summary job writes last
    lines = call()
    assert submitted == [res] and "profile smoke: all done" in lines
    call(summaries_only=True)
    assert submitted == [res, res]


# -- against the cluster ---------------------------------------------------------------------------------------------
def test_unknown_partition_and_refused_submission_are_one_line(slurm, tmp_path, capsys):
    assert main(_args(tmp_path / "r", tmp_path / "w", "--no-summaries", "--partition", "nope")) == 2
    err = capsys.readouterr().err.strip()
    assert f"--partition nope: no such Slurm partition here (partitions: {slurm.partition})" in err, err
    # more cores than any node has (Slurm would accept the job and keep it pending forever): refused up front
    assert main(_args(tmp_path / "r", tmp_path / "w", "--no-summaries", "--cpus-per-job", "4096")) == 2
    err = capsys.readouterr().err.strip()
    assert f"--cpus-per-job 4096: the nodes of the partition have at most {os.cpu_count()} cores" in err, err
    # sbatch itself refuses (a GPU on a cluster without any): Slurm's own message, on one line, nothing submitted
    assert main(_args(tmp_path / "r", tmp_path / "w", "--no-summaries", "--gpus-per-job", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "the job was not submitted: " in err and "\n" not in err and "Traceback" not in err, err
    assert "Invalid generic resource (gres) specification" in err, err
    assert not (tmp_path / "w" / "submitit" / "submitted.json").exists()
    assert not slurm.queue()


@pytest.mark.slow
def test_grid_on_slurm_equals_the_local_executor_and_no_wait_runs_summaries_later(
    slurm, local_results, quick_polls, tmp_path, capsys
):
    """The smoke grid as a job array of 2 with --array-parallelism 1 and --no-wait: the command returns at once,
    --status follows the runs, never more than one task runs, the results equal the local executor's; the same
    command again then submits the summary notebooks, and once they are newer than every result, nothing more."""
    res, work = tmp_path / "results", tmp_path / "runs"
    # perceptual_metric.ipynb runs once per results folder (and needs no run): as if done before, to save 45 s
    res.mkdir()
    (res / "perceptual_metric.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    watch = QueueWatch(slurm)
    watch.start()
    try:
        t0 = time.time()
        assert main(_args(res, work, "--runs", "0", "1", "--array-parallelism", "1", "--no-wait")) == 0
        out = capsys.readouterr().out
        assert "submitted 2 job(s) (2 runs, up to 1 per job) to slurm" in out and "not waiting (--no-wait)" in out
        assert time.time() - t0 < 30  # returned without waiting for the runs

        def status() -> str:
            assert main(_args(res, work, "--status")) == 0
            return capsys.readouterr().out

        seen_running = _wait(lambda: (s := status()) and "1 running" in s and s, "--status to show a running run")
        assert "profile smoke: 2 runs:" in seen_running and "2 finished" not in seen_running
        assert "(job " in seen_running  # the run names the Slurm job that works on it
        final = _wait(lambda: (s := status()) and "2 finished" in s and s, "--status to show 2 finished runs", every=1)
        assert "running" not in final and "failed" not in final, final
    finally:
        watch.stopping.set()
        watch.join(10)
    assert len(watch.seen) == 2 and watch.most == 1  # both tasks of the array ran, one at a time
    for key in RUNS:
        assert _metrics(res, key) == _metrics(local_results, key), key
        assert _log_rows(res / key) == _log_rows(local_results / key), key
        assert (res / key / "config.json").read_text() == (local_results / key / "config.json").read_text()
    assert not (res / "results.ipynb").exists()

    # every run finished: the same command submits the summary notebooks (still not waiting)
    assert main(_args(res, work, "--runs", "0", "1", "--array-parallelism", "1", "--no-wait")) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "submitted 2 job(s)" not in out
    assert "summary notebooks: job " in out and "submitted (not waiting" in out
    _wait(lambda: (res / "results.ipynb").exists(), "the summary job to write results.ipynb", every=1)
    for name in ("weight_policy.ipynb", "learning_curves.ipynb"):
        assert (res / name).exists(), name
    # ... and once more: the summaries are newer than every result, the command has nothing left to do
    _wait(lambda: not [s for j, s in slurm.queue() if s in cluster.ACTIVE_SLURM_STATES], "the summary job to end")
    assert main(_args(res, work, "--runs", "0", "1", "--no-wait")) == 0
    out = capsys.readouterr().out
    assert "newer than every result already" in out and "profile smoke: all done" in out
    assert "submitted" not in out


@pytest.mark.slow
def test_preempted_job_resumes_and_cancelled_job_is_resubmitted_alone(slurm, local_results, quick_polls, tmp_path):
    """Two runs as one array: one task is preempted (`scancel --signal=USR2`, what Slurm sends before a time limit
    or a preemption), the other cancelled (`scancel`). The waiting command reports the cancelled one (exit 1); the
    preempted one checkpoints, is requeued and resumes to the uninterrupted metrics. Run again, the command submits
    the cancelled run alone, which resumes from its checkpoint to the same metrics as the local executor."""
    res, work = tmp_path / "results", tmp_path / "runs"
    lines: list[str] = []
    opts = cluster.ClusterOptions(gpus_per_job=0, cpus_per_job=1, time_limit_min=30, array_parallelism=2, poll_s=0.5)
    kw = dict(
        benchmarks=["digits"],
        classes=[0],
        iterations=N,
        device="cpu",
        summaries=False,
        ablation=False,
        results_dir=res,
        work_dir=work,
        executor="slurm",
        cluster=opts,
    )
    rcs = []
    waiting = threading.Thread(target=lambda: rcs.append(reproduce.reproduce("smoke", log=lines.append, **kw)))
    waiting.start()
    try:
        for key in RUNS:
            _wait(lambda k=key: (work / k / "checkpoints" / "iter_0000005.pt").exists(), f"{key}'s first checkpoint")
        submitted = json.loads((work / "submitit" / "submitted.json").read_text())
        preempted, cancelled = (submitted[k]["id"] for k in RUNS)
        first = (work / RUNS[0] / "checkpoints" / "iter_0000005.pt").stat().st_mtime_ns
        slurm.run("scancel", "--signal=USR2", preempted)
        slurm.run("scancel", cancelled)
        waiting.join(300)
    finally:
        if waiting.is_alive():
            slurm.run("scancel", "--user=root")
            waiting.join(60)
    assert rcs == [1], lines
    failures = [ln for ln in lines if "FAILED" in ln]
    # scancel sends SIGTERM first: Slurm may record CANCELLED, or the training may stop itself on the signal
    # (issue 32: a stop request is honoured inside the iteration) and the job report that interruption
    assert len(failures) == 1 and f"job {cancelled} FAILED: " in failures[0], lines
    assert "CANCELLED" in failures[0] or "nterrupt" in failures[0] or "PapermillExecutionError" in failures[0], lines
    assert any(ln.startswith(f"[2/2] job {preempted} finished: {RUNS[0]}") for ln in lines), lines
    job_log = (work / "submitit" / f"{preempted}_0_log.out").read_text()
    assert "Calling checkpoint method" in job_log and "Requeued job" in job_log
    # resumed, not restarted: the checkpoint from before the preemption is untouched
    assert (work / RUNS[0] / "checkpoints" / "iter_0000005.pt").stat().st_mtime_ns == first
    assert _metrics(res, RUNS[0]) == _metrics(local_results, RUNS[0])
    assert _log_rows(res / RUNS[0]) == _log_rows(local_results / RUNS[0])

    status: list[str] = []
    reproduce.reproduce("smoke", **{**kw, "executor": "local"}, status=True, log=status.append)
    # the cancelled run: interrupted (its checkpoint to resume), or failed with the training's interruption
    assert status[0].endswith(("2 runs: 1 finished, 1 interrupted", "2 runs: 1 finished, 1 failed")), status
    assert status[1].split()[1] == RUNS[1] and f"job {cancelled} log" in status[1], status

    lines.clear()
    assert reproduce.reproduce("smoke", log=lines.append, **kw) == 0, lines
    assert any(ln.startswith("submitted 1 job(s) (1 runs, up to 1 per job)") for ln in lines), lines
    assert "1 already finished, 1 to run" in lines[0]
    assert _metrics(res, RUNS[1]) == _metrics(local_results, RUNS[1])
    assert _log_rows(res / RUNS[1]) == _log_rows(local_results / RUNS[1])
    assert (work / RUNS[1] / "checkpoints" / "iter_0000005.pt").exists()
