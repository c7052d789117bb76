"""Adopting re-executed runs: a run trained again with the same config and seed (e.g. to keep its per-image scores)
takes the place of the committed run in `<results>/<experiment>/<class>/<run>/`, which moves aside to
`<results>/<experiment>-earlier/<class>/<run>/` (piad.experiments.runs.EARLIER_SUFFIX). The tables use the former;
the results page compares the two (piad.experiments.evidence.reexecutions).

Every check runs before anything moves, and each run is swapped by renames inside the results folder, so a refused
or failed adoption leaves the committed run where it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from piad.errors import PiadError
from piad.experiments.runs import EARLIER_SUFFIX, collect, config_differences, read_json


def plan_adoption(source, results_dir) -> list[tuple[Path, Path, Path]]:
    """(re-executed run, committed run, where the committed run goes) for every finished run under `source` not
    adopted yet; PiadError (one line) if any of them cannot be adopted: no committed finished run at the same place, a
    config that differs (the feature statistics aside when the run's distance reads none: l2, perceptual L2), or an
    earlier execution already kept there."""
    source, results = Path(source), Path(results_dir)
    for name, d in (("SOURCE", source), ("--results-dir", results)):
        if not d.is_dir():
            raise PiadError(f"{name} {str(d)!r} is not a folder: give a results folder such as ../rerun/offline.")
    if source.resolve() == results.resolve():
        raise PiadError(f"SOURCE and --results-dir are the same folder {str(results)!r}: give the re-execution's own.")
    committed = {r.path.relative_to(results): r for r in collect(results) if r.finished}
    plan = []
    finished = [r for r in collect(source) if r.finished]
    for new in finished:
        rel = new.path.relative_to(source)
        if rel.parts[0].endswith(EARLIER_SUFFIX) or len(rel.parts) != 3:
            raise PiadError(f"{new.path}: expected SOURCE/<experiment>/<class>/<run>/ holding a re-executed run.")
        old = committed.get(rel)
        if old is not None and _same_execution(old.path, new.path):
            continue  # adopted before
        if old is None:
            raise PiadError(
                f"{new.path}: no finished run at {results / rel} to supersede; a new run needs no adoption: move it in."
            )
        keys = config_differences(old.config, new.config)
        if keys:
            raise PiadError(
                f"{new.path}: config differs from {old.path} in {', '.join(keys)}: not a re-execution of that run."
            )
        earlier = results / (rel.parts[0] + EARLIER_SUFFIX) / rel.parts[1] / rel.parts[2]
        if earlier.exists():
            raise PiadError(f"{old.path}: {earlier} already holds an earlier execution; keep one (remove the other).")
        plan.append((new.path, old.path, earlier))
    if not finished:
        raise PiadError(f"SOURCE {str(source)!r} holds no finished run (a folder with metrics.json) to adopt.")
    return plan


def _same_execution(a: Path, b: Path) -> bool:
    """Two folders of one execution: the same metrics and the same start time in provenance.json (its paths may
    have been rewritten since, piad.paths.sanitise_tree)."""
    pa, pb = (read_json(d / "provenance.json") or {} for d in (a, b))
    return (
        read_json(a / "metrics.json") == read_json(b / "metrics.json")
        and pa.get("started") == pb.get("started") is not None
    )


def adopt_reexecutions(source, results_dir, log: Callable[[str], Any] = print) -> list[Path]:
    """Put every finished run under `source` in place of the committed run it re-executes (copied; `source` is left
    as it is) and move the committed run to `<experiment>-earlier/`. Runs adopted before are skipped, so the command
    can be run again. Returns the run folders adopted now."""
    from piad.experiments.jobs import tidy_results

    results = Path(results_dir)
    plan = plan_adoption(source, results)
    if not plan:
        log(f"every finished run under {source} is adopted already: nothing to do")
        return []
    done = []
    for new, old, earlier in plan:
        tmp = old.with_name(f".{old.name}.adopting")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(new, tmp)  # beside the committed run: the renames below stay on one file system
        earlier.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, earlier)
        try:
            os.rename(tmp, old)
        except BaseException:
            os.rename(earlier, old)
            shutil.rmtree(tmp, ignore_errors=True)
            for d in (earlier.parent, earlier.parent.parent):  # the folders made above, if nothing else is there
                try:
                    d.rmdir()
                except OSError:
                    break
            raise
        done.append(old)
        log(f"adopted {new} -> {old} (earlier execution: {earlier})")
    tidy_results(results)  # figure labels of the moved notebooks, no paths of this machine
    return done
