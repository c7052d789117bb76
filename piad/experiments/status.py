"""`piad reproduce --status`: the state of every run of a grid, read from its result and work folders.

A run is finished, running (here: its lock's process is alive; on another machine: a submitted job's files changed
recently), failed (with the error), interrupted (a checkpoint to resume) or missing. The state does not depend on
the executor (local or slurm, piad.experiments.cluster).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from piad.experiments.grid import NOTEBOOK, expected_iterations, is_finished
from piad.experiments.runs import read_json
from piad.run.rundir import LOCK, LOG, METRICS, latest_checkpoint, lock_holder, pid_alive

RECENT_S = 15 * 60  # a run of a job on another machine counts as running while its files change this recently
JOB_FILE = ".submitit_job.json"  # in a run's work folder while a submitted job works on it: host, pid, job id
STATES = ("finished", "running", "failed", "interrupted", "missing")


def last_line(path: Path) -> str | None:
    """The last non-empty line of a (log) file, reading only its end; None if absent or empty."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def notebook_error(path: Path) -> str | None:
    """`ename: last line of evalue` of the last error output of an executed notebook (None: no error)."""
    nb = read_json(path)
    cells = nb.get("cells") if nb else None
    if not isinstance(cells, list):  # not a notebook (or a damaged one): no error to report from it
        return None
    for cell in reversed(cells):
        outputs = cell.get("outputs") if isinstance(cell, dict) else None
        for out in reversed(outputs if isinstance(outputs, list) else []):
            if isinstance(out, dict) and out.get("output_type") == "error":
                lines = [ln for ln in str(out.get("evalue", "")).splitlines() if ln.strip()]
                return f"{out.get('ename', 'Error')}: {lines[-1] if lines else ''}".strip()
    return None


def run_state(
    result_dir: Path, work_dir: Path, iterations: int | None, now: float | None = None, recent_s: float = RECENT_S
) -> tuple[str, str]:
    """(state, detail) of one run from its result folder and work folder; state is one of STATES."""
    if is_finished(result_dir, iterations):
        return "finished", ""
    old = read_json(result_dir / "metrics.json") or {}
    stale = f"results of {old.get('iterations')} iterations, not {iterations}" if old.get("status") == "ok" else ""
    if not work_dir.exists():
        return "missing", stale
    now = time.time() if now is None else now
    last = last_line(work_dir / LOG)
    at = last.split(",")[0] if last and last[0].isdigit() else "0"
    progress = f"iteration {at}/{iterations}" if iterations else f"iteration {at}"
    job = read_json(work_dir / JOB_FILE)
    if job and job.get("host") != socket.gethostname():
        # a submitted job on another machine: its process cannot be checked from here, its files can
        files = [work_dir / n for n in (LOG, NOTEBOOK, LOCK, METRICS)] + [latest_checkpoint(work_dir)]
        mtimes = [f.stat().st_mtime for f in files if f.exists()]
        if mtimes and now - max(mtimes) < recent_s:
            return (
                "running",
                f"{progress}, job {job.get('job_id')} on {job.get('host')}, last write {now - max(mtimes):.0f} s ago",
            )
    else:
        holder = lock_holder(work_dir)  # the lock itself, not the PID in it (a dead writer's PID may be reused)
        if holder is not None:
            what = f"lock held by process {holder}" if holder else "lock held"
            return "running", f"{progress}, {what}" + (f" (job {job.get('job_id')})" if job else "")
        pid = _int(job.get("pid")) if job else 0
        if pid and pid_alive(pid):
            return "running", f"{progress}, job process {pid} (job {job.get('job_id')})"
    metrics = read_json(work_dir / METRICS) or {}
    if metrics.get("status") == "diverged":
        return "failed", f"{metrics.get('error')} ({work_dir / METRICS})"
    error = notebook_error(work_dir / NOTEBOOK)
    if error:
        return "failed", f"{error} (notebook: {work_dir / NOTEBOOK})"
    if latest_checkpoint(work_dir).exists():
        return "interrupted", f"{progress} in the checkpoint: resumes"
    return "missing", stale


def grid_states(profile, jobs, results_root: Path, work_root: Path, iterations: int | None) -> dict:
    """job key -> (state, detail) for every job of the grid."""
    out = {}
    for j in jobs:
        rel = Path(j.experiment.name) / str(j.normal_class) / str(j.run)
        out[j.key] = run_state(
            results_root / rel, work_root / rel, expected_iterations(profile, j.experiment, iterations)
        )
    return out


def report_status(
    profile, jobs, results_root: Path, work_root: Path, iterations: int | None, log=print, folder: Path | None = None
) -> int:
    """Log the state of every run of the grid (finished ones counted, the others listed); returns 0."""
    states = grid_states(profile, jobs, results_root, work_root, iterations)
    submitted = read_submitted(Path(folder) if folder else work_root / "submitit")
    counts = {s: sum(1 for st, _ in states.values() if st == s) for s in STATES}
    log(f"profile {profile.name}: {len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for s in STATES[1:]:
        for key, (st, detail) in states.items():
            if st != s:
                continue
            job = submitted.get(key)
            if job and st in ("interrupted", "missing", "failed"):
                tail = last_line(Path(job["folder"]) / f"{job['id']}_0_log.err")
                detail = "; ".join(x for x in (detail, f"job {job['id']} log: {tail}" if tail else "") if x)
            log(f"  {st:<11} {key}" + (f"  {detail}" if detail else ""))
    return 0


def read_submitted(folder: Path) -> dict[str, dict[str, str]]:
    """Run key -> {"id", "folder"} of the submitit job last submitted for it (piad.experiments.cluster); entries of
    another shape (a damaged or hand-edited file) are left out."""
    found = read_json(folder / "submitted.json") or {}
    return {
        k: v
        for k, v in found.items()
        if isinstance(v, dict) and isinstance(v.get("id"), (str, int)) and isinstance(v.get("folder"), str)
    }


def _int(value) -> int:
    """An integer field of a JSON file written by another process; 0 when it is of another type."""
    try:
        return int(value) if not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0
