"""`piad reproduce`: run the experiment grid of a profile (piad.experiments.profiles) through the papermill notebooks.

For every (experiment, normal class, run) of a profile the runner executes `notebooks/train_evaluate.ipynb` with
papermill into a work folder (`runs/<profile>/...`, git-ignored) and copies the small files that describe the result
to `results/<profile>/<experiment>/<class>/<run>/` (piad.experiments.jobs). Finished runs are skipped; interrupted
ones are resumed (the notebook trains with resume=True from the work folder's checkpoint). After the grid the summary
notebooks (`results.ipynb`, `weight_policy.ipynb`, `learning_curves.ipynb`, and once `perceptual_metric.ipynb`) are
executed into `results/<profile>/`. With `executor="slurm"` the grid runs as submitit jobs (piad.experiments.cluster).

`reproduce` first checks every input of the selected runs (piad.experiments.inputs.check_inputs; also with
--dry-run) and stops with exit code 2, naming how to get each missing one, before anything trains.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from piad.experiments.cluster import ClusterOptions, check_cluster, run_grid
from piad.experiments.grid import (
    Job,
    check_selection,
    expected_iterations,
    is_finished,
    plan,
    resolve_ensemble_size,
)
from piad.experiments.inputs import check_inputs, report
from piad.experiments.jobs import ensure_feature_stats, run_job, run_summaries, train_ensembles
from piad.experiments.profiles import get_profile
from piad.experiments.status import report_status
from piad.paths import repo_root


def reproduce(
    profile_name: str,
    benchmarks=None,
    classes=None,
    runs=None,
    device: str = "auto",
    jobs: int = 1,
    iterations: int | None = None,
    results_dir=None,
    work_dir=None,
    summaries: bool = True,
    summaries_only: bool = False,
    refresh_perceptual: bool = False,
    dry_run: bool = False,
    ensemble: int | None = None,
    log=print,
    executor: str = "local",
    cluster=None,
    status: bool = False,
    ablation: bool = True,
    controls: bool = True,
) -> int:
    """Run a profile's grid (skipping finished runs) and its summary notebooks; returns a process exit code.

    `ensemble`: runs of one experiment trained together as a batched ensemble (piad.run.ensemble) before their
    notebooks evaluate them; None batches up to 10 on a CUDA device and none elsewhere, 1 never batches.
    `executor="slurm"` submits the grid through submitit with `cluster` (piad.experiments.cluster.ClusterOptions);
    `status` only reports the state of every run (piad.experiments.status). `ablation=False` leaves out the ablation
    experiments of the selected benchmarks.
    """
    profile = get_profile(profile_name)
    root = repo_root()
    results_root = Path(results_dir) if results_dir else root / "results" / profile.name
    work_root = Path(work_dir) if work_dir else root / "runs" / profile.name
    if not summaries_only:
        check_selection(profile, benchmarks, classes, runs, iterations)  # nothing selected: one line, exit 2
    all_jobs = [] if summaries_only else plan(profile, benchmarks, classes, runs, ablation)
    todo, done = [], []
    for j in all_jobs:
        rd = results_root / j.experiment.name / str(j.normal_class) / str(j.run)
        (done if is_finished(rd, expected_iterations(profile, j.experiment, iterations)) else todo).append(j)
    if status:
        return report_status(
            profile, plan(profile, benchmarks, classes, runs, ablation), results_root, work_root, iterations, log
        )
    # slurm: piad.experiments.cluster decides the group size
    size = resolve_ensemble_size(ensemble, device) if executor == "local" else 1
    log(
        f"profile {profile.name}: {len(all_jobs)} runs selected, {len(done)} already finished, {len(todo)} to run "
        f"(results: {results_root}, checkpoints: {work_root}, {jobs} parallel job(s)"
        + (f", batched ensembles of up to {size} runs)" if size > 1 else ")")
    )
    # every input there (or downloadable) before any training
    inputs = check_inputs(profile, {j.experiment.benchmark for j in todo}, summaries)
    log(report(inputs))
    if not all(i.ok for i in inputs):
        return 2
    if dry_run:
        for j in todo:
            log(f"  would run {j.key}")
        return 0
    if executor == "slurm":  # Slurm answers here and knows the partition, before anything is prepared
        check_cluster(cluster or ClusterOptions())
    if todo or (summaries and profile.feature_stats_recipes):
        ensure_feature_stats(profile, device, log)
    if executor == "slurm":
        return run_grid(
            profile,
            all_jobs,
            todo,
            results_root,
            work_root,
            device,
            iterations,
            ensemble,
            cluster or ClusterOptions(),
            summaries,
            refresh_perceptual,
            log,
            summaries_only,
        )
    threads = profile.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0)
    failures: list[str] = []
    lock = threading.Lock()
    t_start = time.time()
    finished = 0
    trained_together = (
        train_ensembles(profile, todo, work_root, device, iterations, threads, size, log, fit_memory=ensemble is None)
        if size > 1
        else {}
    )

    def one(j: Job):
        log(f"[start] {j.key}")
        return j, run_job(profile, j, results_root, work_root, device, iterations, threads, trained_together.get(j.key))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, j) for j in todo]
        for fut in as_completed(futures):
            j, res = fut.result()
            with lock:
                finished += 1
                elapsed = time.time() - t_start
                eta = elapsed / finished * (len(todo) - finished)
                if res["status"] == "ok":
                    msg = f"ROC AUC {res['roc_auc']:.4f} in {res['wall']:.0f} s"
                else:
                    msg = f"FAILED: {res['error']} (notebook: {res['notebook']})"
                    failures.append(f"{j.key}: {res['error']}")
                log(
                    f"[{finished}/{len(todo)}] {j.key}: {msg}; elapsed {elapsed / 60:.1f} min, "
                    f"about {eta / 60:.1f} min left"
                )
    if summaries:
        failures += run_summaries(profile, results_root, device, refresh_perceptual, log, controls=controls)
    if failures:
        log(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures))
        return 1
    log(f"profile {profile.name}: all done in {(time.time() - t_start) / 60:.1f} min")
    return 0
