"""`piad reproduce --executor slurm`: the grid on a cluster through submitit; `piad reproduce --status`: its state.

With the slurm executor every ensemble group of the grid (runs of one experiment, `--ensemble K`; one run per job
when K is 1) becomes one submitit job (a Slurm job array, `--array-parallelism` at a time) with the resources of
the flags below. A job executes the same notebooks into the same folders as the local runner, so results, the work
folder's checkpoints and `--status` do not depend on the executor. A job that is preempted or reaches its time
limit is requeued by submitit (`piad.experiments.cluster_task.GridTask` is Checkpointable); its runs resume from their last
checkpoint. Rerunning the command submits only the runs that are neither finished nor running.
The summary notebooks run as one last job once every run of the grid has finished (the command waits for its jobs
unless `--no-wait`; then run it again, or with `--summaries-only`, when `--status` reports every run finished).

submitit is an optional dependency (`pip install "piad[cluster]"`); it is imported only when a job is submitted.
"""
from __future__ import annotations

import argparse
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from piad.errors import ConfigError

RECENT_S = 15 * 60   # a run of a job on another machine counts as running while its files change this recently
JOB_FILE = ".submitit_job.json"   # in a run's work folder while a submitted job works on it: host, pid, job id
STATES = ("finished", "running", "failed", "interrupted", "missing")
ACTIVE_SLURM_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING",
                       "SUSPENDED"}


@dataclass
class ClusterOptions:
    """Resources of one submitted job (one ensemble group of runs) and how to wait for them."""
    partition: Optional[str] = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: Optional[float] = None
    time_limit_min: int = 24 * 60
    array_parallelism: int = 64
    max_timeouts: int = 20
    slurm_params: dict[str, str] = field(default_factory=dict)   # extra sbatch parameters (account, qos, ...)
    setup: list[str] = field(default_factory=list)               # shell lines run before each job
    wait: bool = True
    poll_s: float = 30.0
    cluster: str = "slurm"      # submitit's cluster: "slurm", or "local" (submitit's local executor; tests)
    folder: Optional[str] = None   # submitit's pickles and logs (default <work dir>/submitit)


# -- command line ----------------------------------------------------------------------------------------------------
def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: this machine, --jobs at a time (default); slurm: one submitit job per ensemble group "
                        "of runs, requeued on preemption or time-out and resumed from its last checkpoint")
    p.add_argument("--status", action="store_true",
                   help="report from the run folders which runs are finished, running, failed (with the error), "
                        "interrupted (a checkpoint to resume) or missing; trains nothing")
    g = p.add_argument_group("cluster (with --executor slurm; needs `pip install \"piad[cluster]\"`)")
    g.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    g.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (default 1; a job trains on one device)")
    g.add_argument("--cpus-per-job", type=int, default=8, help="CPU cores per job (default 8)")
    g.add_argument("--mem-gb", type=float, help="memory per job in GB (default: the partition's)")
    g.add_argument("--time-limit", type=int, default=24 * 60, metavar="MINUTES",
                   help="time limit per job in minutes (default 1440); a job that reaches it is requeued and resumes")
    g.add_argument("--array-parallelism", type=int, default=64, help="jobs of the array running at once (default 64)")
    g.add_argument("--max-timeouts", type=int, default=20,
                   help="requeues after time-outs before a job gives up (default 20; preemptions do not count)")
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch parameter, repeatable, e.g. --slurm-param account=proj --slurm-param qos=high")
    g.add_argument("--slurm-setup", action="append", default=[], metavar="COMMAND",
                   help="shell line run before each job, repeatable, e.g. --slurm-setup 'module load cuda'")
    g.add_argument("--no-wait", action="store_true",
                   help="submit and return; run the command again (or with --summaries-only) once --status reports "
                        "every run finished, to execute the summary notebooks")


def options_from_args(a: argparse.Namespace) -> ClusterOptions:
    """ClusterOptions from parsed flags; a malformed value raises ConfigError naming the flag."""
    params = {}
    for item in a.slurm_param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm-param {item!r}: expected KEY=VALUE (an sbatch option without its dashes), "
                              "e.g. --slurm-param account=myproject")
        params[key.strip().replace("-", "_")] = value
    for flag, value, low in (("--gpus-per-job", a.gpus_per_job, 0), ("--cpus-per-job", a.cpus_per_job, 1),
                             ("--time-limit", a.time_limit, 1), ("--array-parallelism", a.array_parallelism, 1),
                             ("--max-timeouts", a.max_timeouts, 0)):
        if value < low:
            raise ConfigError(f"{flag} {value}: expected an integer of at least {low}.")
    return ClusterOptions(partition=a.partition, gpus_per_job=a.gpus_per_job, cpus_per_job=a.cpus_per_job,
                          mem_gb=a.mem_gb, time_limit_min=a.time_limit, array_parallelism=a.array_parallelism,
                          max_timeouts=a.max_timeouts, slurm_params=params, setup=list(a.slurm_setup),
                          wait=not a.no_wait)


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit, an optional dependency: pip install \"piad[cluster]\" "
                          "(or pip install submitit).") from None
    return submitit


# -- status from the run folders -------------------------------------------------------------------------------------
def _last_line(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def notebook_error(path: Path) -> Optional[str]:
    """`ename: last line of evalue` of the last error output of an executed notebook (None: no error)."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for cell in reversed(nb.get("cells", [])):
        for out in reversed(cell.get("outputs") or []):
            if out.get("output_type") == "error":
                lines = [ln for ln in str(out.get("evalue", "")).splitlines() if ln.strip()]
                return f"{out.get('ename', 'Error')}: {lines[-1] if lines else ''}".strip()
    return None


def run_state(result_dir: Path, work_dir: Path, iterations: Optional[int], now: Optional[float] = None,
              recent_s: float = RECENT_S) -> tuple[str, str]:
    """(state, detail) of one run from its result folder and work folder; state is one of STATES."""
    from piad.experiments.reproduce import NOTEBOOK, is_finished
    from piad.experiments.results import read_json
    from piad.run.rundir import LOCK, LOG, METRICS, latest_checkpoint, pid_alive
    if is_finished(result_dir, iterations):
        return "finished", ""
    old = read_json(result_dir / "metrics.json") or {}
    stale = f"results of {old.get('iterations')} iterations, not {iterations}" if old.get("status") == "ok" else ""
    if not work_dir.exists():
        return "missing", stale
    now = time.time() if now is None else now
    last = _last_line(work_dir / LOG)
    at = last.split(",")[0] if last and last[0].isdigit() else "0"
    progress = f"iteration {at}/{iterations}" if iterations else f"iteration {at}"
    job = read_json(work_dir / JOB_FILE)
    if job and job.get("host") != socket.gethostname():
        # a submitted job on another machine: its process cannot be checked from here, its files can
        files = [work_dir / n for n in (LOG, NOTEBOOK, LOCK, METRICS)] + [latest_checkpoint(work_dir)]
        mtimes = [f.stat().st_mtime for f in files if f.exists()]
        if mtimes and now - max(mtimes) < recent_s:
            return "running", f"{progress}, job {job.get('job_id')} on {job.get('host')}, last write " \
                              f"{now - max(mtimes):.0f} s ago"
    else:
        try:
            pid = int((work_dir / LOCK).read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        for p, what in ((pid, "lock held by process"), (int((job or {}).get("pid") or 0), "job process")):
            if p and pid_alive(p):
                return "running", f"{progress}, {what} {p}" + (f" (job {job.get('job_id')})" if job else "")
    metrics = read_json(work_dir / METRICS) or {}
    if metrics.get("status") == "diverged":
        return "failed", f"{metrics.get('error')} ({work_dir / METRICS})"
    error = notebook_error(work_dir / NOTEBOOK)
    if error:
        return "failed", f"{error} (notebook: {work_dir / NOTEBOOK})"
    if latest_checkpoint(work_dir).exists():
        return "interrupted", f"{progress} in the checkpoint: resumes"
    return "missing", stale


def grid_states(profile, jobs, results_root: Path, work_root: Path, iterations: Optional[int]) -> dict:
    """job key -> (state, detail) for every job of the grid."""
    from piad.experiments.reproduce import expected_iterations
    out = {}
    for j in jobs:
        rel = Path(j.experiment.name) / str(j.normal_class) / str(j.run)
        out[j.key] = run_state(results_root / rel, work_root / rel,
                               expected_iterations(profile, j.experiment, iterations))
    return out


def report_status(profile, jobs, results_root: Path, work_root: Path, iterations: Optional[int],
                  log=print, folder: Optional[Path] = None) -> int:
    """Log the state of every run of the grid (finished ones counted, the others listed); returns 0."""
    states = grid_states(profile, jobs, results_root, work_root, iterations)
    submitted = _read_submitted(Path(folder) if folder else work_root / "submitit")
    counts = {s: sum(1 for st, _ in states.values() if st == s) for s in STATES}
    log(f"profile {profile.name}: {len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for s in STATES[1:]:
        for key, (st, detail) in states.items():
            if st != s:
                continue
            job = submitted.get(key)
            if job and st in ("interrupted", "missing", "failed"):
                tail = _last_line(Path(job["folder"]) / f"{job['id']}_0_log.err")
                detail = "; ".join(x for x in (detail, f"job {job['id']} log: {tail}" if tail else "") if x)
            log(f"  {st:<11} {key}" + (f"  {detail}" if detail else ""))
    return 0


# -- submission ------------------------------------------------------------------------------------------------------
def _read_submitted(folder: Path) -> dict[str, dict[str, str]]:
    try:
        return json.loads((folder / "submitted.json").read_text())
    except (OSError, ValueError):
        return {}


def _record_submitted(folder: Path, records: dict[str, dict[str, str]]) -> None:
    from piad.run.rundir import atomic_write_json
    atomic_write_json(folder / "submitted.json", {**_read_submitted(folder), **records})


def _slurm_activity(submitit, folder: Path) -> dict[str, bool]:
    """Run key -> whether its recorded Slurm job is pending or running (runs whose job state is unknown: absent)."""
    out = {}
    for key, rec in _read_submitted(folder).items():
        try:
            state = submitit.SlurmJob(folder=rec["folder"], job_id=rec["id"]).state
        except Exception:  # noqa: BLE001 - sacct missing or slow: the run folders decide
            continue
        if state and not state.startswith("UNKNOWN"):
            out[key] = state.split()[0] in ACTIVE_SLURM_STATES
    return out


def runs_in_progress(submitit, profile, jobs, results_root: Path, work_root: Path, iterations: Optional[int],
                     opts: ClusterOptions, folder: Path) -> set[str]:
    """Keys of the runs not to submit again: running per their folders, or their recorded Slurm job is active."""
    states = grid_states(profile, jobs, results_root, work_root, iterations)
    busy = {k for k, (s, _) in states.items() if s == "running"}
    if opts.cluster == "slurm":     # Slurm knows better than recently written files whether a job is alive
        for key, active in _slurm_activity(submitit, folder).items():
            if key not in states:
                continue
            if active:
                busy.add(key)
            elif key in busy and "last write" in states[key][1]:
                busy.discard(key)
    return busy


def make_executor(submitit, opts: ClusterOptions, folder: Path, name: str):
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=opts.cluster, slurm_max_num_timeout=opts.max_timeouts,
                                   local_max_num_timeout=opts.max_timeouts)
    except RuntimeError as e:       # no srun on this machine
        raise ConfigError(f"--executor {opts.cluster}: submitit cannot submit from this machine ({e}). Run the "
                          "command where Slurm's commands (sbatch, srun) are available, e.g. a login node.") from None
    params: dict[str, Any] = {"name": name, "timeout_min": opts.time_limit_min, "gpus_per_node": opts.gpus_per_job,
                              "cpus_per_task": opts.cpus_per_job, "tasks_per_node": 1, "mem_gb": opts.mem_gb}
    if opts.cluster == "slurm":
        params.update(slurm_partition=opts.partition, slurm_array_parallelism=opts.array_parallelism,
                      slurm_signal_delay_s=180, slurm_additional_parameters=dict(opts.slurm_params) or None,
                      slurm_setup=list(opts.setup) or None)
    ex.update_parameters(**params)
    return ex


def cluster_ensemble_size(ensemble: Optional[int], device: str, opts: ClusterOptions) -> int:
    """Runs per job: --ensemble, else up to 10 when the job has a GPU and the device is auto or CUDA, else 1."""
    from piad.experiments.reproduce import ENSEMBLE_SIZE_GPU, resolve_ensemble_size
    if ensemble is not None:
        return resolve_ensemble_size(ensemble, "cpu")
    return ENSEMBLE_SIZE_GPU if opts.gpus_per_job > 0 and (device == "auto" or device.startswith("cuda")) else 1


def submit_grid(profile, todo, results_root: Path, work_root: Path, device: str, iterations: Optional[int],
                ensemble: Optional[int], opts: ClusterOptions, log=print) -> list[tuple[Any, list[str]]]:
    """Submit the runs of `todo` that are not running, one job per ensemble group; returns (job, run keys)."""
    submitit = require_submitit()
    from piad.experiments.cluster_task import GridTask
    from piad.experiments.reproduce import ensemble_groups
    folder = Path(opts.folder) if opts.folder else work_root / "submitit"
    busy = runs_in_progress(submitit, profile, todo, results_root, work_root, iterations, opts, folder)
    for k in sorted(busy):
        log(f"  {k}: running or queued already (see --status); not submitted again")
    todo = [j for j in todo if j.key not in busy]
    size = cluster_ensemble_size(ensemble, device, opts)
    groups = ensemble_groups(todo, size)
    if not groups:
        return []
    threads = profile.threads or opts.cpus_per_job
    ex = make_executor(submitit, opts, folder, f"piad-{profile.name}")
    tasks = [GridTask(profile, g, results_root.resolve(), work_root.resolve(), device, iterations, threads, size)
             for g in groups]
    with ex.batch():
        jobs = [ex.submit(t) for t in tasks]
    _record_submitted(folder, {j.key: {"id": str(job.job_id), "folder": str(folder.resolve())}
                               for job, g in zip(jobs, groups) for j in g})
    log(f"submitted {len(jobs)} job(s) ({len(todo)} runs, up to {size} per job) to {opts.cluster}; "
        f"logs in {folder}")
    return [(job, [j.key for j in g]) for job, g in zip(jobs, groups)]


def wait_for(submitted: list, opts: ClusterOptions, log=print) -> list[str]:
    """Wait for the (job, run keys) pairs as they finish; returns the failures."""
    from submitit.helpers import as_completed
    keys_of = {str(job.job_id): keys for job, keys in submitted}
    jobs = [job for job, _ in submitted]
    failures, done = [], 0
    for job in as_completed(jobs, poll_frequency=opts.poll_s):
        done += 1
        keys = keys_of[str(job.job_id)]
        try:
            job.result()
            log(f"[{done}/{len(jobs)}] job {job.job_id} finished: {', '.join(keys)}")
        except Exception as e:  # noqa: BLE001 - the job's own error, pickled by submitit
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            msg = lines[-1] if lines else type(e).__name__
            failures.append(f"job {job.job_id} ({', '.join(keys)}): {msg}")
            log(f"[{done}/{len(jobs)}] job {job.job_id} FAILED: {msg} (log: {job.paths.stderr})")
    return failures


def run_grid(profile, all_jobs, todo, results_root: Path, work_root: Path, device: str, iterations: Optional[int],
             ensemble: Optional[int], opts: ClusterOptions, summaries: bool = True,
             refresh_perceptual: bool = False, log=print) -> int:
    """`piad reproduce --executor slurm`: submit, wait, then run the summaries as one job once every run finished."""
    jobs = submit_grid(profile, todo, results_root, work_root, device, iterations, ensemble, opts, log)
    if not opts.wait:
        log("not waiting (--no-wait): follow with `piad reproduce ... --status`; once every run is finished, run "
            "the same command again (or add --summaries-only) for the summary notebooks")
        return 0
    failures = wait_for(jobs, opts, log)
    states = grid_states(profile, all_jobs, results_root, work_root, iterations)
    unfinished = sorted(k for k, (s, _) in states.items() if s != "finished")
    if summaries and unfinished:
        log(f"summary notebooks not run: {len(unfinished)} run(s) not finished ({', '.join(unfinished[:5])}"
            f"{', ...' if len(unfinished) > 5 else ''}); see --status, then run the command again")
        failures = failures or [f"{len(unfinished)} run(s) not finished"]
    elif summaries:
        submitit = require_submitit()
        from piad.experiments.cluster_task import summaries_job
        folder = Path(opts.folder) if opts.folder else work_root / "submitit"
        ex = make_executor(submitit, opts, folder, f"piad-{profile.name}-summaries")
        job = ex.submit(summaries_job, profile, results_root.resolve(), device, refresh_perceptual)
        log(f"summary notebooks: job {job.job_id}")
        failures += wait_for([(job, ["summary notebooks"])], opts, log)
    if failures:
        log(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures))
        return 1
    log(f"profile {profile.name}: all done")
    return 0
