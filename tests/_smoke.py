"""The smoke profile's results, produced once per test session and shared by test_notebooks and test_book.

`piad reproduce --profile smoke --jobs 2` executes every notebook under papermill with smoke parameters into
results/smoke/ (git-ignored; CI builds the book from it). Results older than the notebooks or the package are
regenerated, so the tests never check stale outputs.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from piad.experiments import reproduce
from piad.paths import repo_root

_LOCK = threading.Lock()
_DONE: dict[str, Path] = {}


def _stale(results: Path, root: Path) -> bool:
    summary = results / "results.ipynb"
    if not summary.exists():
        return True
    newest = max(p.stat().st_mtime for p in [*(root / "notebooks").glob("*.ipynb"), *(root / "piad").rglob("*.py")])
    return summary.stat().st_mtime < newest


def smoke_results() -> Path:
    """results/smoke after a successful smoke run (AssertionError naming the failures otherwise)."""
    with _LOCK:
        if "root" in _DONE:
            return _DONE["root"]
        root = repo_root()
        results, work = root / "results" / "smoke", root / "runs" / "smoke"
        if _stale(results, root):
            shutil.rmtree(results, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        lines: list[str] = []
        rc = reproduce.reproduce("smoke", jobs=2, log=lines.append)
        assert rc == 0, "the smoke profile failed:\n" + "\n".join(lines[-15:])
        _DONE["root"] = results
        return results
