"""One line width and one banner style across the repository's Python files."""
import re

from conftest import ROOT

MAX_LINE = 120
BANNER = 96  # "# ----...": a section banner, or "# --- Name ----..." for a subsection


def python_files():
    return sorted(ROOT.glob("*.py")) + sorted((ROOT / "tests").glob("*.py"))


def test_lines_fit_the_width_and_banners_are_one_width():
    too_long, odd_banners = [], []
    for path in python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            if len(line) > MAX_LINE:
                too_long.append(f"{where} ({len(line)})")
            if re.fullmatch(r"# -{3}.*-", line) and len(line) != BANNER:
                odd_banners.append(f"{where} ({len(line)})")
    assert len(python_files()) > 10  # the check saw the repository
    assert not too_long, f"lines over {MAX_LINE} characters: {too_long}"
    assert not odd_banners, f"banners not {BANNER} wide: {odd_banners}"
