"""The links and image paths in README.md and docs/*.md point at files that exist."""

import glob
import math
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](path "title")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)  # code blocks may show link syntax as an example


def relative_links(page: str) -> list[str]:
    """The relative targets of [..](..) and ![..](..) in a markdown file, without #anchors."""
    text = FENCE.sub("", open(page, encoding="utf-8").read())
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s)://, mailto: and in-page anchors
        targets.append(target.split("#", 1)[0])
    return targets


def test_pages_are_found():
    assert os.path.isfile(PAGES[0]) and len(PAGES) > 1, PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_image_resolves(page):
    missing = [t for t in relative_links(page) if not os.path.exists(os.path.join(os.path.dirname(page), t))]
    assert not missing, f"{os.path.relpath(page, ROOT)} links to missing files: {missing}"


def test_link_pattern_finds_links_and_images(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        'See [a](docs/a.md), ![b](b.png "title"), [web](https://x.org/y.md), '
        "[anchor](#top), [c](c.md#part).\n```\n[not a link](inside_code.md)\n```\n"
    )
    assert relative_links(str(page)) == ["docs/a.md", "b.png", "c.md"]


SCRIPT_PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
SECTIONS = ["Overview", "Usage", "Logged metrics", "Implementation details", "Results", "What was tried"]
# Words of how the project was made, which a reference does not speak of: sessions, issues, commits.
MAKING = re.compile(r"\bsessions?\b|\bthe issue\b|\bissues? #?\d|\bcommit [0-9a-f]{7}|\b[0-9a-f]{7,40}\b(?=\))", re.I)
CITED = re.compile(r"docs/([a-z0-9_]+\.md)#([a-z0-9-]+)")


def anchors(page: str) -> set[str]:
    """GitHub's anchors of a page: its headings (lower case, punctuation dropped, spaces to hyphens)
    and explicit <a id="..."> tags."""
    text = FENCE.sub("", open(page, encoding="utf-8").read())
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, re.M)
    slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
    return slugs | set(re.findall(r'<a id="([^"]+)"', text))


@pytest.mark.parametrize("page", SCRIPT_PAGES, ids=os.path.basename)
def test_script_page_shape(page):
    """Each page: the six sections in order, at most 180 lines (prose counted as wrapped at 120
    columns, so that joining lines does not shorten a page), a page per script."""
    lines = open(page, encoding="utf-8").read().splitlines()
    sections = [line[3:].strip() for line in lines if line.startswith("## ")]
    assert sections == SECTIONS, sections
    wrapped = sum(1 if line.startswith("|") else max(1, math.ceil(len(line) / 120)) for line in lines)
    assert wrapped <= 180, f"{wrapped} lines at 120 columns"
    assert os.path.isfile(os.path.join(ROOT, os.path.basename(page)[:-3] + ".py"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_no_words_of_the_making(page):
    text = open(page, encoding="utf-8").read()
    assert not MAKING.findall(text), MAKING.findall(text)


def test_readme_is_short():
    assert len(open(PAGES[0], encoding="utf-8").read().splitlines()) <= 170


def test_docs_sections_cited_in_code_exist():
    """Every `docs/<page>.md#<anchor>` that a script or common/ cites names a real section."""
    sources = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "common", "*.py"))
    cited = {match for source in sources for match in CITED.findall(open(source, encoding="utf-8").read())}
    assert cited
    missing = sorted(
        f"{page}#{anchor}" for page, anchor in cited if anchor not in anchors(os.path.join(ROOT, "docs", page))
    )
    assert not missing, missing


def test_anchor_rules(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('## Implementation details\n1. <a id="replay-buffer"></a>**Replay**\n### What, why? (n-step)\n')
    assert anchors(str(page)) == {"implementation-details", "replay-buffer", "what-why-n-step"}
