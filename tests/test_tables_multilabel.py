"""Table 2 with a multi-label dataset: its cells are test mAP (results.json's test_map, macro mAP), its column
says "(mAP)", its caption says how mAP is computed; hand-written results.json files of both kinds, the numbers
checked against mean and sample std computed here with the statistics module; malformed or mixed files refused."""
import csv
import io
import json
import statistics
from pathlib import Path

import pytest

import tables
from test_eval import mark_finished_run, parse_markdown, run_table

SEEDS = (0, 1, 2)
# (method, seed) -> score, as fractions: gtzan by accuracy (single-label), mix by macro mAP (multi-label)
GTZAN = {("finetune", 0): 0.70, ("finetune", 1): 0.80, ("finetune", 2): 0.75,
         ("pairtune", 0): 0.78, ("pairtune", 1): 0.82, ("pairtune", 2): 0.80}
MIX = {("finetune", 0): 0.412, ("finetune", 1): 0.455, ("finetune", 2): 0.431,
       ("pairtune", 0): 0.389, ("pairtune", 1): 0.402, ("pairtune", 2): 0.377}
MIX_KNN = {("finetune", 0): 0.301, ("finetune", 1): 0.322, ("finetune", 2): 0.310,
           ("pairtune", 0): 0.350, ("pairtune", 1): 0.341, ("pairtune", 2): 0.366}


def multilabel_payload(method, dataset, seed, test_map, knn_test_map=None, **extra):
    """A multi-label run's results.json as the contract writes it: no test_acc; multilabel, metric, test_map,
    valid_map, F1 at valid's thresholds, per-class AP (the k-NN probe's fields where given)."""
    payload = {"method": method, "dataset": dataset, "backbone": "wav2vec2", "backbone_random_init": False,
               "seed": seed, "fold": None, "multilabel": True, "metric": "map", "test_map": test_map,
               "valid_map": 0.5, "test_micro_f1": 0.6, "test_macro_f1": 0.55, "classes": ["a", "b"],
               "test_per_class_ap": {"a": 0.5, "b": None}, "thresholds": {"a": 0.4, "b": 0.5}}
    if knn_test_map is not None:
        payload.update(knn_test_map=knn_test_map, knn_valid_map=0.4, knn_test_micro_f1=0.5, knn_test_macro_f1=0.45,
                       knn_k=10)
    return {**payload, **extra}


def write_results(root, subdir, payload):
    """A finished run folder holding `payload` as its results.json; returns that file."""
    run_dir = Path(root) / subdir
    mark_finished_run(run_dir, payload["method"], payload["dataset"], payload["backbone"], payload["seed"])
    path = run_dir / "results.json"
    path.write_text(json.dumps(payload))
    return path


def write_tree(root):
    """Three seeds of FINETUNE and PAIRTUNE on gtzan (accuracy, no k-NN) and on mix (mAP, with the k-NN probe)."""
    for (method, seed), acc in GTZAN.items():
        write_results(root, f"gtzan/{method}/seed-{seed}", {
            "method": method, "dataset": "gtzan", "backbone": "wav2vec2", "seed": seed, "fold": None,
            "test_acc": acc, "valid_acc": 0.5})
    for (method, seed), test_map in MIX.items():
        write_results(root, f"mix/{method}/seed-{seed}",
                      multilabel_payload(method, "mix", seed, test_map, MIX_KNN[(method, seed)]))


def expected_cell(scores, method, bold=False):
    """The cell text from the statistics module: mean and sample std (n - 1) in percent over the seeds."""
    values = [100 * scores[(method, seed)] for seed in SEEDS]
    text = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"
    return f"**{text}**" if bold else text


def better(scores):
    """The arm with the higher mean (the one Table 2 puts in bold)."""
    means = {method: statistics.mean(scores[(method, seed)] for seed in SEEDS) for method in ("finetune", "pairtune")}
    return max(means, key=means.get)


def caption(markdown):
    return markdown.rstrip().splitlines()[-1]


def test_a_multilabel_dataset_shows_its_map_marked_and_explained_beside_an_accuracy_one(tmp_path, capsys):
    write_tree(tmp_path)
    code, out, err = run_table(tmp_path, capsys)
    assert code == 0, err
    table = parse_markdown(out)
    assert list(table[("wav2vec2", "FINETUNE")]) == ["gtzan", "mix (mAP)"]  # only the mAP column is marked
    for method in ("finetune", "pairtune"):
        row = table[("wav2vec2", method.upper())]
        assert row["mix (mAP)"] == expected_cell(MIX, method, bold=better(MIX) == method)
        assert row["gtzan"] == expected_cell(GTZAN, method, bold=better(GTZAN) == method)
    assert better(MIX) == "finetune" and better(GTZAN) == "pairtune"  # best-marking within each dataset
    assert caption(out).startswith("Test accuracy (%) or macro mAP (%), mean ± sample std")
    assert "Multi-label datasets, marked (mAP), are scored by macro mAP (%)" in caption(out)
    assert "averaged over the classes with at least one positive test clip" in caption(out)

    # the CSV and JSON hold the same numbers, each cell with its metric
    rows = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
    assert list(rows[0]) == list(tables.CSV_COLUMNS) + ["metric"]
    mix = {row["method"]: row for row in rows if row["dataset"] == "mix"}
    values = [100 * MIX[("pairtune", seed)] for seed in SEEDS]
    assert mix["pairtune"]["metric"] == "map" and {row["metric"] for row in rows if row["dataset"] == "gtzan"} == {
        "acc"}
    assert float(mix["pairtune"]["mean_pct"]) == pytest.approx(statistics.mean(values))
    assert float(mix["pairtune"]["std_pct"]) == pytest.approx(statistics.stdev(values))
    payload = json.loads((tmp_path / "table.json").read_text())
    assert payload["metrics"] == {"gtzan": "acc", "mix": "map"} and payload["legend"] == caption(out)
    cell = payload["backbones"]["wav2vec2"]["finetune"]["mix"]
    assert [run["test_map"] for run in cell["runs"]] == [MIX[("finetune", seed)] for seed in SEEDS]
    assert "test_acc" not in cell["runs"][0]
    gtzan_run = payload["backbones"]["wav2vec2"]["finetune"]["gtzan"]["runs"][0]
    assert gtzan_run["test_acc"] == GTZAN[("finetune", 0)] and "test_map" not in gtzan_run


def test_the_knn_table_shows_the_knn_probes_map(tmp_path, capsys):
    write_tree(tmp_path)
    code, out, err = run_table(tmp_path, capsys, "--probe", "knn")
    assert code == 0, err
    table = parse_markdown(out)
    assert list(table) == [("wav2vec2", "FINETUNE k-NN"), ("wav2vec2", "PAIRTUNE k-NN")]
    assert list(table[("wav2vec2", "FINETUNE k-NN")]) == ["mix (mAP)"]  # gtzan's runs have no k-NN result
    for method in ("finetune", "pairtune"):
        assert table[("wav2vec2", f"{method.upper()} k-NN")]["mix (mAP)"] == expected_cell(
            MIX_KNN, method, bold=better(MIX_KNN) == method)
    assert caption(out).startswith("Test macro mAP (%) of the k-NN probe")  # only mAP in this table
    assert "are scored by macro mAP" in caption(out)

    code, out, err = run_table(tmp_path, capsys, "--probe", "both")
    assert code == 0, err
    table = parse_markdown(out)
    assert table[("wav2vec2", "PAIRTUNE k-NN")]["mix (mAP)"] == expected_cell(MIX_KNN, "pairtune", bold=True)
    assert table[("wav2vec2", "PAIRTUNE")]["mix (mAP)"] == expected_cell(MIX, "pairtune")
    assert table[("wav2vec2", "PAIRTUNE k-NN")]["gtzan"] == "–"
    assert "k-NN rows" in caption(out) and "are scored by macro mAP" in caption(out)
    assert json.loads((tmp_path / "table-both.json").read_text())["metrics"] == {"gtzan": "acc", "mix": "map"}


def test_a_single_label_table_has_no_metric_marks(tmp_path, capsys):
    for (method, seed), acc in GTZAN.items():
        write_results(tmp_path, f"{method}/{seed}", {"method": method, "dataset": "gtzan", "backbone": "wav2vec2",
                                                      "seed": seed, "fold": None, "test_acc": acc})
    code, out, _ = run_table(tmp_path, capsys)
    assert code == 0 and "mAP" not in out and caption(out) == tables.LEGEND
    assert "metrics" not in json.loads((tmp_path / "table.json").read_text())
    assert (tmp_path / "table.csv").read_text().splitlines()[0] == ",".join(tables.CSV_COLUMNS)


def test_parse_result_reads_a_multilabel_result():
    result, problem = tables.parse_result(multilabel_payload("PAIRTUNE", "mix", 1, 0.25, 0.5))
    assert problem is None
    assert result["metric"] == "map" and result["test_map"] == 0.25 and result["knn_test_map"] == 0.5
    assert result["valid_map"] == 0.5 and "test_acc" not in result
    single, problem = tables.parse_result({"method": "finetune", "dataset": "g", "backbone": "b", "seed": 0,
                                           "test_acc": 0.5})
    assert problem is None and single["metric"] == "acc" and single["knn_test_acc"] is None


@pytest.mark.parametrize("change, problem", [
    ({"multilabel": "yes"}, "multilabel must be true or false"),
    ({"metric": "acc"}, 'a multi-label result must say "metric": "map"'),
    ({"metric": None}, 'a multi-label result must say "metric": "map"'),
    ({"test_map": None}, "test_map must be a fraction in [0, 1], got None"),
    ({"test_map": 43.1}, "test_map must be a fraction in [0, 1], got 43.1"),
    ({"test_map": float("nan")}, "test_map must be a fraction"),
    ({"test_map": True}, "test_map must be a fraction"),
    ({"knn_test_map": 1.5}, "knn_test_map must be a fraction in [0, 1]"),
    ({"test_acc": 0.8}, "a multi-label result is scored by test_map, but it also has test_acc"),
    ({"knn_test_acc": 0.8}, "also has knn_test_acc"),
])
def test_parse_result_refuses_a_malformed_multilabel_result(change, problem):
    result, message = tables.parse_result({**multilabel_payload("finetune", "mix", 0, 0.4), **change})
    assert result is None and problem in message


def test_parse_result_refuses_a_missing_test_map_and_map_fields_without_the_multilabel_flag():
    payload = multilabel_payload("finetune", "mix", 0, 0.4)
    del payload["test_map"]
    assert tables.parse_result(payload) == (None, "missing required field(s): test_map")
    single = {"method": "finetune", "dataset": "g", "backbone": "b", "seed": 0, "test_acc": 0.5}
    for stray in ({"test_map": 0.4}, {"knn_test_map": 0.4}, {"metric": "map"}):
        result, message = tables.parse_result({**single, **stray})
        assert result is None and 'but not "multilabel": true' in message
    del single["test_acc"]  # a multi-label result that forgot its flag: told what a multi-label one says
    result, message = tables.parse_result({**single, "test_map": 0.4})
    assert result is None and '"multilabel": true, "metric": "map"' in message


def test_a_malformed_multilabel_file_is_skipped_with_its_reason(tmp_path, capsys):
    write_tree(tmp_path)
    bad = write_results(tmp_path, "mix/finetune/seed-9", multilabel_payload("finetune", "mix", 9, 45.5))
    code, out, err = run_table(tmp_path, capsys)
    assert code == 0
    assert f"skipping {bad}: test_map must be a fraction in [0, 1], got 45.5" in err
    assert parse_markdown(out)[("wav2vec2", "FINETUNE")]["mix (mAP)"].endswith("(n=3)**")


def test_a_dataset_with_both_accuracy_and_map_runs_is_refused_naming_one_of_each(tmp_path, capsys):
    write_tree(tmp_path)
    odd = write_results(tmp_path, "mix-old/finetune/seed-7", {"method": "finetune", "dataset": "mix",
                                                              "backbone": "wav2vec2", "seed": 7, "test_acc": 0.6})
    code, out, err = run_table(tmp_path, capsys)
    assert code == 1 and out == "" and not (tmp_path / "table.md").exists()
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: dataset 'mix' has runs scored by accuracy (e.g. ")
    assert str(odd) in message and str(tmp_path / "mix/finetune/seed-0/results.json") in message
    with pytest.raises(tables.MixedMetrics, match="one dataset must have one metric"):
        tables.summarise(tables.collect_results(tmp_path))
    code, _, err = run_table(tmp_path, capsys, "--probe", "knn")  # refused whatever the probe
    assert code == 1 and "dataset 'mix'" in err
