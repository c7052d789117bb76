"""What a submitit job of `piad reproduce --executor slurm` executes (imports submitit: load it only in a job).

`GridTask` runs a group of runs of one experiment exactly as the local runner does (batched ensemble training when
the group has several runs, then each run's notebook). It is `submitit.helpers.Checkpointable`: on preemption or
time-out submitit calls `checkpoint()`, which asks the training processes of this job to save a checkpoint and stop
(SIGTERM; piad's fit loop saves, then stops), and requeues the same task; the requeued job skips finished runs and
resumes the others from the work folder's checkpoints.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from piad.experiments.grid import expected_iterations, is_finished
from piad.experiments.jobs import run_job, run_summaries, train_ensembles
from piad.experiments.status import JOB_FILE
from piad.run.rundir import LOCK, atomic_write_json, pid_alive

STOP_WAIT_S = 120  # how long checkpoint() waits for the training processes to save (Slurm signals 180 s early)


def _descends_from(pid: int, ancestor: int) -> bool:
    """True if process `pid` is a descendant of `ancestor` (Linux /proc; False where it cannot tell)."""
    for _ in range(32):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


class GridTask(Checkpointable):
    def __init__(
        self,
        profile,
        jobs,
        results_root: Path,
        work_root: Path,
        device: str,
        iterations: int | None,
        threads: int,
        size: int,
    ):
        self.profile, self.jobs = profile, list(jobs)
        self.results_root, self.work_root = Path(results_root), Path(work_root)
        self.device, self.iterations, self.threads, self.size = device, iterations, threads, size

    def _rel(self, job) -> Path:
        return Path(job.experiment.name) / str(job.normal_class) / str(job.run)

    def __call__(self) -> dict:
        log = lambda m: print(m, flush=True)  # noqa: E731 - the job's log (submitit's stdout file)
        todo = [
            j
            for j in self.jobs
            if not is_finished(
                self.results_root / self._rel(j), expected_iterations(self.profile, j.experiment, self.iterations)
            )
        ]
        env = submitit.JobEnvironment()
        for j in todo:  # piad.experiments.status.run_state: which job works on a run, where
            atomic_write_json(
                self.work_root / self._rel(j) / JOB_FILE,
                {"host": socket.gethostname(), "pid": os.getpid(), "job_id": env.job_id},
            )
        together = (
            train_ensembles(
                self.profile, todo, self.work_root, self.device, self.iterations, self.threads, self.size, log
            )
            if self.size > 1 and len(todo) > 1
            else {}
        )
        results, failures = {}, []
        for j in todo:
            log(f"[start] {j.key}")
            res = run_job(
                self.profile,
                j,
                self.results_root,
                self.work_root,
                self.device,
                self.iterations,
                self.threads,
                together.get(j.key),
            )
            results[j.key] = res
            if res["status"] == "ok":
                log(f"{j.key}: ROC AUC {res['roc_auc']:.4f} in {res['wall']:.0f} s")
            else:
                failures.append(f"{j.key}: {res['error']} (notebook: {res['notebook']})")
                log(f"{j.key}: FAILED: {res['error']}")
            (self.work_root / self._rel(j) / JOB_FILE).unlink(missing_ok=True)
        if failures:
            raise RuntimeError("; ".join(failures))
        return results

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """Preempted or timed out: let this job's training processes save and stop, then requeue this task."""
        waiting = {}
        for j in self.jobs:
            lock = self.work_root / self._rel(j) / LOCK
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            if pid and pid != os.getpid() and _descends_from(pid, os.getpid()):
                os.kill(pid, signal.SIGTERM)
                waiting[lock] = pid
        deadline = time.time() + STOP_WAIT_S
        while waiting and time.time() < deadline:
            for lock, pid in list(waiting.items()):
                try:
                    held = lock.read_text().strip() == str(pid)
                except OSError:
                    held = False
                if not held or not pid_alive(pid):
                    del waiting[lock]
            time.sleep(0.2)
        return DelayedSubmission(self, *args, **kwargs)


def summaries_job(profile, results_root: Path, device: str, refresh_perceptual: bool) -> None:
    failures = run_summaries(
        profile, Path(results_root), device, refresh_perceptual, log=lambda m: print(m, flush=True)
    )
    if failures:
        raise RuntimeError("; ".join(failures))
