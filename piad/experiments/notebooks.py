"""Executed notebooks as book pages: one parameters cell, numbered figures, no error outputs.

The templates in notebooks/ are book pages too (for the Colab/Binder buttons) but hold no outputs, so a figure glued
by a notebook (``{glue:figure}``) and the text that cites it (``{numref}``) can exist only in an executed copy. Such
markdown cells carry the tags `remove-cell` and `executed-only` in the template; `prepare_for_book` drops their
`remove-cell` in an executed copy and makes their figure labels unique in the book (the smoke and the offline
results hold copies of the same notebook, and Sphinx labels are global).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

EXECUTED_ONLY = "executed-only"
_NAME = re.compile(r"^:name:\s*(\S+)\s*$", re.MULTILINE)


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _set_tags(cell, tags: list[str]) -> None:
    cell.setdefault("metadata", {})["tags"] = tags


def error_outputs(nb) -> list[str]:
    """'cell N: Ename: value' for every error output of an executed notebook."""
    return [f"cell {i}: {o.get('ename', 'Error')}: {o.get('evalue', '')}"
            for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def label_prefix(results_root: Path, where: str) -> str:
    """A book-wide unique prefix for an executed copy's figure labels, e.g. 'smoke-digits-0-0'."""
    return re.sub(r"[^a-z0-9]+", "-", f"{Path(results_root).name}-{where}".lower()).strip("-")


def prepare_for_book(nb, prefix: Optional[str] = None) -> None:
    """In place: show one parameters cell (papermill's injected one, input hidden), activate `executed-only` cells
    and prefix the figure labels they define (and cite) with `prefix`."""
    injected = any("injected-parameters" in _tags(c) for c in nb.cells)
    for cell in nb.cells:
        tags = _tags(cell)
        if injected and "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")                 # the template's defaults: papermill's values follow
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
        if EXECUTED_ONLY in tags and "remove-cell" in tags:
            tags.remove("remove-cell")
        if tags != _tags(cell):
            _set_tags(cell, tags)
    if not prefix:
        return
    cells = [c for c in nb.cells if c.cell_type == "markdown" and EXECUTED_ONLY in _tags(c)]
    labels = {m for c in cells for m in _NAME.findall(c.source) if not m.startswith(prefix + "-")}
    for cell in cells:
        for label in labels:
            cell.source = re.sub(rf"(?<![\w-]){re.escape(label)}(?![\w-])", f"{prefix}-{label}", cell.source)
