"""The whole book builds from the repository (smoke results + committed results/) with zero warnings, and every
page renders in headless Chromium with its figures and tables.

As in CI: `piad reproduce --profile smoke` (skips runs already finished), then `jupyter-book build -W --keep-going`
into a temporary folder, then .ci/check_book_pages.py. Chromium absent -> that last part is skipped with a reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from _smoke import smoke_results

from piad import book
from piad.paths import repo_root

pytest.importorskip("jupyter_book")
pytestmark = pytest.mark.slow
ROOT = repo_root()


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    t0 = time.time()
    smoke_results()
    assert book.missing_toc_files(ROOT) == []
    out = tmp_path_factory.mktemp("book")
    t1 = time.time()
    r = subprocess.run(
        [*book.jupyter_book_command(), "build", str(ROOT), "--path-output", str(out), "-W", "--keep-going"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    log = r.stdout + r.stderr
    print(f"smoke profile {t1 - t0:.0f} s, book build {time.time() - t1:.0f} s")
    return out / "_build" / "html", r.returncode, log


def test_book_builds_without_warnings(built_book):
    html, rc, log = built_book
    warnings = [ln for ln in log.splitlines() if "WARNING" in ln or "ERROR" in ln]
    assert rc == 0 and not warnings, "\n".join(warnings[:30]) or log[-3000:]
    for page in book.toc_files(ROOT):
        assert (html / f"{page}.html").is_file(), page


def test_launch_buttons_and_repository_url(built_book):
    html, rc, _ = built_book
    assert rc == 0
    page = (html / "notebooks" / "train_evaluate.html").read_text()
    url = book.repository_url(ROOT)
    assert "colab.research.google.com/github/" + url.split("github.com/")[1] in page
    assert "mybinder.org" in page
    committed = (html / "results" / "offline" / "results.html").read_text()
    assert "colab.research.google.com" in committed
    one_run = (html / "results" / "offline" / "mnist" / "0" / "0" / "train_evaluate.html").read_text()
    assert "colab.research.google.com" not in one_run  # its parameters name this machine's assets
    # the smoke notebooks are generated and git-ignored: a launch button would open a notebook that does not exist
    for page in [p for p in book.toc_files(ROOT) if p.startswith("results/smoke/")]:
        text = (html / f"{page}.html").read_text()
        assert "colab.research.google.com" not in text and "mybinder.org" not in text, page


def test_no_launch_buttons_on_git_ignored_notebook_pages():
    """Every notebook page of _toc.yml that git ignores (not committed), and every committed run's executed notebook,
    is excluded from launch buttons; the templates keep theirs."""
    from fnmatch import fnmatch

    patterns = book.book_config(ROOT)["sphinx"]["config"]["piad_no_launch_buttons"]
    pages = [p for p in book.toc_files(ROOT) if p.startswith(("results/", "notebooks/"))]
    r = subprocess.run(
        ["git", "check-ignore", "--no-index", *[f"{p}.ipynb" for p in pages]], cwd=ROOT, capture_output=True, text=True
    )
    if r.returncode not in (0, 1):
        pytest.skip(f"not a git checkout: {r.stderr.strip()}")
    ignored = {line[: -len(".ipynb")] for line in r.stdout.split()}
    assert ignored, "the smoke pages are git-ignored; git check-ignore found none"
    # a committed run's executed notebook has no buttons either: its parameters name this machine's assets
    runs = {p for p in pages if fnmatch(p, "results/*/*/*/*/train_evaluate")}
    for p in pages:
        assert any(fnmatch(p, pat) for pat in patterns) == (p in ignored or p in runs), p
    assert not any(fnmatch(p, pat) for p in pages if p.startswith("notebooks/") for pat in patterns)


def test_drop_launch_buttons():
    group = {"type": "group", "label": "launch-buttons", "buttons": [{"text": "Colab"}]}
    other = {"type": "link", "label": "repository-button"}
    ctx = {"header_buttons": [other, group]}
    assert not book.drop_launch_buttons("results/offline/results", ctx, ["results/smoke/*"])
    assert ctx["header_buttons"] == [other, group]
    assert book.drop_launch_buttons("results/smoke/digits/0/0/train_evaluate", ctx, ["results/smoke/*"])
    assert ctx["header_buttons"] == [other]


def test_book_warns_while_the_repository_url_is_the_placeholder(tmp_path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: results/smoke/results\n")
    (tmp_path / "intro.md").write_text("# x\n")
    (tmp_path / "_config.yml").write_text(f"repository:\n  url: {book.PLACEHOLDER_REPOSITORY_URL}\n")
    lines = []
    assert book.build_book(root=tmp_path, log=lines.append) == 2  # stops at the missing page, after warning
    assert "placeholder" in lines[0] and book.PLACEHOLDER_REPOSITORY_URL in lines[0]
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/someone/piad\n")
    lines = []
    book.build_book(root=tmp_path, log=lines.append)
    assert not any("placeholder" in ln for ln in lines)
    assert book.repository_url(ROOT) == book.PLACEHOLDER_REPOSITORY_URL or book.placeholder_warning(ROOT) is None


def test_result_pages_label_substitutes(built_book):
    html, rc, _ = built_book
    assert rc == 0
    for page in ("book/experiments/results", "results/offline/results", "results/offline/perceptual_metric"):
        text = (html / f"{page}.html").read_text()
        assert "not comparable to the paper" in text or "NOT comparable" in text, page
        assert "substitute" in text.lower(), page


def test_pages_render_in_chromium(built_book):
    html, rc, _ = built_book
    assert rc == 0
    if not shutil.which(os.environ.get("CHROMIUM", "chromium")):
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium); CI installs it")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / ".ci" / "check_book_pages.py"),
            "--repo",
            str(ROOT),
            "--html",
            str(html),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_toc_pages_exist_except_generated_smoke_results():
    """Every page of _toc.yml is in the repository, except the smoke results that CI generates."""
    missing = [m for m in book.missing_toc_files(ROOT) if not m.startswith("results/smoke/")]
    assert missing == []


def test_build_book_refuses_missing_pages(tmp_path, capsys):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: results/smoke/results\n")
    (tmp_path / "intro.md").write_text("# x\n")
    lines = []
    assert book.build_book(root=tmp_path, log=lines.append) == 2
    refusal = next(ln for ln in lines if "do not exist" in ln)  # after the MathJax notice where none is installed
    assert "results/smoke/results" in refusal and "piad reproduce --profile smoke" in refusal


def test_sync_install_cells(tmp_path):
    import nbformat

    (tmp_path / "notebooks").mkdir()
    for name in book.NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, tmp_path / "notebooks" / name)
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://example.org/me/piad-fork/\n")
    changed = book.sync_install_cells(tmp_path)
    assert len(changed) == len(book.NOTEBOOKS)
    for name in book.NOTEBOOKS:
        assert book.notebook_url(tmp_path / "notebooks" / name) == "https://example.org/me/piad-fork"
        nbformat.validate(nbformat.read(tmp_path / "notebooks" / name, as_version=4))


def test_set_repository_writes_the_one_setting_and_the_install_cells(tmp_path):
    """`piad book --repository URL` (and $PIAD_REPOSITORY_URL in the book workflow) sets _config.yml's
    repository.url, keeping the file's comments, and every notebook's install cell."""
    (tmp_path / "notebooks").mkdir()
    for name in book.NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, tmp_path / "notebooks" / name)
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    changed = book.set_repository("https://github.com/someone/piad/", tmp_path)
    assert tmp_path / "_config.yml" in changed and len(changed) == 1 + len(book.NOTEBOOKS)
    assert book.repository_url(tmp_path) == "https://github.com/someone/piad"
    assert book.book_config(tmp_path)["repository"]["branch"] == "main"
    assert "# The repository URL" in (tmp_path / "_config.yml").read_text()
    for name in book.NOTEBOOKS:
        assert book.notebook_url(tmp_path / "notebooks" / name) == "https://github.com/someone/piad"
    assert book.set_repository("https://github.com/someone/piad", tmp_path) == []  # idempotent
    with pytest.raises(ValueError):
        book.set_repository("not a url", tmp_path)


def test_book_workflow_sets_the_repository_it_builds():
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    envs = [s.get("env", {}) for s in wf["jobs"]["build"]["steps"] if "main-command" in s.get("run", "")]
    assert envs and envs[0].get(book.REPOSITORY_ENV) == "${{ github.server_url }}/${{ github.repository }}"


def test_placeholder_note_on_pages_with_launch_buttons():
    launch = {"type": "group", "label": "launch-buttons", "buttons": []}
    ctx = {"header_buttons": [launch], "body": "<h1>x</h1>"}
    assert book.placeholder_note(ctx, book.PLACEHOLDER_REPOSITORY_URL)
    assert ctx["body"].startswith('<div class="admonition note piad-placeholder-note">')
    assert "placeholder" in ctx["body"] and "piad book --repository URL" in ctx["body"]
    ctx = {"header_buttons": [launch], "body": "<h1>x</h1>"}
    assert not book.placeholder_note(ctx, "https://github.com/someone/piad")  # set: no note
    ctx = {"header_buttons": [], "body": "<h1>x</h1>"}
    assert not book.placeholder_note(ctx, book.PLACEHOLDER_REPOSITORY_URL)  # no buttons: no note
    assert ctx["body"] == "<h1>x</h1>"


def test_performance_page_training_times_come_from_the_committed_runs():
    """The Performance page's table is what piad.book computes from results/offline/*/*/*/provenance.json."""
    page = (ROOT / "book" / "performance.md").read_text()
    block = page.split(book.TIMES_BEGIN)[1].split(book.TIMES_END)[0].strip()
    assert block == book.training_time_table(ROOT / "results" / "offline"), (
        "regenerate it: piad.book.update_training_time_table(book/performance.md, results/offline)"
    )


def test_training_times_per_1000_iterations(tmp_path):
    import json

    for bench, cls, secs, its, abl, cl in (
        ("mnist", 0, 600.0, 300, None, False),
        ("mnist", 1, 900.0, 300, None, False),
        ("mnist", 2, 90.0, 30, None, False),
        ("cifar10", 0, 50.0, 10, "l2", True),
        ("cifar10", 0, 40.0, 10, None, True),
        ("cifar10", 1, 30.0, 10, None, True),
        ("cifar10", 2, 40.0, 10, None, True),
    ):
        d = tmp_path / (bench if abl is None else f"{bench}-ablation-{abl}") / str(cls) / "0"
        d.mkdir(parents=True)
        (d / "provenance.json").write_text(
            json.dumps(
                {
                    "benchmark": bench,
                    "ablation": abl,
                    "device": "cpu",
                    "training_seconds": secs,
                    "iterations": its,
                    "parameters": {"threads": 1, "channels_last": cl, "bf16": bench == "cifar10" and cls > 0},
                    # class 1 was trained in a batched ensemble: NCHW, fp32
                    "trained_in_ensemble": {"members": ["x"]} if cls == 1 else None,
                }
            )
        )
    gpu = tmp_path / "mnist" / "3" / "0"  # one MNIST run on a GPU: a row of its own
    gpu.mkdir(parents=True)
    (gpu / "provenance.json").write_text(
        json.dumps(
            {
                "benchmark": "mnist",
                "ablation": None,
                "device": "cuda:0",
                "hardware": {"accelerator": "NVIDIA H200"},
                "training_seconds": 6.0,
                "iterations": 300,
                "parameters": {"threads": 1},
            }
        )
    )
    t = book.training_times(tmp_path)
    assert sorted(t) == [("cifar10", "cpu"), ("mnist", "cpu"), ("mnist", "cuda (NVIDIA H200)")]  # no ablations
    assert sorted(t[("mnist", "cpu")]["per_1000"]) == [2000.0, 3000.0, 3000.0]
    assert t[("mnist", "cuda (NVIDIA H200)")]["per_1000"] == [20.0]
    assert sorted(t[("cifar10", "cpu")]["per_1000"]) == [3000.0, 4000.0, 4000.0]
    table = book.training_time_table(tmp_path)
    assert "| MNIST | 1 | 300 | cuda (NVIDIA H200), 1, NCHW | 20 s (20 s to 20 s) | 50,000 | 17 min |" in table
    # median 3000 s = 50 min per 1,000 iterations; the paper's 50,000 iterations at that rate: 150,000 s = 42 h
    assert "| MNIST | 3 | 30, 300 | cpu, 1, NCHW | 50 min (33 min to 50 min) | 50,000 | 42 h |" in table
    assert (
        "| CIFAR-10 | 3 | 10 | cpu, 1, NCHW, channels_last, channels_last + bf16 autocast | 67 min (50 min to 67 min) |"
    ) in table


def test_sanitised_path_labels_render_as_text():
    """A notebook's Markdown output such as "MNIST IDX files in <assets>/mnist" is parsed with `<assets>` as a raw
    HTML tag, which the browser drops; the book's extension turns it back into text and drops cache folders."""
    from docutils.core import publish_doctree
    from myst_parser.parsers.docutils_ import Parser

    doc = publish_doctree(
        "MNIST IDX files in <assets>/mnist; tree ~/.cache/piad/data/extracted/c-1f/c extracted from archive "
        "<assets>/c.tar.gz; <b>bold</b>",
        parser=Parser(),
    )
    assert book.fix_output_text(doc) == 3
    text = doc.astext()
    assert "MNIST IDX files in <assets>/mnist" in text and "tree extracted from archive <assets>/c.tar.gz" in text
    assert ".cache" not in text
    assert "bold" in text  # other raw HTML is left alone


def test_local_mathjax_is_copied_into_the_book(tmp_path, monkeypatch):
    """With a local MathJax 2 ($PIAD_MATHJAX, or Debian's libjs-mathjax), the book loads it from _static/mathjax and
    the build copies what that configuration loads (not the unpacked sources, other fonts or configurations)."""
    from types import SimpleNamespace

    mj = tmp_path / "mathjax"
    for f in (
        "MathJax.js",
        "config/TeX-AMS-MML_HTMLorMML.js",
        "config/TeX-AMS_SVG.js",
        "unpacked/MathJax.js",
        "fonts/HTML-CSS/TeX/woff/a.woff",
        "fonts/HTML-CSS/STIX-Web/woff/b.woff",
        "fonts/HTML-CSS/TeX/otf/a.otf",
    ):
        (mj / f).parent.mkdir(parents=True, exist_ok=True)
        (mj / f).write_text("x")
    monkeypatch.setenv(book.MATHJAX_ENV, str(mj))
    assert book.local_mathjax() == mj
    config = SimpleNamespace(mathjax_path=None, mathjax3_config={"x": 1})
    book._use_local_mathjax(None, config)
    assert config.mathjax_path.startswith("mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML")
    out = tmp_path / "html"
    book._copy_local_mathjax(SimpleNamespace(outdir=str(out), builder=SimpleNamespace(format="html")), None)
    copied = sorted(str(p.relative_to(out / "_static" / "mathjax")) for p in out.rglob("*") if p.is_file())
    assert copied == ["MathJax.js", "config/TeX-AMS-MML_HTMLorMML.js", "fonts/HTML-CSS/TeX/woff/a.woff"]
    monkeypatch.setenv(book.MATHJAX_ENV, str(tmp_path / "none"))
    monkeypatch.setattr(book, "MATHJAX_DIRS", ())
    assert book.local_mathjax() is None


def _smallest_text_pt_at_column_width(fig) -> float:
    """The smallest font size of a figure's visible text, scaled to the book's column width where it is wider."""
    from matplotlib.text import Text

    fig.canvas.draw()
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    from piad.experiments.figures import BOOK_COLUMN_INCHES

    return min(sizes) * min(1.0, BOOK_COLUMN_INCHES / fig.get_figwidth())


def test_figure_text_is_at_least_9_pt_where_the_book_shows_it():
    import matplotlib

    matplotlib.use("Agg")
    from piad.experiments import figures, stats

    per_class = {"l2": {0: 0.6, 1: 0.55}, "relative_perceptual_l1": {0: 0.8, 1: 0.7}, "l2_manual": {1: 0.45}}
    names = {0: "airplane", 1: "automobile"}
    iv = stats.Interval(0.8, 0.7, 0.9, "")
    forest = {c: {k: iv for k in figures.CONTROL_MARKERS} for c in range(30)}
    for fig in (
        figures.ablation_bars(per_class, [0, 1], "CIFAR-10", names=names),
        figures.per_class_auc({"MNIST": {0: [0.9], 1: [0.8]}, "CIFAR-10": {0: [0.6]}, "COIL-100": {0: [0.7]}}),
        figures.per_class_auc(
            {"CIFAR-10": {c: [0.6] for c in range(10)}, "COIL-100": {c: [0.9] for c in range(30)}},
            {"CIFAR-10": {c: f"class name {c}" for c in range(10)}},
        ),
        figures.against_controls(
            {"COIL-100": {"per_class_intervals": forest}, "MNIST": {"per_class_intervals": forest}}
        ),
    ):
        assert _smallest_text_pt_at_column_width(fig) >= 9.0


def test_the_ranked_reconstructions_text_is_at_least_9_pt_where_the_book_shows_it():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piad.experiments import figures

    smoke_results()
    fig = figures.ranked_reconstructions(ROOT / "runs" / "smoke" / "digits" / "0" / "0")
    assert _smallest_text_pt_at_column_width(fig) >= 9.0
    assert fig.axes[0].get_title().startswith("normal\nbest\nscore ")
    plt.close(fig)


def test_ablation_figure_names_the_classes():
    import matplotlib

    matplotlib.use("Agg")
    from piad.experiments import figures

    fig = figures.ablation_bars({"l2": {0: 0.6}, "l2_manual": {0: 0.5}}, [0], "CIFAR-10", names={0: "airplane"})
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["airplane"]


def test_navigation_titles_are_unique_and_become_the_page_headings():
    """Every `title:` of _toc.yml is unique, and the extension makes it the page's first heading (an executed
    notebook's heading is its template's, the same for every copy)."""
    from docutils.core import publish_doctree
    from myst_parser.parsers.docutils_ import Parser

    titles = book.toc_titles(ROOT)
    assert titles["results/offline/results"] == "Results tables (offline profile)"
    assert len(set(titles.values())) == len(titles)
    source = "# Results tables\n\ntext\n\n## Overview\n\nmore\n"
    doc = publish_doctree(source, parser=Parser(), settings_overrides={"doctitle_xform": False})
    assert book.retitle(doc, "Results tables (offline profile)")
    assert doc.astext().startswith("Results tables (offline profile)") and "Overview" in doc.astext()
