"""`piad reproduce --executor slurm`: the grid on a cluster through submitit (its state: piad.experiments.status).

With the slurm executor every ensemble group of the grid (runs of one experiment, `--ensemble K`; one run per job
when K is 1) becomes one submitit job (a Slurm job array, `--array-parallelism` at a time) with the resources of
ClusterOptions (the cluster flags of `piad reproduce`, parsed in piad.cli). A job executes the same notebooks into
the same folders as the local runner, so results, the work folder's checkpoints and `--status` do not depend on the
executor. A job that is preempted or reaches its time limit is requeued by submitit
(`piad.experiments.cluster_task.GridTask` is Checkpointable); its runs resume from their last checkpoint. Rerunning
the command submits only the runs that are neither finished nor running.
The summary notebooks run as one last job once every run of the grid has finished (the command waits for its jobs
unless `--no-wait`; then run it again, or with `--summaries-only`, when `--status` reports every run finished).

submitit is an optional dependency (`pip install "piad[cluster]"`); it is imported only when a job is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piad.errors import ConfigError
from piad.experiments.grid import ENSEMBLE_SIZE_GPU, ensemble_groups, resolve_ensemble_size
from piad.experiments.status import grid_states, read_submitted
from piad.run.rundir import atomic_write_json

ACTIVE_SLURM_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
}


@dataclass
class ClusterOptions:
    """Resources of one submitted job (one ensemble group of runs) and how to wait for them."""

    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: float | None = None
    time_limit_min: int = 24 * 60
    array_parallelism: int = 64
    max_timeouts: int = 20
    slurm_params: dict[str, str] = field(default_factory=dict)  # extra sbatch parameters (account, qos, ...)
    setup: list[str] = field(default_factory=list)  # shell lines run before each job
    wait: bool = True
    poll_s: float = 30.0
    cluster: str = "slurm"  # submitit's cluster: "slurm", or "local" (submitit's local executor; tests)
    folder: str | None = None  # submitit's pickles and logs (default <work dir>/submitit)


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            '--executor slurm needs submitit, an optional dependency: pip install "piad[cluster]" '
            "(or pip install submitit)."
        ) from None
    return submitit


# -- submission ------------------------------------------------------------------------------------------------------
def _record_submitted(folder: Path, records: dict[str, dict[str, str]]) -> None:
    atomic_write_json(folder / "submitted.json", {**read_submitted(folder), **records})


def _slurm_activity(submitit, folder: Path) -> dict[str, bool]:
    """Run key -> whether its recorded Slurm job is pending or running (runs whose job state is unknown: absent)."""
    out = {}
    for key, rec in read_submitted(folder).items():
        try:
            state = submitit.SlurmJob(folder=rec["folder"], job_id=rec["id"]).state
        except Exception:  # noqa: BLE001 - sacct missing or slow: the run folders decide
            continue
        if state and not state.startswith("UNKNOWN"):
            out[key] = state.split()[0] in ACTIVE_SLURM_STATES
    return out


def runs_in_progress(
    submitit,
    profile,
    jobs,
    results_root: Path,
    work_root: Path,
    iterations: int | None,
    opts: ClusterOptions,
    folder: Path,
) -> set[str]:
    """Keys of the runs not to submit again: running per their folders, or their recorded Slurm job is active."""
    states = grid_states(profile, jobs, results_root, work_root, iterations)
    busy = {k for k, (s, _) in states.items() if s == "running"}
    if opts.cluster == "slurm":  # Slurm knows better than recently written files whether a job is alive
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
        ex = submitit.AutoExecutor(
            folder=str(folder),
            cluster=opts.cluster,
            slurm_max_num_timeout=opts.max_timeouts,
            local_max_num_timeout=opts.max_timeouts,
        )
    except RuntimeError as e:  # no srun on this machine
        raise ConfigError(
            f"--executor {opts.cluster}: submitit cannot submit from this machine ({e}). Run the "
            "command where Slurm's commands (sbatch, srun) are available, e.g. a login node."
        ) from None
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": opts.time_limit_min,
        "gpus_per_node": opts.gpus_per_job,
        "cpus_per_task": opts.cpus_per_job,
        "tasks_per_node": 1,
        "mem_gb": opts.mem_gb,
    }
    if opts.cluster == "slurm":
        params.update(
            slurm_partition=opts.partition,
            slurm_array_parallelism=opts.array_parallelism,
            slurm_signal_delay_s=180,
            slurm_additional_parameters=dict(opts.slurm_params) or None,
            slurm_setup=list(opts.setup) or None,
        )
    ex.update_parameters(**params)
    return ex


def cluster_ensemble_size(ensemble: int | None, device: str, opts: ClusterOptions) -> int:
    """Runs per job: --ensemble, else up to 10 when the job has a GPU and the device is auto or CUDA, else 1."""
    if ensemble is not None:
        return resolve_ensemble_size(ensemble, "cpu")
    return ENSEMBLE_SIZE_GPU if opts.gpus_per_job > 0 and (device == "auto" or device.startswith("cuda")) else 1


def submit_grid(
    profile,
    todo,
    results_root: Path,
    work_root: Path,
    device: str,
    iterations: int | None,
    ensemble: int | None,
    opts: ClusterOptions,
    log=print,
) -> list[tuple[Any, list[str]]]:
    """Submit the runs of `todo` that are not running, one job per ensemble group; returns (job, run keys)."""
    submitit = require_submitit()
    from piad.experiments.cluster_task import GridTask

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
    tasks = [
        GridTask(profile, g, results_root.resolve(), work_root.resolve(), device, iterations, threads, size)
        for g in groups
    ]
    with ex.batch():
        jobs = [ex.submit(t) for t in tasks]
    _record_submitted(
        folder,
        {
            j.key: {"id": str(job.job_id), "folder": str(folder.resolve())}
            for job, g in zip(jobs, groups, strict=True)
            for j in g
        },
    )
    log(f"submitted {len(jobs)} job(s) ({len(todo)} runs, up to {size} per job) to {opts.cluster}; logs in {folder}")
    return [(job, [j.key for j in g]) for job, g in zip(jobs, groups, strict=True)]


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


def run_grid(
    profile,
    all_jobs,
    todo,
    results_root: Path,
    work_root: Path,
    device: str,
    iterations: int | None,
    ensemble: int | None,
    opts: ClusterOptions,
    summaries: bool = True,
    refresh_perceptual: bool = False,
    log=print,
) -> int:
    """`piad reproduce --executor slurm`: submit, wait, then run the summaries as one job once every run finished."""
    jobs = submit_grid(profile, todo, results_root, work_root, device, iterations, ensemble, opts, log)
    if not opts.wait:
        log(
            "not waiting (--no-wait): follow with `piad reproduce ... --status`; once every run is finished, run "
            "the same command again (or add --summaries-only) for the summary notebooks"
        )
        return 0
    failures = wait_for(jobs, opts, log)
    states = grid_states(profile, all_jobs, results_root, work_root, iterations)
    unfinished = sorted(k for k, (s, _) in states.items() if s != "finished")
    if summaries and unfinished:
        log(
            f"summary notebooks not run: {len(unfinished)} run(s) not finished ({', '.join(unfinished[:5])}"
            f"{', ...' if len(unfinished) > 5 else ''}); see --status, then run the command again"
        )
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
