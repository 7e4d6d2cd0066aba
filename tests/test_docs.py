"""The README and docs/ stay whole: every relative link leads somewhere, every module is in the file table.

A link is checked the way GitHub renders it: the file must exist inside the repository, and a
`#anchor` must be the slug of a heading in the target page (GitHub's rule: the heading's text,
lowercased, punctuation other than - and _ dropped, each space a hyphen; a repeated heading gets
-1, -2, ...). Links inside code (fenced blocks, `spans`) are text, not links, and are not checked.
"""
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

from conftest import ROOT

README_MAX_LINES = 260
CI_TEST_COMMAND = "pip install -r requirements-test.txt && python -m pytest -q tests"

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"`(?:[^`\n]|\n(?![ \t]*\n))*`")  # a span may wrap a line, never a paragraph
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")  # http:, https:, mailto:, protocol-relative


def prose_lines(text: str) -> list[str]:
    """The page's lines with fenced code blocks blanked (line numbers kept): a `# comment` in a
    bash block is not a heading, and a [link](x) in one is not a link."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before duplicates are numbered)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # inline HTML tags are not text
    text = re.sub(r"[^\w\- ]", "", text)  # \w: letters and digits of any script, and _
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page, the second of two equal headings as slug-1, and so on."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return found


def link_targets(text: str) -> list[str]:
    """The targets of a page's inline links, images and reference definitions, outside code."""
    prose = CODE_SPAN.sub("", "\n".join(prose_lines(text)))
    return INLINE_LINK.findall(prose) + REFERENCE_DEFINITION.findall(prose)


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def broken_links(root: Path) -> tuple[list[str], int]:
    """Each relative link of README.md and docs/*.md that does not resolve, said why; and how many
    relative links were checked in all."""
    root = root.resolve()
    problems, checked = [], 0
    for page in pages(root):
        for target in link_targets(page.read_text(encoding="utf-8")):
            if not target or SCHEME.match(target):
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (page.parent / unquote(path)).resolve() if path else page
            where = f"{page.relative_to(root)}: ({target})"
            if not dest.is_relative_to(root):
                problems.append(f"{where} leads out of the repository")
            elif not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (dest.is_dir() or dest.suffix != ".md"):
                problems.append(f"{where}: an anchor into something that is not a Markdown page")
            elif anchor and anchor not in anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{where}: {dest.relative_to(root)} has no heading with that anchor")
    return problems, checked


def file_table(readme: str) -> set[str]:
    """The names in the first column of the README's file table (the table whose header is `| file |`)."""
    lines = prose_lines(readme)
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*file\s*\|", line))
    names = set()
    for line in lines[start + 2:]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def undocumented(root: Path) -> tuple[list[str], list[str]]:
    """Top-level Python files the README's file table does not name, and names in it that do not exist."""
    names = file_table((root / "README.md").read_text(encoding="utf-8"))
    missing = sorted(p.name for p in root.glob("*.py") if p.name not in names)
    stale = sorted(n for n in names if not (root / n.rstrip("/")).exists())
    return missing, stale


# --- The rule itself, on headings worked by hand ----------------------------------------------

def test_slug_follows_githubs_rule():
    assert slug("Install") == "install"
    assert slug("Your own data") == "your-own-data"
    assert slug("Analysis: the paper's section 3.3-3.4 (`eval.py`)") == "analysis-the-papers-section-33-34-evalpy"
    assert slug("Few-shot learning curves (`--shots K`)") == "few-shot-learning-curves---shots-k"
    assert slug("The GPU check (`tests/gpu_check.sh`)") == "the-gpu-check-testsgpu_checksh"
    assert slug("Table 2 / Table 3") == "table-2--table-3"
    assert slug("PairTune's selection metric (`--select-by`)") == "pairtunes-selection-metric---select-by"
    assert slug("See [the data](docs/data.md) first") == "see-the-data-first"
    assert slug("Über 40 Klassen") == "über-40-klassen"


def test_anchors_number_repeated_headings_and_skip_code():
    page = "# Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n\n### Notes ###\n\n#not-a-heading-either\n"
    assert anchors(page) == {"notes", "notes-1", "notes-2"}


def test_links_in_code_are_not_links():
    page = ("[a](a.md) and `[b](b.md)`\n\n```\n[c](c.md)\n```\n[d][ref] over\ntwo [e\nlines](e.md#x), `a span\n"
            "wrapped [f](f.md)` and [g](g.md)\n\n[ref]: d.md\n")
    assert sorted(link_targets(page)) == ["a.md", "d.md", "e.md#x", "g.md"]


# --- The real pages ---------------------------------------------------------------------------

def test_every_relative_link_in_the_readme_and_docs_resolves():
    problems, checked = broken_links(ROOT)
    assert checked > 30  # the check saw the pages' links
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    """On a copy, never the real pages: each kind of break is reported, a link in code is not."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    before, _ = broken_links(tmp_path)  # links to files the copy lacks (none today) are not this test's
    readme = (tmp_path / "README.md").read_text()
    assert "(docs/design.md#outputs)" in readme
    (tmp_path / "README.md").write_text(readme.replace("(docs/design.md#outputs)", "(docs/design.md#output)"))
    with open(tmp_path / "docs" / "data.md", "a") as page:
        page.write("\n[gone](nowhere.md) [moved](design.md#no-such-heading) [here](#not-here) "
                   "[out](../../outside.md) `[code](fake.md)`\n\n```\n[fenced](fake2.md)\n```\n")
    after, _ = broken_links(tmp_path)
    assert sorted(set(after) - set(before)) == sorted([
        "README.md: (docs/design.md#output): docs/design.md has no heading with that anchor",
        "docs/data.md: (nowhere.md): no such file",
        "docs/data.md: (design.md#no-such-heading): docs/design.md has no heading with that anchor",
        "docs/data.md: (#not-here): docs/data.md has no heading with that anchor",
        "docs/data.md: (../../outside.md) leads out of the repository",
    ])


def test_every_top_level_python_file_is_in_the_readmes_file_table(tmp_path):
    missing, stale = undocumented(ROOT)
    assert not missing, f"not in README.md's file table: {missing}"
    assert not stale, f"named in README.md's file table but not in the repository: {stale}"
    # A new module left out of the table is caught (on a copy of the README, with stand-in files):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    for name in file_table((ROOT / "README.md").read_text()):
        if "/" not in name.rstrip("/"):
            (tmp_path / name.rstrip("/")).touch()
    (tmp_path / "newmodule.py").touch()
    assert undocumented(tmp_path)[0] == ["newmodule.py"]


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert CI_TEST_COMMAND in readme  # .ci/run runs it verbatim
    assert CI_TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()


def test_each_page_in_docs_says_what_it_covers_and_links_back():
    for page in sorted((ROOT / "docs").glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), f"{page.name}: no title"
        opening = " ".join(lines[1:5])
        assert "](../README.md)" in opening, f"{page.name}: its opening does not link back to the README"
