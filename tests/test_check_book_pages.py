"""The book's page checker (.ci/check_book_pages.py) on crafted HTML: it must fail on error outputs, stderr outputs,
build-machine paths, repeated sidebar titles and section numbers that disagree with the sidebar. No Chromium needed:
these are the checks on the DOM that Chromium dumps."""

import pytest
from conftest import load_script

cbp = load_script(".ci/check_book_pages.py")

FILLER = "<p>" + "This page explains one part of the method in plain words. " * 6 + "</p>"
SIDEBAR = """<nav class="bd-links"><ul class="nav bd-sidenav">
<li class="toctree-l1 current active has-children"><a class="reference internal" href="method.html">1. Method</a><ul>
<li class="toctree-l2 current active"><a class="current reference internal" href="#">1.1. Model</a></li>
<li class="toctree-l2"><a class="reference internal" href="t.html">1.2. Training</a></li></ul></li>
<li class="toctree-l1"><a class="reference internal" href="perf.html">Performance</a></li>
</ul></nav>"""


def page(body: str, sidebar: str = SIDEBAR, heading: str = '<span class="section-number">1.1. </span>Model') -> str:
    return (
        f"<html><head><title>Model</title></head><body>{sidebar}<h1>Model</h1><article><section>"
        f'<h1>{heading}<a class="headerlink" href="#model">#</a></h1>{FILLER}{body}</section></article>'
        "</body></html>"
    )


def problems(html: str) -> list[str]:
    return cbp.dom_problems("book/method/model", html)[1]


def test_a_clean_page_passes():
    assert problems(page("<pre>ROC AUC 0.91</pre>")) == []
    assert cbp.sidebar_problems(cbp.parse_page(page(""))) == []


def test_error_output_fails():
    tb = (
        '<div class="cell_output docutils container"><div class="output traceback highlight-ipythontb notranslate">'
        "<pre>ValueError: boom</pre></div></div>"
    )
    assert any("error element" in p for p in problems(page(tb)))


def test_stderr_output_fails():
    err = (
        '<div class="cell_output docutils container"><div class="output stderr highlight-myst-ansi notranslate">'
        "<pre>TqdmWarning: IProgress not found</pre></div></div>"
    )
    found = problems(page(err))
    assert any("stderr output" in p for p in found), found


def test_papermill_exception_cell_fails():
    assert any("exception" in p for p in problems(page("<p>An Exception was encountered at 'In [3]'.</p>")))


@pytest.mark.parametrize(
    "path", ["/work/main/runs/mnist/0/0", "/root/.cache/piad/x.pt", "/home/ci/data", "/tmp/pytest-1/book"]
)
def test_build_machine_paths_fail(path):
    found = problems(page(f"<pre>data source: files in {path}</pre>"))
    assert any("absolute path" in p and path in p for p in found), found


def test_paths_inside_urls_and_relative_paths_pass():
    body = (
        "<p>See https://example.org/work/notes and results/offline/mnist/0/0 and ../shared/assets and runs/tmp/x.</p>"
    )
    assert problems(page(body)) == []


def test_heading_number_must_match_the_sidebar():
    found = problems(page("", heading='<span class="section-number">2.3.1. </span>Model'))
    assert any("numbered 2.3.1" in p and "sidebar says 1.1" in p for p in found), found


def test_sidebar_repeated_titles_fail():
    dup = SIDEBAR.replace(">Performance<", ">Training<")
    found = cbp.sidebar_problems(cbp.parse_page(page("", sidebar=dup)))
    assert any("'training' appears 2 times" in p for p in found), found


def test_sidebar_numbers_must_run_from_one():
    # the ablation page's old shape: 2.3 with an in-page section 2.3.1, so its only child page was 2.3.2
    gap = SIDEBAR.replace("1.1. Model", "1.2. Model").replace("1.2. Training", "1.3. Training")
    found = cbp.sidebar_problems(cbp.parse_page(page("", sidebar=gap)))
    assert any("['2', '3'] under 1" in p for p in found), found


def test_raw_latex_fails_rendered_math_passes():
    assert any("raw LaTeX" in p for p in problems(page(r"<p>the weight \(\lambda_E\) of E</p>")))
    rendered = '<p>the weight <span class="MathJax">λE</span><script type="math/tex">\\lambda_E</script> of E</p>'
    assert problems(page(rendered)) == []


def test_path_label_parsed_as_a_tag_fails():
    lost = "<p>MNIST IDX files in <assets></assets>/mnist</p>"  # what Chromium makes of `<assets>/mnist`
    assert any("parsed as HTML tags" in p and "<assets>" in p for p in problems(page(lost)))
    assert problems(page("<p>MNIST IDX files in &lt;assets&gt;/mnist</p>")) == []


def test_cache_folder_fails():
    found = problems(page("<p>image-folder tree ~/.cache/piad/data/extracted/c-1/c</p>"))
    assert any("cache folder" in p for p in found), found


@pytest.mark.parametrize(
    "words",
    [
        "trained on a lent NVIDIA H200",
        "to fit the lease",
        "the engineering log",
        "the project's target",
        "Smoke profile (generated in CI)",
        "the classes finished so far",
        "may still lack some variants",
        'python -c "from piad.book import x"',
    ],
)
def test_workshop_words_fail(words):
    assert any("workshop words" in p for p in problems(page(f"<p>{words}</p>"))), words


def test_placeholder_launch_buttons_need_the_note():
    button = '<a href="https://colab.research.google.com/github/piad-repro/piad/blob/main/notebooks/x.ipynb">Colab</a>'
    assert any("placeholder" in p for p in problems(page(button)))
    note = '<div class="admonition note piad-placeholder-note"><p>placeholder</p></div>'
    assert problems(page(note + button)) == []
    other = button.replace("piad-repro/piad", "someone/piad")
    assert problems(page(other)) == []


def test_heading_must_match_the_sidebar_title():
    found = problems(page("", heading='<span class="section-number">1.1. </span>Results tables'))
    assert any("differs from its sidebar title" in p for p in found), found


def test_pages_sharing_a_browser_title_fail(tmp_path):
    for name, title in (("a", "Results tables"), ("b", "Results tables"), ("c", "Method")):
        (tmp_path / f"{name}.html").write_text(f"<html><head><title>{title}</title></head><body></body></html>")
    found = cbp.title_problems(tmp_path, ["a", "b", "c"])
    assert found == ["pages ['a', 'b'] share the title 'Results tables'"]
