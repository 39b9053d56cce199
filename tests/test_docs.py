"""The links and image paths in README.md and docs/*.md point at files that exist."""

import glob
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
