"""A prepared plan for a short GPU stretch (issue 30): one command that, within a wall-clock budget (default 8.5
minutes), trains, scores and writes the most valuable missing results with their provenance, and resumes where the
last call stopped.

    python -m piad.experiments.gpu_plan [--minutes 8.5] [--device cuda] [--results-dir results/gpu]
                                        [--work-dir runs/gpu] [--ensemble K] [--cuda-graph] [--dry-run]

The slices, in order of value (book: Reproduce > A short GPU stretch); each uses the offline profile's inputs (the
substitute VGG-19 to relu3_1, the profile's feature statistics, leak-free for CIFAR-10 (issue 29); a
result trained with another statistics file than today's counts as missing):

1. `cifar10`: the CIFAR-10 grid, classes 0-9, run 0, the offline budget (1,000 iterations);
2. re-executions: the committed offline runs that kept no per-image scores (and used today's statistics, or a
   distance that reads none), executed again with the offline profile, same config and seed, into
   `<results>/reexecutions/offline/`; `piad adopt` puts them in place of the committed runs;
3. `cifar10-ablation-<variant>`: three seeds (runs 0-2) of every ablation variant on CIFAR-10 classes 0-3;
4. `mnist-long`, `cifar10-long`: class 0 toward the paper's iterations (50,000 and 100,000) with a snapshot every
   500 iterations; each call continues them from their checkpoint (carry the work folder) and scores the
   snapshots so far into the learning curve.

Runs of one experiment train together as a batched ensemble (piad.run.ensemble; on CUDA as many as fit in memory,
piad.run.ensemble_memory; elsewhere one at a time, through the same code). The first group's measured throughput
decides which later groups still fit: a short-slice group is started only if its estimate fits the time left; the
long runs take whatever time is left. Training stops (checkpointed, as on SIGTERM) `reserve` seconds before the
budget ends, so that scoring and writing fit. Each finished run's folder under the results folder holds
config.json, metrics.json, provenance.json (with the device and the accelerator's name), log.csv, policy.csv,
scores.npz and the sample grid, copied like the reproduce runner's; a long run's folder holds its curve so far and
progress.json instead of metrics.json until it reaches its target.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from piad.experiments.grid import Job
from piad.experiments.jobs import RESULT_FILES, curve_learning
from piad.experiments.notebooks import job_config, notebook_parameters
from piad.experiments.profiles import ABLATION_VARIANTS, Experiment, Profile, get_profile
from piad.experiments.provenance import file_sha256, git_state, provenance
from piad.experiments.runs import collect, read_json, reads_statistics, stats_file_name
from piad.paths import repo_root, sanitise_file

DEFAULT_MINUTES = 8.5
RESERVE_SECONDS = 75.0  # kept for scoring, learning curves and copying after training stops
LONG_SNAPSHOT_EVERY = 500


@dataclass
class Slice:
    """Experiments of one priority level, their iterations and config overrides; `long`: resumable, fills time."""

    name: str
    experiments: list[Experiment]
    iterations: int
    overrides: dict = field(default_factory=dict)
    long: bool = False
    profile: Profile | None = None  # train with this profile (its name in the provenance) instead of the plan's
    folder: str = ""  # results go to <results>/<folder>/<experiment>/<class>/<run>


def reexecution_slices(base: str, committed) -> list[Slice]:
    """The committed runs of `committed` (a results folder of profile `base`) that kept no per-image scores and would
    train the same under the profile today (its statistics file, or a distance that reads none: the ablation's l2 and
    perceptual-L2 variants), executed again with that profile, same config and seed, one slice per benchmark and budget
    (Fashion-MNIST last: its data come from a Debian package that a GPU machine may lack). They land in
    <results>/reexecutions/<base>/; `piad adopt` then puts them in place of the committed runs."""
    prof = copy.deepcopy(get_profile(base))
    prof.channels_last, prof.bf16 = (), ()
    grid = {e.name: e for e in prof.experiments()}
    todo: dict[tuple[str, int], dict[str, dict[int, list[int]]]] = {}
    for rec in collect(committed) if Path(committed).is_dir() else []:
        b, exp = rec.config.get("benchmark"), grid.get(rec.experiment)
        if not rec.finished or exp is None or exp.benchmark != b or (rec.path / "scores.npz").exists():
            continue  # earlier executions and folders outside the profile's grid are not re-executed here
        if reads_statistics(rec.config) and stats_file_name(rec.config.get("feature_stats")) != stats_file_name(
            prof.feature_stats_for(b)
        ):
            continue  # trained with other statistics: retraining it is not a re-execution
        runs = todo.setdefault((b, int(rec.config["iterations"])), {}).setdefault(rec.experiment, {})
        runs.setdefault(int(rec.config["normal_class"]), []).append(int(rec.config["run"]))
    return [
        Slice(
            f"re-executions: {b}",
            [
                Experiment(
                    name, b, sorted(runs), [], grid[name].ablation, extra_runs={c: sorted(r) for c, r in runs.items()}
                )
                for name, runs in sorted(exps.items())
            ],
            iterations,
            profile=prof,
            folder=f"reexecutions/{base}",
        )
        for (b, iterations), exps in sorted(todo.items(), key=lambda kv: (kv[0][0] == "fashion_mnist", kv[0]))
    ]


def plan_slices(base: str = "offline", committed=None) -> tuple[Profile, list[Slice]]:
    """The profile the runs take their inputs from (named "gpu") and the slices in order. `committed`: the results
    folder whose runs without per-image scores are re-executed (default results/<base>). `base="smoke"`: the same
    plan on the smoke profile's digits with a few iterations (tests, CPU)."""
    prof = copy.deepcopy(get_profile(base))
    prof.name, prof.channels_last, prof.bf16 = "gpu", (), ()
    again = reexecution_slices(base, committed if committed is not None else repo_root() / "results" / base)
    if base == "smoke":
        grid = Experiment("digits", "digits", [0, 1], [0])
        abl = [Experiment("digits-ablation-l2_manual", "digits", [0], [0, 1], "l2_manual")]
        long = [Experiment("digits-long", "digits", [0], [0])]
        return prof, [
            Slice("grid", [grid], 4),
            *again,
            Slice("ablation seeds", abl, 4),
            Slice("long curves", long, 12, {"checkpoint_every": 4, "sample_every": 4}, long=True),
        ]
    grid = Experiment("cifar10", "cifar10", list(range(10)), [0])
    abl = [Experiment(f"cifar10-ablation-{v}", "cifar10", [0, 1, 2, 3], [0, 1, 2], v) for v in ABLATION_VARIANTS]
    long = [Experiment("mnist-long", "mnist", [0], [0]), Experiment("cifar10-long", "cifar10", [0], [0])]
    every = {"checkpoint_every": LONG_SNAPSHOT_EVERY, "sample_every": 5000, "log_every": 100}
    return prof, [
        Slice("CIFAR-10 grid", [grid], prof.iterations_for("cifar10")),
        *again,
        Slice("ablation seeds", abl, prof.iterations_for("cifar10")),
        Slice("long curves: MNIST", long[:1], 50_000, every, long=True),
        Slice("long curves: CIFAR-10", long[1:], 100_000, every, long=True),
    ]


def _stats_sha(prof: Profile, benchmark: str) -> str | None:
    stats = prof.feature_stats_for(benchmark)
    return file_sha256(stats) if stats and stats != "none" and Path(stats).exists() else None


def is_done(result_dir: Path, iterations: int, stats_sha: str | None) -> bool:
    m, p = read_json(result_dir / "metrics.json"), read_json(result_dir / "provenance.json")
    if not m or m.get("status") != "ok" or int(m.get("iterations", -1)) != iterations or not p:
        return False
    return (p.get("weights", {}).get("feature_stats") or {}).get("sha256") == stats_sha


class Deadline:
    """From `at` (time.time()) on, SIGTERM to this process every second until the block ends: the fit loop then
    checkpoints and raises TrainingInterrupted (piad.run.fitloop). Outside the fit loop (loading data, building the
    ensemble) a SIGTERM is only noted, and repeated until the loop is there to take it."""

    def __init__(self, at: float):
        self.at, self.done = at, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.done.wait(max(0.0, self.at - time.time())):
            return
        while not self.done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            self.done.wait(1.0)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, lambda *_: None)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        signal.signal(signal.SIGTERM, self.previous)


def run_plan(
    minutes: float = DEFAULT_MINUTES,
    device: str = "auto",
    results_dir=None,
    work_dir=None,
    ensemble: int | None = None,
    cuda_graph: bool | None = None,
    base: str = "offline",
    reserve: float = RESERVE_SECONDS,
    dry_run: bool = False,
    log=print,
    committed_dir=None,
) -> dict:
    """Run the plan (module docstring); returns {"finished": [...], "progressed": [...], "skipped": [...]}."""
    import torch

    from piad.errors import PiadError, TrainingInterrupted
    from piad.run.ensemble import train_ensemble
    from piad.run.training import resolve_device

    t0 = time.time()
    stop_training = t0 + minutes * 60 - reserve
    dev = resolve_device(device)
    root = repo_root()
    prof, slices = plan_slices(base, committed_dir)
    results = Path(results_dir) if results_dir else root / "results" / "gpu"
    work = Path(work_dir) if work_dir else root / "runs" / "gpu"
    out = {"finished": [], "progressed": [], "skipped": [], "device": str(dev)}
    rate: float | None = None  # measured model-iterations per second
    code = git_state(root)
    log(f"gpu plan: {minutes} min on {dev} ({_accelerator(dev)}); results {results}, work {work}")
    for sl in slices:
        sp = copy.deepcopy(sl.profile or prof)
        sp.overrides = {**sp.overrides, **sl.overrides}
        sha = _stats_sha(sp, sl.experiments[0].benchmark)
        jobs = [Job(sp.name, e, c, r) for e in sl.experiments for c in e.classes for r in e.runs_for(c)]
        todo = [j for j in jobs if not is_done(results / sl.folder / j.key, sl.iterations, sha)]
        log(f"[{sl.name}] {len(jobs) - len(todo)} of {len(jobs)} done")
        if dry_run:
            out["skipped"] += [_key(sl, j) for j in todo]
            continue
        size = ensemble or (_fit(sp, todo, dev, work, sl.iterations) if dev.type == "cuda" and todo else 1)
        groups = [todo[i : i + size] for i in range(0, len(todo), size)]
        for group in groups:
            params = [
                notebook_parameters(sp, j, (work / sl.folder / j.key).resolve(), str(dev), sl.iterations, 0)
                for j in group
            ]
            cfgs = [job_config(p) for p in params]
            left = stop_training - time.time()
            start_it = _iteration(work / sl.folder / group[0].key)
            need = None if rate is None else (sl.iterations - start_it) * len(group) / rate
            if left <= 0 or (not sl.long and need is not None and need > left):
                log(f"[{sl.name}] {', '.join(j.key for j in group)}: left for the next call ({left:.0f} s left)")
                out["skipped"] += [_key(sl, j) for j in group]
                continue
            log(f"[{sl.name}] training {', '.join(j.key for j in group)} from iteration {start_it}")
            started, interrupted = time.time(), False
            try:
                with Deadline(stop_training):
                    ens = train_ensemble(cfgs, [p["out_dir"] for p in params], dev, resume=True, cuda_graph=cuda_graph)
            except TrainingInterrupted:
                interrupted = True
            except PiadError as e:
                log(f"[{sl.name}] failed: {e}")
                out["skipped"] += [_key(sl, j) for j in group]
                continue
            reached = _iteration(work / sl.folder / group[0].key)
            if reached > start_it:
                rate = (reached - start_it) * len(group) / max(1e-6, time.time() - started)
                log(f"[{sl.name}] {reached - start_it} iterations x {len(group)} models: {rate:.1f} model-it/s")
            diverged = set() if interrupted else {group[k].key for k in ens.diverged}
            for j, p in zip(group, params, strict=True):
                if j.key in diverged:
                    log(f"[{sl.name}] {j.key} diverged: {ens.diverged[group.index(j)]}")
                    out["skipped"].append(_key(sl, j))
                    continue
                done = not interrupted
                _write_result(sp, j, p, results / sl.folder / j.key, dev, done, sl, started, code, root, log)
                out["finished" if done else "progressed"].append(_key(sl, j))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    log(f"gpu plan: {len(out['finished'])} finished, {len(out['progressed'])} progressed in {time.time() - t0:.0f} s")
    return out


def _key(sl: Slice, job: Job) -> str:
    """Where a job's result lies under the results folder."""
    return f"{sl.folder}/{job.key}" if sl.folder else job.key


def _accelerator(dev) -> str:
    if dev.type != "cuda":
        return "no accelerator"
    import torch

    return torch.cuda.get_device_name(dev)


def _iteration(work_dir: Path) -> int:
    from piad.run.checkpoint import load_checkpoint

    latest = work_dir / "checkpoints" / "latest.pt"
    return int(load_checkpoint(latest)["iteration"]) if latest.exists() else 0


def _fit(prof: Profile, todo: list[Job], dev, work: Path, iterations: int) -> int:
    from piad.run.ensemble_memory import ensemble_size_by_memory

    p = notebook_parameters(prof, todo[0], (work / "probe").resolve(), str(dev), iterations, 0)
    return min(len(todo), ensemble_size_by_memory(job_config(p), dev))


def _write_result(prof, job, params, result_dir: Path, dev, done, sl, started, code, root, log) -> None:
    """Score (finished) or curve (long) a run and copy its small files to `result_dir` with provenance."""
    from piad.run.evaluation import evaluate

    work_dir = Path(params["out_dir"])
    result_dir.mkdir(parents=True, exist_ok=True)
    metrics = None
    if done:
        metrics = evaluate(work_dir, device=str(dev))
        log(f"  {job.key}: ROC AUC {metrics['roc_auc']:.4f} on {dev}")
    if sl.long:
        curve_learning(work_dir, str(dev), 0)
    for name in RESULT_FILES:
        src = work_dir / name
        if src.exists():
            (result_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, result_dir / name)
            if (result_dir / name).suffix in (".json", ".csv"):
                sanitise_file(result_dir / name)
    if metrics is None:
        progress = {"status": "in progress", "iteration": _iteration(work_dir), "target": sl.iterations}
        (result_dir / "progress.json").write_text(json.dumps({**progress, "device": str(dev)}, indent=1) + "\n")
        return
    prov = provenance(prof, job, params, metrics, time.time() - started, started, root, code=code)
    prov.update({"runner": "piad.experiments.gpu_plan", "notebook": None, "slice": sl.name})
    (result_dir / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    sanitise_file(result_dir / "provenance.json")
    (result_dir / "progress.json").unlink(missing_ok=True)
    shutil.copyfile(work_dir / "metrics.json", result_dir / "metrics.json")  # last: the folder is complete
    sanitise_file(result_dir / "metrics.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="wall-clock budget of this call")
    p.add_argument("--device", default="auto")
    p.add_argument("--results-dir", help="default: <repo>/results/gpu")
    p.add_argument("--work-dir", help="checkpoints; carry it to the next call to continue (default <repo>/runs/gpu)")
    p.add_argument("--ensemble", type=int, help="members per ensemble (default: by memory on CUDA, else 1)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--reserve", type=float, default=RESERVE_SECONDS, help="seconds kept for scoring at the end")
    p.add_argument("--base", default="offline", choices=("offline", "smoke"), help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="list what is missing; train nothing")
    a = p.parse_args(argv)
    run_plan(
        a.minutes,
        a.device,
        a.results_dir,
        a.work_dir,
        a.ensemble,
        a.cuda_graph,
        a.base,
        a.reserve,
        a.dry_run,
        log=lambda m: print(m, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
