"""Each notebook executes under papermill with smoke parameters, and its outputs are checked.

The smoke profile (`piad reproduce --profile smoke`: digits at 16x16, tiny networks, VGG-19 with random weights, 10
iterations) executes all four notebooks; the tests check what they wrote, then execute two of them again to check
resuming and how missing runs are shown.
"""

from __future__ import annotations

import json
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
        assert {"roc_auc", "samples_figure", "loss_figure", "weights_figure", "score_histogram"} <= glued(nb)
        assert_figures_stored_once(nb, {"samples_figure", "loss_figure", "weights_figure", "score_histogram"})
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
    assert_figures_stored_once(nb, {"ablation_figure", "per_class_figure"})
    class_means = [
        sum(aucs) / len(aucs)
        for aucs in (
            [json.loads(m.read_text())["roc_auc"] for m in c.glob("*/metrics.json")]
            for c in (smoke / "digits").iterdir()
        )
    ]
    assert glued_text(nb, "class_range_digits") == f"{min(class_means):.3f} to {max(class_means):.3f}"
    assert_book_tags(nb, "smoke-results")


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
