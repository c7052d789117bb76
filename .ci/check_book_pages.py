#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium and check that it rendered.

For each page listed in _toc.yml: Chromium loads the HTML file (JavaScript runs) and dumps the DOM; the check fails
when a page is missing or empty, shows an error output, a stderr output or a "Traceback", shows an absolute path of
the build machine (/work/, /root/, /home/, /tmp/) in its visible text, contains an unresolved glue/role (`{glue`),
references an image file that does not exist (or is not a valid image), has fewer figures/tables than its kind of
page must have (executed notebooks: at least one figure; results tables: at least one table), or has a section
number that differs from its number in the sidebar, or a heading that differs from its title in the sidebar. The
sidebar itself must not repeat a title, and the numbers of a page's children there must run 1, 2, 3, ...; no two pages
share a browser title. For the reader: no raw LaTeX (math renders, with the book's own MathJax), no sanitised path
label parsed as an HTML tag (`<assets>/mnist` shown as "/mnist"), no cache folder, no workshop words, and launch
buttons that point to the placeholder repository only with the note that says so.

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

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--virtual-time-budget=5000",
]
IMAGE_MAGIC = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg", b"GIF8": "gif", b"<svg": "svg", b"<?xm": "svg"}
ERROR_CLASSES = {"traceback", "output_error", "error", "system-message", "problematic"}
STDERR_CLASSES = {"stderr"}
# An absolute path of the build machine in visible text (not part of a longer path or URL).
BUILD_PATH = re.compile(r"(?<![\w.~/-])/(?:work|root|home|tmp)/[^\s\"'<>)\]]*")
SECTION_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.\s+(.*)$")
RAW_LATEX = re.compile(r"\\\(.{1,200}?\\\)|\\\[.{1,400}?\\\]|\$\$.{1,400}?\$\$")
LABEL_TAG = re.compile(r"<(assets|cache|python)>", re.IGNORECASE)  # a path label the browser took for a tag
CACHE_PATH = re.compile(r"\.cache/piad")
# words of the workshop, not of the book: the machine's loan, internal logs, CI, unfinished-work hedges
WORKSHOP = re.compile(
    r"\b(?:lent|lease|engineering log|the project's target|generated in CI|executed by CI|so far|"
    r"may still lack|python -c)\b",
    re.IGNORECASE,
)
PLACEHOLDER_REPO = "piad-repro/piad"


class PageParser(HTMLParser):
    """Collects images, tables, error-looking elements and the visible text of the main article."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.errors: list[str] = []
        self.stderr: list[str] = []
        self.text: list[str] = []
        self.title = ""
        self.headings: list[str] = []  # text of every article <h1> (one with a headerlink)
        self.sidebar: list[list] = []  # [level, text, is_current] per sidebar entry
        self._in_title = False
        self._skip = 0
        self._h1: list[str] | None = None
        self._h1_link = False
        self._nav_item: list | None = None
        self._in_nav_link = False

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
        if classes & STDERR_CLASSES and tag in ("div", "pre"):
            self.stderr.append(f"<{tag} class={' '.join(sorted(classes))}>")
        if tag == "h1":
            self._h1, self._h1_link = [], False
        if self._h1 is not None and "headerlink" in classes:
            self._h1_link = True
        level = next((int(c[len("toctree-l") :]) for c in classes if c.startswith("toctree-l")), None)
        if tag == "li" and level is not None:
            self._nav_item = [level, "", "current" in classes]
            self.sidebar.append(self._nav_item)
        if tag == "a" and self._nav_item is not None and not self._nav_item[1]:
            self._in_nav_link = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if tag == "h1" and self._h1 is not None:
            if self._h1_link:
                self.headings.append(" ".join("".join(self._h1).split()).rstrip("#").strip())
            self._h1 = None
        if tag == "a" and self._in_nav_link:
            self._in_nav_link = False
            self._nav_item[1] = " ".join(self._nav_item[1].split())
            self._nav_item = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._h1 is not None:
            self._h1.append(data)
        if self._in_nav_link:
            self._nav_item[1] += data
        if not self._skip:
            self.text.append(data)


def parse_page(dom: str) -> PageParser:
    p = PageParser()
    p.feed(dom)
    return p


def split_number(text: str) -> tuple[str | None, str]:
    """'2.3. Ablation' -> ('2.3', 'Ablation'); 'Performance' -> (None, 'Performance')."""
    m = SECTION_NUMBER.match(text)
    return (m.group(1), m.group(2)) if m else (None, text)


def sidebar_problems(p: PageParser) -> list[str]:
    """Repeated titles in the sidebar; children whose numbers do not run 1, 2, 3, ... under their parent."""
    problems, seen = [], {}
    for _, text, _ in p.sidebar:
        title = split_number(text)[1].casefold()
        seen[title] = seen.get(title, 0) + 1
    problems += [f"sidebar: title {t!r} appears {n} times" for t, n in seen.items() if n > 1]
    children: dict[str, list[str]] = {}
    for _, text, _ in p.sidebar:
        num = split_number(text)[0]
        if num:
            parent, _, last = num.rpartition(".")
            children.setdefault(parent, []).append(last)
    for parent, nums in children.items():
        if nums != [str(i) for i in range(1, len(nums) + 1)]:
            where = f"under {parent}" if parent else "at the top level"
            problems.append(f"sidebar: numbers {nums} {where} do not run 1, 2, 3, ...")
    return problems


def dom_problems(page: str, dom: str) -> tuple[PageParser, list[str]]:
    """Everything that can be checked on the page's DOM alone (no files): errors, stderr, paths, glue, numbering."""
    p = parse_page(dom)
    problems = []
    text = " ".join(" ".join(p.text).split())
    if len(text) < 200:
        problems.append(f"{page}: page is (nearly) empty ({len(text)} characters of text)")
    if "Traceback" in text:
        problems.append(f"{page}: shows a Traceback")
    if "An Exception was encountered" in text:
        problems.append(f"{page}: shows papermill's exception cell")
    if "{glue" in text:
        problems.append(f"{page}: unresolved glue reference in the text")
    latex = RAW_LATEX.findall(text)
    if latex:
        problems.append(f"{page}: raw LaTeX (math not rendered): {latex[:3]}")
    tags = sorted({f"<{m.lower()}>" for m in LABEL_TAG.findall(dom)})
    if tags:
        problems.append(f"{page}: path label(s) parsed as HTML tags, shown without them: {tags}")
    if CACHE_PATH.search(text):
        problems.append(f"{page}: shows a cache folder (.cache/piad)")
    words = sorted(set(m.lower() for m in WORKSHOP.findall(text)))
    if words:
        problems.append(f"{page}: workshop words on a reader page: {words}")
    if re.search(r'href="https://colab\.research\.google\.com/github/' + PLACEHOLDER_REPO, dom) and (
        "piad-placeholder-note" not in dom
    ):
        problems.append(f"{page}: launch buttons point to the placeholder {PLACEHOLDER_REPO} without saying so")
    problems += [f"{page}: error element {e}" for e in p.errors]
    problems += [f"{page}: stderr output {e}" for e in p.stderr]
    paths = sorted(set(BUILD_PATH.findall(text)))
    if paths:
        problems.append(f"{page}: shows absolute path(s) of the build machine: {paths[:5]}")
    current = [text for _, text, is_current in p.sidebar if is_current]
    if current and p.headings:
        want = split_number(current[-1])[0]
        got = split_number(p.headings[0])[0]
        if want != got:
            problems.append(f"{page}: heading {p.headings[0]!r} is numbered {got}, the sidebar says {want}")
        if split_number(current[-1])[1].casefold() != split_number(p.headings[0])[1].casefold():
            problems.append(f"{page}: heading {p.headings[0]!r} differs from its sidebar title {current[-1]!r}")
    return p, problems


def title_problems(html: Path, pages: list[str]) -> list[str]:
    """Pages that share a browser title (<title>): a reader cannot tell their tabs or bookmarks apart."""
    seen: dict[str, list[str]] = {}
    for page in pages:
        f = html / f"{page}.html"
        if f.is_file():
            seen.setdefault(" ".join(parse_page(f.read_text()).title.split()), []).append(page)
    return [f"pages {ps} share the title {t!r}" for t, ps in seen.items() if len(ps) > 1]


def toc_pages(repo: Path) -> list[str]:
    from piad.book import toc_files  # the book's own reading of _toc.yml

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
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile_dir}",
                "--window-size=1280,2000",
                f"--screenshot={screenshot}",
                url,
            ],
            capture_output=True,
            timeout=120,
        )
    return r.stdout


def check_image(page_file: Path, src: str) -> str | None:
    if src.startswith("data:"):
        return None
    u = urlparse(src)
    if u.scheme in ("http", "https"):
        return None  # remote badges (launch buttons) are not part of the build
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
    p, problems = dom_problems(page, dom)
    if page == toc_pages(repo)[0]:
        problems += sidebar_problems(p)  # the same sidebar is on every page: check it once, on the root page
    main_images = [s for s in p.images if "logo" not in s]
    for src in main_images:
        err = check_image(f, src)
        if err:
            problems.append(f"{page}: {err}")
    need = expectations(repo, page)
    figures = [s for s in main_images if urlparse(s).scheme not in ("http", "https")]
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
    problems = [p for r in results for p in r] + title_problems(html, pages)
    for pg, r in zip(pages, results, strict=True):
        print(f"{'FAIL' if r else 'ok  '} {pg}")
    if problems:
        print("\n".join(["", f"{len(problems)} problem(s):", *problems]))
        return 1
    print(f"all {len(pages)} pages rendered with their figures and tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
