"""Every Python code block of the README and the docs pages runs.

The blocks of one page run in order in one namespace, as a reader would paste them into one
session. A block that uses the reader's own objects (`x_train`, `eps_fn`, a key) may be preceded
by a hidden HTML comment `<!-- test-setup ... -->` holding small stand-ins for them (a few rows
of the bundled digits, an exact mixture eps); it runs just before the block. A block that is
deliberately a fragment is preceded by `<!-- no-run -->` and skipped; everything else must run
without error.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^( *)```python[^\n]*\n(.*?)^\1```", re.M | re.S)
_SETUP = re.compile(r"<!-- test-setup\n(.*?)-->\s*$", re.S)


def blocks(page: pathlib.Path) -> list[str]:
    """The runnable Python blocks of `page`, dedented, in order."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        head = text[: m.start()].rstrip()
        before = head.splitlines()
        if before and before[-1].strip() == "<!-- no-run -->":
            continue
        setup = _SETUP.search(head)
        indent = len(m.group(1))
        code = "\n".join(line[indent:] for line in m.group(2).splitlines())
        out.append((setup.group(1) + "\n" if setup else "") + code)
    return out


PAGES_WITH_CODE = [p for p in PAGES if blocks(p)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", PAGES_WITH_CODE, ids=[str(p.relative_to(ROOT)) for p in PAGES_WITH_CODE]
)
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.relative_to(ROOT)}, block {i} fails:\n{code}") from e
