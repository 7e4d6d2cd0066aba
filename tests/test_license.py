"""LICENSE is the MIT licence, CITATION.cff is valid Citation File Format 1.2.0 citing the paper as it names
itself, and the README points at both.

The format's rules checked here are those of its schema (github.com/citation-file-format/citation-file-format,
schema.json of 1.2.0), written out by hand: the keys a file may have and must have, and the same for a reference.
"""
import re

import pytest
import yaml  # PyYAML: a requirement of transformers, so always installed with requirements.txt

from conftest import ROOT, SHARED

PAPER = SHARED / "paper" / "audioconfit-paper.md"

# The MIT licence's text (opensource.org/license/mit), paragraph by paragraph, after its copyright line.
MIT_PARAGRAPHS = [
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated "
    "documentation files (the \"Software\"), to deal in the Software without restriction, including without limitation "
    "the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and "
    "to permit persons to whom the Software is furnished to do so, subject to the following conditions:",
    "The above copyright notice and this permission notice shall be included in all copies or substantial portions of "
    "the Software.",
    "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED "
    "TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE "
    "AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF "
    "CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER "
    "DEALINGS IN THE SOFTWARE.",
]

# CFF 1.2.0's schema: the keys of the file and of a reference (a subset of the latter's optional ones).
CFF_KEYS = {"abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi", "identifiers",
            "keywords", "license", "license-url", "message", "preferred-citation", "references", "repository",
            "repository-artifact", "repository-code", "title", "type", "url", "version"}
CFF_REQUIRED = {"authors", "cff-version", "message", "title"}
REFERENCE_REQUIRED = {"authors", "title", "type"}
PERSON_KEYS = {"family-names", "given-names", "name-particle", "name-suffix", "affiliation", "alias", "email",
               "orcid", "website"}
IDENTIFIER_TYPES = {"doi", "url", "swh", "other"}
URL = re.compile(r"^(https|http|ftp|sftp)://.+")


def paragraphs(text):
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text.strip())]


def cff_problems(cff) -> list[str]:
    """What keeps a decoded CITATION.cff from validating against CFF 1.2.0's schema (the parts used here)."""
    problems = [f"unknown key {key!r}" for key in sorted(set(cff) - CFF_KEYS)]
    problems += [f"missing {key!r}" for key in sorted(CFF_REQUIRED - set(cff))]
    if cff.get("cff-version") != "1.2.0":  # a string: YAML reads an unquoted 1.2.0 as one
        problems.append(f"cff-version {cff.get('cff-version')!r} is not '1.2.0'")
    if cff.get("type", "software") not in ("software", "dataset"):
        problems.append(f"type {cff['type']!r}")
    references = list(cff.get("references", [])) + ([cff["preferred-citation"]] if "preferred-citation" in cff else [])
    for where, entry in [("authors", cff)] + [(f"reference {r.get('title')!r}", r) for r in references]:
        if entry is not cff:
            problems += [f"{where}: missing {key!r}" for key in sorted(REFERENCE_REQUIRED - set(entry))]
        authors = entry.get("authors")
        if not isinstance(authors, list) or not authors:
            problems.append(f"{where}: authors must be a non-empty list")
            continue
        for author in authors:  # a person (no key required, none unknown) or an entity (a name)
            if not isinstance(author, dict) or not author or not (set(author) <= PERSON_KEYS or "name" in author):
                problems.append(f"{where}: author {author!r} is neither a person nor an entity")
        for identifier in entry.get("identifiers", []):
            if identifier.get("type") not in IDENTIFIER_TYPES or not identifier.get("value"):
                problems.append(f"{where}: identifier {identifier!r}")
        if "url" in entry and not URL.match(str(entry["url"])):
            problems.append(f"{where}: url {entry['url']!r}")
        if "year" in entry and not isinstance(entry["year"], int):
            problems.append(f"{where}: year {entry['year']!r} is not a number")
    return problems


def test_the_license_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "MIT License"
    assert re.fullmatch(r"Copyright \(c\) 2026 \S.*", lines[2]), lines[2]
    assert paragraphs("\n".join(lines[3:])) == MIT_PARAGRAPHS


def test_the_citation_file_is_valid_cff_and_cites_the_paper_and_this_implementation():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff_problems(cff) == []
    assert cff["type"] == "software" and cff["license"] == "MIT"  # this implementation, under LICENSE
    (paper,) = [r for r in cff["references"] if "2309.11895" in str(r.get("identifiers"))]
    assert paper["url"] == "https://arxiv.org/abs/2309.11895" and paper["year"] == 2023  # arXiv 2309: 2023-09
    if not PAPER.is_file():
        pytest.skip(f"{PAPER} absent: the paper's own title and authors not compared")
    blocks = paragraphs(PAPER.read_text(encoding="utf-8"))
    at = next(i for i, block in enumerate(blocks) if block.startswith("# "))  # the title, then its authors
    authors = re.sub(r"<sup>[^<]*</sup>", "", blocks[at + 1]).split(", ")
    assert paper["title"].upper() == blocks[at].removeprefix("# ")
    assert [f"{a['given-names']} {a['family-names']}" for a in paper["authors"]] == [a.strip() for a in authors]


def test_the_validator_catches_what_the_schema_forbids():
    good = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    broken = {**good, "cff-version": 1.2, "licence": "MIT", "references": [{"title": "x", "year": "soon",
                                                                            "authors": [{"surname": "y"}]}]}
    del broken["message"]
    assert cff_problems(broken) == [
        "unknown key 'licence'", "missing 'message'", "cff-version 1.2 is not '1.2.0'",
        "reference 'x': missing 'type'", "reference 'x': author {'surname': 'y'} is neither a person nor an entity",
        "reference 'x': year 'soon' is not a number"]


def test_the_readme_links_the_license_and_the_citation_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](LICENSE)" in readme and "](CITATION.cff)" in readme  # tests/test_docs.py checks they resolve
