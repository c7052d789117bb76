"""Building the Jupyter Book and keeping the notebooks' install cell in sync with the repository URL.

The repository URL lives in one place, `_config.yml` (`repository.url`); the first cell of every notebook installs
piad from it when piad is missing (Colab). `set_repository(url)` (`piad book --repository URL`, or the environment
variable PIAD_REPOSITORY_URL, which the book workflow sets to the repository it builds) writes it and rewrites those
cells (`sync_install_cells()`); the test suite checks that they agree. While that URL is the placeholder, `piad book`
warns and every page with launch buttons says that they need the published repository.

This module is also the book's Sphinx extension (`_config.yml`: sphinx.extra_extensions): it removes the Colab and
Binder launch buttons from pages whose notebook is generated and not committed (`piad_no_launch_buttons`), since
those buttons would open a notebook that is not in the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

from piad.paths import repo_root

NOTEBOOKS = (
    "train_evaluate.ipynb",
    "perceptual_metric.ipynb",
    "weight_policy.ipynb",
    "learning_curves.ipynb",
    "results.ipynb",
)
_URL_LINE = re.compile(r'^REPOSITORY_URL = "([^"]*)"$', re.MULTILINE)
PLACEHOLDER_REPOSITORY_URL = "https://github.com/piad-repro/piad"
REPOSITORY_ENV = "PIAD_REPOSITORY_URL"
_CONFIG_URL_LINE = re.compile(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)(\S+)(.*)$", re.MULTILINE)
PLACEHOLDER_NOTE = (
    "The Colab and Binder buttons of this page open the notebook from {url}, a placeholder: they work once the book is "
    "published from its repository (the book workflow sets the repository it is built from; locally: "
    "<code>piad book --repository URL</code>)."
)


def book_config(root: Path | None = None) -> dict:
    import yaml

    return yaml.safe_load(((root or repo_root()) / "_config.yml").read_text())


def repository_url(root: Path | None = None) -> str:
    """The repository URL: `_config.yml` repository.url (the single setting)."""
    return str(book_config(root)["repository"]["url"]).rstrip("/")


def placeholder_warning(root: Path | None = None) -> str | None:
    """A warning while _config.yml's repository.url is still the placeholder, else None (also without a config)."""
    try:
        url = repository_url(root)
    except (OSError, KeyError, TypeError):
        return None
    if url != PLACEHOLDER_REPOSITORY_URL:
        return None
    return (
        f"piad book: warning: _config.yml repository.url is still the placeholder {url}; the repository button "
        "and the Colab/Binder launch buttons point there. Set it to this repository's URL, then update the "
        'notebooks\' install cells: python -c "from piad.book import sync_install_cells; sync_install_cells()"'
    )


def set_repository(url: str, root: Path | None = None) -> list[Path]:
    """Write `url` as _config.yml's repository.url (comments and layout kept) and re-sync every notebook's install
    cell; returns the files changed. A URL that is not http(s) is refused (ValueError)."""
    root = root or repo_root()
    url = url.strip().rstrip("/")
    if not re.fullmatch(r"https?://\S+", url):
        raise ValueError(f"not a repository URL: {url!r}")
    cfg = root / "_config.yml"
    text = cfg.read_text()
    new, n = _CONFIG_URL_LINE.subn(lambda m: f"{m.group(1)}{url}{m.group(3)}", text, count=1)
    if n != 1:
        raise ValueError(f"{cfg}: no repository.url line")
    changed = []
    if new != text:
        cfg.write_text(new)
        changed.append(cfg)
    return changed + sync_install_cells(root)


def notebook_url(nb_path: Path) -> str | None:
    """The REPOSITORY_URL written in a notebook's install cell (its first code cell)."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            m = _URL_LINE.search(cell.source)
            return m.group(1) if m else None
    return None


def sync_install_cells(root: Path | None = None) -> list[Path]:
    """Rewrite REPOSITORY_URL in every notebook's install cell from _config.yml; returns the notebooks changed."""
    import nbformat

    root = root or repo_root()
    url = repository_url(root)
    changed = []
    for name in NOTEBOOKS:
        p = root / "notebooks" / name
        nb = nbformat.read(p, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        new = _URL_LINE.sub(f'REPOSITORY_URL = "{url}"', cell.source)
        if new != cell.source:
            cell.source = new
            nbformat.write(nb, p)
            changed.append(p)
    return changed


def toc_files(root: Path | None = None) -> list[str]:
    """Every `file:` entry of _toc.yml (and the root), without suffix."""
    import yaml

    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    out = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                out.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))
            for part in e.get("parts", []) or []:
                walk(part.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return out


def missing_toc_files(root: Path | None = None) -> list[str]:
    root = root or repo_root()
    return [f for f in toc_files(root) if not any((root / f"{f}{s}").exists() for s in ("", ".md", ".ipynb"))]


def jupyter_book_command() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    return [sys.executable, "-m", "jupyter_book.cli.main"]


def build_book(
    path_output: str | None = None,
    warningiserror: bool = False,
    keep_going: bool = False,
    all_pages: bool = False,
    root: Path | None = None,
    log=print,
    repository: str | None = None,
) -> int:
    """`jupyter-book build <repo>` (HTML into <path_output or repo>/_build/html); never executes notebooks.
    `repository` (default: $PIAD_REPOSITORY_URL) is first written to _config.yml and the install cells."""
    import os

    root = root or repo_root()
    repository = repository or os.environ.get(REPOSITORY_ENV)
    if repository:
        for path in set_repository(repository, root):
            log(f"piad book: repository set to {repository.rstrip('/')} in {path.relative_to(root)}")
    warning = placeholder_warning(root)
    if warning:
        log(warning)
    if local_mathjax() is None:
        log(
            "piad book: no local MathJax (Debian/Ubuntu: apt-get install libjs-mathjax, or set $PIAD_MATHJAX to a "
            "MathJax 2 folder): the book's math will load MathJax from a CDN and needs network to render."
        )
    missing = missing_toc_files(root)
    if missing:
        hint = ""
        if any(m.startswith("results/smoke") for m in missing):
            hint = (
                " The smoke results are generated, not committed: run `piad reproduce --profile smoke` (about 3 "
                "minutes on a 2-core CPU) or `piad book --profile smoke --run`."
            )
        log(f"piad book: _toc.yml lists pages that do not exist: {missing}.{hint}")
        return 2
    cmd = [*jupyter_book_command(), "build", str(root), "--builder", "html"]
    if path_output:
        cmd += ["--path-output", str(path_output)]
    if warningiserror:
        cmd.append("-W")
    if keep_going:
        cmd.append("--keep-going")
    if all_pages:
        cmd.append("--all")
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=root)
    out = Path(path_output or root) / "_build" / "html"
    log(f"piad book: jupyter-book exited {rc} after {time.time() - t0:.0f} s; HTML in {out}")
    return rc


# -- Sphinx extension -----------------------------------------------------------------------------------------------
def drop_launch_buttons(pagename: str, context: dict, patterns) -> bool:
    """Remove the launch-button group from a page's header buttons when `pagename` matches one of `patterns`."""
    buttons = context.get("header_buttons")
    if not buttons or not any(fnmatch(pagename, p) for p in patterns):
        return False
    buttons[:] = [b for b in buttons if b.get("label") != "launch-buttons"]
    return True


def placeholder_note(context: dict, url: str) -> bool:
    """Put a note above the body of a page that has launch buttons while `url` is the placeholder."""
    buttons = context.get("header_buttons") or []
    if url.rstrip("/") != PLACEHOLDER_REPOSITORY_URL or not any(b.get("label") == "launch-buttons" for b in buttons):
        return False
    note = PLACEHOLDER_NOTE.format(url=url)
    context["body"] = (
        f'<div class="admonition note piad-placeholder-note"><p class="admonition-title">Launch buttons</p>'
        f"<p>{note}</p></div>\n" + context.get("body", "")
    )
    return True


def _on_page_context(app, pagename, templatename, context, doctree) -> None:
    drop_launch_buttons(pagename, context, app.config.piad_no_launch_buttons)
    url = str((app.config.html_theme_options or {}).get("repository_url") or "")
    placeholder_note(context, url)


PATH_LABELS = ("<assets>", "<cache>", "<python>")  # piad.paths.sanitise_text's labels for this machine's folders
# an archive's extraction folder in the cache, before "extracted from <archive>": a detail of the machine that ran it
_CACHE_EXTRACTION = re.compile(r"\s(?:~/\.cache/piad|<cache>)/\S+(?= extracted from )")


def reader_text(text: str) -> str:
    """Text of an executed notebook's output as the reader should see it: without cache extraction folders."""
    return _CACHE_EXTRACTION.sub("", text)


def fix_output_text(doctree) -> int:
    """In place: sanitised paths in Markdown outputs, e.g. `<assets>/mnist`, are parsed as raw HTML tags (which a
    browser drops, leaving "/mnist"): make each such label text again, and drop cache extraction folders. Returns the
    number of nodes changed."""
    from docutils import nodes

    changed = 0
    for node in list(doctree.findall(nodes.raw)):
        if "html" in node.get("format", "").split() and node.astext().strip() in PATH_LABELS:
            node.replace_self(nodes.Text(node.astext().strip()))
            changed += 1
    for node in list(doctree.findall(nodes.Text)):
        new = reader_text(str(node))
        if new != str(node) and not isinstance(node.parent, (nodes.literal_block, nodes.raw)):
            node.parent.replace(node, nodes.Text(new))
            changed += 1
    return changed


def _on_doctree(app, doctree, *args) -> None:
    fix_output_text(doctree)


def toc_titles(root: Path | None = None) -> dict[str, str]:
    """{file: title} of the _toc.yml entries that name a `title:` (pages made from notebooks)."""
    import yaml

    root = root or repo_root()
    out: dict[str, str] = {}

    def walk(entries):
        for e in entries or []:
            if "file" in e and e.get("title"):
                out[e["file"]] = str(e["title"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return out


def retitle(doctree, title: str) -> bool:
    """In place: the page's first heading becomes `title` (the template's heading is the same in every executed copy;
    the navigation's title names the copy), so the heading, the browser title and the sidebar agree."""
    from docutils import nodes

    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not section.children or not isinstance(section[0], nodes.title):
        return False
    section[0].children = []
    section[0] += nodes.Text(title)
    return True


def _on_doctree_titles(app, doctree) -> None:
    title = toc_titles(Path(app.srcdir)).get(app.env.docname)
    if title:
        retitle(doctree, title)


MATHJAX_ENV = "PIAD_MATHJAX"
# A packaged MathJax 2 (Debian/Ubuntu: apt-get install libjs-mathjax), copied into the book so that math renders
# without network; without one the book keeps Sphinx's default (MathJax from a CDN) and `piad book` warns.
MATHJAX_DIRS = ("/usr/share/javascript/mathjax", "/usr/share/nodejs/mathjax")


def local_mathjax() -> Path | None:
    """The folder of a local MathJax 2 (its MathJax.js): $PIAD_MATHJAX, else Debian's libjs-mathjax; else None."""
    import os

    for d in ([os.environ[MATHJAX_ENV]] if os.environ.get(MATHJAX_ENV) else []) + list(MATHJAX_DIRS):
        if (Path(d) / "MathJax.js").is_file():
            return Path(d)
    return None


def _use_local_mathjax(app, config) -> None:
    """config-inited: serve MathJax from the book's own _static/mathjax when a local copy exists."""
    d = local_mathjax()
    if d is None:
        return
    config.mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML"
    config.mathjax3_config = None
    config.myst_update_mathjax = False  # myst's MathJax 3 settings; MathJax 2 gets the same rule below
    # pages are marked tex2jax_ignore by myst-nb; math (class "math") and notebook outputs are typeset all the same
    config.mathjax2_config = {"tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area"}}


def _no_mathjax3_config(app) -> None:
    """builder-inited, late: no MathJax 3 configuration beside the local MathJax 2."""
    if local_mathjax() is not None:
        app.config.mathjax3_config = None


def _copy_local_mathjax(app, exception) -> None:
    """build-finished: copy the local MathJax into <html>/_static/mathjax (fonts included, links followed)."""
    d = local_mathjax()
    if exception is not None or d is None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "MathJax.js").is_file():
        shutil.copytree(d, target, dirs_exist_ok=True, ignore=_mathjax_unused, ignore_dangling_symlinks=True)


def _mathjax_unused(folder: str, names: list[str]) -> set[str]:
    """What the book's MathJax configuration (TeX-AMS-MML_HTMLorMML, TeX fonts as woff) never loads: 54 MB -> ~12."""
    here = Path(folder)
    skip = {n for n in names if n in ("unpacked", "test", "SVG", "svg", "otf", "eot")}
    if here.name == "config":
        skip |= {n for n in names if n.endswith(".js") and not n.startswith(("TeX-AMS-MML_HTMLorMML", "local"))}
    if here.name == "fonts":
        skip |= {n for n in names if n not in ("HTML-CSS", "TeX")}
    if here.name == "HTML-CSS" and here.parent.name == "fonts":
        skip |= {n for n in names if n != "TeX"}
    return skip


# Tables fit the column: a wide one scrolls instead of being cut, and short headers ("c = 0.25") never break into
# one character per line.
BOOK_CSS = """\
.bd-article table.table { display: block; max-width: 100%; overflow-x: auto; }
.bd-article table.table th, .bd-article table.table td { overflow-wrap: normal; word-break: normal; hyphens: none; }
.bd-article table.table th { min-width: 4.5em; }
"""


def _add_css(app) -> None:
    """builder-inited: write the book's stylesheet into <html>/_static and link it from every page."""
    if app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / "piad.css").write_text(BOOK_CSS)
    app.add_css_file("piad.css")


def setup(app):
    """Sphinx entry point: after sphinx-book-theme adds launch buttons (priority 501), drop the excluded ones; make
    sanitised path labels in notebook outputs readable (`fix_output_text`)."""
    app.add_config_value("piad_no_launch_buttons", [], "html")
    app.connect("html-page-context", _on_page_context, priority=600)
    app.connect("config-inited", _use_local_mathjax)
    app.connect("build-finished", _copy_local_mathjax)
    app.connect("builder-inited", _add_css)
    app.connect("builder-inited", _no_mathjax3_config, priority=900)
    app.connect("doctree-read", _on_doctree_titles, priority=400)  # before Sphinx records the page's title
    app.connect("doctree-read", _on_doctree)
    app.connect("doctree-resolved", _on_doctree)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# -- the Performance page's table of training times -----------------------------------------------------------------
TIMES_BEGIN, TIMES_END = "<!-- training-times -->", "<!-- /training-times -->"


def training_times(results_dir: Path) -> dict[tuple[str, str], dict]:
    """Seconds of training per 1,000 iterations of every finished main run (not ablations) under `results_dir`,
    per (benchmark, device) from each run's provenance.json (`training_seconds` / `iterations`): a CPU run and a
    GPU run of one benchmark never share a median. The device is `cpu`, or e.g. `cuda (NVIDIA H200)`."""
    import json

    from piad.experiments.provenance import device_label, memory_layout, precision

    out: dict[tuple[str, str], dict] = {}
    for prov in sorted(Path(results_dir).glob("*/*/*/provenance.json")):
        d = json.loads(prov.read_text())
        if d.get("ablation") or not d.get("training_seconds") or not d.get("iterations"):
            continue
        row = out.setdefault(
            (d["benchmark"], device_label(d)), {"per_1000": [], "iterations": set(), "threads": set(), "layouts": set()}
        )
        row["per_1000"].append(1000.0 * float(d["training_seconds"]) / int(d["iterations"]))
        row["iterations"].add(int(d["iterations"]))
        params = d.get("parameters") or {}
        row["threads"].add(params.get("threads"))
        layout = d.get("memory_layout") or memory_layout(params, d.get("trained_in_ensemble"))
        arithmetic = d.get("precision") or precision(params, d.get("trained_in_ensemble"))
        row["layouts"].add(layout if arithmetic == "fp32" else f"{layout} + {arithmetic}")
    return out


def training_time_table(results_dir: Path) -> str:
    """The Markdown table of :func:`training_times`, with the time a run of the paper's length would take."""
    import statistics

    from piad.experiments.labels import BENCHMARK_TITLES
    from piad.run.config import make_config

    def dur(seconds: float) -> str:
        if seconds < 90:
            return f"{seconds:.0f} s"
        return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.0f} h"

    lines = [
        "| benchmark | runs | iterations per run | device, threads, memory layout (+ bf16) | training time per "
        "1,000 iterations: median (range) | the paper's iterations | a run of the paper's length at the median |",
        "|---|---|---|---|---|---|---|",
    ]
    for (bench, device), r in training_times(results_dir).items():
        med, paper_its = statistics.median(r["per_1000"]), make_config(bench).iterations
        lines.append(
            f"| {BENCHMARK_TITLES.get(bench, bench)} | {len(r['per_1000'])} | "
            f"{', '.join(str(i) for i in sorted(r['iterations']))} | "
            f"{device}, {', '.join(sorted(str(t) for t in r['threads']))}, "
            f"{', '.join(sorted(r['layouts']))} | "
            f"{dur(med)} ({dur(min(r['per_1000']))} to {dur(max(r['per_1000']))}) | {paper_its:,} | "
            f"{dur(med * paper_its / 1000)} |"
        )
    return "\n".join(lines)


def update_training_time_table(page: Path, results_dir: Path) -> bool:
    """Rewrite the table between the training-times markers of `page`; returns whether it changed."""
    text = page.read_text()
    head, sep, rest = text.partition(TIMES_BEGIN)
    _, sep2, tail = rest.partition(TIMES_END)
    if not sep or not sep2:
        raise ValueError(f"{page}: no {TIMES_BEGIN} ... {TIMES_END} block")
    new = f"{head}{TIMES_BEGIN}\n{training_time_table(results_dir)}\n{TIMES_END}{tail}"
    if new != text:
        page.write_text(new)
    return new != text
