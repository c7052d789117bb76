"""`piad reproduce --executor slurm`: the grid on a cluster through submitit (its state: piad.experiments.status).

With the slurm executor every ensemble group of the grid (runs of one experiment, `--ensemble K`; one run per job
when K is 1) becomes one submitit job (a Slurm job array, `--array-parallelism` at a time) with the resources of
ClusterOptions (the cluster flags of `piad reproduce`, parsed in piad.cli). A job executes the same notebooks into
the same folders as the local runner, so results, the work folder's checkpoints and `--status` do not depend on the
executor. A job that is preempted or reaches its time limit is requeued by submitit
(`piad.experiments.cluster_task.GridTask` is Checkpointable); its runs resume from their last checkpoint. Rerunning
the command submits only the runs that are neither finished nor running.
The summary notebooks run as one last job once every run of the grid has finished (the command waits for its jobs
unless `--no-wait`; then run it again, or with `--summaries-only`, when `--status` reports every run finished: that
call submits the summary job, unless it is queued or running, or the summaries are newer than every result).

Before anything is prepared, check_cluster asks Slurm (sinfo) whether it answers here and knows the partition. Job
states come from squeue, then sacct (slurm_states), so a cluster without accounting works too; the wait ends for
every job: a result, a state without one (cancelled, failed, out of memory), a pending reason that never resolves,
a job Slurm has forgotten, or Slurm silent for 30 minutes. sbatch's refusals are one line with Slurm's message.

submitit is an optional dependency (`pip install "piad[cluster]"`); it is imported only when a job is submitted.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piad.errors import ConfigError, PiadError, PiadIOError
from piad.experiments.grid import ENSEMBLE_SIZE_GPU, ensemble_groups, resolve_ensemble_size
from piad.experiments.status import grid_states, last_line, read_submitted
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
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
}
SLURM_TIMEOUT_S = 60  # a Slurm client command (sbatch, squeue, sacct) that takes longer counts as no answer
TERMINAL_GRACE_S = 10  # an ended job's result file may lag its state on a shared file system: look again after this
LOST_AFTER_S = 120  # a job that neither squeue nor sacct knows any more, without a result: given up after this
# pending reasons under which a job never starts as it was submitted (the request exceeds what the partition allows)
HOPELESS_REASONS = {
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "DependencyNeverSatisfied",
}
NO_ANSWER_S = 30 * 60  # the wait ends (the jobs go on) when Slurm has not answered for this long
SUMMARIES_KEY = "(summary notebooks)"  # submitted.json's record of the summary job


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


class WaitInterrupted(PiadError):
    """Ctrl-C while the command waits for its jobs: they go on in Slurm."""

    exit_code = 130


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            '--executor slurm needs submitit, an optional dependency: pip install "piad[cluster]" '
            "(or pip install submitit)."
        ) from None
    return submitit


# -- Slurm's own commands ----------------------------------------------------------------------------------------------
def _slurm(*cmd: str) -> subprocess.CompletedProcess | None:
    """A Slurm client command (stdout, stderr as text); None when it is missing or does not answer in time."""
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        return subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_message(text: str) -> str:
    """Slurm's own message in a client's output, on one line (its last error line, else its last line)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ": fatal: " in ln]
    errors = [ln for ln in lines if "error" in ln.lower()]
    msg = (fatal or errors or lines or ["(no message)"])[-1]
    return re.sub(r"^(sbatch|squeue|sinfo|sacct|scontrol): (error|fatal): ", "", msg)


def _expand_ids(job_id: str) -> list[str]:
    """`12_[0-3,7%2]` -> 12_0 ... 12_3, 12_7 (sacct's and squeue's notation for pending array tasks)."""
    m = re.fullmatch(r"(\d+)_\[([^\]]*)\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def slurm_states(job_ids, reasons: dict | None = None) -> dict[str, str] | None:
    """Job id (`12` or an array task `12_3`) -> Slurm's state (its first word, e.g. RUNNING, CANCELLED) for the ids
    Slurm knows: squeue first (jobs in the controller's memory, also for a while after they ended), then sacct for
    the others (where the cluster keeps accounting). None when Slurm does not answer at all. `reasons`, if given,
    receives squeue's reason of every pending job."""
    wanted = {str(i) for i in job_ids}
    out: dict[str, str] = {}
    answered = False
    r = _slurm("squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r")
    if r is not None and r.returncode == 0:
        answered = True
        for ln in r.stdout.splitlines():
            jid, _, rest = ln.strip().partition("|")
            state, _, reason = rest.partition("|")
            for i in _expand_ids(jid):
                if i in wanted and state:
                    out[i] = state.split()[0]
                    if reasons is not None and out[i] == "PENDING":
                        reasons[i] = reason.strip()
    rest = wanted - set(out)
    if rest:
        bases = sorted({i.split("_")[0] for i in rest})
        r = _slurm("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(bases))
        if r is not None and r.returncode == 0:
            answered = True
            for ln in r.stdout.splitlines():
                jid, _, state = ln.strip().partition("|")
                for i in _expand_ids(jid):
                    if i in rest and state:
                        out[i] = state.split()[0]
        elif r is not None and "accounting storage is disabled" in (r.stderr + r.stdout).lower():
            answered = True  # no accounting: what squeue does not know has ended (see wait_for)
    return out if answered else None


def check_cluster(opts: ClusterOptions) -> None:
    """Before anything is submitted: Slurm answers from this machine and knows the partition (ConfigError else)."""
    require_submitit()
    if opts.cluster != "slurm":
        return
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise ConfigError(
            "--executor slurm: Slurm's commands (sbatch, sinfo) are not on this machine's PATH. Run the command "
            "where they are, e.g. a login node of the cluster."
        )
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # Slurm's clients would retry for a minute
        raise ConfigError(f"--executor slurm: SLURM_CONF={conf}: no such file; point it at the cluster's slurm.conf.")
    r = _slurm("sinfo", "-h", "-o", "%R")
    if r is None:
        raise PiadIOError(f"--executor slurm: sinfo did not answer within {SLURM_TIMEOUT_S} s; try again later.")
    if r.returncode != 0:
        raise ConfigError(
            f"--executor slurm: Slurm does not answer here ({slurm_message(r.stderr + r.stdout)}). Run the "
            "command where Slurm is configured (a login node), or set SLURM_CONF."
        )
    partitions = {p.strip() for p in r.stdout.split()}
    if opts.partition and opts.partition not in partitions:
        known = ", ".join(sorted(partitions)) or "none"
        raise ConfigError(f"--partition {opts.partition}: no such Slurm partition here (partitions: {known}).")
    # cores: a job that asks for more than any node of the partition has would wait forever
    r = _slurm("sinfo", "-h", "-N", "-o", "%c", *(["-p", opts.partition] if opts.partition else []))
    cores = [int(c) for c in (r.stdout if r and r.returncode == 0 else "").split() if c.isdigit()]
    if cores and opts.cpus_per_job > max(cores):
        raise ConfigError(
            f"--cpus-per-job {opts.cpus_per_job}: the nodes of the partition have at most {max(cores)} cores; "
            "ask for fewer."
        )


# -- submission ------------------------------------------------------------------------------------------------------
def _record_submitted(folder: Path, records: dict[str, dict[str, str]]) -> None:
    atomic_write_json(folder / "submitted.json", {**read_submitted(folder), **records})


def _slurm_activity(submitit, folder: Path) -> dict[str, bool]:
    """Run key -> whether its recorded Slurm job is pending or running (runs whose job Slurm no longer knows, or
    when Slurm does not answer: absent)."""
    records = {k: r for k, r in read_submitted(folder).items() if isinstance(r, dict) and r.get("id")}
    states = slurm_states(str(r["id"]) for r in records.values()) or {}
    return {k: states[str(r["id"])] in ACTIVE_SLURM_STATES for k, r in records.items() if str(r["id"]) in states}


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


def signal_delay_s(time_limit_min: int) -> int:
    """Seconds before the time limit at which Slurm signals a job to checkpoint: 180, a quarter of short limits."""
    return max(1, min(180, time_limit_min * 60 // 4))


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
            slurm_signal_delay_s=signal_delay_s(opts.time_limit_min),
            slurm_additional_parameters=dict(opts.slurm_params) or None,
            slurm_setup=list(opts.setup) or None,
        )
        if not opts.gpus_per_job:
            params.pop("gpus_per_node")  # no --gpus-per-node=0: clusters without GPUs refuse any GPU request
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError) as e:  # an --slurm-param that submitit does not know
        raise ConfigError(f"--slurm-param: {e}".splitlines()[0]) from None
    return ex


@contextlib.contextmanager
def submission_errors(opts: ClusterOptions):
    """sbatch's refusal as one line with Slurm's own message (ConfigError; PiadIOError when Slurm is unreachable);
    the raw output that submitit prints on the way is swallowed."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    except Exception as e:  # noqa: BLE001 - submitit raises its FailedJobError, subprocess or OS errors
        if isinstance(e, PiadError):
            raise
        msg = slurm_message(f"{buf.getvalue()}\n{e}")
        cls = PiadIOError if re.search(r"contact|connect|timed out|unreachable", msg, re.I) else ConfigError
        raise cls(
            f"--executor {opts.cluster}: the job was not submitted: {msg} (check --partition, --slurm-param, "
            "--gpus-per-job, --cpus-per-job, --mem-gb, --time-limit against the cluster's limits)"
        ) from None


def cluster_ensemble_size(ensemble: int | None, device: str, opts: ClusterOptions) -> int:
    """Runs per job: --ensemble, else up to 10 when the job has a GPU and the device is auto or CUDA, else 1."""
    if ensemble is not None:
        return resolve_ensemble_size(ensemble, "cpu")
    return ENSEMBLE_SIZE_GPU if opts.gpus_per_job > 0 and (device == "auto" or device.startswith("cuda")) else 1


def submitit_folder(opts: ClusterOptions, work_root: Path) -> Path:
    return Path(opts.folder) if opts.folder else work_root / "submitit"


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

    folder = submitit_folder(opts, work_root)
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
    with submission_errors(opts):
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


# -- waiting ---------------------------------------------------------------------------------------------------------
def _job_error(job) -> str:
    """The last line of the error a finished job pickled (its exception), or ''."""
    try:
        job.result()
    except Exception as e:  # noqa: BLE001 - the job's own error, pickled by submitit
        lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith(("----", "You can check"))]
        lines = [ln for ln in lines if not ln.strip().startswith(("-", "or at paths"))]
        return lines[-1].strip() if lines else type(e).__name__
    return ""


def _log_hint(job) -> str:
    tail = last_line(Path(job.paths.stderr))
    return f"log {job.paths.stderr}" + (f": {tail}" if tail else "")


def wait_for(submitted: list, opts: ClusterOptions, log=print) -> list[str]:
    """Wait for the (job, run keys) pairs as they end; returns the failures. On Slurm the states come from squeue
    and sacct (slurm_states): a job that ends without a result (cancelled, killed, out of memory, lost) is a failure
    with Slurm's state, never a wait without end."""
    if opts.cluster != "slurm":
        return _wait_local(submitted, opts, log)
    try:
        return _wait_slurm(submitted, opts, log)
    except KeyboardInterrupt:
        ids = ", ".join(str(job.job_id) for job, _ in submitted)
        raise WaitInterrupted(
            f"interrupted while waiting; the submitted jobs ({ids}) go on in Slurm: follow them with --status, and "
            "once they have ended run the same command again (it submits only what is left, then the summaries)."
        ) from None


def _wait_slurm(submitted: list, opts: ClusterOptions, log=print) -> list[str]:
    pending = {str(job.job_id): (job, keys) for job, keys in submitted}
    ended_at: dict[str, float] = {}  # job id -> when it was first seen ended (or unknown to Slurm) without a result
    failures, done, total = [], 0, len(pending)
    last_answer = time.time()
    while pending:
        states, reasons = None, {}
        if any(not Path(job.paths.result_pickle).exists() for job, _ in pending.values()):
            states = slurm_states(pending, reasons)
            if states is not None:
                last_answer = time.time()
            elif time.time() - last_answer > NO_ANSWER_S:
                keys = sorted(k for _, ks in pending.values() for k in ks)
                failures.append(f"Slurm did not answer for {NO_ANSWER_S // 60} min; not waiting for {', '.join(keys)}")
                log(f"Slurm did not answer for {NO_ANSWER_S // 60} min: stopped waiting (the jobs go on; see --status)")
                return failures
        now = time.time()
        for jid, (job, keys) in list(pending.items()):
            state = (states or {}).get(jid)
            if Path(job.paths.result_pickle).exists():
                msg = _job_error(job)
            elif state == "PENDING" and reasons.get(jid) in HOPELESS_REASONS:
                msg = (
                    f"cannot start: Slurm keeps it pending for {reasons[jid]} (the request exceeds what the "
                    f"partition allows); remove it with `scancel {jid}` and submit with other resources"
                )
            elif states is None or state in ACTIVE_SLURM_STATES:
                ended_at.pop(jid, None)
                continue
            elif now - ended_at.setdefault(jid, now) < (TERMINAL_GRACE_S if state else LOST_AFTER_S):
                continue
            else:
                msg = (
                    f"{state} (Slurm's state; no result)"
                    if state
                    else "Slurm no longer knows the job and it left no result"
                ) + f"; {_log_hint(job)}"
            del pending[jid]
            done += 1
            if msg:
                failures.append(f"job {jid} ({', '.join(keys)}): {msg}")
                log(f"[{done}/{total}] job {jid} FAILED: {msg}")
            else:
                log(f"[{done}/{total}] job {jid} finished: {', '.join(keys)}")
        if pending:
            time.sleep(opts.poll_s)
    return failures


def _wait_local(submitted: list, opts: ClusterOptions, log=print) -> list[str]:
    """submitit's local executor (tests): its own job states."""
    from submitit.helpers import as_completed

    keys_of = {str(job.job_id): keys for job, keys in submitted}
    jobs = [job for job, _ in submitted]
    failures, done = [], 0
    for job in as_completed(jobs, poll_frequency=opts.poll_s):
        done += 1
        keys = keys_of[str(job.job_id)]
        msg = _job_error(job)
        if msg:
            failures.append(f"job {job.job_id} ({', '.join(keys)}): {msg}")
            log(f"[{done}/{len(jobs)}] job {job.job_id} FAILED: {msg} (log: {job.paths.stderr})")
        else:
            log(f"[{done}/{len(jobs)}] job {job.job_id} finished: {', '.join(keys)}")
    return failures


# -- the grid --------------------------------------------------------------------------------------------------------
def summaries_up_to_date(results_root: Path, keys) -> bool:
    """results.ipynb (the last summary notebook) is newer than every run's metrics.json."""
    try:
        summary = (results_root / "results.ipynb").stat().st_mtime
        return all((results_root / k / "metrics.json").stat().st_mtime <= summary for k in keys)
    except OSError:
        return False


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
    summaries_only: bool = False,
) -> int:
    """`piad reproduce --executor slurm`: submit, wait, then run the summaries as one job once every run finished.

    With --no-wait the command returns after submitting; called again once every run is finished, it submits the
    summary job (unless the summaries are newer than every result, or their job is still queued or running)."""
    folder = submitit_folder(opts, work_root)
    jobs = submit_grid(profile, todo, results_root, work_root, device, iterations, ensemble, opts, log)
    failures = wait_for(jobs, opts, log) if opts.wait else []
    states = grid_states(profile, all_jobs, results_root, work_root, iterations)
    unfinished = sorted(k for k, (s, _) in states.items() if s != "finished")
    if not opts.wait and (jobs or unfinished):
        log(
            "not waiting (--no-wait): follow with `piad reproduce ... --status`; once every run is finished, run "
            "the same command again (or add --summaries-only) for the summary notebooks"
        )
        return 0
    if summaries and unfinished:
        log(
            f"summary notebooks not run: {len(unfinished)} run(s) not finished ({', '.join(unfinished[:5])}"
            f"{', ...' if len(unfinished) > 5 else ''}); see --status, then run the command again"
        )
        failures = failures or [f"{len(unfinished)} run(s) not finished"]
    elif summaries:
        record = read_submitted(folder).get(SUMMARIES_KEY)
        active = False
        if opts.cluster == "slurm" and isinstance(record, dict) and record.get("id"):
            state = (slurm_states([str(record["id"])]) or {}).get(str(record["id"]))
            active = state in ACTIVE_SLURM_STATES
        if active:
            log(f"summary notebooks: job {record['id']} is queued or running already; not submitted again")
            if not opts.wait:
                return 0
            failures += wait_for([(_job(record), ["summary notebooks"])], opts, log)
        elif not summaries_only and not refresh_perceptual and summaries_up_to_date(results_root, states):
            log("summary notebooks: newer than every result already (--summaries-only runs them again)")
        else:
            failures += _submit_summaries(profile, results_root, device, refresh_perceptual, opts, folder, log)
            if not opts.wait:
                return 0
    if failures:
        log(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures))
        return 1
    log(f"profile {profile.name}: all done")
    return 0


def _job(record: dict):
    submitit = require_submitit()
    return submitit.SlurmJob(folder=record["folder"], job_id=str(record["id"]))


def _submit_summaries(profile, results_root: Path, device: str, refresh_perceptual: bool, opts, folder, log):
    submitit = require_submitit()
    from piad.experiments.cluster_task import summaries_job

    ex = make_executor(submitit, opts, folder, f"piad-{profile.name}-summaries")
    with submission_errors(opts):
        job = ex.submit(summaries_job, profile, results_root.resolve(), device, refresh_perceptual)
    _record_submitted(folder, {SUMMARIES_KEY: {"id": str(job.job_id), "folder": str(folder.resolve())}})
    if not opts.wait:
        log(f"summary notebooks: job {job.job_id} submitted (not waiting; --status, then look at {results_root})")
        return []
    log(f"summary notebooks: job {job.job_id}")
    return wait_for([(job, ["summary notebooks"])], opts, log)
