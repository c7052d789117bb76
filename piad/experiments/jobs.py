"""The work of one profile's grid, for the local runner (piad.experiments.reproduce) and for cluster jobs
(piad.experiments.cluster_task) alike: the feature statistics a profile computes once, batched ensemble training,
one job's notebook and result folder, and the summary notebooks.

Training writes checkpoints into a work folder (`runs/<profile>/...`, git-ignored); the small files that describe
the result are then copied to `results/<profile>/<experiment>/<class>/<run>/`:

    train_evaluate.ipynb (executed)  config.json  metrics.json  provenance.json  log.csv  policy.csv  samples/latest.png

`metrics.json` is copied last, so a result folder with it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from piad.experiments.grid import NOTEBOOK, Job, ensemble_groups
from piad.experiments.notebooks import clean_notebook, execute_notebook, job_config, label_prefix, notebook_parameters
from piad.experiments.profiles import Profile
from piad.experiments.provenance import file_sha256, git_state, provenance
from piad.experiments.runs import read_json
from piad.paths import display_path, repo_root, sanitise_file, sanitise_text, sanitise_tree
from piad.run.rundir import current_umask

RESULT_FILES = ("config.json", "log.csv", "policy.csv", "curve.csv", "scores.npz", "samples/latest.png")
FEATURE_STATS_BATCH = 256  # images per VGG forward pass (as `piad feature-stats --batch-size`'s default)


def train_ensembles(
    profile: Profile,
    jobs: list[Job],
    work_root: Path,
    device: str,
    iterations: int | None,
    threads: int,
    size: int,
    log=print,
    fit_memory: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train the jobs' models as batched ensembles of up to `size` members (piad.run.ensemble) before the notebooks run.

    Each member's run directory is the one its notebook uses; the notebook then finds the finished checkpoint,
    resumes nothing and evaluates. A group that cannot be batched (e.g. members interrupted at different
    iterations) is left to the notebooks, which train its runs one by one. Returns job key -> ensemble record.
    `fit_memory` (CUDA): each experiment's groups are cut to the members that fit in the device's free memory,
    measured once per experiment (piad.run.ensemble_memory).
    """
    import torch

    from piad.errors import PiadError
    from piad.run.ensemble import train_ensemble

    records: dict[str, dict[str, Any]] = {}
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    fitting: dict[str, int] = {}
    groups = ensemble_groups(jobs, size)
    if fit_memory:
        from piad.run.ensemble_memory import ensemble_size_by_memory

        cut = []
        for group in groups:
            name = group[0].experiment.name
            if name not in fitting and len(group) > 1:
                p = notebook_parameters(profile, group[0], work_root.resolve(), device, iterations, threads)
                fitting[name] = ensemble_size_by_memory(job_config(p), device, cap=size)
                log(f"[ensemble] {name}: {fitting[name]} members fit in the device's free memory")
            k = fitting.get(name, size)
            cut += [group[i : i + k] for i in range(0, len(group), k)]
        groups = cut
    try:
        for group in groups:
            if len(group) < 2:
                continue
            keys = [j.key for j in group]
            outs = [work_root / j.experiment.name / str(j.normal_class) / str(j.run) for j in group]
            cfgs = [
                job_config(notebook_parameters(profile, j, out.resolve(), device, iterations, threads))
                for j, out in zip(group, outs, strict=True)
            ]
            log(f"[ensemble] training {len(group)} runs together: {', '.join(keys)}")
            t0 = time.time()
            try:
                ens = train_ensemble(cfgs, outs, device, resume=True, progress=False)
            except PiadError as e:
                log(f"[ensemble] {', '.join(keys)}: not batched ({e}); the notebooks train these runs one by one")
                continue
            wall = time.time() - t0
            log(f"[ensemble] {len(group)} runs trained in {wall:.0f} s ({len(ens.diverged)} diverged)")
            for j in group:
                records[j.key] = {"members": keys, "mode": ens.mode, "wall_seconds": round(wall, 1)}
    finally:
        torch.set_num_threads(before)
    return records


def _outside_repo_roots(root: Path, **labelled: Path) -> list[tuple[str, str]]:
    """Extra roots for piad.paths.sanitise_text: the given folders (label -> folder) that lie outside the repo."""
    out = []
    for label, d in labelled.items():
        try:
            Path(d).resolve().relative_to(root)
        except ValueError:
            out.append((str(Path(d).resolve()), f"<{label}>"))
    return out


def run_job(
    profile: Profile,
    job: Job,
    results_root: Path,
    work_root: Path,
    device: str,
    iterations: int | None,
    threads: int,
    ensemble: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Execute the training notebook for one job and copy its small outputs to the result folder."""
    root = repo_root()
    rel = Path(job.experiment.name) / str(job.normal_class) / str(job.run)
    result_dir, work_dir = results_root / rel, work_root / rel
    params = notebook_parameters(profile, job, work_dir.resolve(), device, iterations, threads)
    started = time.time()
    code = git_state(root)  # the code the notebook's kernel imports; the working tree may change while it runs
    executed = work_dir / NOTEBOOK
    try:
        execute_notebook(root / "notebooks" / NOTEBOOK, executed, params, root)
    except Exception as e:  # noqa: BLE001 - papermill raises PapermillExecutionError and kernel errors
        return {"status": "failed", "error": _short_error(e), "notebook": str(executed)}
    wall = time.time() - started
    metrics = read_json(work_dir / "metrics.json")
    if not metrics or metrics.get("status") != "ok":
        return {
            "status": "failed",
            "error": "the notebook finished but wrote no metrics.json",
            "notebook": str(executed),
        }
    try:
        curve_learning(work_dir, device, threads, bool(params.get("channels_last")))
    except Exception as e:  # noqa: BLE001 - report it as this run's failure; a rerun only scores again
        return {"status": "failed", "error": f"learning curve: {_short_error(e)}", "notebook": str(executed)}
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / "metrics.json").unlink(missing_ok=True)
    # what is copied to results/ shows no paths of this machine (the work folder's config.json keeps them)
    extra = _outside_repo_roots(root, **{"work-dir": work_root, "results-dir": results_root})
    for name in RESULT_FILES:
        src = work_dir / name
        if src.exists():
            (result_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, result_dir / name)
            os.chmod(result_dir / name, 0o666 & ~current_umask())  # as a new file gets: the umask decides
            if (result_dir / name).suffix in (".json", ".csv"):
                sanitise_file(result_dir / name, extra)
    shutil.copyfile(executed, result_dir / NOTEBOOK)
    try:
        clean_notebook(result_dir / NOTEBOOK, label_prefix(results_root, rel.as_posix()))
    except RuntimeError as e:
        return {"status": "failed", "error": str(e), "notebook": str(executed)}
    sanitise_file(result_dir / NOTEBOOK, extra)
    prov = provenance(profile, job, params, metrics, wall, started, root, ensemble, code=code)
    for name, record in (("provenance.json", prov), ("metrics.json", metrics)):  # metrics.json last: complete
        text = sanitise_text(json.dumps(record, indent=2, sort_keys=True, default=str), extra)
        (result_dir / name).write_text(text + "\n")
    return {"status": "ok", "roc_auc": metrics["roc_auc"], "wall": wall}


def curve_learning(work_dir: Path, device: str, threads: int, channels_last: bool = False) -> None:
    """Score the run's weight snapshots into curve.csv (piad.run.curves), unless it is there and up to date.

    Only the snapshots at the run's checkpoint cadence are scored when the final iteration is on it: an interruption
    (SIGTERM, a Slurm preemption) leaves a snapshot off the cadence, which would add an uneven point to the curve and
    minutes of scoring (4-7 per CIFAR-10 snapshot on one CPU thread). `channels_last`: score in the NHWC layout, as
    the notebook's evaluation does for the benchmarks the profile trains in it."""
    import torch

    from piad.run.curves import write_learning_curve
    from piad.run.rundir import CURVE, load_run_config, snapshots
    from piad.run.training import resolve_device

    cfg = load_run_config(work_dir)
    every = cfg.checkpoint_every if cfg.checkpoint_every and cfg.iterations % cfg.checkpoint_every == 0 else None
    snaps = snapshots(work_dir, every)
    out = work_dir / CURVE
    if not snaps or (out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for _, p in snaps)):
        return
    if threads:
        torch.set_num_threads(threads)
    write_learning_curve(work_dir, resolve_device(device), every, channels_last=channels_last)


def _short_error(e: Exception) -> str:
    text = str(e).strip().splitlines()
    tail = [ln for ln in text if ln.strip()][-3:]
    return f"{type(e).__name__}: " + " | ".join(tail)


def ensure_feature_stats(profile: Profile, device: str, log=print) -> None:
    """Compute the profile's missing feature-statistics files once (offline: natural-image crops for CIFAR-10, the
    CIFAR-10 training images for the other benchmarks; substitute VGG)."""
    for r in profile.feature_stats_recipes:
        if not Path(r["output"]).exists():
            _compute_feature_stats(profile, r, device, log)


def _compute_feature_stats(profile: Profile, r: dict, device: str, log=print) -> None:
    import torch

    from piad.experiments.profiles import recipe_command
    from piad.run.feature_stats import compute_feature_stats, save_feature_stats
    from piad.run.training import resolve_device

    if profile.threads:
        torch.set_num_threads(profile.threads)
    t0 = time.time()
    out = Path(r["output"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if r.get("source") == "natural":
        from piad.data.natural import PHOTOGRAPHS, natural_crops

        log(f"computing feature statistics once: {r['n_images']} natural-image crops, layer {r['layer']} -> {out}")
        sets = [natural_crops(int(r["n_images"]), 32, seed=0)]
        what = {
            "source": f"{r['n_images']} seeded 32x32 crops of scikit-image's photographs",
            "photographs": list(PHOTOGRAPHS),
            "split": "none (no benchmark image)",
        }
    else:
        from piad.data import load_benchmark, num_classes

        log(f"computing feature statistics once: {r['benchmark']} training images, layer {r['layer']} -> {out}")
        classes = list(range(num_classes(r["benchmark"])))
        sets = [load_benchmark(r["benchmark"], c, data_root=r.get("data_root")).train for c in classes]
        what = {"benchmark": r["benchmark"], "split": "train, all classes", "data_root": display_path(r["data_root"])}
    batches = (b for s in sets for b in s.split(FEATURE_STATS_BATCH))
    stats = compute_feature_stats(batches, r["vgg_weights"], r["layer"], resolve_device(device))
    save_feature_stats(out, stats)
    log(f"wrote statistics of {sorted(stats)} over {sum(len(s) for s in sets)} images to {out}")
    meta = {
        **what,
        "layer": r["layer"],
        "vgg_weights": display_path(r["vgg_weights"]),
        "vgg_weights_sha256": file_sha256(r["vgg_weights"]),
        "sha256": file_sha256(out),
        "seconds": round(time.time() - t0, 1),
        "command": recipe_command(r, display_path),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def run_summaries(
    profile: Profile,
    results_root: Path,
    device: str,
    refresh_perceptual: bool = False,
    log=print,
    controls: bool = True,
) -> list[str]:
    """Compute the missing training-free controls (unless `controls` is False), then execute the profile's summary
    notebooks into results/<profile>/; returns the failures."""
    root = repo_root()
    failures = []
    tidy_results(results_root)
    try:  # the training-free controls the results tables compare against (complete ones are kept)
        from piad.experiments.controls import run_controls

        if controls:
            run_controls(results_root, device=device, log=log)
    except Exception as e:  # noqa: BLE001 - a control that cannot be computed is reported; the tables say it is missing
        failures.append(f"controls: {_short_error(e)}")
        log(f"controls FAILED: {_short_error(e)}")
    todo = [
        ("perceptual_metric.ipynb", {**profile.perceptual_metric, "device": device}),
        ("weight_policy.ipynb", {"results_dir": str(results_root.resolve()), "runs": profile.weight_policy_runs}),
        ("learning_curves.ipynb", {"profile": profile.name, "results_dir": str(results_root.resolve())}),
        ("results.ipynb", {"profile": profile.name, "results_dir": str(results_root.resolve())}),
    ]
    for name, params in todo:
        out = results_root / name
        if name == "perceptual_metric.ipynb" and out.exists() and not refresh_perceptual:
            continue
        t0 = time.time()
        tmp = results_root / f".{name}.tmp.ipynb"
        try:
            execute_notebook(root / "notebooks" / name, tmp, params, root)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name}: {_short_error(e)} (executed notebook kept at {tmp})")
            log(f"summary {name} FAILED: {_short_error(e)}")
            continue
        try:
            clean_notebook(tmp, label_prefix(results_root, Path(name).stem))
        except RuntimeError as e:
            failures.append(f"{name}: {e}")
            continue
        sanitise_file(tmp, _outside_repo_roots(root, **{"results-dir": results_root}))
        os.replace(tmp, out)
        log(f"summary {name} -> {out} ({time.time() - t0:.0f} s)")
    return failures


def tidy_results(results_root: Path) -> list[Path]:
    """Machine-independent, book-ready result folders, also for results written by older code: executed notebooks
    cleaned (`clean_notebook`), no paths of this machine in any text file (piad.paths.sanitise_tree), files with the
    mode a new file gets (0666 less the umask: 0644 under the usual 022). Safe to re-run; returns the text files whose
    paths were rewritten."""
    results_root = Path(results_root)
    for nb in sorted(results_root.rglob("*.ipynb")):
        if not nb.name.startswith("."):
            where = nb.parent.relative_to(results_root).as_posix() if nb.name == NOTEBOOK else nb.stem
            clean_notebook(nb, label_prefix(results_root, where))
    changed = sanitise_tree(results_root, _outside_repo_roots(repo_root(), **{"results-dir": results_root}))
    mode = 0o666 & ~current_umask()
    for f in results_root.rglob("*"):
        if f.is_file() and (f.stat().st_mode & 0o777) != mode:
            os.chmod(f, mode)
    return changed
