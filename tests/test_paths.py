"""No paths of the build machine in committed results (piad.paths, jobs.tidy_results, clean_notebook)."""

from __future__ import annotations

import hashlib
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from piad import paths
from piad.experiments.grid import NOTEBOOK
from piad.experiments.jobs import tidy_results
from piad.experiments.notebooks import EXECUTED_ONLY, clean_notebook, prepare_for_book
from piad.experiments.provenance import input_record


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake machine: repository, assets, home and a piad cache outside home, all under tmp_path."""
    roots = {k: tmp_path / k for k in ("repo", "assets", "home", "cache")}
    for p in roots.values():
        p.mkdir()
    monkeypatch.setenv("PIAD_REPO", str(roots["repo"]))
    monkeypatch.setenv("PIAD_ASSETS", str(roots["assets"]))
    monkeypatch.setenv("HOME", str(roots["home"]))
    monkeypatch.setenv("PIAD_CACHE", str(roots["cache"]))
    monkeypatch.delenv("PIAD_DATA", raising=False)
    return roots


def test_sanitise_text_rewrites_every_known_root(machine):
    r, a, h, c = (str(machine[k]) for k in ("repo", "assets", "home", "cache"))
    text = (
        f"file {a}/vgg.pth; stats {r}/results/offline/s.pt; cwd {r}; extracted {c}/data/x; "
        f"torch {h}/.cache/torch/hub; other {r}x/y; tail /opt{r}/z"
    )
    assert paths.sanitise_text(text) == (
        "file <assets>/vgg.pth; stats results/offline/s.pt; cwd .; extracted "
        f"<cache>/data/x; torch ~/.cache/torch/hub; other {r}x/y; tail /opt{r}/z"
    )


def test_display_path_keeps_named_specs_and_relative_paths(machine):
    assert paths.display_path("imagenet") == "imagenet" and paths.display_path(None) is None
    assert paths.display_path("results/x.pt") == "results/x.pt"
    assert paths.display_path(str(machine["assets"] / "mnist")) == "<assets>/mnist"
    assert paths.display_path(str(machine["home"] / "data" / "c.tar.gz")) == "~/data/c.tar.gz"


def _executed_notebook(path, machine, error=False):
    a, r = machine["assets"], machine["repo"]
    params = new_code_cell('benchmark = "mnist"')
    params.metadata["tags"] = ["parameters"]
    injected = new_code_cell(f'data_root = "{a}/mnist"\nout_dir = "{r}/runs/offline/mnist/0/0"')
    injected.metadata["tags"] = ["injected-parameters"]
    run = new_code_cell("print(data.source)")
    run.outputs = [new_output("stream", name="stdout", text=f"MNIST IDX files in {a}/mnist (from data_root)\n")]
    if error:
        run.outputs.append(new_output("error", ename="ValueError", evalue="boom", traceback=[]))
    fig = new_markdown_cell(
        "{numref}`fig-losses` shows ...\n\n```{glue:figure} loss_figure\n:name: fig-losses\n\nCaption.\n```"
    )
    fig.metadata["tags"] = ["remove-cell", EXECUTED_ONLY]
    nbformat.write(new_notebook(cells=[params, injected, run, fig]), path)


def test_tidy_results_sanitises_committed_result_files(machine):
    a, r, h = machine["assets"], machine["repo"], machine["home"]
    res = r / "results" / "offline"
    run = res / "mnist" / "0" / "0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "data_source": f"MNIST IDX files in {a}/mnist (from data_root)",
                "perceptual_sources": {"vgg_weights": f"file {a}/vgg.pth", "feature_stats": f"file {r}/results/s.pt"},
            }
        )
    )
    (run / "config.json").write_text(json.dumps({"data_root": f"{a}/mnist", "cache": f"{h}/.cache/piad"}))
    (run / "log.csv").write_text(f"iteration,note\n1,{r}/runs/x\n")
    _executed_notebook(run / NOTEBOOK, machine)
    changed = tidy_results(res)
    assert {p.name for p in changed} == {"metrics.json", "config.json", "log.csv", NOTEBOOK}
    for f in run.iterdir():
        text = f.read_text()
        for root in (a, r, h):
            assert str(root) not in text, (f.name, root)
    m = json.loads((run / "metrics.json").read_text())
    assert m["data_source"] == "MNIST IDX files in <assets>/mnist (from data_root)"
    assert m["perceptual_sources"] == {"vgg_weights": "file <assets>/vgg.pth", "feature_stats": "file results/s.pt"}
    nb = nbformat.read(run / NOTEBOOK, as_version=4)
    assert nb.cells[1].source == 'data_root = "<assets>/mnist"\nout_dir = "runs/offline/mnist/0/0"'
    assert "remove-cell" in nb.cells[0].metadata["tags"]  # one parameters cell shows: the injected one
    assert "hide-input" in nb.cells[1].metadata["tags"]
    assert tidy_results(res) == []  # a second pass changes nothing


def test_clean_notebook_fails_on_an_error_output(machine, tmp_path):
    _executed_notebook(tmp_path / "nb.ipynb", machine, error=True)
    with pytest.raises(RuntimeError, match="cell 2: ValueError: boom"):
        clean_notebook(tmp_path / "nb.ipynb")


def test_prepare_for_book_activates_figures_with_unique_labels(machine, tmp_path):
    _executed_notebook(tmp_path / "nb.ipynb", machine)
    nb = nbformat.read(tmp_path / "nb.ipynb", as_version=4)
    prepare_for_book(nb, "smoke-digits-0-0")
    fig = nb.cells[3]
    assert fig.metadata["tags"] == [EXECUTED_ONLY]
    assert fig.source.startswith("{numref}`smoke-digits-0-0-fig-losses` shows")
    assert ":name: smoke-digits-0-0-fig-losses\n" in fig.source
    prepare_for_book(nb, "smoke-digits-0-0")  # idempotent
    assert fig.source.count("smoke-digits-0-0-") == 2
    prepare_for_book(nb, "offline-digits-study-0-0")  # the copy moved to another folder: the old prefix goes
    assert fig.source.startswith("{numref}`offline-digits-study-0-0-fig-losses` shows")
    assert ":name: offline-digits-study-0-0-fig-losses\n" in fig.source and "smoke-digits" not in fig.source


def test_the_notebooks_figure_labels_are_fig_names_that_a_prefix_can_be_found_in():
    """prepare_for_book finds a label's own name after its last 'fig-': every label of the notebooks starts with it
    and has it once."""
    import re

    from piad.paths import repo_root

    sources = [c.source for p in (repo_root() / "notebooks").glob("*.ipynb") for c in nbformat.read(p, 4).cells]
    names = {m for src in sources for m in re.findall(r"^:name:\s*(\S+)\s*$", src, re.MULTILINE)}
    assert names and all(n.startswith("fig-") and n.count("fig-") == 1 for n in names), names
    for p in (repo_root() / "notebooks").glob("*.ipynb"):  # a figure cell shows (and is relabelled) in copies only
        for c in nbformat.read(p, 4).cells:
            if re.search(r"^:name:|glue:figure", c.source, re.MULTILINE):
                assert {"remove-cell", EXECUTED_ONLY} <= set(c.metadata.get("tags", [])), (p.name, c.source[:60])


def test_input_record_names_source_and_sha256(machine):
    f = machine["assets"] / "vgg.pth"
    f.write_bytes(b"weights")
    rec = input_record(str(f), "vgg_weights")
    assert rec == {"name": "vgg.pth", "source": "<assets>/vgg.pth", "sha256": hashlib.sha256(b"weights").hexdigest()}
    d = machine["assets"] / "mnist"
    d.mkdir()
    (d / "a.gz").write_bytes(b"a")
    rec = input_record(str(d), "data")
    assert rec["source"] == "<assets>/mnist" and rec["sha256"] == {"a.gz": hashlib.sha256(b"a").hexdigest()}
    from piad.run.resources import IMAGENET_STATS_SHA256

    assert input_record("imagenet", "feature_stats")["sha256"] == IMAGENET_STATS_SHA256
