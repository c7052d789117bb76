"""Each notebook executes under papermill with smoke parameters, and its outputs are checked.

The smoke profile (`piad reproduce --profile smoke`: digits at 16x16, tiny networks, VGG-19 with random weights, 10
iterations) executes all four notebooks; the tests check what they wrote, then execute two of them again to check
resuming and how missing runs are shown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from _smoke import smoke_results
from helpers import roc_auc_from_scores

from piad.paths import repo_root

pytest.importorskip("papermill")
NB = repo_root() / "notebooks"
pytestmark = pytest.mark.slow


def execute(name: str, out: Path, params: dict) -> nbformat.NotebookNode:
    import papermill

    papermill.execute_notebook(
        str(NB / name), str(out), parameters=params, progress_bar=False, cwd=str(repo_root()), kernel_name="python3"
    )
    return nbformat.read(out, as_version=4)


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def outputs(nb, kind: str) -> list:
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if kind in o.get("data", {}) or o.get("output_type") == kind
    ]


def glued(nb) -> set:
    return {o.get("metadata", {}).get("scrapbook", {}).get("name") for o in outputs(nb, "display_data")} - {None}


def glued_text(nb, name: str) -> str:
    """The value glued as `name` (a glued str is stored as its repr)."""
    import ast

    for o in outputs(nb, "display_data"):
        if o.get("metadata", {}).get("scrapbook", {}).get("name") == name:
            return ast.literal_eval(next(v for k, v in o["data"].items() if k.endswith("text/plain")))
    raise KeyError(name)


def assert_clean(nb) -> None:
    assert not outputs(nb, "error"), "a cell raised"
    text = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "Traceback" not in text


def assert_quiet(nb) -> None:
    """No stderr stream and no warning in any output (causes are fixed, not hidden)."""
    streams = [o for o in outputs(nb, "stream") if o.get("name") == "stderr"]
    assert not streams, "stderr output: " + json.dumps(streams)[:500]
    text = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "Warning" not in text and "warnings.warn" not in text


def assert_figures_stored_once(nb, names: set) -> None:
    """Each glued figure is one visible image output (Jupyter and Colab show it; the book's {glue:figure} takes the
    same output), not a hidden glue record plus a second copy displayed by the inline backend."""
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        images = [o for o in c.get("outputs", []) if any(k.endswith("image/png") for k in o.get("data", {}))]
        assert len(images) <= 1, "a figure stored twice: " + c.source
        for o in images:
            meta = o.get("metadata", {}).get("scrapbook", {})
            if meta.get("name") in names:
                assert meta["mime_prefix"] == "" and "image/png" in o["data"], meta
    assert names <= glued(nb)


def assert_book_tags(nb, prefix: str) -> None:
    """Boilerplate hidden in the book: the install cell and the template's parameters removed, papermill's values
    folded; figure cells (executed-only) shown, with book-wide unique labels that the text cites."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    assert "remove-cell" in tags[0] and "pip" in code[0].source  # install
    assert "parameters" in tags[1] and "remove-cell" in tags[1]
    assert "injected-parameters" in tags[2] and "hide-input" in tags[2]
    assert "hide-input" in tags[3]  # imports and settings
    figs = [c for c in nb.cells if "executed-only" in c.metadata.get("tags", [])]
    assert figs and all("remove-cell" not in c.metadata["tags"] for c in figs)
    for c in figs:
        label = c.source.split(":name: ")[1].split()[0]
        assert label.startswith(prefix + "-fig-") and f"{{numref}}`{label}`" in c.source, c.source


@pytest.fixture(scope="module")
def smoke():
    return smoke_results()


def test_train_evaluate_notebook(smoke):
    for run in ("digits/0/0", "digits/1/1", "digits-ablation-l2_manual/0/0"):
        d = smoke / run
        nb = read(d / "train_evaluate.ipynb")
        assert_clean(nb)
        assert_quiet(nb)
        assert_book_tags(nb, "smoke-" + run.replace("/", "-").replace("_", "-"))
        metrics = json.loads((d / "metrics.json").read_text())
        work = repo_root() / json.loads((d / "provenance.json").read_text())["parameters"]["out_dir"]
        assert metrics["status"] == "ok" and metrics["roc_auc"] == pytest.approx(roc_auc_from_scores(work), abs=1e-6)
        assert len(outputs(nb, "image/png")) >= 4, run  # samples, losses, lambdas, score histogram
        figs = {"samples_figure", "loss_figure", "weights_figure", "score_histogram", "ranked_figure"}
        assert {"roc_auc", *figs} <= glued(nb)
        assert_figures_stored_once(nb, figs)
        for name in ("config.json", "provenance.json", "log.csv", "policy.csv", "samples/latest.png"):
            assert (d / name).is_file(), f"{run}/{name}"
        assert not (d / "checkpoints").exists()


def test_train_evaluate_resumes_without_retraining(smoke, tmp_path):
    """Re-executing the notebook on a finished run directory does not retrain (resume=True)."""
    prov = json.loads((smoke / "digits" / "0" / "0" / "provenance.json").read_text())
    params = dict(prov["parameters"])
    work = repo_root() / params["out_dir"]
    params["out_dir"] = str(work)
    log_before = (work / "log.csv").read_text()
    nb = execute("train_evaluate.ipynb", tmp_path / "again.ipynb", params)
    assert_clean(nb)
    assert_quiet(nb)
    assert (work / "log.csv").read_text() == log_before
    assert f"trained to iteration {prov['iterations']}" in json.dumps(outputs(nb, "stream"))


def test_train_evaluate_channels_last_parameter(smoke, tmp_path):
    """channels_last=True trains and scores in the NHWC memory layout: the notebook says so, and the losses of the
    first iterations equal those of the same run in NCHW (same math, other memory layout) up to rounding."""
    import csv

    prov = json.loads((smoke / "digits" / "0" / "0" / "provenance.json").read_text())
    params = {**prov["parameters"], "out_dir": str(tmp_path / "run"), "channels_last": True}
    nb = execute("train_evaluate.ipynb", tmp_path / "nhwc.ipynb", params)
    assert_clean(nb)
    assert "(channels_last memory layout)" in json.dumps(outputs(nb, "stream"))

    def first_rows(path):
        with open(path, newline="") as f:
            return list(csv.DictReader(f))[:3]

    nchw, nhwc = first_rows(smoke / "digits" / "0" / "0" / "log.csv"), first_rows(tmp_path / "run" / "log.csv")
    assert len(nhwc) == 3
    for a, b in zip(nchw, nhwc, strict=True):
        for key in ("critic_x", "critic_z", "adv_e", "adv_g", "rec"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-3, abs=1e-5), (a["iteration"], key)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["roc_auc"] == pytest.approx(roc_auc_from_scores(tmp_path / "run"), abs=1e-6)
    assert metrics["scoring_memory_layout"] == "channels_last"  # it also scores in NHWC


def test_perceptual_metric_notebook(smoke):
    nb = read(smoke / "perceptual_metric.ipynb")
    assert_clean(nb)
    assert_quiet(nb)
    assert_book_tags(nb, "smoke-perceptual-metric")
    assert len(outputs(nb, "image/png")) >= 2  # the ratio plot and the examples
    assert {"contrast_figure", "contrast_examples", "low_relative_perceptual_l1", "high_l2", "most_robust"} <= glued(nb)
    assert_figures_stored_once(nb, {"contrast_figure", "contrast_examples"})
    assert "random" in json.dumps(outputs(nb, "text/markdown"))  # the random network is labelled


def test_weight_policy_notebook(smoke):
    nb = read(smoke / "weight_policy.ipynb")
    assert_clean(nb)
    assert_quiet(nb)
    assert_book_tags(nb, "smoke-weight-policy")
    assert len(outputs(nb, "image/png")) >= 2  # gradient stds of the 3 runs, lambdas
    assert {"gradient_stds_figure", "lambda_figure", "final_lambda_e", "final_lambda_g"} <= glued(nb)
    assert_figures_stored_once(nb, {"gradient_stds_figure", "lambda_figure"})


def test_weight_policy_shows_missing_runs(smoke, tmp_path):
    nb = execute(
        "weight_policy.ipynb",
        tmp_path / "wp.ipynb",
        {"results_dir": str(smoke), "runs": {"policy": "digits/0/0", "absent": "no-such-experiment/0/0"}},
    )
    assert_clean(nb)
    assert "not (yet) available" in json.dumps(outputs(nb, "text/markdown"))


def test_results_notebook(smoke):
    nb = read(smoke / "results.ipynb")
    assert_clean(nb)
    md = json.dumps(outputs(nb, "text/markdown"))
    assert "not in the paper" in md and "not comparable to the paper" in md and "random" in md
    assert "not transcribed" not in md  # the digits stand-in has no paper number to transcribe
    assert "mean over classes" in md and "L2, manual weights" in md
    assert {
        "n_finished",
        "mean_digits",
        "ablation_rule_l2_manual",
        "ablation_distance_classes",
        "support_ablation",
        "support_rule",
    } <= glued(nb)
    assert_figures_stored_once(nb, {"ablation_figure", "per_class_figure", "controls_figure"})
    class_means = [
        sum(aucs) / len(aucs)
        for aucs in (
            [json.loads(m.read_text())["roc_auc"] for m in c.glob("*/metrics.json")]
            for c in (smoke / "digits").iterdir()
        )
    ]
    assert glued_text(nb, "class_range_digits") == f"{min(class_means):.3f} to {max(class_means):.3f}"
    provs = [json.loads(p.read_text()) for p in (smoke / "digits").glob("*/*/provenance.json")]
    if {p["device"] for p in provs} == {"cpu"}:  # the smoke profile trains on this machine's CPU unless it has a GPU
        cores = {p["hardware"]["logical_cpus"] for p in provs}
        where = f"a {cores.pop()}-core CPU" if len(cores) == 1 else "a CPU"
        assert glued_text(nb, "devices_grid") == f"All these runs trained on {where}."
    assert_book_tags(nb, "smoke-results")


def test_results_notebook_compares_every_run_with_its_controls(smoke):
    """reproduce computed both controls for every (experiment, class), and the results notebook glues the trained
    mean, both controls' means and a verdict from the paired test, with numbers equal to the files'."""
    from piad.experiments import evidence

    nb = read(smoke / "results.ipynb")
    for c in (0, 1):
        for k in ("mean_image", "nearest"):
            m = json.loads((smoke / "controls" / "digits" / str(c) / k / "metrics.json").read_text())
            assert m["status"] == "ok" and 0 <= m["roc_auc"] <= 1 and m["normal_class"] == c
    ctrl = {
        c: json.loads((smoke / "controls/digits" / str(c) / "nearest/metrics.json").read_text())["roc_auc"]
        for c in (0, 1)
    }
    nearest = glued_text(nb, "ctrl_digits_nearest")
    assert nearest.startswith(f"{sum(ctrl.values()) / 2:.3f} [")
    assert glued_text(nb, "ctrl_digits_classes") == 2
    verdict = glued_text(nb, "support_ctrl_digits")
    assert "2 classes" in verdict and "not resolved at this budget" in verdict  # n = 2 can never resolve
    assert "ablation_test_l2_l2_manual" in glued(nb)
    assert evidence.CONTROL_TITLES["nearest"] in json.dumps(outputs(nb, "text/markdown"))


def test_learning_curves_notebook(smoke):
    nb = read(smoke / "learning_curves.ipynb")
    assert_clean(nb)
    assert {"curves_grid", "curve_final_digits", "cost_hours_digits"} <= glued(nb)


def test_install_cell_matches_config():
    """The repository URL lives in _config.yml; every notebook's install cell agrees with it."""
    from piad.book import NOTEBOOKS, notebook_url, repository_url

    url = repository_url()
    for name in NOTEBOOKS:
        nb = read(NB / name)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "import piad" in first.source and "pip" in first.source, name
        assert notebook_url(NB / name) == url, f"{name}: run piad.book.sync_install_cells()"
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{name}: exactly one cell tagged 'parameters'"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: committed outputs"


# -- the routes outside the repository: papermill with piad installed from a wheel (as in Colab) ----------------------
def page_commands(marker: str) -> list[str]:
    """The commands of the Reproduce page's code block between <!-- marker --> and <!-- /marker -->."""
    import re

    page = (repo_root() / "book" / "reproduce.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```\s*<!-- /{marker} -->", page, re.S)
    assert block, f"book/reproduce.md has no block between <!-- {marker} --> markers"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def installed_elsewhere(tmp_path_factory):
    """piad built as a wheel and installed into a folder of its own (`pip install --target`), plus a stand-in that
    makes `import myst_nb` fail (Colab has no `book` extra); the checkout appears only as `../piad`, the clone the
    page asks for, and the commands run in the empty folder `rerun` beside it."""
    import shutil
    import subprocess
    import sys

    base = tmp_path_factory.mktemp("elsewhere")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root() / name, src / name)
    shutil.copytree(repo_root() / "piad", src / "piad", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(src)], check=True)
    wheel = next((base / "dist").glob("piad-*.whl"))
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True)
    no_book = base / "no_book" / "myst_nb"
    no_book.mkdir(parents=True)
    (no_book / "__init__.py").write_text("raise ImportError('myst_nb is not installed here (a stand-in for Colab)')\n")
    (base / "piad").symlink_to(repo_root())
    (base / "rerun").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIAD_")}
    env.update(
        PYTHONPATH=f"{site}{os.pathsep}{no_book.parent}",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PIAD_CACHE=str(base / "cache"),  # nothing cached from this machine's runs
        HF_HUB_OFFLINE="1",
        http_proxy="http://127.0.0.1:9",  # offline: any download fails at once
        https_proxy="http://127.0.0.1:9",
    )
    return base / "rerun", env, site


def test_installed_package_is_the_wheel_not_the_checkout(installed_elsewhere):
    import subprocess
    import sys

    cwd, env, site = installed_elsewhere
    code = "import piad, piad.paths as p; print(piad.__file__); print(p.repo_root())"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    where, root = out.stdout.split()
    assert Path(where).is_relative_to(site) and Path(root) == cwd.resolve()


def test_reproduce_page_papermill_commands_run_offline_from_an_empty_folder(installed_elsewhere):
    """Every offline command of the Reproduce page's "Re-run with papermill", as written, one per notebook: each
    notebook executes without a cell error, with piad from a wheel and no checkout; the summary notebooks read the
    committed offline results through `results_dir`."""
    import subprocess

    cwd, env, _ = installed_elsewhere
    commands = page_commands("papermill-offline")
    templates = sorted(c.split()[1].rsplit("/", 1)[1] for c in commands)
    assert templates == sorted(p.name for p in NB.glob("*.ipynb")), "one offline command per notebook"
    for command in commands:
        r = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{command}\n{r.stderr[-3000:]}"
        nb = read(cwd / command.split()[2])
        assert_clean(nb)
        streams = [o for o in outputs(nb, "stream") if o.get("name") == "stderr"]
        assert not streams, json.dumps(streams)[:500]  # no progress lines stored
    md = json.dumps(outputs(read(cwd / "results.ipynb"), "text/markdown"))
    import re

    found = re.search(r"(\d+) finished runs in `\.\./piad/results/offline`", md)
    assert found and int(found.group(1)) > 0, md[:500]
    metrics = json.loads((cwd / "runs" / "digits" / "3" / "0" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and 0.0 <= metrics["roc_auc"] <= 1.0
    assert len(outputs(read(cwd / "weight_policy.ipynb"), "image/png")) >= 2  # figures shown without myst_nb


def test_summary_notebook_outside_a_checkout_says_what_to_pass(installed_elsewhere):
    """Without results (piad installed, no checkout) a summary notebook stops with a message naming results_dir,
    never a table of zero finished runs."""
    import subprocess

    cwd, env, _ = installed_elsewhere
    command = "papermill ../piad/notebooks/results.ipynb missing.ipynb -p profile offline"
    r = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    text = json.dumps(outputs(read(cwd / "missing.ipynb"), "error"))
    assert "FileNotFoundError" in text and "results_dir" in text and "git clone" in text


def test_notebooks_ask_colab_for_a_gpu_where_they_compute():
    for name in ("train_evaluate.ipynb", "perceptual_metric.ipynb"):
        meta = read(NB / name).metadata
        assert meta.get("accelerator") == "GPU" and meta.get("colab", {}).get("gpuType"), name


def committed_notebooks() -> list[Path]:
    """Every notebook git tracks: the templates and the executed ones under results/."""
    import subprocess

    r = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=repo_root(), capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"not a git checkout: {r.stderr.strip()}")
    return [repo_root() / p for p in r.stdout.split()]


def imported_names(source: str) -> set[tuple[str, str | None]]:
    """(module, name) for every `import m` (name None) and `from m import a, b` of a cell."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {(a.name, None) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found |= {(node.module, a.name) for a in node.names}
    return found


def test_imported_names_are_checked_for_existence():
    assert imported_names("import math\nfrom piad import figures, results\n") == {
        ("math", None),
        ("piad", "figures"),
        ("piad", "results"),
    }
    assert missing_imports({("piad", "results"), ("piad.config", "x"), ("piad.paths", "repo_root")}) == [
        "from piad import results",
        "from piad.config import x",
    ]


def missing_imports(names) -> list[str]:
    import importlib

    missing = []
    for module, name in sorted(names, key=lambda t: (t[0], t[1] or "")):
        try:
            mod = importlib.import_module(module)
            if name is not None and not hasattr(mod, name):
                importlib.import_module(f"{module}.{name}")
        except ImportError:
            missing.append(f"import {module}" if name is None else f"from {module} import {name}")
    return missing


def test_every_committed_notebook_imports_only_names_that_exist():
    """A module moved or renamed in piad fails here for every committed notebook that still imports it, templates
    and executed notebooks under results/ alike (their launch buttons open them)."""
    names: dict[tuple, set[str]] = {}
    for path in committed_notebooks():
        for cell in read(path).cells:
            if cell.cell_type == "code":
                for pair in imported_names(cell.source):
                    names.setdefault(pair, set()).add(str(path.relative_to(repo_root())))
    assert any(module.startswith("piad") for module, _ in names)
    missing = missing_imports(names)
    assert not missing, "; ".join(f"{m} (in {len(names[_pair(m)])} notebooks)" for m in missing)


def _pair(statement: str) -> tuple[str, str | None]:
    words = statement.split()
    return (words[1], None) if words[0] == "import" else (words[1], words[3])


def test_kernels_talk_over_ipc_sockets_of_their_own():
    """The runner's kernels use local IPC sockets (ipykernel warns about unencrypted TCP once per notebook
    otherwise), each at a path of its own so that notebooks executed side by side never share a socket."""
    from piad.experiments.notebooks import _IPCKernelManager

    a, b = _IPCKernelManager.get()(), _IPCKernelManager.get()()
    assert a.transport == b.transport == "ipc" and a.ip != b.ip


def test_progress_lines_of_parallel_runs_never_merge(capsys):
    import threading

    from piad.cli import log_line

    def worker(i):
        for _ in range(200):
            log_line(f"[start] run {i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 800 and all(ln.startswith("[start] run ") and ln.count("[") == 1 for ln in lines)
