"""Independent oracles for the pure analysis functions of eval.py.

Every expected value here is computed from the specification alone: brute force over
itertools.combinations, a hand-written greedy loop, numpy's eigh for PCA, or numbers worked out by
hand in the comments. Nothing is copied from eval.py's own logic.

Set EVAL_PY=/path/to/other/eval.py to run these tests against another copy (mutation testing).
"""

import importlib.util
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import figures
import tables

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_PY = Path(os.environ.get("EVAL_PY", REPO_ROOT / "eval.py"))

# Load eval.py by path under another name: "eval" shadows a builtin (same as tests/test_eval.py).
_spec = importlib.util.spec_from_file_location("audioconfit_eval", EVAL_PY)
ev = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ev)


# ----------------------------------------------------------------------------------------------
# Oracles, written from the specification
# ----------------------------------------------------------------------------------------------


def oracle_pair_mass(C, a, b):
    """Clips of a predicted as b plus clips of b predicted as a."""
    return float(C[a][b]) + float(C[b][a])


def oracle_pairs(C, top):
    """All pairs a<b with positive mass, sorted by mass desc then (a, b); the first `top`."""
    K = len(C)
    found = [(oracle_pair_mass(C, a, b), a, b) for a, b in itertools.combinations(range(K), 2)]
    found = [t for t in found if t[0] > 0]
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    return found if top is None else found[:top]


def oracle_triplets(C, top, exclude=()):
    """All triplets a<b<c avoiding `exclude` whose classes are linked by confusion (at least two of
    the three pairs have positive mass), sorted by mass desc then (a, b, c)."""
    K = len(C)
    excluded = set(exclude)
    found = []
    for a, b, c in itertools.combinations(range(K), 3):
        if excluded & {a, b, c}:
            continue
        pair_masses = [oracle_pair_mass(C, a, b), oracle_pair_mass(C, a, c), oracle_pair_mass(C, b, c)]
        if sum(m > 0 for m in pair_masses) >= 2:
            found.append((sum(pair_masses), a, b, c))
    found.sort(key=lambda t: (-t[0], t[1], t[2], t[3]))
    return found if top is None else found[:top]


def oracle_hardest(C, triplets):
    """Greedy: best remaining linked triplet (disjoint from those chosen), else the best remaining
    confused pair, `triplets` times; or all classes when K <= 3 * triplets."""
    K = len(C)
    if K <= 3 * triplets:
        return list(range(K))
    chosen = []
    for _ in range(triplets):
        remaining = oracle_triplets(C, top=None, exclude=chosen)
        if not remaining:
            remaining = [p for p in oracle_pairs(C, None) if p[1] not in chosen and p[2] not in chosen]
        if not remaining:
            break
        chosen.extend(remaining[0][1:])
    return chosen


def as_tuples(result):
    return [tuple(t) for t in result]


def random_counts(rng, K, high, zero_fraction=0.0):
    """Integer confusion matrix with values in [0, high), a share of off-diagonal cells zeroed."""
    C = rng.integers(0, high, size=(K, K))
    C[rng.random((K, K)) < zero_fraction] = 0
    np.fill_diagonal(C, rng.integers(5, 50, size=K))
    return C


def all_equal_offdiag(K, value=1):
    C = np.full((K, K), value)
    np.fill_diagonal(C, 7)
    return C


def parse_md_table(md):
    """Markdown table -> (header cells, {first cell: row cells})."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
    header = split(lines[0])
    rows = [split(line) for line in lines[2:]]
    return header, rows


# ----------------------------------------------------------------------------------------------
# pair_confusion / confused_pairs
# ----------------------------------------------------------------------------------------------


def test_pair_confusion_matches_elementwise_definition():
    """P[a,b] = C[a,b] + C[b,a] off the diagonal, 0 on it, float and symmetric."""
    rng = np.random.default_rng(0)
    C = random_counts(rng, 7, 10)
    P = np.asarray(ev.pair_confusion(C))
    assert P.shape == (7, 7)
    assert np.issubdtype(P.dtype, np.floating)
    for a in range(7):
        for b in range(7):
            assert P[a, b] == (0.0 if a == b else C[a, b] + C[b, a])


def test_pair_confusion_rejects_non_square():
    """A non-square matrix raises ValueError."""
    with pytest.raises(ValueError):
        ev.pair_confusion(np.ones((2, 3)))


@pytest.mark.parametrize("seed,K,high,zeros", [(1, 5, 3, 0.3), (2, 12, 2, 0.5), (3, 25, 4, 0.7), (4, 40, 2, 0.8)])
@pytest.mark.parametrize("top", [1, 3, 10, 10_000])
def test_confused_pairs_equal_brute_force(seed, K, high, zeros, top):
    """confused_pairs == brute force over all pairs (small integers: many ties)."""
    C = random_counts(np.random.default_rng(seed), K, high, zeros)
    assert as_tuples(ev.confused_pairs(C, top=top)) == oracle_pairs(C, top)


def test_confused_pairs_ties_go_to_lower_indices():
    """All-equal off-diagonals: the first `top` pairs in lexicographic order."""
    C = all_equal_offdiag(6)
    expected = [(2.0, a, b) for a, b in list(itertools.combinations(range(6), 2))[:4]]
    assert as_tuples(ev.confused_pairs(C, top=4)) == expected


def test_confused_pairs_hand_example_and_zero_mass_excluded():
    """3x3 hand example: pair masses (0,1)=3, (1,2)=2, (0,2)=0 -> the zero pair is left out."""
    C = [[5, 1, 0],
         [2, 3, 1],
         [0, 1, 4]]
    assert as_tuples(ev.confused_pairs(C, top=10)) == [(3.0, 0, 1), (2.0, 1, 2)]
    assert ev.confused_pairs(np.diag([3, 4, 5]), top=10) == []


# ----------------------------------------------------------------------------------------------
# confused_triplets
# ----------------------------------------------------------------------------------------------


def test_confused_triplets_hand_example_k3_k4():
    """K=3 and K=4 worked by hand: mass is the sum of all six off-diagonal cells."""
    C3 = [[5, 1, 0],
          [2, 3, 1],
          [0, 1, 4]]  # off-diagonal sum = 1+0+2+1+0+1 = 5
    assert as_tuples(ev.confused_triplets(C3, top=10)) == [(5.0, 0, 1, 2)]
    C4 = [[9, 2, 0, 1],
          [0, 9, 3, 0],
          [1, 0, 9, 0],
          [0, 0, 0, 9]]
    # P: (0,1)=2 (0,2)=1 (0,3)=1 (1,2)=3 (1,3)=0 (2,3)=0
    # (0,1,2)=6, (0,1,3)=3, (0,2,3)=2; (1,2,3)=3 has only one confused pair (1,2): not linked
    assert as_tuples(ev.confused_triplets(C4, top=10)) == [
        (6.0, 0, 1, 2), (3.0, 0, 1, 3), (2.0, 0, 2, 3)]
    assert as_tuples(ev.confused_triplets(C4, top=2)) == [(6.0, 0, 1, 2), (3.0, 0, 1, 3)]


@pytest.mark.parametrize("seed,K,high,zeros", [
    (10, 3, 3, 0.0), (11, 4, 2, 0.5), (12, 6, 2, 0.6), (13, 10, 3, 0.7),
    (14, 20, 2, 0.85), (15, 40, 2, 0.9), (16, 40, 3, 0.5), (17, 41, 2, 0.97)])
@pytest.mark.parametrize("top", [1, 2, 5, 10, 37, 100_000])
def test_confused_triplets_equal_brute_force(seed, K, high, zeros, top):
    """confused_triplets == brute force over itertools.combinations (integer counts, many ties)."""
    C = random_counts(np.random.default_rng(seed), K, high, zeros)
    assert as_tuples(ev.confused_triplets(C, top=top)) == oracle_triplets(C, top)


@pytest.mark.parametrize("K", [3, 4, 8, 15, 40])
@pytest.mark.parametrize("top", [1, 5, 10, 200])
def test_confused_triplets_all_ties(K, top):
    """All-equal off-diagonals: every triplet ties, so the order is purely lexicographic."""
    C = all_equal_offdiag(K)
    expected = [(6.0, *t) for t in itertools.combinations(range(K), 3)][:top]
    assert as_tuples(ev.confused_triplets(C, top=top)) == expected


def test_confused_triplets_ties_spread_over_many_first_classes():
    """Several equal-mass triplets per first class plus a few heavier ones: ties across first classes."""
    K = 12
    C = np.zeros((K, K), dtype=int)
    np.fill_diagonal(C, 10)
    for a in range(K):  # a ring: each class confused once with the next two
        C[a, (a + 1) % K] = 1
        C[a, (a + 2) % K] = 1
    C[3, 7] = C[7, 9] = 2
    for top in (1, 4, 9, 20, 1000):
        assert as_tuples(ev.confused_triplets(C, top=top)) == oracle_triplets(C, top)


def test_confused_triplets_float_counts():
    """Non-integer (e.g. averaged) confusion values: same triplets, same masses."""
    rng = np.random.default_rng(21)
    C = rng.random((14, 14)) * (rng.random((14, 14)) < 0.4)
    got = ev.confused_triplets(C, top=25)
    want = oracle_triplets(C, 25)
    assert [t[1:] for t in got] == [t[1:] for t in want]
    assert [t[0] for t in got] == pytest.approx([t[0] for t in want], rel=1e-12)


@pytest.mark.parametrize("seed,K,exclude", [
    (30, 6, (0,)), (31, 10, (2, 5)), (32, 15, (0, 14, 7)), (33, 40, tuple(range(0, 40, 3))),
    (34, 8, (1, 2, 3, 4, 5, 6))])
@pytest.mark.parametrize("top", [1, 10, 10_000])
def test_confused_triplets_exclude_equals_brute_force(seed, K, exclude, top):
    """Triplets containing an excluded class never appear; the rest equal brute force."""
    C = random_counts(np.random.default_rng(seed), K, 3, 0.5)
    got = as_tuples(ev.confused_triplets(C, top=top, exclude=exclude))
    assert got == oracle_triplets(C, top, exclude)
    assert all(not set(t[1:]) & set(exclude) for t in got)


def test_confused_triplets_exclude_hides_the_only_confusion():
    """Excluding a class of the only confused pair leaves no triplet (all remaining masses are 0)."""
    C = np.diag([5, 5, 5, 5, 5]).astype(int)
    C[1, 3] = 4
    assert ev.confused_triplets(C, top=10, exclude=[3]) == []
    assert ev.confused_triplets(C, top=10, exclude=(1,)) == []
    # one confused pair plus any class is not a linked triplet
    assert ev.confused_triplets(C, top=2) == []


def test_confused_triplets_no_confusion_is_empty():
    """A diagonal confusion matrix has no confused triplet."""
    assert ev.confused_triplets(np.diag([3, 4, 5, 6]), top=10) == []


# ----------------------------------------------------------------------------------------------
# hardest_classes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K,triplets", [(3, 1), (6, 2), (9, 3), (5, 3), (1, 1)])
def test_hardest_classes_small_k_returns_all(K, triplets):
    """With K <= 3*triplets, all classes in order."""
    C = random_counts(np.random.default_rng(K), K, 3, 0.2)
    assert list(ev.hardest_classes(C, triplets=triplets)) == list(range(K))


@pytest.mark.parametrize("seed,K,high,zeros", [
    (40, 10, 3, 0.3), (41, 12, 2, 0.6), (42, 20, 3, 0.8), (43, 40, 2, 0.9), (44, 40, 4, 0.5)])
@pytest.mark.parametrize("triplets", [1, 2, 3])
def test_hardest_classes_equal_greedy_oracle(seed, K, high, zeros, triplets):
    """hardest_classes == a hand-written greedy over disjoint brute-force triplets."""
    C = random_counts(np.random.default_rng(seed), K, high, zeros)
    got = [int(i) for i in ev.hardest_classes(C, triplets=triplets)]
    assert got == oracle_hardest(C, triplets)
    assert len(set(got)) == len(got)


def test_hardest_classes_all_ties_are_disjoint_lexicographic():
    """All-equal off-diagonals: the greedy takes (0,1,2), then (3,4,5), then (6,7,8)."""
    assert list(ev.hardest_classes(all_equal_offdiag(12), triplets=3)) == list(range(9))


def test_hardest_classes_hand_example_stops_early():
    """Only two confused groups among 12 classes: two triplets chosen, then it stops."""
    C = np.diag([20] * 12)
    C[5, 6], C[6, 7], C[7, 5] = 4, 3, 3  # triplet (5,6,7): mass 10
    C[0, 1], C[2, 1], C[2, 0] = 2, 1, 1  # triplet (0,1,2): mass 4
    # Step 1: (5,6,7)=10 beats any mix (at most 4 + 0). Step 2: (0,1,2)=4.
    # Step 3: classes 3,4,8,9,10,11 are never confused -> stop.
    assert list(ev.hardest_classes(C, triplets=3)) == [5, 6, 7, 0, 1, 2]
    assert oracle_hardest(C, 3) == [5, 6, 7, 0, 1, 2]


def test_hardest_classes_star_needs_exclusion():
    """A class confused with everyone: the second triplet must not reuse any chosen class."""
    K = 10
    C = np.diag([30] * K)
    C[0, 1:] = 5  # class 0 is mixed up with every other class
    C[8, 9] = 2
    C[3, 4] = 1
    # (0,a,b) all score 10 (+ P[a,b]); best: (0,8,9)=12. Then among 1..7 only the pair (3,4) is
    # confused: no linked triplet is left, so the pair is taken.
    assert list(ev.hardest_classes(C, triplets=2)) == [0, 8, 9, 3, 4]
    assert oracle_hardest(C, 2) == [0, 8, 9, 3, 4]


# ----------------------------------------------------------------------------------------------
# summed_confusion / describe_confusion
# ----------------------------------------------------------------------------------------------


def test_summed_confusion_adds_matrices():
    """The sum of the runs' confusion matrices, with their common class list."""
    classes = ["a", "b", "c"]
    mats = [np.arange(9).reshape(3, 3), np.eye(3, dtype=int) * 4, [[1, 0, 0], [0, 0, 2], [3, 0, 0]]]
    results = [{"classes": list(classes), "confusion": m if isinstance(m, list) else m.tolist()} for m in mats]
    total, got_classes = ev.summed_confusion(results)
    expected = np.array([[0 + 4 + 1, 1, 2], [3, 4 + 4, 5 + 2], [6 + 3, 7, 8 + 4]])
    assert np.array_equal(np.asarray(total), expected)
    assert list(got_classes) == classes


def test_summed_confusion_rejects_different_classes():
    """Runs whose class lists differ cannot be summed."""
    results = [{"classes": ["a", "b"], "confusion": [[1, 0], [0, 1]]},
               {"classes": ["a", "c"], "confusion": [[1, 0], [0, 1]]}]
    with pytest.raises(ValueError):
        ev.summed_confusion(results)


def test_describe_confusion_hand_example():
    """17 clips, 12 right, 5 errors, 70.59% accuracy; the top pair (cat/dog, 3 clips) is listed."""
    C = [[5, 1, 0],
         [2, 3, 1],
         [0, 1, 4]]
    text = ev.describe_confusion(C, ["cat", "dog", "owl"], top=5)
    first = text.splitlines()[0]
    numbers = re.findall(r"\d+(?:\.\d+)?", first)
    assert numbers[:3] == ["17", "5", "70.59"], first
    assert "70.59%" in first
    pair_lines = [line for line in text.splitlines() if "cat" in line and "dog" in line and "owl" not in line]
    assert pair_lines and re.search(r"\b3\b", pair_lines[0])


def test_describe_confusion_no_errors():
    """A perfect confusion: 0 errors and 100.00% accuracy."""
    first = ev.describe_confusion(np.diag([2, 3]), ["x", "y"]).splitlines()[0]
    assert re.findall(r"\d+(?:\.\d+)?", first)[:3] == ["5", "0", "100.00"], first


# ----------------------------------------------------------------------------------------------
# Geometry: dimension_contribution, geometry_cells, format_geometry_table
# ----------------------------------------------------------------------------------------------


def two_clips_with_shares(shares, flip, perm, scales=(3.0, 0.5)):
    """Two clips whose per-dimension contributions CC_i = u1_i * u2_i have |CC_i| = shares_i.

    With N = 2 the mean over ordered pairs (1,2), (2,1) is u1_i * u2_i. u1 = sqrt(shares), u2 = u1
    with the dimensions in `flip` negated (CC_i < 0 there); dimensions are permuted by `perm` and
    rows rescaled, which must change nothing since rows are L2-normalised inside.
    """
    u1 = np.sqrt(np.asarray(shares, dtype=float))
    u2 = u1.copy()
    u2[list(flip)] *= -1
    return np.stack([scales[0] * u1[perm], scales[1] * u2[perm]])


def test_dimension_contribution_hand_worked_shares():
    """|CC| shares .45/.25/.15/.10/.05 -> top1..3 = .45/.70/.85, dims50/80/90 = 2/3/4."""
    X = two_clips_with_shares([0.45, 0.25, 0.15, 0.10, 0.05], flip=[1], perm=[3, 0, 4, 2, 1])
    dc = ev.dimension_contribution(X)
    assert dc["anisotropy"] == pytest.approx(0.45 - 0.25 + 0.15 + 0.10 + 0.05)  # cosine of the 2 clips
    assert (dc["top1"], dc["top2"], dc["top3"]) == pytest.approx((0.45, 0.70, 0.85))
    assert (dc["dims50"], dc["dims80"], dc["dims90"]) == (2, 3, 4)


def test_dimension_contribution_share_exactly_on_threshold():
    """Shares .5/.3/.2: a cumulative share equal to q counts as reaching q -> dims 1/2/3."""
    X = two_clips_with_shares([0.5, 0.3, 0.2], flip=[], perm=[2, 0, 1])
    dc = ev.dimension_contribution(X)
    assert (dc["dims50"], dc["dims80"], dc["dims90"]) == (1, 2, 3)
    assert (dc["top1"], dc["top2"], dc["top3"]) == pytest.approx((0.5, 0.8, 1.0))


GEOMETRY_FIELDS = ("anisotropy", "top1", "top2", "top3", "dims50", "dims80", "dims90")


def geo_row(anisotropy, top1, top2, top3, dims50, dims80, dims90):
    # Extra fields, as dimension_contribution returns them, must not disturb anything.
    return dict(anisotropy=anisotropy, top1=top1, top2=top2, top3=top3, dims50=dims50, dims80=dims80,
                dims90=dims90, top_dimensions=[0, 1, 2], dimensions=768)


def test_geometry_cells_mean_and_sample_std():
    """Means and ddof=1 stds over three runs, worked by hand."""
    rows = [("seed-0", geo_row(1.0, 0.2, 0.1, 0.3, 10, 5, 7)),
            ("seed-1", geo_row(2.0, 0.4, 0.1, 0.3, 20, 5, 8)),
            ("seed-2", geo_row(3.0, 0.9, 0.1, 0.3, 30, 8, 9))]
    cells = tables.geometry_cells(rows)
    expected = {  # field: (mean, sample std)
        "anisotropy": (2.0, 1.0),
        "top1": (0.5, math.sqrt((0.09 + 0.01 + 0.16) / 2)),
        "top2": (0.1, 0.0), "top3": (0.3, 0.0),
        "dims50": (20.0, 10.0),
        "dims80": (6.0, math.sqrt((1 + 1 + 4) / 2)),
        "dims90": (8.0, 1.0),
    }
    for field, (mean, std) in expected.items():
        assert cells[field]["mean"] == pytest.approx(mean), field
        assert cells[field]["std"] == pytest.approx(std, abs=1e-12), field
        assert cells[field]["n"] == 3


def test_geometry_cells_single_run_has_no_std():
    """One run: mean is the value, std is None, n is 1."""
    cells = tables.geometry_cells([("fold-1", geo_row(0.25, 0.5, 0.6, 0.7, 3, 9, 12))])
    for field, value in zip(GEOMETRY_FIELDS, (0.25, 0.5, 0.6, 0.7, 3, 9, 12)):
        assert cells[field] == {"mean": pytest.approx(value), "std": None, "n": 1}


GEOMETRY_HEADER = ["Method", "n", "anisotropy", "top 1 ↓", "top 2 ↓", "top 3 ↓", "50% ↑", "80% ↑", "90% ↑"]


def test_format_geometry_table_bold_follows_arrows_and_printed_precision():
    """Lower top k / higher dims is bold; anisotropy never; ties at printed precision never."""
    finetune = [("seed-0", geo_row(0.40, 0.60, 0.70, 0.3001, 2, 30, 20.02)),
                ("seed-1", geo_row(0.60, 0.40, 0.70, 0.3001, 4, 50, 20.02))]
    pairtune = [("seed-0", geo_row(0.20, 0.30, 0.80, 0.3004, 10, 35, 20.04))]
    # FINETUNE means: .500 .500 .700 .3001 3 40 20.02 (stds .141 .141 0 0 1.4 14.1 0)
    # PAIRTUNE:       .200 .300 .800 .3004 10 35 20.04
    header, rows = parse_md_table(tables.format_geometry_table({"finetune": finetune, "pairtune": pairtune}))
    assert header == GEOMETRY_HEADER
    assert [r[0] for r in rows] == ["FINETUNE", "PAIRTUNE"]
    ft, pt = (dict(zip(header, r)) for r in rows)
    assert (ft["n"], pt["n"]) == ("2", "1")
    s2 = f"{math.sqrt(0.02):.3f}"  # std of .4/.6 = .141
    assert ft["anisotropy"] == f"0.500 ± {s2}" and pt["anisotropy"] == "0.200"  # never bold
    assert ft["top 1 ↓"] == f"0.500 ± {s2}" and pt["top 1 ↓"] == "**0.300**"
    assert ft["top 2 ↓"] == "**0.700 ± 0.000**" and pt["top 2 ↓"] == "0.800"
    assert ft["top 3 ↓"] == "0.300 ± 0.000" and pt["top 3 ↓"] == "0.300"  # tie at 3 decimals
    assert ft["50% ↑"] == f"3.0 ± {math.sqrt(2):.1f}" and pt["50% ↑"] == "**10.0**"
    assert ft["80% ↑"] == f"**40.0 ± {math.sqrt(200):.1f}**" and pt["80% ↑"] == "35.0"
    assert ft["90% ↑"] == "20.0 ± 0.0" and pt["90% ↑"] == "20.0"  # tie at 1 decimal


def test_format_geometry_table_swapped_arms_swap_bold():
    """Swapping the two arms' rows moves every bold mark to the other row."""
    a = [("seed-0", geo_row(0.1, 0.2, 0.3, 0.4, 5, 6, 7))]
    b = [("seed-0", geo_row(0.9, 0.1, 0.4, 0.4, 9, 2, 7))]
    # b better on top1 (lower) and dims50 (higher); a better on top2 (lower) and dims80 (higher).
    for first, second in ((a, b), (b, a)):
        header, rows = parse_md_table(tables.format_geometry_table({"finetune": first, "pairtune": second}))
        cells = {r[0]: dict(zip(header, r)) for r in rows}
        bold = {arm: sorted(k for k, v in row.items() if v.startswith("**")) for arm, row in cells.items()}
        a_arm, b_arm = ("FINETUNE", "PAIRTUNE") if first is a else ("PAIRTUNE", "FINETUNE")
        assert bold[a_arm] == sorted(["top 2 ↓", "80% ↑"])
        assert bold[b_arm] == sorted(["top 1 ↓", "50% ↑"])


def test_format_geometry_table_single_arm_has_no_bold():
    """With only one arm there is nothing to compare: no bold at all, one row."""
    rows_ = [("seed-0", geo_row(0.1, 0.2, 0.3, 0.4, 5, 6, 7)), ("seed-1", geo_row(0.3, 0.2, 0.3, 0.4, 5, 6, 9))]
    md = tables.format_geometry_table({"finetune": rows_})
    header, rows = parse_md_table(md)
    assert header == GEOMETRY_HEADER
    assert [r[0] for r in rows] == ["FINETUNE"]
    assert "**" not in md


# ----------------------------------------------------------------------------------------------
# curve_data
# ----------------------------------------------------------------------------------------------


def write_log(folder, valid_accs, first_epoch=1):
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": first_epoch + i, "train_loss": 1.0 / (i + 1), "valid_acc": acc, "seconds": 3.5})
             for i, acc in enumerate(valid_accs)]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"dir": folder, "run": {"args": {"select_by": "centroid"}}}


def only_entry(curves):
    """The single (dataset, backbone) entry of curve_data's answer, whatever its key."""
    assert len(curves) == 1, list(curves)
    return next(iter(curves.values()))


def test_curve_data_per_epoch_mean_std_n(tmp_path):
    """Per epoch: mean (percent), sample std and n over the runs that reached that epoch."""
    ft = [write_log(tmp_path / "ft0", [0.5, 0.6, 0.7]),
          write_log(tmp_path / "ft1", [0.7, 0.8]),  # stopped after epoch 2
          write_log(tmp_path / "ft2", [0.6, 0.7, 0.9])]
    pt = [write_log(tmp_path / "pt0", [0.25, 0.5], first_epoch=0)]
    entry = only_entry(ev.curve_data({("gtzan", "wav2vec2"): {"finetune": ft, "pairtune": pt}}))
    f = entry["finetune"]
    # epoch 1: 50,70,60 -> 60 ± 10; epoch 2: 60,80,70 -> 70 ± 10; epoch 3: 70,90 -> 80 ± sqrt(200)
    assert list(f["epochs"]) == [1, 2, 3]
    assert f["mean"] == pytest.approx([60.0, 70.0, 80.0])
    assert f["std"] == pytest.approx([10.0, 10.0, math.sqrt(200)])
    assert list(f["n"]) == [3, 3, 2]
    assert isinstance(f["metric"], str)
    p = entry["pairtune"]
    assert list(p["epochs"]) == [0, 1]
    assert p["mean"] == pytest.approx([25.0, 50.0])
    assert list(p["std"]) == [None, None]
    assert list(p["n"]) == [1, 1]
    assert isinstance(p["metric"], str)


def test_curve_data_reads_pairtunes_valid_metric_acc_beside_older_valid_acc(tmp_path):
    """PairTune logs its selection metric's accuracy as valid_metric_acc (older runs: valid_acc): one curve."""
    new = tmp_path / "pt-new"
    new.mkdir()
    (new / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "valid_metric_acc": acc, "valid_metric":
                                                       "epoch-centroid"}) + "\n" for e, acc in ((1, 0.2), (2, 0.6))))
    old = write_log(tmp_path / "pt-old", [0.4, 0.8])
    entry = only_entry(ev.curve_data({("gtzan", "hubert"): {"pairtune": [{"dir": new, "run": {"args": {}}}, old]}}))
    # epoch 1: 20, 40 -> 30; epoch 2: 60, 80 -> 70; the metric named by the first run's log
    assert entry["pairtune"]["mean"] == pytest.approx([30.0, 70.0]) and entry["pairtune"]["n"] == [2, 2]
    assert entry["pairtune"]["metric"] == "epoch-centroid accuracy of encoder features"


def test_curve_data_groups_are_kept_apart(tmp_path):
    """Two (dataset, backbone) groups give two entries, each averaging only its own runs."""
    groups = {("esc50", "whisper"): {"finetune": [write_log(tmp_path / "a", [0.1])]},
              ("gtzan", "hubert"): {"pairtune": [write_log(tmp_path / "b", [0.3, 0.4]),
                                                 write_log(tmp_path / "c", [0.5, 0.2])]}}
    curves = ev.curve_data(groups)
    assert len(curves) == 2
    by_arms = {tuple(sorted(entry)): entry for entry in curves.values()}
    assert by_arms[("finetune",)]["finetune"]["mean"] == pytest.approx([10.0])
    p = by_arms[("pairtune",)]["pairtune"]
    assert p["mean"] == pytest.approx([40.0, 30.0])
    assert p["std"] == pytest.approx([math.sqrt(200), math.sqrt(200)])


def test_curve_data_keys_are_groups_and_json_names_are_dataset_dot_backbone(tmp_path):
    """Entries are keyed by (dataset, backbone); in JSON files they are named "<dataset> · <backbone>"."""
    groups = {("esc50", "whisper"): {"finetune": [write_log(tmp_path / "a", [0.1])]},
              ("gtzan", "hubert"): {"pairtune": [write_log(tmp_path / "b", [0.3])]}}
    curves = ev.curve_data(groups)
    assert set(curves) == {("esc50", "whisper"), ("gtzan", "hubert")}
    assert set(ev.by_name(curves)) == {"esc50 · whisper", "gtzan · hubert"}


# ----------------------------------------------------------------------------------------------
# project_2d / pyplot and the optional packages
# ----------------------------------------------------------------------------------------------


def pca_oracle(X):
    """First two principal components of the L2-normalised, mean-centred rows, via eigh."""
    u = X / np.linalg.norm(X, axis=1, keepdims=True)
    centred = u - u.mean(axis=0)
    cov = centred.T @ centred / (len(u) - 1)
    values, vectors = np.linalg.eigh(cov)
    top = np.argsort(values)[::-1][:2]
    return centred @ vectors[:, top]


def assert_equal_up_to_axis_sign(got, want):
    got = np.asarray(got, dtype=float)
    assert got.shape == want.shape
    for j in range(want.shape[1]):
        assert (np.allclose(got[:, j], want[:, j], atol=1e-9) or np.allclose(got[:, j], -want[:, j], atol=1e-9)), j


@pytest.fixture
def no_optional_projection_packages(monkeypatch):
    for name in ("umap", "sklearn", "sklearn.manifold"):
        monkeypatch.setitem(sys.modules, name, None)


def pca_test_features(seed=50, n=40, d=6):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.2]) + 0.7  # distinct variances, offset
    return X * rng.uniform(0.2, 5.0, size=(n, 1))  # row scales must not matter


def test_project_2d_pca_matches_eigh():
    """method='pca': the first two principal components of the normalised, centred rows."""
    X = pca_test_features()
    coords, name = ev.project_2d(X, "pca")
    assert name.startswith("PCA")
    assert_equal_up_to_axis_sign(coords, pca_oracle(X))


def test_project_2d_auto_falls_back_to_pca_and_says_so(no_optional_projection_packages):
    """method='auto' without umap/sklearn: PCA coordinates, the name mentions umap-learn."""
    X = pca_test_features(seed=51)
    coords, name = ev.project_2d(X, "auto")
    assert name.startswith("PCA")
    assert "umap-learn" in name
    assert_equal_up_to_axis_sign(coords, pca_oracle(X))


def test_project_2d_umap_missing_raises(no_optional_projection_packages):
    """method='umap' without umap-learn raises MissingPackage with the install command."""
    with pytest.raises(figures.MissingPackage, match="pip install umap-learn"):
        ev.project_2d(pca_test_features(seed=52), "umap")


def test_pyplot_missing_matplotlib_raises(monkeypatch):
    """pyplot() without matplotlib raises MissingPackage with the install command."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(figures.MissingPackage, match="pip install matplotlib"):
        figures.pyplot()
