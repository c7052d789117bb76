#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium and check that it rendered.

For each page listed in _toc.yml: Chromium loads the HTML file (JavaScript runs) and dumps the DOM; the check fails
when a page is missing or empty, shows an error cell or a "Traceback", contains an unresolved glue/role (`{glue`),
references an image file that does not exist (or is not a valid image), or has fewer figures/tables than its kind
of page must have (executed notebooks: at least one figure; results tables: at least one table).

usage: check_book_pages.py [--html _build/html] [--repo .] [--chromium chromium] [--screenshot DIR] [--jobs 2]
Exit status 0 when every page passes, 1 otherwise, 3 when Chromium is not installed.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--virtual-time-budget=5000"]
IMAGE_MAGIC = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg", b"GIF8": "gif", b"<svg": "svg", b"<?xm": "svg"}
ERROR_CLASSES = {"traceback", "output_error", "error", "system-message", "problematic"}


class PageParser(HTMLParser):
    """Collects images, tables, error-looking elements and the visible text of the main article."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.errors: list[str] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag == "table":
            self.tables += 1
        if tag == "title":
            self._in_title = True
        if tag in ("script", "style"):
            self._skip += 1
        bad = classes & ERROR_CLASSES
        if bad and tag in ("div", "pre", "span", "p", "a"):
            self.errors.append(f"<{tag} class={' '.join(sorted(classes))}>")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if not self._skip:
            self.text.append(data)


def toc_pages(repo: Path) -> list[str]:
    from piad.book import toc_files      # the book's own reading of _toc.yml
    return toc_files(repo)


def expectations(repo: Path, page: str) -> dict[str, int]:
    """Minimum figures/tables a page must show, from what its source is."""
    src_nb = repo / f"{page}.ipynb"
    need = {"images": 0, "tables": 0}
    if src_nb.exists() and page.startswith("results/"):
        if page.endswith("/results"):
            need["tables"] = 3
        else:
            need["images"] = 1
        if page.endswith("train_evaluate"):
            need["images"] = 4
            need["tables"] = 1
        if page.endswith("perceptual_metric"):
            need["images"] = 2
            need["tables"] = 1
    md = repo / f"{page}.md"
    if md.exists():
        text = md.read_text()
        need["images"] = max(need["images"], text.count("{glue:figure}"))
        need["tables"] = max(need["tables"], len(re.findall(r"^\|---", text, re.MULTILINE)))
    return need


def dump_dom(chromium: str, url: str, profile_dir: str, screenshot: Path | None = None) -> str:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--dump-dom", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"chromium exited {r.returncode}: {r.stderr[-500:]}")
    if screenshot is not None:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--window-size=1280,2000",
                        f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return r.stdout


def check_image(page_file: Path, src: str) -> str | None:
    if src.startswith("data:"):
        return None
    u = urlparse(src)
    if u.scheme in ("http", "https"):
        return None   # remote badges (launch buttons) are not part of the build
    path = (page_file.parent / unquote(u.path)).resolve()
    if not path.is_file():
        return f"broken image {src} (no file {path})"
    head = path.read_bytes()[:8]
    if path.stat().st_size == 0 or not any(head.startswith(m) for m in IMAGE_MAGIC):
        return f"image {src} is empty or not an image"
    return None


def check_page(repo: Path, html: Path, page: str, chromium: str, shots: Path | None) -> list[str]:
    f = html / f"{page}.html"
    if not f.is_file():
        return [f"{page}: no built page {f}"]
    with tempfile.TemporaryDirectory(prefix="chromium-") as prof:
        shot = (shots / (page.replace("/", "__") + ".png")) if shots else None
        try:
            dom = dump_dom(chromium, f.resolve().as_uri(), prof, shot)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return [f"{page}: chromium failed: {e}"]
    p = PageParser()
    p.feed(dom)
    problems = []
    text = " ".join(" ".join(p.text).split())
    if len(text) < 200:
        problems.append(f"{page}: page is (nearly) empty ({len(text)} characters of text)")
    if "Traceback" in text:
        problems.append(f"{page}: shows a Traceback")
    if "{glue" in text:
        problems.append(f"{page}: unresolved glue reference in the text")
    problems += [f"{page}: error element {e}" for e in p.errors]
    main_images = [s for s in p.images if "logo" not in s]
    for src in main_images:
        err = check_image(f, src)
        if err:
            problems.append(f"{page}: {err}")
    need = expectations(repo, page)
    figures = [s for s in main_images if not urlparse(s).scheme in ("http", "https")]
    if len(figures) < need["images"]:
        problems.append(f"{page}: {len(figures)} figure(s), expected at least {need['images']}")
    if p.tables < need["tables"]:
        problems.append(f"{page}: {p.tables} table(s), expected at least {need['tables']}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--html", help="built HTML folder (default: <repo>/_build/html)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    ap.add_argument("--screenshot", help="also save a PNG screenshot of every page into this folder")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    repo = Path(a.repo).resolve()
    html = Path(a.html) if a.html else repo / "_build" / "html"
    chromium = shutil.which(a.chromium)
    if not chromium:
        print(f"check_book_pages: {a.chromium!r} not found; install Debian's `chromium` package", file=sys.stderr)
        return 3
    shots = Path(a.screenshot) if a.screenshot else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    pages = toc_pages(repo)
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        results = list(pool.map(lambda pg: check_page(repo, html, pg, chromium, shots), pages))
    problems = [p for r in results for p in r]
    for pg, r in zip(pages, results):
        print(f"{'FAIL' if r else 'ok  '} {pg}")
    if problems:
        print("\n".join(["", f"{len(problems)} problem(s):", *problems]))
        return 1
    print(f"all {len(pages)} pages rendered with their figures and tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
