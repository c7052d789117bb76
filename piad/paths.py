"""Where things are on this machine, and how committed files show paths without depending on it.

Results (metrics, provenance, configs, executed notebooks) must not carry this machine's paths. `display_path` and
`sanitise_text` rewrite the known roots, the most specific first: the repository -> repository-relative paths, the
offline assets -> `<assets>`, `$PIAD_DATA` -> `$PIAD_DATA`, the piad cache (when outside the home folder) ->
`<cache>`, the Python environment -> `<python>`, the home folder -> `~`. No imports beyond the standard library.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

NAMED_SPECS = ("imagenet", "random", "none")  # vgg_weights / feature_stats values that are not paths
TEXT_SUFFIXES = (".json", ".csv", ".ipynb", ".md", ".txt", ".yml", ".yaml")


def repo_root() -> Path:
    """The repository holding notebooks/ and results/: $PIAD_REPO, the package's parent, or the working directory."""
    env = os.environ.get("PIAD_REPO")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "notebooks" / "train_evaluate.ipynb").exists():
        return here
    return Path.cwd().resolve()


def assets_dir() -> Path:
    """Offline assets: $PIAD_ASSETS, else `<repo>/../shared/assets`."""
    env = os.environ.get("PIAD_ASSETS")
    return Path(env).resolve() if env else (repo_root().parent / "shared" / "assets").resolve()


def cache_dir() -> Path:
    """`$PIAD_CACHE`, else `~/.cache/piad`."""
    return Path(os.environ.get("PIAD_CACHE") or Path.home() / ".cache" / "piad")


def _forms(p) -> list[str]:
    """A root as written and resolved (symlinks), without a trailing slash; nothing for '/' or ''."""
    out = []
    for q in (str(p), str(Path(p).resolve())):
        q = q.rstrip("/")
        if len(q) > 1 and q not in out:
            out.append(q)
    return out


def known_roots(extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """[(absolute root, label)], longest root first; label "" means "relative to the repository"."""
    home = Path.home()
    pairs = [(repo_root(), ""), (assets_dir(), "<assets>"), (sys.prefix, "<python>"), (home, "~"), *extra]
    if os.environ.get("PIAD_DATA"):
        pairs.append((os.environ["PIAD_DATA"], "$PIAD_DATA"))
    cache = cache_dir()
    if not _under(cache, home):
        pairs.append((cache, "<cache>"))
    out = [(form, label) for root, label in pairs for form in _forms(root)]
    return sorted(out, key=lambda t: -len(t[0]))


def _under(p: Path, base: Path) -> bool:
    try:
        Path(p).resolve().relative_to(Path(base).resolve())
        return True
    except ValueError:
        return False


def sanitise_text(text: str, extra: Iterable[tuple[str, str]] = ()) -> str:
    """`text` with every known root of this machine replaced by its label (see the module docstring)."""
    for root, label in known_roots(extra):
        if root not in text:
            continue
        # the root must start a path (not be the tail of a longer one) and end at a separator or the path's end
        pattern = re.compile(r"(?<![\w.~/-])" + re.escape(root) + r"(/|(?![\w.-]))")
        # the lambda runs inside pattern.sub, within this iteration: it always sees this iteration's label
        text = pattern.sub(lambda m: (label + "/" if label else "") if m.group(1) else (label or "."), text)  # noqa: B023
    return text


def display_path(p, extra: Iterable[tuple[str, str]] = ()) -> str | None:
    """A path as it may be committed: relative to the repository, `<assets>/...`, `~/...`; named specs unchanged."""
    if p is None or str(p) in NAMED_SPECS:
        return p
    path = Path(os.path.expanduser(str(p)))
    if not path.is_absolute():
        return str(p)
    for form in (str(path), str(path.resolve())):
        shown = sanitise_text(form, extra)
        if shown != form:
            return shown
    return str(p)


def sanitise_file(path: Path, extra: Iterable[tuple[str, str]] = ()) -> bool:
    """Rewrite a text file's machine paths in place (atomically); returns whether it changed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    new = sanitise_text(text, extra)
    if new == text:
        return False
    tmp = path.with_name(f".{path.name}.sanitising")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return True


def sanitise_tree(root: Path, extra: Iterable[tuple[str, str]] = ()) -> list[Path]:
    """`sanitise_file` on every text file (json, csv, ipynb, md, ...) under `root`; returns the files changed."""
    extra = list(extra)
    return [
        p
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not p.name.startswith(".") and sanitise_file(p, extra)
    ]
