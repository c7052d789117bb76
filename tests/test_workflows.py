"""The GitHub workflows: tests on every push and pull request, the book published to Pages; actions pinned by
commit; clean under the workflow linters when they are installed (zizmor from PyPI, actionlint)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

yaml = pytest.importorskip("yaml")
WORKFLOWS = REPO / ".github" / "workflows"


def _load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def _steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def test_tests_workflow_runs_the_readme_test_command_on_pushes_and_pull_requests():
    wf = _load("tests.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    runs = [s["run"] for s in _steps(wf) if "run" in s]
    assert runs == ["bash .ci/run"]  # .ci/run executes README's test-command block


def test_book_workflow_builds_with_the_readme_main_command_and_deploys_to_pages():
    wf = _load("book.yml")
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    script = "\n".join(s["run"] for s in build["steps"] if "run" in s)
    assert "<!-- main-command -->" in script and 'bash -c "$cmd"' in script
    assert "--profile smoke --run" in (REPO / "README.md").read_text().split("<!-- main-command -->")[1]
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])
    assert wf["permissions"] == {"contents": "read"}


@pytest.mark.parametrize("name", ["tests.yml", "book.yml"])
def test_actions_are_pinned_to_commits(name):
    uses = [s["uses"] for s in _steps(_load(name)) if "uses" in s]
    assert uses
    for u in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u), f"{name}: {u} is not pinned to a commit SHA"


def _tool(name: str):
    return shutil.which(name) or next((str(p) for p in [Path(sys.executable).with_name(name)] if p.exists()), None)


@pytest.mark.parametrize("linter", ["zizmor", "actionlint"])
def test_workflows_pass_the_linter(linter):
    exe = _tool(linter)
    if not exe:
        how = "pip install zizmor" if linter == "zizmor" else "https://github.com/rhysd/actionlint"
        pytest.skip(f"{linter} is not installed ({how}); the workflows were checked with it when written")
    cmd = [exe, "--offline", str(WORKFLOWS)] if linter == "zizmor" else [exe, *map(str, WORKFLOWS.glob("*.yml"))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
