"""The notebooks of a profile's grid: their parameters, their execution with papermill, and executed notebooks as
book pages (one parameters cell, numbered figures, no error outputs, no huge outputs).

The templates in notebooks/ are book pages too (for the Colab/Binder buttons) but hold no outputs, so a figure glued
by a notebook (``{glue:figure}``) and the text that cites it (``{numref}``) can exist only in an executed copy. Such
markdown cells carry the tags `remove-cell` and `executed-only` in the template; `prepare_for_book` drops their
`remove-cell` in an executed copy and makes their figure labels unique in the book (the smoke and the offline
results hold copies of the same notebook, and Sphinx labels are global).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from piad.experiments.grid import Job
from piad.experiments.profiles import Profile

EXECUTED_ONLY = "executed-only"
COLAB_GPU_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}
MAX_OUTPUT_BYTES = 1_500_000  # executed notebooks: drop any single output bigger than this
_NAME = re.compile(r"^:name:\s*(\S+)\s*$", re.MULTILINE)


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _set_tags(cell, tags: list[str]) -> None:
    cell.setdefault("metadata", {})["tags"] = tags


def error_outputs(nb) -> list[str]:
    """'cell N: Ename: value' for every error output of an executed notebook."""
    return [
        f"cell {i}: {o.get('ename', 'Error')}: {o.get('evalue', '')}"
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def label_prefix(results_root: Path, where: str) -> str:
    """A book-wide unique prefix for an executed copy's figure labels, e.g. 'smoke-digits-0-0'."""
    return re.sub(r"[^a-z0-9]+", "-", f"{Path(results_root).name}-{where}".lower()).strip("-")


def prepare_for_book(nb, prefix: str | None = None) -> None:
    """In place: show one parameters cell (papermill's injected one, input hidden), activate `executed-only` cells
    and prefix the figure labels they define (and cite) with `prefix`."""
    injected = any("injected-parameters" in _tags(c) for c in nb.cells)
    for cell in nb.cells:
        tags = _tags(cell)
        if injected and "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")  # the template's defaults: papermill's values follow
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
        if EXECUTED_ONLY in tags and "remove-cell" in tags:
            tags.remove("remove-cell")
        if tags != _tags(cell):
            _set_tags(cell, tags)
    if not prefix:
        return
    cells = [c for c in nb.cells if c.cell_type == "markdown" and EXECUTED_ONLY in _tags(c)]
    # the notebooks' labels are "fig-<name>"; a copy moved to another folder carries its old prefix, which is replaced
    labels = {m: f"{prefix}-{m[m.rfind('fig-') :]}" for c in cells for m in _NAME.findall(c.source)}
    for cell in cells:
        for label, new in labels.items():
            if new != label:
                cell.source = re.sub(rf"(?<![\w-]){re.escape(label)}(?![\w-])", new, cell.source)


def notebook_parameters(
    profile: Profile, job: Job, work_dir: Path, device: str, iterations: int | None, threads: int
) -> dict[str, Any]:
    """The parameters papermill injects into notebooks/train_evaluate.ipynb for one job."""
    exp = job.experiment
    p = {
        "benchmark": exp.benchmark,
        "normal_class": job.normal_class,
        "run": job.run,
        "iterations": iterations if iterations is not None else profile.iterations_for(exp.benchmark),
        "device": device,
        "data_root": profile.data_roots.get(exp.benchmark),
        "vgg_weights": profile.params["vgg_weights"],
        "layer": profile.params["layer"],
        "feature_stats": profile.feature_stats_for(exp.benchmark),
        "distance": None if exp.ablation else "relative_perceptual_l1",
        "weight_policy": None if exp.ablation else "gradient_normalizing",
        "ablation": exp.ablation,
        "overrides": dict(profile.overrides),
        "out_dir": str(work_dir),
        "threads": threads,
        "channels_last": exp.benchmark in profile.channels_last,
        "bf16": exp.benchmark in profile.bf16,
        "progress": False,
    }
    return p


def job_config(params: dict[str, Any]):
    """The ExperimentConfig that notebooks/train_evaluate.ipynb builds from these notebook parameters."""
    from piad.run.config import config_from_parameters

    keys = (
        "iterations",
        "data_root",
        "vgg_weights",
        "layer",
        "feature_stats",
        "distance",
        "weight_policy",
        "normal_class",
        "run",
    )
    return config_from_parameters(
        params["benchmark"], params["overrides"], params["ablation"], **{k: params[k] for k in keys}
    )


def clean_notebook(path: Path, prefix: str | None = None) -> None:
    """Keep executed notebooks small and book-friendly: drop widget state, progress widgets and huge outputs; one
    parameters cell and numbered figures (`prepare_for_book`). RuntimeError if a cell raised."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    errors = error_outputs(nb)
    if errors:
        raise RuntimeError(f"executed notebook {path} holds error output(s): " + "; ".join(errors))
    before = nbformat.writes(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                continue
            if len(json.dumps(out)) > MAX_OUTPUT_BYTES:
                continue
            kept.append(out)
        cell.outputs = kept
    prepare_for_book(nb, prefix)
    if nbformat.writes(nb) != before:
        nbformat.write(nb, path)


def glue(name: str, variable, display: bool = True) -> None:
    """myst_nb's `glue` (a value or figure the book cites by name) where myst_nb is installed; elsewhere (Colab, an
    install without the `book` extra) it only displays `variable` when `display` is true, as glue would."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(variable)
        return
    myst_glue(name, variable, display=display)


def results_folder(results_dir: str | Path | None, profile: str = "offline", repository: str | None = None) -> Path:
    """The results folder a summary notebook reads: `results_dir` (relative: to the working folder, else to the
    repository), else the repository's results/<profile>. FileNotFoundError saying what to pass when it does not exist
    (the package installed without a checkout: Colab, a wheel)."""
    from piad.paths import display_path, repo_root

    if results_dir:
        given = Path(results_dir)
        tries = [given] if given.is_absolute() else [given, repo_root() / given]  # `given`: to the working folder
    else:
        tries = [repo_root() / "results" / profile]
    for folder in tries:
        if folder.is_dir():
            return folder
    clone = f"git clone --depth 1 {repository or '<repository URL>'} piad"
    raise FileNotFoundError(
        f"no results folder {display_path(tries[-1])}: this notebook summarises a profile's results (the committed "
        f"ones are in the repository's results/{profile}), and piad is installed here without a checkout. Get them "
        f"with `{clone}` and set the parameter results_dir, e.g. results_dir = 'piad/results/{profile}' "
        f"(papermill: -p results_dir piad/results/{profile})."
    )


class _IPCKernelManager:
    """Built on first use (jupyter_client is a `book` extra): a kernel manager that talks to its kernel over local
    IPC sockets, so ipykernel does not warn, once per notebook, that it runs over TCP without encryption."""

    cls = None

    @classmethod
    def get(cls):
        if cls.cls is None:
            from jupyter_client.manager import AsyncKernelManager
            from traitlets import default

            class IPCKernelManager(AsyncKernelManager):
                @default("transport")
                def _default_transport(self):
                    return "ipc"

                @default("ip")
                def _default_ip(self):  # sockets of its own: kernels running side by side never share one
                    import tempfile
                    import uuid

                    return str(Path(tempfile.gettempdir()) / f"piad-kernel-{uuid.uuid4().hex[:12]}")

            cls.cls = IPCKernelManager
        return cls.cls


def execute_notebook(template: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """Execute `template` with papermill into `output` (papermill raises if a cell raised); the kernel talks over
    local IPC sockets."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(template),
        str(output),
        parameters=parameters,
        progress_bar=False,
        log_output=False,
        cwd=str(cwd),
        kernel_name="python3",
        kernel_manager_class=_IPCKernelManager.get(),
    )
