"""Check a built documentation site as a reader would get it: rendered and self-contained.

Usage: ``python docs/check_site.py SITE_DIR [--browser]`` after ``mkdocs build``. Exits 1 and
names each problem when, on any page,

- reST prints as text: ``.. math::`` or a ``:math:``/``:func:``/``:class:``/... role outside
  code (what numpydoc docstrings show when docs/hooks/numpydoc_rst.py is not applied);
- a script, stylesheet, image, frame or font is loaded from the network (``http:``,
  ``https:`` or ``//`` in the ``src``/``href`` of a loading tag, or ``url(http`` in CSS):
  the site must read the same offline;
- a local script, stylesheet or image that a page loads is missing from the site;
- a page has math but does not load the vendored MathJax;
- an API object is documented twice (one mkdocstrings heading id on two pages, or twice on
  one), or the API page documents a module (its internals) instead of the objects.

With ``--browser`` it also opens the API page and the theory pages in headless Chromium
(``file://``, every host unresolvable) and requires every math element to be typeset by
MathJax without error. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

UNRENDERED = re.compile(
    r"\.\. math::|:(?:py:)?(?:math|func|class|meth|attr|mod|data|obj|exc|const):"
)
REMOTE = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)
CSS_REMOTE = re.compile(r"url\(\s*['\"]?\s*(?:https?:)?//|@import\s+['\"](?:https?:)?//", re.I)
MATHJAX = "javascripts/vendor/mathjax/tex-svg-full.js"
LOADING_LINK_RELS = {
    "stylesheet", "preload", "modulepreload", "prefetch", "preconnect", "dns-prefetch",
    "icon", "shortcut", "apple-touch-icon", "manifest",
}
VERBATIM = {"code", "pre", "script", "style", "textarea", "kbd", "samp"}


class Page(HTMLParser):
    """What one HTML page shows as text and what it loads."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.loads: list[tuple[str, str]] = []  # (tag, url)
        self.inline_css: list[str] = []
        self.math = 0
        self.doc_ids: list[str] = []
        self.modules: list[str] = []
        self._verbatim = 0
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in VERBATIM:
            self._verbatim += 1
        self._style = tag == "style"
        if "style" in a:
            self.inline_css.append(a["style"])
        if tag in ("script", "img", "iframe", "audio", "video", "source", "track", "embed"):
            for attr in ("src", "srcset"):
                if a.get(attr):
                    self.loads.append((tag, a[attr].split()[0]))
        elif tag == "object" and a.get("data"):
            self.loads.append((tag, a["data"]))
        elif tag == "link" and set(a.get("rel", "").lower().split()) & LOADING_LINK_RELS:
            self.loads.append((tag, a.get("href", "")))
        classes = a.get("class", "").split()
        if "arithmatex" in classes:
            self.math += 1
        if "doc-heading" in classes and a.get("id"):
            self.doc_ids.append(a["id"])
        if "doc-module" in classes:
            self.modules.append(a.get("id", "?"))

    def handle_endtag(self, tag: str) -> None:
        if tag in VERBATIM and self._verbatim:
            self._verbatim -= 1
        if tag == "style":
            self._style = False

    def handle_data(self, data: str) -> None:
        if self._style:
            self.inline_css.append(data)
        elif not self._verbatim:
            self.text.append(data)


def _local_target(site: Path, page: Path, url: str) -> Path | None:
    url = url.split("#")[0].split("?")[0]
    if not url or url.startswith(("data:", "blob:", "about:", "javascript:")):
        return None
    base = site if url.startswith("/") else page.parent
    return (base / url.lstrip("/")).resolve()


def check_site(site: Path) -> tuple[list[str], list[str]]:
    """Problems (each fails the check) and a summary, for the built site in ``site``."""
    problems: list[str] = []
    ids: dict[str, list[str]] = defaultdict(list)
    math_total = 0
    pages = sorted(site.rglob("*.html"))
    if not pages:
        return [f"{site}: no HTML pages (build the site first)"], []
    for path in pages:
        rel = path.relative_to(site).as_posix()
        page = Page()
        page.feed(path.read_text(encoding="utf-8"))
        text = "".join(page.text)
        for match in UNRENDERED.finditer(text):
            snippet = " ".join(text[match.start() - 40:match.end() + 40].split())
            problems.append(f"{rel}: unrendered reST {match.group()!r}: ...{snippet}...")
        for tag, url in page.loads:
            if REMOTE.match(url):
                problems.append(f"{rel}: <{tag}> loads {url} from the network")
                continue
            target = _local_target(site, path, url)
            if target is not None and not target.exists():
                problems.append(f"{rel}: <{tag}> loads {url}, which is not in the site")
        for css in page.inline_css:
            if CSS_REMOTE.search(css):
                problems.append(f"{rel}: inline CSS loads from the network: {css[:80]!r}")
        if page.math:
            math_total += page.math
            if not any(url.endswith(MATHJAX) for _, url in page.loads):
                problems.append(f"{rel}: {page.math} math elements but {MATHJAX} is not loaded")
        for doc_id in page.doc_ids:
            ids[doc_id].append(rel)
        if rel == "api/index.html" and page.modules:
            problems.append(f"{rel}: documents modules {page.modules} (their internals) "
                            "instead of the objects")
    for css_path in sorted(site.rglob("*.css")):
        if CSS_REMOTE.search(css_path.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{css_path.relative_to(site)}: loads from the network")
    for doc_id, where in sorted(ids.items()):
        if len(where) > 1:
            problems.append(f"{doc_id} is documented {len(where)} times: {', '.join(where)}")
    summary = [f"{len(pages)} pages, {math_total} math elements, "
               f"{len(ids)} documented API objects"]
    return problems, summary


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


def check_browser(site: Path, browser: str) -> tuple[list[str], list[str]]:
    """Open pages in headless Chromium and count what MathJax typeset."""
    problems, summary = [], []
    pages = [site / "api" / "index.html", *sorted((site / "theory").glob("*/index.html"))]
    for path in pages:
        rel = path.relative_to(site).as_posix()
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=30000",
               "--dump-dom", path.resolve().as_uri()]
        try:
            dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
        except subprocess.TimeoutExpired:
            problems.append(f"{rel}: the browser timed out")
            continue
        page = Page()
        page.feed(dom)
        typeset = dom.count("<mjx-container")
        errors = dom.count('<g data-mml-node="merror"')  # one per formula MathJax rejected
        summary.append(f"{rel}: {typeset} formulas typeset of {page.math} math elements")
        # A display element may hold several formulas; each element holds at least one.
        if typeset < page.math:
            problems.append(f"{rel}: {page.math} math elements, {typeset} typeset by MathJax")
        if errors:
            problems.append(f"{rel}: MathJax rejected {errors} formula(s)")
    return problems, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the site directory mkdocs built")
    parser.add_argument("--browser", action="store_true",
                        help="also typeset the API and theory pages in headless Chromium")
    args = parser.parse_args(argv)
    problems, summary = check_site(args.site)
    if args.browser:
        browser = _chromium()
        if browser is None:
            problems.append("--browser: no chromium or chrome on PATH")
        else:
            more, lines = check_browser(args.site, browser)
            problems += more
            summary += lines
    for line in summary:
        print(line)
    for problem in problems:
        print("FAIL", problem, file=sys.stderr)
    print(f"{len(problems)} problems" if problems else "site OK: rendered and self-contained")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
