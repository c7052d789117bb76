"""The house rule: imports point down only. base < math < data < loop < face (data never imports math)."""
import ast

import pytest

from conftest import REPO

LAYERS = {
    "base": {"errors", "paths"},
    "math": {"model"},
    "data": {"data"},
    "loop": {"run"},
    "experiments": {"experiments"},
    "face": {"cli", "book"},
}
RANK = {"base": 0, "math": 1, "data": 1, "loop": 2, "experiments": 3, "face": 4}


def layer_of(module: str) -> str:
    top = module.split(".")[1] if module.startswith("piad.") else module
    for layer, names in LAYERS.items():
        if top in names:
            return layer
    raise AssertionError(f"module piad.{top} is not assigned to a layer in tests/test_layers.py")


def piad_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("piad") and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("piad."))


MODULES = sorted(p for p in (REPO / "piad").rglob("*.py") if p.parent != REPO / "piad" or p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_down(path):
    rel = path.relative_to(REPO / "piad")
    me = "piad." + (rel.parts[0] if len(rel.parts) > 1 else rel.stem)
    mine = layer_of(me)
    for target in piad_imports(path):
        if target == "piad":
            continue
        theirs = layer_of(target)
        assert RANK[theirs] <= RANK[mine], f"{me} ({mine}) imports {target} ({theirs}): imports must point down"
        assert not (mine == "data" and theirs == "math"), f"{me}: the data layer must not import models ({target})"
        assert not (mine == "math" and theirs == "data"), f"{me}: math must not import data ({target})"
