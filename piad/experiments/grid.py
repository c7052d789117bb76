"""The job grid of a profile: one Job per (experiment, normal class, run), ensemble groups, and when a job is done.

A job's result folder is `results/<profile>/<experiment>/<class>/<run>/`; it is finished when its metrics.json says
"ok" and the executed notebook is there, trained for the expected number of iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from piad.errors import ConfigError
from piad.experiments.profiles import Experiment, Profile
from piad.experiments.runs import read_json

NOTEBOOK = "train_evaluate.ipynb"  # the notebook that trains and evaluates one job; its executed copy marks it done
ENSEMBLE_SIZE_GPU = 10  # runs per batched ensemble of a Slurm job on a CUDA device (issue #6: K = 10 on one H200)


@dataclass
class Job:
    """One run of a profile's grid; `key` (`<experiment>/<class>/<run>`) is also its folder under results/."""

    profile: str
    experiment: Experiment
    normal_class: int
    run: int

    @property
    def key(self) -> str:
        return f"{self.experiment.name}/{self.normal_class}/{self.run}"


def plan(profile: Profile, benchmarks=None, classes=None, runs=None, ablation: bool = True) -> list[Job]:
    """The (experiment, class, run) grid, filtered by benchmark / experiment names, classes and runs; without
    `ablation`, only the benchmarks' main experiments (a benchmark name otherwise selects its ablation too)."""
    jobs = []
    for exp in profile.experiments():
        if benchmarks and exp.benchmark not in benchmarks and exp.name not in benchmarks:
            continue
        if not ablation and exp.ablation:
            continue
        for c in exp.classes:
            if classes is not None and c not in classes:
                continue
            for r in exp.runs_for(c):
                if runs is not None and r not in runs:
                    continue
                jobs.append(Job(profile.name, exp, c, r))
    return jobs


def check_selection(profile: Profile, benchmarks=None, classes=None, runs=None, iterations=None) -> None:
    """ConfigError naming the flag when `piad reproduce`'s selection names what the profile does not have (a grid of
    no runs would otherwise "succeed" doing nothing), or asks for fewer than one iteration."""
    exps = profile.experiments()
    if benchmarks:
        known = sorted({e.benchmark for e in exps} | {e.name for e in exps})
        unknown = [b for b in benchmarks if b not in known]
        if unknown:
            raise ConfigError(
                f"--benchmarks {' '.join(unknown)}: not in the {profile.name} profile; expected benchmarks or "
                f"experiment folders among {known}."
            )
        exps = [e for e in exps if e.benchmark in benchmarks or e.name in benchmarks]
    if classes is not None:
        have = sorted({c for e in exps for c in e.classes})
        unknown = [c for c in classes if c not in have]
        if unknown:
            raise ConfigError(
                f"--classes {' '.join(map(str, unknown))}: the selected experiments of the {profile.name} profile "
                f"have normal classes {have}."
            )
    if runs is not None:
        have = sorted({r for e in exps for c in e.classes for r in e.runs_for(c)})
        unknown = [r for r in runs if r not in have]
        if unknown:
            raise ConfigError(
                f"--runs {' '.join(map(str, unknown))}: the selected experiments of the {profile.name} profile have "
                f"runs {have}."
            )
    if iterations is not None and int(iterations) < 1:
        raise ConfigError(f"--iterations {iterations}: expected a positive number of training iterations.")


def resolve_ensemble_size(ensemble: int | None, device: str) -> int:
    """None: on a CUDA device up to piad.run.ensemble_memory.ENSEMBLE_MAX runs per ensemble (the local runner then
    sizes each experiment's ensembles by measured memory), none on other devices; else the size given."""
    if ensemble is not None:
        if int(ensemble) < 1:
            raise ConfigError(
                f"ensemble={ensemble!r}: expected a positive number of runs per batched ensemble "
                "(1 trains every run on its own)."
            )
        return int(ensemble)
    from piad.run.ensemble_memory import ENSEMBLE_MAX
    from piad.run.training import resolve_device

    return ENSEMBLE_MAX if resolve_device(device).type == "cuda" else 1


def ensemble_groups(jobs: list[Job], size: int) -> list[list[Job]]:
    """Jobs of one experiment (same benchmark, ablation and settings; classes and runs differ) in chunks of `size`."""
    by_exp: dict[str, list[Job]] = {}
    for j in jobs:
        by_exp.setdefault(j.experiment.name, []).append(j)
    return [js[i : i + size] for js in by_exp.values() for i in range(0, len(js), size)]


def is_finished(result_dir: Path, iterations: int | None = None) -> bool:
    """The result folder holds a successful run (metrics.json and the executed notebook) of `iterations`."""
    m = read_json(result_dir / "metrics.json")
    if not m or m.get("status") != "ok" or not (result_dir / NOTEBOOK).exists():
        return False
    if iterations is None:
        return True
    done = m.get("iterations")  # a hand-edited or foreign file may hold anything here: then not finished
    return isinstance(done, (int, float)) and not isinstance(done, bool) and done == int(iterations)


def expected_iterations(profile: Profile, exp: Experiment, iterations: int | None) -> int:
    """`iterations` if given, else the profile's for the benchmark, else the paper's (the benchmark's config)."""
    if iterations is not None:
        return iterations
    if profile.iterations_for(exp.benchmark) is not None:
        return profile.iterations_for(exp.benchmark)
    from piad.run.config import make_config

    return make_config(exp.benchmark, ablation=exp.ablation).iterations
