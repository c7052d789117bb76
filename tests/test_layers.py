"""The house rules of the package's structure, read from the source (no imports run):

- layers: base {piad, piad.errors, piad.paths} < model, data (siblings: neither imports the other) < run <
  experiments < face {piad.cli, piad.book}; imports point down only, and every module is in a layer;
- the model layer imports no file, network or command-line code, and no piad module outside model and errors;
- no import cycle among piad modules;
- no module imports another module's private name (`_x`) or a private module (`piad.data._io`) from outside the
  package that owns it.

Every import form counts: `import piad.x`, `from piad import x` (x a submodule), `from piad.x import y`, relative
imports, imports inside functions, and `importlib.import_module` / `__import__` with a literal name. The last
tests break a copy of the package on purpose and check that the checker reports exactly that.
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import REPO

LAYERS = {
    "base": ("piad", "piad.errors", "piad.paths"),
    "model": ("piad.model",),
    "data": ("piad.data",),
    "run": ("piad.run",),
    "experiments": ("piad.experiments",),
    "face": ("piad.cli", "piad.book"),
}
RANK = {"base": 0, "model": 1, "data": 1, "run": 2, "experiments": 3, "face": 4}
# the model layer: math only (book: Method); these belong to the run layer and above
MODEL_DENIED_MODULES = (
    "urllib",
    "http",
    "requests",
    "socket",
    "ssl",
    "ftplib",
    "smtplib",
    "torch.hub",
    "torch.utils.model_zoo",
    "torchvision.datasets",
    "huggingface_hub",
    "argparse",
    "optparse",
    "getopt",
    "click",
    "typer",
    "subprocess",
    "multiprocessing",
    "shutil",
    "pathlib",
    "os",
    "glob",
    "tempfile",
    "io",
    "gzip",
    "bz2",
    "lzma",
    "tarfile",
    "zipfile",
    "pickle",
    "json",
    "csv",
    "sqlite3",
    "h5py",
    "PIL",
    "matplotlib",
    "tqdm",
    "submitit",
    "papermill",
)
MODEL_DENIED_CALLS = ("open", "torch.load", "torch.save", "np.load", "numpy.load")
MODEL_DENIED_FUNCTIONS = ("urlopen", "load_state_dict_from_url", "download_url_to_file")  # however qualified
MODEL_ALLOWED_PIAD = ("piad.model", "piad.errors")


class Violation(NamedTuple):
    check: str  # "layer", "unknown", "model", "cycle", "private"
    module: str  # the importing module (for cycles: the first module of the cycle)
    target: str  # what it imports (for cycles: the cycle, " -> "-joined)
    message: str


class Import(NamedTuple):
    module: str
    target: str  # a piad module
    name: str | None  # the name imported from `target` (None: the module itself)
    line: int


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        if any(module == p or (p != "piad" and within(module, p)) for p in prefixes):
            return layer
    return None


def discover(root: Path) -> dict[str, tuple[Path, bool]]:
    """piad module name -> (file, is_package) for every .py file under root/piad."""
    out = {}
    for p in sorted((root / "piad").rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def parse(module: str, path: Path, is_pkg: bool, modules) -> tuple[list[Import], list[tuple[str, int]], list]:
    """(piad imports, other imported module names with lines, calls (dotted name, line))."""
    piad, other, calls = [], [], []
    package = module if is_pkg else module.rpartition(".")[0]

    def add(target: str, line: int, names=(None,)):
        if within(target, "piad"):
            for n in names:
                sub = f"{target}.{n}" if n not in (None, "*") else None
                piad.append(
                    Import(module, sub, None, line)
                    if sub in modules
                    else Import(module, target, None if n == "*" else n, line)
                )
        else:
            other.extend((target if n in (None, "*") else f"{target}.{n}", line) for n in names)
            other.append((target, line))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            add(target, node.lineno, [a.name for a in node.names])
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            calls.append((name, node.lineno))
            if (
                name
                and name.rpartition(".")[2] in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                add(node.args[0].value, node.lineno)
    return piad, other, calls


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def owner_of_private(imp: Import) -> str | None:
    """The module or package that owns the private thing `imp` reaches (None: nothing private)."""
    if imp.name is not None and is_private(imp.name):
        return imp.target
    parts = imp.target.split(".")
    for i, part in enumerate(parts):
        if is_private(part):
            return ".".join(parts[:i])
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-import), each as a sorted list."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@functools.cache
def check_package(root: Path) -> tuple[Violation, ...]:
    """Every violation of the house rules in the package root/piad."""
    modules = discover(root)
    out, graph = [], {m: set() for m in modules}
    for m, (path, is_pkg) in modules.items():
        mine = layer_of(m)
        if mine is None:
            out.append(Violation("layer", m, m, f"{m} is not assigned to a layer in tests/test_layers.py"))
        piad, other, calls = parse(m, path, is_pkg, modules)
        for imp in piad:
            t = imp.target
            where = f"{m} line {imp.line}"
            if t not in modules:
                out.append(Violation("unknown", m, t, f"{where}: imports {t}, which is not a module of the package"))
                continue
            # importing a submodule runs its packages first anyway: child -> ancestor edges add no dependency
            if not within(m, t):
                graph[m].add(t)
            theirs = layer_of(t)
            if mine and theirs and mine != theirs and RANK[theirs] >= RANK[mine]:
                out.append(
                    Violation(
                        "layer",
                        m,
                        t,
                        f"{where}: {m} ({mine}) imports {t} ({theirs}); imports point "
                        "down only and model/data never import each other",
                    )
                )
            if mine == "model" and not any(within(t, a) for a in MODEL_ALLOWED_PIAD):
                out.append(
                    Violation(
                        "model", m, t, f"{where}: the model layer imports {t}; it may import only {MODEL_ALLOWED_PIAD}"
                    )
                )
            owner = owner_of_private(imp)
            if owner is not None and not within(m, owner):
                what = f"{t}.{imp.name}" if imp.name and is_private(imp.name) else t
                out.append(
                    Violation(
                        "private",
                        m,
                        what,
                        f"{where}: imports the private {what} (owned by {owner}); use or add a public name",
                    )
                )
        if mine == "model":
            for name, line in other:
                denied = [d for d in MODEL_DENIED_MODULES if within(name, d)]
                if denied:
                    out.append(
                        Violation(
                            "model",
                            m,
                            name,
                            f"{m} line {line}: the model layer imports {name} (file, network or command-line code)",
                        )
                    )
            for name, line in calls:
                if name in MODEL_DENIED_CALLS or (name or "").rpartition(".")[2] in MODEL_DENIED_FUNCTIONS:
                    out.append(Violation("model", m, name, f"{m} line {line}: the model layer calls {name}()"))
    for cycle in find_cycles(graph):
        out.append(Violation("cycle", cycle[0], " -> ".join(cycle), f"import cycle among {cycle}"))
    return tuple(dict.fromkeys(out))


MODULES = sorted(discover(REPO))


def violations(check: str, module: str | None = None) -> list[str]:
    return [v.message for v in check_package(REPO) if v.check == check and module in (None, v.module)]


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 40 and "piad.model.perceptual" in MODULES
    assert [m for m in MODULES if layer_of(m) is None] == []


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    assert violations("layer", module) == []
    assert violations("unknown", module) == []


@pytest.mark.parametrize("module", [m for m in MODULES if layer_of(m) == "model"])
def test_model_layer_does_no_io_and_imports_no_upper_layer(module):
    assert violations("model", module) == []


@pytest.mark.parametrize("module", MODULES)
def test_no_private_names_of_other_modules(module):
    assert violations("private", module) == []


def cycles() -> list[set[str]]:
    return [set(v.target.split(" -> ")) for v in check_package(REPO) if v.check == "cycle"]


def test_no_import_cycles():
    """Function-level imports count; an import of a module's own parent package does not (it runs first anyway)."""
    assert cycles() == []


# -- the checker can fail: break a copy of the package and compare what it reports


@pytest.fixture
def broken(tmp_path):
    """append(file, code) -> (new violations other than cycles as (check, module, target), new cycles as sets)."""
    shutil.copytree(REPO / "piad", tmp_path / "piad", ignore=shutil.ignore_patterns("__pycache__"))
    state = {"before": set(check_package(tmp_path))}

    def append(rel: str, code: str):
        p = tmp_path / "piad" / rel
        p.write_text(p.read_text() + "\n" + code + "\n")
        check_package.cache_clear()
        after = set(check_package(tmp_path))
        new, state["before"] = after - state["before"], after
        return (
            {(v.check, v.module, v.target) for v in new if v.check != "cycle"},
            [set(v.target.split(" -> ")) for v in new if v.check == "cycle"],
        )

    return append


def test_checker_catches_a_model_module_importing_the_cli(broken):
    found, new_cycles = broken("model/networks.py", "from piad import cli")
    assert found == {("layer", "piad.model.networks", "piad.cli"), ("model", "piad.model.networks", "piad.cli")}
    # cli -> run.training (inside a function) -> model.networks -> cli
    assert len(new_cycles) == 1 and {"piad.model.networks", "piad.cli", "piad.run.training"} <= new_cycles[0]


def test_checker_catches_relative_and_function_level_imports(broken):
    assert broken("data/mnist.py", "def f():\n    from ..run import training") == (
        {("layer", "piad.data.mnist", "piad.run.training")},
        [],
    )
    assert broken("model/weighting.py", "from . import networks\nfrom .. import paths") == (
        {("model", "piad.model.weighting", "piad.paths")},
        [],
    )
    assert broken("run/curves.py", "from .. import experiments as e") == (
        {("layer", "piad.run.curves", "piad.experiments")},
        [],
    )


def test_checker_catches_importlib_unknown_modules_and_sibling_layers(broken):
    assert broken("model/weighting.py", "import importlib\nm = importlib.import_module('piad.data.mnist')") == (
        {("layer", "piad.model.weighting", "piad.data.mnist"), ("model", "piad.model.weighting", "piad.data.mnist")},
        [],
    )
    assert broken("run/curves.py", "import piad.perceptual") == (
        {("unknown", "piad.run.curves", "piad.perceptual")},
        [],
    )


def test_checker_catches_io_in_the_model(broken):
    assert broken(
        "model/weighting.py", "import urllib.request\nfrom torch import hub\ndef f(p):\n    return open(p)"
    ) == (
        {
            ("model", "piad.model.weighting", "urllib.request"),
            ("model", "piad.model.weighting", "torch.hub"),
            ("model", "piad.model.weighting", "open"),
        },
        [],
    )


def test_checker_catches_private_names_and_modules(broken):
    assert broken("run/curves.py", "from piad.run.config import _coerce\nfrom piad.data._io import decode_many") == (
        {("private", "piad.run.curves", "piad.run.config._coerce"), ("private", "piad.run.curves", "piad.data._io")},
        [],
    )
    assert broken("data/folder.py", "from piad.data._io import natural_key") == (set(), [])  # inside its owner


def test_checker_catches_cycles(broken):
    assert broken("errors.py", "def f():\n    import piad.paths") == (set(), [])  # not a cycle alone
    assert broken("paths.py", "def f():\n    from piad import errors") == (set(), [{"piad.errors", "piad.paths"}])


def test_checker_catches_an_unassigned_module(broken, tmp_path):
    (tmp_path / "piad" / "tools.py").write_text("x = 1\n")
    assert broken("errors.py", "") == ({("layer", "piad.tools", "piad.tools")}, [])


def imported_names(source: str):
    """(module, name) of every absolute `from piad... import name` in the source, at any depth."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("piad"):
            yield from ((node.module, a.name) for a in node.names)


def test_every_imported_name_exists():
    """Imports inside functions run late: a renamed name would fail only when that code path runs."""
    import importlib
    import json

    sources = {str(p.relative_to(REPO)): p.read_text() for p in (REPO / "piad").rglob("*.py")}
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        sources[nb.name] = "\n".join(
            "".join(c["source"])
            for c in cells
            if c["cell_type"] == "code" and not "".join(c["source"]).lstrip().startswith(("!", "%"))
        )
    missing = []
    for where, src in sources.items():
        for module, name in imported_names(src):
            mod = importlib.import_module(module)
            is_submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}")
            if not hasattr(mod, name) and not is_submodule:
                missing.append(f"{where}: from {module} import {name}")
    assert missing == []
