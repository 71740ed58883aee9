"""The README is a front page and docs/ holds the rest: every relative link and anchor resolves, the
README stays short, and mkdocs.yml lists every page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
NOT_IN_NAV = {"serving.md"}  # written by another change; the lead adds it to the nav

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`+[^`\n]*`+")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def broken_links(files: list[Path]) -> list[str]:
    """'FILE: TARGET (why)' for each relative link that names a missing file or heading."""
    problems = []
    for f in files:
        for m in _LINK.finditer(_prose(f.read_text(encoding="utf-8"))):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
                continue  # http:, https:, mailto: ... are not checked offline
            path_part, _, anchor = target.partition("#")
            dest = (f.parent / path_part).resolve() if path_part else f
            if not dest.exists():
                problems.append(f"{f.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{f.name}: {target} (no heading '#{anchor}' in {dest.name})")
    return problems


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def nav_pages(nav) -> set[str]:
    """The page files named anywhere in mkdocs.yml's nav (nested sections included)."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(nav_pages(x) for x in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(nav_pages(v) for v in nav.values()))
    return set()


def test_every_relative_link_in_readme_and_docs_resolves():
    assert len(doc_files()) > 10
    assert broken_links(doc_files()) == []


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    text = "\n".join(lines)
    assert "make test" in text and "make demo" in text  # .ci/run runs the README's test command


def test_every_docs_page_is_in_the_mkdocs_nav():
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert cfg.get("docs_dir", "docs") == "docs"
    listed = nav_pages(cfg["nav"])
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages - NOT_IN_NAV <= listed, f"pages missing from mkdocs.yml nav: {sorted(pages - NOT_IN_NAV - listed)}"
    assert listed <= pages, f"nav names missing pages: {sorted(listed - pages)}"


@pytest.mark.parametrize("heading, expected", [
    ("Memory plan: `t2 plan`", "memory-plan-t2-plan"),
    ("70B: FSDP with sharded factors (plan)", "70b-fsdp-with-sharded-factors-plan"),
    ("Baselines: LoRA and IA3", "baselines-lora-and-ia3"),
    ("Data parallel (torchrun / accelerate launch)", "data-parallel-torchrun--accelerate-launch"),
    ("The recipe's stages", "the-recipes-stages"),
])
def test_slugs_follow_github(heading, expected):
    assert slug(heading) == expected


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## Memory plan: `t2 plan`\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    good = tmp_path / "good.md"
    good.write_text("[b](b.md) [plan](b.md#memory-plan-t2-plan) [2nd](b.md#twice-1) [self](#top)\n\n# Top\n"
                    "[web](https://example.com) `[not a link](nowhere.md)`\n\n```\n[code](gone.md)\n```\n",
                    encoding="utf-8")
    assert broken_links([good]) == []
    bad = tmp_path / "bad.md"
    bad.write_text("# Bad\n\nSee [x](missing.md), [y](b.md#no-such-heading), [z](#nowhere) and "
                   "![img](img/none.png).\n", encoding="utf-8")
    assert broken_links([bad]) == [
        "bad.md: missing.md (no such file)",
        "bad.md: b.md#no-such-heading (no heading '#no-such-heading' in b.md)",
        "bad.md: #nowhere (no heading '#nowhere' in bad.md)",
        "bad.md: img/none.png (no such file)",
    ]
