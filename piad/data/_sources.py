"""Where a benchmark's files come from, in order: explicit `data_root` (or `$PIAD_DATA`), local system copies,
a previous torchvision download in the cache, a torchvision download (only with download=True); otherwise a
:class:`DataError` naming every place looked and how to obtain the data.

A root may be a folder holding the data (at any depth up to a few levels), a folder holding an archive of it, or the
archive itself (.tar.gz/.zip/...); archives are extracted safely into the cache only when a pool must be built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from piad.data._io import ARCHIVE_SUFFIXES, extract_archive, is_archive
from piad.errors import DataError
from piad.paths import cache_dir

DATA_ENV = "PIAD_DATA"
DOWNLOAD_ENV = "PIAD_DOWNLOAD"  # "0" (or "no", "false", "off"): never download a dataset


def downloads_enabled(download: bool = True) -> bool:
    """`download`, unless $PIAD_DOWNLOAD forbids every download (offline machines, input checks)."""
    return bool(download) and os.environ.get(DOWNLOAD_ENV, "").strip().lower() not in ("0", "no", "false", "off")


@dataclass
class Search:
    """Records every place looked, so that a failure can list them all."""

    benchmark: str
    how_to_get: str
    looked: list[str] = field(default_factory=list)

    def note(self, place, why: str) -> None:
        self.looked.append(f"{place}: {why}")

    def error(self, extra: str = "") -> DataError:
        places = "\n".join(f"  - {p}" for p in self.looked) or "  (nowhere: no data_root given, $PIAD_DATA unset)"
        return DataError(
            f"benchmark {self.benchmark!r}: data not found. Looked in:\n{places}\n{extra}"
            f"How to get it: {self.how_to_get}"
        )


def user_roots(data_root, search: Search) -> list[tuple[Path, str]]:
    """[(root, origin)]: `data_root` if given (it must exist), else `$PIAD_DATA` if set and existing."""
    if data_root is not None and str(data_root) != "":
        p = Path(os.path.expanduser(str(data_root)))
        if not p.exists():
            raise DataError(
                f"data_root={str(data_root)!r} does not exist (benchmark {search.benchmark!r}). Pass "
                f"the folder (or archive) holding the data, or leave data_root unset to use ${DATA_ENV} "
                f"or a download. How to get it: {search.how_to_get}"
            )
        return [(p, "data_root")]
    env = os.environ.get(DATA_ENV)
    if env:
        p = Path(os.path.expanduser(env))
        if p.exists():
            return [(p, f"${DATA_ENV}")]
        search.note(p, f"${DATA_ENV} is set but does not exist")
    return []


def downloads_dir() -> Path:
    """Where torchvision downloads go (inside the piad cache)."""
    return cache_dir() / "downloads"


def _subdirs(d: Path) -> list[Path]:
    try:
        with os.scandir(d) as it:
            dirs = [Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []
    return sorted(dirs, key=lambda p: p.name)


def find_dir(root: Path, match: Callable[[Path], bool], max_depth: int = 3) -> Path | None:
    """The first folder at or below `root` (breadth first, up to `max_depth` levels) for which `match` holds."""
    level = [root]
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            if match(d):
                return d
            nxt.extend(_subdirs(d))
        level = nxt
    return None


def find_archives(root: Path, words: tuple[str, ...]) -> list[Path]:
    """Archives directly in `root` whose names contain one of `words` (case-insensitive)."""
    try:
        with os.scandir(root) as it:
            files = [Path(e.path) for e in it if e.is_file()]
    except OSError:
        return []
    return sorted(
        p for p in files if p.name.lower().endswith(ARCHIVE_SUFFIXES) and any(w in p.name.lower() for w in words)
    )


@dataclass
class Located:
    """A found source: a folder with the expected layout, or an archive to extract when needed."""

    path: Path
    origin: str
    archive: bool = False

    def folder(self, match: Callable[[Path], bool], what: str, max_depth: int = 3) -> Path:
        """The folder with the layout (extracting the archive into the cache if it is one)."""
        if not self.archive:
            return self.path
        top = extract_archive(self.path)
        hit = find_dir(top, match, max_depth)
        if hit is None:
            raise DataError(
                f"archive {self.path} does not contain {what} (looked up to {max_depth} folder levels "
                "inside it). Pass an archive or folder with that layout."
            )
        return hit

    def describe(self) -> str:
        kind = "archive" if self.archive else "folder"
        return f"{kind} {self.path} (from {self.origin})"


def locate(
    root: Path,
    origin: str,
    match: Callable[[Path], bool],
    archive_words: tuple[str, ...],
    search: Search,
    what: str,
    max_depth: int = 3,
) -> Located | None:
    """Look for `what` in `root`: an unpacked layout first, then a matching archive (or `root` itself if it is one)."""
    if root.is_file():
        if is_archive(root):
            return Located(root.resolve(), origin, archive=True)
        search.note(f"{root} ({origin})", f"a file, but not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        return None
    hit = find_dir(root, match, max_depth)
    if hit is not None:
        return Located(hit.resolve(), origin)
    archives = find_archives(root, archive_words)
    if archives:
        return Located(archives[0].resolve(), origin, archive=True)
    search.note(
        f"{root} ({origin})",
        f"no {what} up to {max_depth} folder levels down, and no archive named "
        f"*{'*|*'.join(archive_words)}*{{{','.join(ARCHIVE_SUFFIXES)}}} in it",
    )
    return None
