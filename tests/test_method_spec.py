"""The method is specified inside the repository (the book's method chapter), and what the code cites exists there.

Code, tests, notebooks and pages cite the specification as "book: ... spec-<label>"; every such label must be a MyST
target `(spec-<label>)=` in book/, and nothing may cite the former out-of-repository file "method.md §N". (Executed
notebooks under results/ copy their templates' text when they run, so there only the file name is checked: an older
"method §N" in them goes away when they are re-executed.)
"""

import re

from conftest import REPO

SOURCES = ("piad", "tests", "notebooks", "book", "benchmarks", ".ci", "results")
SUFFIXES = {".py", ".md", ".ipynb", ".yml", ".txt"}
OUTSIDE = re.compile(r"method\.md\s*§|method\.md \(|\bmethod §\d|`method\.md`")
OUTSIDE_IN_RESULTS = re.compile(r"\bmethod\.md\b")
LABEL_DEF = re.compile(r"^\((spec-[a-z0-9-]+)\)=\s*$", re.MULTILINE)
LABEL_USE = re.compile(r"\bspec-[a-z0-9]+(?:-[a-z0-9]+)*")


def _files():
    yield REPO / "README.md"
    for top in SOURCES:
        for p in sorted((REPO / top).rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and "_build" not in p.parts and ".ipynb_checkpoints" not in p.parts:
                yield p


def _defined_labels() -> set[str]:
    return {m for p in (REPO / "book").rglob("*.md") for m in LABEL_DEF.findall(p.read_text())}


def test_nothing_cites_a_method_file_outside_the_repository():
    def pattern(p):
        return OUTSIDE_IN_RESULTS if p.relative_to(REPO).parts[0] == "results" else OUTSIDE

    bad = [
        f"{p.relative_to(REPO)}:{i}"
        for p in _files()
        if p.name != "test_method_spec.py"
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if pattern(p).search(line)
    ]
    assert bad == [], "cite the book's method chapter (book/method*.md, labels spec-...) instead: " + ", ".join(bad)


def test_every_cited_spec_label_is_defined_in_the_book():
    defined = _defined_labels()
    assert {
        "spec-rpl1",
        "spec-weight-policy",
        "spec-iteration",
        "spec-critic-loss",
        "spec-architecture-table",
        "spec-anomaly-score",
        "spec-evaluation",
        "spec-final-weights",
    } <= defined
    cited = {}
    for p in _files():
        if p.name == "test_method_spec.py":
            continue
        for label in LABEL_USE.findall(p.read_text(errors="replace")):
            cited.setdefault(label, str(p.relative_to(REPO)))
    missing = {label: where for label, where in cited.items() if label not in defined}
    assert missing == {}, f"cited but not defined in book/ as (label)=: {missing}"


def test_code_modules_cite_the_book():
    """The modules that implement a part of the method point to where it is specified."""
    for mod, label in (
        ("model/perceptual.py", "spec-rpl1"),
        ("model/weighting.py", "spec-weight-policy"),
        ("model/objective.py", "spec-critic-loss"),
        ("run/training.py", "spec-iteration"),
        ("model/networks.py", "spec-model"),
        ("run/evaluation.py", "spec-evaluation"),
    ):
        head = (REPO / "piad" / mod).read_text()[:600]
        assert label in head, f"piad/{mod} should cite {label} in its docstring"
