"""The README and docs/: every relative link and image points to a file of the repository (and, with
``#anchor``, to a heading of that file), nothing points outside the repository or to a machine's
absolute path, and the README stays a short front door that opens with the two commands of a fresh
machine."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 250
FIRST_COMMANDS = [
    'pip install -e ".[train]" && python examples/train.py',
    'pip install -e ".[dev]" && python -m pytest -q',
]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); text may hold one level of brackets (an image in a link)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_TARGET = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:root|work|tmp|home|Users|mnt|private|var/folders)/")


def doc_files() -> List[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str, inline_code: bool = False) -> Iterator[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code removed unless ``inline_code``."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
            continue
        yield number, line if inline_code else INLINE_CODE.sub("", line)


def code_blocks(text: str) -> List[List[str]]:
    blocks, current, fence = [], None, None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence, current = opened.group(1), []
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                blocks.append(current)
                fence = None
            else:
                current.append(line)
    return blocks


def link_targets(text: str) -> Iterator[Tuple[int, str]]:
    for number, line in prose_lines(text):
        for pattern in (INLINE_LINK, HTML_TARGET):
            for match in pattern.finditer(line):
                yield number, match.group(1)
        reference = REFERENCE_DEF.match(line)
        if reference:
            yield number, reference.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger on the rendered text)."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    kept = [c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM"]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    found: Set[str] = set()
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines(text):
        found.update(HTML_ANCHOR.findall(line))
    for _, line in prose_lines(text, inline_code=True):  # headings: inline code kept (its text counts)
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_problems(path: Path, root: Path = ROOT) -> List[str]:
    """What is wrong with the relative links of one Markdown file: a missing file, a missing heading,
    a target outside ``root`` or an absolute path."""
    problems = []
    for number, target in link_targets(path.read_text(encoding="utf-8")):
        where = f"{path.relative_to(root)}:{number}: {target!r}"
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = re.sub(r"%20", " ", file_part.split("?")[0])
        if file_part.startswith(("/", "\\", "~")):
            problems.append(f"{where}: an absolute path (link relative to the file instead)")
            continue
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        if root.resolve() not in (resolved, *resolved.parents):
            problems.append(f"{where}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and resolved.suffix.lower() == ".md" and resolved.is_file():
            if anchor.lower() not in {a.lower() for a in anchors(resolved)}:
                problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(root.resolve())}")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert link_problems(path) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_machine_paths(path):
    found = [f"{number}: {line.strip()}" for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert found == []


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_opens_with_the_two_commands():
    blocks = code_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no code block"
    commands = [line.split("#", 1)[0].strip() for line in blocks[0] if line.split("#", 1)[0].strip()]
    assert commands == FIRST_COMMANDS


def test_docs_pages_are_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for _, target in link_targets(text)}
    assert [p.name for p in doc_files()[1:] if f"docs/{p.name}" not in linked] == []


def test_the_checker_catches_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A page\n\n## Some `code` heading\n\n## Some `code` heading\n")
    (tmp_path / "image.png").write_bytes(b"")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](there.md) [ok](there.md#a-page) [ok](there.md#some-code-heading-1) [ok](#page)\n"
        "![ok](../image.png) [ok](https://example.com/missing.md) `[not a link](nowhere.md)`\n"
        "```\n[not a link](nowhere.md)\n```\n"
        "[missing](nowhere.md) ![missing](../missing.png) [bad anchor](there.md#no-such-heading)\n"
        "[outside](../../elsewhere.md) [absolute](/absolute/page.md)\n"
    )
    problems = link_problems(page, root=tmp_path)
    assert [p.split(": ", 2)[1] for p in problems] == [
        "'nowhere.md'", "'../missing.png'", "'there.md#no-such-heading'", "'../../elsewhere.md'", "'/absolute/page.md'"]
