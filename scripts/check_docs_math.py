"""Fail when a built docs page still shows raw TeX.

MathJax only typesets what arithmatex wrapped (elements of class `arithmatex`); a `$...$` it
did not recognise (a `|` that split a table cell, a space before the closing `$`)
reaches the reader as raw TeX. This walks every HTML page of a built site and reports text outside
maths spans, code and scripts that still holds `$`, `\\(`, `\\[` or `\\begin`.

Usage: `python scripts/check_docs_math.py SITE_DIR`
"""

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

# elements whose text is never typeset: code is shown verbatim on purpose
_VERBATIM = {"code", "pre", "script", "style", "textarea"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "source", "wbr", "area", "base", "col"}
_RAW = re.compile(r"\$|\\\(|\\\[|\\begin\{")


class _Scanner(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, opens a maths or verbatim region)
        self.depth = 0  # how many enclosing maths/verbatim regions
        self.hits: list[tuple[int, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        skip = tag in _VERBATIM or "arithmatex" in classes
        self.stack.append((tag, skip))
        self.depth += skip

    def handle_endtag(self, tag):
        # pop to the matching tag (HTML from Markdown is well formed, but be forgiving)
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for _, skip in self.stack[i:]:
                    self.depth -= skip
                del self.stack[i:]
                return

    def handle_data(self, data):
        if self.depth == 0 and _RAW.search(data):
            line, _ = self.getpos()
            self.hits.append((line, " ".join(data.split())[:120]))


def scan(site: Path) -> list[str]:
    problems = []
    for page in sorted(site.rglob("*.html")):
        if page.name == "404.html":
            continue
        scanner = _Scanner()
        scanner.feed(page.read_text(encoding="utf-8"))
        problems += [f"{page.relative_to(site)}:{line}: {text}" for line, text in scanner.hits]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    site = Path(argv[1])
    if not site.is_dir():
        print(f"site directory {site} does not exist; build the docs first", file=sys.stderr)
        return 2
    problems = scan(site)
    for p in problems:
        print(p)
    print(f"{len(problems)} raw TeX fragment(s) outside maths spans", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
