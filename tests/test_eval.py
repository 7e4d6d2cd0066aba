"""Tests for eval.py: the ``table`` subcommand on hand-built runs trees, and the geometry metrics
(anisotropy, dimensionality contribution) against their O(N^2) definitions."""

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import grid
import rundir
import tables

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_PY = REPO_ROOT / "eval.py"

# Load eval.py by path: the module name "eval" shadows a builtin and the repo
# root is not necessarily on sys.path when pytest runs from tests/.
_spec = importlib.util.spec_from_file_location("audioconfit_eval", EVAL_PY)
ev = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ev)


def mark_finished_run(run_dir, method="finetune", dataset="gtzan", backbone="wav2vec2", seed=0, fold=None,
                      random_init=False):
    """The run.json by which eval.py finds a run folder: finetune.py's, or probe.py's for other methods."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stage = "finetune" if str(method).lower() == "finetune" else "probe"
    run = {"stage": stage, "method": method, "dataset": dataset, "backbone": backbone,
           "backbone_random_init": random_init, "args": {"seed": seed, "fold": fold}, "finished": True}
    (run_dir / "run.json").write_text(json.dumps(run))


def write_run(root, subdir, method="finetune", dataset="gtzan", backbone="wav2vec2",
              seed=0, fold=None, test_acc=0.8, random_init=False, **extra):
    """Write one finished run (results.json and run.json) under root/subdir; return its results.json."""
    run_dir = Path(root) / subdir
    mark_finished_run(run_dir, method, dataset, backbone, seed, fold, random_init)
    payload = {
        "method": method,
        "dataset": dataset,
        "backbone": backbone,
        "backbone_random_init": random_init,
        "seed": seed,
        "fold": fold,
        "test_acc": test_acc,
        "valid_acc": 0.5,
        **extra,
    }
    path = run_dir / "results.json"
    path.write_text(json.dumps(payload))
    return path


def parse_markdown(md):
    """Markdown table -> {(backbone, METHOD): {dataset: cell text}}, in order."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    datasets = header[2:]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[(cells[0], cells[1])] = dict(zip(datasets, cells[2:]))
    return table


def run_table(runs_dir, capsys, *extra):
    """Run ``eval.py table`` in-process; return (exit code, stdout, stderr)."""
    code = ev.main(["table", str(runs_dir), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------------
# Numbers and cell formatting
# ----------------------------------------------------------------------------------------------


def test_mean_and_sample_std_match_hand_computation(tmp_path, capsys):
    # mean 0.80; deviations -0.1, 0, +0.1 -> sample var 0.02/2 = 0.01 -> std 0.10
    for seed, acc in enumerate([0.70, 0.80, 0.90]):
        write_run(tmp_path, f"ft/s{seed}", seed=seed, test_acc=acc)
    write_run(tmp_path, "pt/s0", method="pairtune", test_acc=0.90)

    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    table = parse_markdown(out)
    assert table[("wav2vec2", "FINETUNE")]["gtzan"] == "80.00 ± 10.00 (n=3)"

    cell = tables.summarise(tables.collect_results(tmp_path))["backbones"]["wav2vec2"]["finetune"]["gtzan"]
    assert cell["n"] == 3
    assert cell["mean"] == pytest.approx(80.0)
    assert cell["std"] == pytest.approx(10.0)  # ddof=1; population std would be 8.16


def test_single_run_has_no_std(tmp_path, capsys):
    write_run(tmp_path, "ft", test_acc=0.761)
    write_run(tmp_path, "pt", method="pairtune", test_acc=0.70)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    cell = parse_markdown(out)[("wav2vec2", "FINETUNE")]["gtzan"]
    assert cell == "**76.10 (n=1)**"
    assert "±" not in cell


def test_missing_cell_is_dash(tmp_path, capsys):
    # FINETUNE ran on both datasets, PAIRTUNE only on gtzan.
    write_run(tmp_path, "a", dataset="gtzan", test_acc=0.5)
    write_run(tmp_path, "b", dataset="esc50", test_acc=0.6)
    write_run(tmp_path, "c", dataset="gtzan", method="pairtune", test_acc=0.7)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    table = parse_markdown(out)
    assert table[("wav2vec2", "PAIRTUNE")]["esc50"] == "–"
    assert table[("wav2vec2", "FINETUNE")]["esc50"] == "60.00 (n=1)"  # no bold: other arm missing


def test_pairtune_row_shown_even_without_any_pairtune_runs(tmp_path, capsys):
    write_run(tmp_path, "a", test_acc=0.5)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    assert parse_markdown(out)[("wav2vec2", "PAIRTUNE")] == {"gtzan": "–"}


# ----------------------------------------------------------------------------------------------
# Bold marking
# ----------------------------------------------------------------------------------------------


def test_bold_marks_only_the_better_arm(tmp_path, capsys):
    # gtzan: FINETUNE 80 vs PAIRTUNE 85 -> PAIRTUNE bold.
    # esc50: FINETUNE 90 vs PAIRTUNE 60 -> FINETUNE bold.
    for seed, acc in enumerate([0.70, 0.80, 0.90]):
        write_run(tmp_path, f"g/ft{seed}", seed=seed, test_acc=acc)
    write_run(tmp_path, "g/pt", method="pairtune", test_acc=0.85)
    write_run(tmp_path, "e/ft", dataset="esc50", fold=1, seed=None, test_acc=0.90)
    write_run(tmp_path, "e/pt", dataset="esc50", method="pairtune", fold=1, seed=None, test_acc=0.60)

    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    table = parse_markdown(out)
    assert table[("wav2vec2", "PAIRTUNE")]["gtzan"] == "**85.00 (n=1)**"
    assert table[("wav2vec2", "FINETUNE")]["gtzan"] == "80.00 ± 10.00 (n=3)"
    assert table[("wav2vec2", "FINETUNE")]["esc50"] == "**90.00 (n=1)**"
    assert table[("wav2vec2", "PAIRTUNE")]["esc50"] == "60.00 (n=1)"


def test_tie_is_not_bold(tmp_path, capsys):
    write_run(tmp_path, "ft/s0", seed=0, test_acc=0.70)
    write_run(tmp_path, "ft/s1", seed=1, test_acc=0.90)
    write_run(tmp_path, "pt/s0", method="pairtune", test_acc=0.80)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    assert "**" not in out.split("\n\n")[0]  # the table part, before the legend
    row = parse_markdown(out)
    assert row[("wav2vec2", "FINETUNE")]["gtzan"].startswith("80.00 ±")
    assert row[("wav2vec2", "PAIRTUNE")]["gtzan"] == "80.00 (n=1)"


def test_frozen_never_gets_bold_even_when_highest(tmp_path, capsys):
    write_run(tmp_path, "ft", test_acc=0.50)
    write_run(tmp_path, "pt", method="pairtune", test_acc=0.60)
    write_run(tmp_path, "fr", method="frozen", test_acc=0.99)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    table = parse_markdown(out)
    assert table[("wav2vec2", "FROZEN")]["gtzan"] == "99.00 (n=1)"
    assert table[("wav2vec2", "PAIRTUNE")]["gtzan"] == "**60.00 (n=1)**"


# ----------------------------------------------------------------------------------------------
# Rows: FROZEN, ordering, random-init label
# ----------------------------------------------------------------------------------------------


def test_frozen_row_only_when_present(tmp_path, capsys):
    write_run(tmp_path, "w/ft", test_acc=0.5)
    write_run(tmp_path, "w/pt", method="pairtune", test_acc=0.6)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    assert "FROZEN" not in out.split("\n\n")[0]

    # Add a frozen run for a second backbone only: wav2vec2 still has no FROZEN row.
    write_run(tmp_path, "h/fr", backbone="hubert", method="frozen", test_acc=0.4)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    rows = list(parse_markdown(out))
    assert rows == [
        ("hubert", "FINETUNE"),
        ("hubert", "PAIRTUNE"),
        ("hubert", "FROZEN"),
        ("wav2vec2", "FINETUNE"),
        ("wav2vec2", "PAIRTUNE"),
    ]


def test_datasets_are_sorted_columns(tmp_path, capsys):
    for ds in ["nsynth", "esc50", "gtzan"]:
        write_run(tmp_path, ds, dataset=ds)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    header = out.splitlines()[0]
    assert header == "| Backbone | Method | esc50 | gtzan | nsynth |"


def test_random_init_backbone_is_labelled_and_kept_apart(tmp_path, capsys):
    write_run(tmp_path, "r", backbone="tiny", random_init=True, test_acc=0.10)
    write_run(tmp_path, "p", backbone="tiny", random_init=False, test_acc=0.90)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    table = parse_markdown(out)
    assert table[("tiny (random init)", "FINETUNE")]["gtzan"] == "10.00 (n=1)"
    assert table[("tiny", "FINETUNE")]["gtzan"] == "90.00 (n=1)"
    # Pre-trained first, its random-init twin right after.
    assert [b for b, _ in table][::2] == ["tiny", "tiny (random init)"]


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------


def test_duplicate_run_warns_with_both_paths_and_counts_once(tmp_path, capsys):
    first = write_run(tmp_path, "a/run", seed=3, test_acc=0.70)
    second = write_run(tmp_path, "b/deeper/copy", seed=3, test_acc=0.10)
    write_run(tmp_path, "c/run", seed=4, test_acc=0.90)  # different seed: not a duplicate

    code, out, err = run_table(tmp_path, capsys)
    assert code == 0
    assert "duplicate" in err
    assert str(first) in err and str(second) in err
    # The first file in sorted order is kept: (70 + 90) / 2 = 80, n=2.
    assert parse_markdown(out)[("wav2vec2", "FINETUNE")]["gtzan"].startswith("80.00 ± ")
    assert "(n=2)" in parse_markdown(out)[("wav2vec2", "FINETUNE")]["gtzan"]


def test_same_seed_different_fold_is_not_a_duplicate(tmp_path, capsys):
    write_run(tmp_path, "f1", dataset="esc50", seed=0, fold=1, test_acc=0.6)
    write_run(tmp_path, "f2", dataset="esc50", seed=0, fold=2, test_acc=0.8)
    code, out, err = run_table(tmp_path, capsys)
    assert code == 0
    assert "duplicate" not in err
    assert "(n=2)" in parse_markdown(out)[("wav2vec2", "FINETUNE")]["esc50"]


def test_broken_and_incomplete_files_are_skipped_with_warning(tmp_path, capsys):
    write_run(tmp_path, "good", test_acc=0.75)
    broken = tmp_path / "broken" / "results.json"
    mark_finished_run(broken.parent, seed=10)
    broken.write_text("{not json")
    incomplete = tmp_path / "incomplete" / "results.json"
    mark_finished_run(incomplete.parent, seed=1)
    incomplete.write_text(json.dumps({"method": "finetune", "dataset": "gtzan", "backbone": "wav2vec2", "seed": 1}))
    percent = write_run(tmp_path, "percent", seed=2, test_acc=81.2)  # percent, not a fraction

    code, out, err = run_table(tmp_path, capsys)
    assert code == 0
    warning_lines = err.splitlines()
    assert any(str(broken) in line and "JSON" in line for line in warning_lines)
    assert any(str(incomplete) in line and "test_acc" in line for line in warning_lines)
    assert any(str(percent) in line and "test_acc" in line for line in warning_lines)
    assert parse_markdown(out)[("wav2vec2", "FINETUNE")]["gtzan"] == "75.00 (n=1)"


@pytest.mark.parametrize(
    "payload, problem",
    [
        ([1, 2, 3], "JSON object"),
        ({"method": "lora", "dataset": "g", "backbone": "b", "seed": 0, "test_acc": 0.5}, "unknown method"),
        ({"method": "finetune", "dataset": "g", "backbone": "b", "test_acc": 0.5}, "seed"),
        ({"method": "finetune", "dataset": "g", "backbone": "b", "seed": "0", "test_acc": 0.5}, "seed"),
        ({"method": "finetune", "dataset": "", "backbone": "b", "seed": 0, "test_acc": 0.5}, "dataset"),
        ({"method": "finetune", "dataset": "g", "backbone": "b", "seed": 0, "test_acc": True}, "test_acc"),
    ],
)
def test_parse_result_rejects_bad_payloads(payload, problem):
    result, message = tables.parse_result(payload)
    assert result is None
    assert problem in message


def test_parse_result_accepts_fold_only_and_defaults_random_init():
    result, message = tables.parse_result(
        {"method": "PAIRTUNE", "dataset": "esc50", "backbone": "b", "fold": 3, "test_acc": 1}
    )
    assert message is None
    assert result["method"] == "pairtune"
    assert result["seed"] is None and result["fold"] == 3
    assert result["backbone_random_init"] is False


def test_empty_dir_exits_1_with_message(tmp_path, capsys):
    code, out, err = run_table(tmp_path, capsys)
    assert code == 1
    assert str(tmp_path) in err
    assert "no usable results.json" in err
    assert out == ""
    assert not (tmp_path / "table.md").exists()


def test_only_broken_files_exits_1(tmp_path, capsys):
    broken = tmp_path / "x" / "results.json"
    mark_finished_run(broken.parent)
    broken.write_text("")
    code, _, err = run_table(tmp_path, capsys)
    assert code == 1
    assert str(broken) in err and str(tmp_path) in err


def test_nonexistent_dir_exits_1(tmp_path, capsys):
    missing = tmp_path / "nope"
    code, _, err = run_table(missing, capsys)
    assert code == 1
    assert str(missing) in err


# ----------------------------------------------------------------------------------------------
# Finding runs: run.json, finished flag, results in one place
# ----------------------------------------------------------------------------------------------


def write_json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_done_needs_a_finished_run_with_results_and_for_pairtune_its_probe(tmp_path):
    done = lambda run_dir: grid.main(["done", str(run_dir)])
    assert done(tmp_path / "nothing") == 1
    finetune = tmp_path / "ft"
    write_json(finetune / "run.json", {"stage": "finetune", "finished": False})
    (finetune / "results.json").write_text("{}")  # left from an earlier run: not this one's
    assert done(finetune) == 1
    write_json(finetune / "run.json", {"stage": "finetune", "finished": True})
    assert done(finetune) == 0
    pairtune = tmp_path / "pt"
    write_json(pairtune / "run.json", {"stage": "pairtune", "finished": True})
    assert done(pairtune) == 1  # not probed yet
    write_json(pairtune / "probe/results.json", {})
    write_json(pairtune / "probe/run.json", {"stage": "probe", "finished": False})
    assert done(pairtune) == 1  # a probe cut short
    write_json(pairtune / "probe/run.json", {"stage": "probe", "finished": True})
    assert done(pairtune) == 0 and done(pairtune / "probe") == 0
    (pairtune / "probe/run.json").write_text('{"stage": "pro')  # killed mid-write
    assert done(pairtune) == 1


def test_find_runs_skips_unfinished_and_unknown_stages_and_gives_each_its_results(tmp_path):
    write_json(tmp_path / "pt/run.json", {"stage": "pairtune", "finished": True, "dataset": "d", "backbone": "b",
                                          "args": {"seed": 1, "fold": None}})
    write_json(tmp_path / "pt/probe/run.json", {"stage": "probe", "method": "pairtune", "finished": True})
    write_json(tmp_path / "pt/probe/results.json", {})
    write_json(tmp_path / "unfinished/run.json", {"stage": "finetune", "finished": False})
    write_json(tmp_path / "other/run.json", {"stage": "lora", "finished": True})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/run.json").write_text("[1, 2")
    warnings = []
    everything = rundir.find_runs(tmp_path, ("finetune", "pairtune", "probe"), warn=warnings.append)
    assert [(f["stage"], f["method"]) for f in everything] == [("probe", "pairtune"), ("pairtune", "pairtune")]
    assert [f["results"] for f in everything] == [tmp_path / "pt/probe/results.json"] * 2
    assert everything[1]["seed"] == 1 and everything[1]["backbone"] == "b"
    assert sorted(w.split(":")[0] for w in warnings) == sorted(
        [f"skipping {tmp_path / 'broken/run.json'}", f"skipping {tmp_path / 'unfinished'}"])
    assert [f["stage"] for f in rundir.find_runs(tmp_path, warn=warnings.append)] == ["pairtune"]  # default: the arms


def test_a_finished_run_without_results_is_warned_and_left_out(tmp_path, capsys):
    write_run(tmp_path, "good", test_acc=0.75)
    mark_finished_run(tmp_path / "lost", seed=5)  # results.json deleted by hand
    code, out, err = run_table(tmp_path, capsys)
    assert code == 0 and f"{tmp_path / 'lost'}: marked finished, but it has no results.json" in err
    assert parse_markdown(out)[("wav2vec2", "FINETUNE")]["gtzan"] == "75.00 (n=1)"


def test_a_results_json_without_its_run_json_is_not_a_run(tmp_path, capsys):
    write_run(tmp_path, "good", test_acc=0.75)
    stray = write_run(tmp_path, "stray", seed=9, test_acc=0.05)
    (stray.parent / "run.json").unlink()
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0 and parse_markdown(out)[("wav2vec2", "FINETUNE")]["gtzan"] == "75.00 (n=1)"


# ----------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------


def _mixed_tree(root):
    for seed, acc in enumerate([0.70, 0.80, 0.90]):
        write_run(root, f"w/ft/s{seed}", seed=seed, test_acc=acc)
    write_run(root, "w/pt/s0", method="pairtune", seed=0, test_acc=0.85)
    write_run(root, "w/pt/s1", method="pairtune", seed=1, test_acc=0.95)
    write_run(root, "w/fr/s0", method="frozen", seed=0, test_acc=0.4)
    for fold, acc in [(1, 0.5), (2, 0.6)]:
        write_run(root, f"t/esc/f{fold}", backbone="tiny", random_init=True,
                  dataset="esc50", seed=None, fold=fold, test_acc=acc)


def test_csv_and_json_agree_with_markdown(tmp_path, capsys):
    _mixed_tree(tmp_path)
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0
    md = (tmp_path / "table.md").read_text()
    assert md == out  # the file holds exactly what was printed
    assert tables.LEGEND in md

    table = parse_markdown(md)
    with open(tmp_path / "table.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    data = json.loads((tmp_path / "table.json").read_text())

    non_missing = {(b, m, d): text for (b, m), cells in table.items()
                   for d, text in cells.items() if text != "–"}
    assert len(csv_rows) == len(non_missing) == 4

    for row in csv_rows:
        md_text = non_missing[(row["backbone"], row["method"].upper(), row["dataset"])]
        expected = f"{float(row['mean_pct']):.2f}"
        if row["std_pct"]:
            expected += f" ± {float(row['std_pct']):.2f}"
        expected += f" (n={row['n']})"
        bold = row["best"] == "True"
        assert md_text == (f"**{expected}**" if bold else expected)

        cell = data["backbones"][row["backbone"]][row["method"]][row["dataset"]]
        assert cell["mean"] == pytest.approx(float(row["mean_pct"]))
        assert cell["n"] == int(row["n"])
        assert cell["best"] == bold
        assert len(cell["runs"]) == cell["n"]

    assert data["datasets"] == ["esc50", "gtzan"]
    assert list(data["backbones"]) == ["tiny (random init)", "wav2vec2"]
    assert data["backbones"]["wav2vec2"]["pairtune"]["gtzan"]["mean"] == pytest.approx(90.0)
    assert table[("wav2vec2", "PAIRTUNE")]["gtzan"] == "**90.00 ± 7.07 (n=2)**"


def test_out_directory_and_out_file(tmp_path, capsys):
    runs = tmp_path / "runs"
    _mixed_tree(runs)

    out_dir = tmp_path / "reports"
    code, out, _ = run_table(runs, capsys, "--out", str(out_dir))
    assert code == 0
    assert (out_dir / "table.md").read_text() == out
    assert (out_dir / "table.csv").exists() and (out_dir / "table.json").exists()
    assert not (runs / "table.md").exists()

    out_file = tmp_path / "other" / "main.md"
    code, out, _ = run_table(runs, capsys, "--out", str(out_file))
    assert code == 0
    assert out_file.read_text() == out
    assert out_file.with_suffix(".csv").exists() and out_file.with_suffix(".json").exists()


def test_rerun_ignores_its_own_outputs(tmp_path, capsys):
    _mixed_tree(tmp_path)
    code, first, _ = run_table(tmp_path, capsys)
    assert code == 0
    code, second, err = run_table(tmp_path, capsys)
    assert code == 0
    assert second == first
    assert "warning" not in err


def test_cli_subprocess_prints_table(tmp_path):
    _mixed_tree(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(EVAL_PY), "table", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "| Backbone | Method | esc50 | gtzan |"
    assert "| wav2vec2 | FINETUNE | – | 80.00 ± 10.00 (n=3) |" in proc.stdout
    assert "| tiny (random init) | FINETUNE | 55.00 ± 7.07 (n=2) | – |" in proc.stdout
    assert proc.stdout.rstrip().endswith(tables.LEGEND)
    assert (tmp_path / "table.md").exists()


def test_cli_subprocess_empty_dir_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EVAL_PY), "table", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert str(tmp_path) in proc.stderr


# ----------------------------------------------------------------------------------------------
# Geometry: anisotropy and dimensionality contribution, against O(N^2) definitions
# ----------------------------------------------------------------------------------------------

def _pairwise_reference(x):
    """Mean over ordered pairs n != m of the cosine, and of each dimension's product u_ni u_mi."""
    u = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x.tolist()]
    n, d = len(u), len(u[0])
    total_cos, per_dim = 0.0, [0.0] * d
    for a in range(n):
        for b in range(n):
            if a != b:
                for i in range(d):
                    product = u[a][i] * u[b][i]
                    per_dim[i] += product
                    total_cos += product
    pairs = n * (n - 1)
    return total_cos / pairs, [v / pairs for v in per_dim]


def test_anisotropy_and_contributions_match_the_pairwise_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5)) + np.array([2.0, 0, 0, -1.0, 0])  # a shifted, anisotropic cloud
    want_cos, want_cc = _pairwise_reference(x)
    assert ev.anisotropy(x) == pytest.approx(want_cos, abs=1e-12)
    assert ev.cosine_contributions(x) == pytest.approx(want_cc, abs=1e-12)
    assert want_cos > 0.2  # the shift makes it clearly anisotropic, so the check is not of zeros


def test_dimension_contribution_by_hand():
    # Three clips; u rows: (1,0,0), (1,0,0), (0.6,0.8,0). Pairs (ordered, distinct): 6.
    # CC_0 = [(1+1+0.6)^2 - (1+1+0.36)] / 6 = (6.76 - 2.36) / 6 = 0.7333
    # CC_1 = [(0.8)^2 - 0.64] / 6 = 0; CC_2 = 0. So dimension 0 carries everything.
    x = np.array([[2.0, 0, 0], [5.0, 0, 0], [3.0, 4.0, 0]])
    result = ev.dimension_contribution(x)
    assert result["anisotropy"] == pytest.approx(4.4 / 6)
    assert result["top1"] == pytest.approx(1.0) and result["dims50"] == result["dims90"] == 1
    assert result["top_dimensions"][0] == 0 and result["signed_top1"] == pytest.approx(1.0)
    # two equal dimensions: each holds half, so 50% needs 1 dimension and 80% needs 2
    y = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    result = ev.dimension_contribution(y)
    assert result["top1"] == pytest.approx(0.5) and result["top2"] == pytest.approx(1.0)
    assert (result["dims50"], result["dims80"], result["dims90"]) == (1, 2, 2)


def test_isotropy_and_dimcontrib_commands(tmp_path, capsys):
    rng = np.random.default_rng(1)
    a, b = tmp_path / "finetune.npy", tmp_path / "pairtune.npy"
    np.save(a, rng.normal(size=(40, 8)) + 3.0)
    np.save(b, rng.normal(size=(40, 8)))
    assert ev.main(["isotropy", "--features", str(a), str(b), "--json", str(tmp_path / "iso.json")]) == 0
    saved = json.loads((tmp_path / "iso.json").read_text())
    assert saved[str(a)]["anisotropy"] == pytest.approx(ev.anisotropy(np.load(a)))
    assert saved[str(a)]["anisotropy"] > 0.5 > abs(saved[str(b)]["anisotropy"])
    assert ev.main(["dimcontrib", "--features", str(a)]) == 0
    assert "| dims50 |" in capsys.readouterr().out
    assert ev.main(["isotropy", "--ckpt", str(tmp_path)]) == 1
    assert "not a run folder (no run.json)" in capsys.readouterr().err


def test_the_training_batch_size_shows_in_the_cells_where_it_differs(tmp_path, capsys):
    # FineTune's batch size is in its run.json; PairTune's in the run.json above its probe/ folder.
    def with_batch(run_dir, batch):
        run = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**run, "args": {**run["args"], "batch_size": batch}}))

    for seed in (0, 1):
        with_batch(write_run(tmp_path, f"gtzan/ft/s{seed}", seed=seed).parent, 64)
        probe = write_run(tmp_path, f"gtzan/pt/s{seed}/probe", method="pairtune", seed=seed).parent
        (probe.parent / "run.json").write_text(json.dumps({"stage": "pairtune", "finished": True,
                                                           "args": {"batch_size": 32}}))
    code, out, _ = run_table(tmp_path, capsys)
    table = parse_markdown(out)
    assert table[("wav2vec2", "FINETUNE")]["gtzan"] == "80.00 ± 0.00 (n=2, b=64)"
    assert table[("wav2vec2", "PAIRTUNE")]["gtzan"].endswith("(n=2, b=32)")
    cells = tables.summarise(tables.collect_results(tmp_path))["backbones"]["wav2vec2"]
    assert cells["finetune"]["gtzan"]["batch_sizes"] == [64] and cells["pairtune"]["gtzan"]["batch_sizes"] == [32]
    for seed in (0, 1):  # one batch size everywhere: nothing to note
        with_batch(tmp_path / f"gtzan/ft/s{seed}", 32)
    code, out, _ = run_table(tmp_path, capsys)
    assert parse_markdown(out)[("wav2vec2", "FINETUNE")]["gtzan"] == "80.00 ± 0.00 (n=2)"


def test_the_report_names_the_runs_the_grid_is_missing(tmp_path, capsys):
    write_run(tmp_path, "gtzan/ft/s0")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "missing.txt").write_text("runs/gtzan/wav2vec2/pairtune/seed-0\nruns/x/seed-1\n")
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**Missing: 2 run(s)**" in report and "- `runs/x/seed-1`" in report
    (tmp_path / "report" / "missing.txt").unlink()
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 0
    assert "Missing" not in (tmp_path / "report" / "report.md").read_text()


# ----------------------------------------------------------------------------------------------
# The k-NN probe beside the linear one: --probe linear | knn | both
# ----------------------------------------------------------------------------------------------


def test_the_table_shows_the_knn_probe_alone_or_under_each_linear_row(tmp_path, capsys):
    for seed, (linear, nearest) in enumerate([(0.70, 0.60), (0.90, 0.70)]):
        write_run(tmp_path, f"ft/s{seed}", seed=seed, test_acc=linear, knn_test_acc=nearest)
        write_run(tmp_path, f"pt/s{seed}", method="pairtune", seed=seed, test_acc=0.75, knn_test_acc=0.80)
    write_run(tmp_path, "frozen/s0", method="frozen", test_acc=0.5)  # an older run: no k-NN result
    _, out, _ = run_table(tmp_path, capsys, "--probe", "both")
    table = parse_markdown(out)
    assert list(table) == [("wav2vec2", "FINETUNE"), ("wav2vec2", "FINETUNE k-NN"), ("wav2vec2", "PAIRTUNE"),
                           ("wav2vec2", "PAIRTUNE k-NN"), ("wav2vec2", "FROZEN")]
    assert table[("wav2vec2", "FINETUNE")]["gtzan"] == "**80.00 ± 14.14 (n=2)**"  # linear: FineTune better
    assert table[("wav2vec2", "FINETUNE k-NN")]["gtzan"] == "65.00 ± 7.07 (n=2)"
    assert table[("wav2vec2", "PAIRTUNE k-NN")]["gtzan"] == "**80.00 ± 0.00 (n=2)**"  # k-NN: PairTune better
    _, out, _ = run_table(tmp_path, capsys, "--probe", "knn")
    assert list(parse_markdown(out)) == [("wav2vec2", "FINETUNE k-NN"), ("wav2vec2", "PAIRTUNE k-NN")]
    _, out, _ = run_table(tmp_path, capsys)  # the default: the linear probe, as before
    assert list(parse_markdown(out)) == [("wav2vec2", "FINETUNE"), ("wav2vec2", "PAIRTUNE"), ("wav2vec2", "FROZEN")]


def test_a_knn_table_of_runs_without_knn_results_is_an_error_and_a_bad_value_is_skipped(tmp_path, capsys):
    write_run(tmp_path, "ft/s0", test_acc=0.8)
    code, _, err = run_table(tmp_path, capsys, "--probe", "knn")
    assert code == 1 and "no run under" in err and "k-NN" in err
    write_run(tmp_path, "ft/s1", seed=1, test_acc=0.8, knn_test_acc=81.0)  # a percentage by mistake
    code, out, err = run_table(tmp_path, capsys)
    assert "knn_test_acc must be a fraction" in err and "(n=1)" in out
