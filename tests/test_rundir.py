"""rundir.py, the one reader of a run folder: its run record read once with each caller's wording, the log's
valid accuracy under either key, and the names of the layout that outdir.py's rules are built from."""

import json
import re
from pathlib import Path

import pytest

import outdir
import rundir


def write_log(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / rundir.LOG_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_a_log_line_gives_valid_acc_else_valid_metric_acc(tmp_path):
    # FineTune's classifier logs valid_acc; PairTune logs its selection metric's accuracy as valid_metric_acc,
    # and logged it as valid_acc before: every kind is a point of the curve, valid_acc first where both are.
    finetune = write_log(tmp_path / "ft", [{"epoch": 1, "valid_acc": 0.5, "valid_metric": "classifier"}])
    pairtune = write_log(tmp_path / "pt", [{"epoch": 1, "valid_metric_acc": 0.25, "valid_metric": "epoch-centroid"},
                                           {"epoch": 2, "valid_metric_acc": 0.75, "valid_metric": "epoch-centroid"}])
    older = write_log(tmp_path / "old", [{"epoch": 1, "valid_acc": 0.3, "valid_metric": "centroid"},
                                         {"epoch": 2, "valid_acc": 0.4}])
    both = write_log(tmp_path / "both", [{"epoch": 1, "valid_acc": 0.1, "valid_metric_acc": 0.9}])
    assert rundir.read_log(finetune) == {1: 0.5}
    assert rundir.read_log(pairtune) == {1: 0.25, 2: 0.75}
    assert rundir.read_log(older) == {1: 0.3, 2: 0.4}
    assert rundir.read_log(both) == {1: 0.1}
    lines = rundir.read_log_lines(pairtune, needs=rundir.CURVE_FIELDS)
    assert rundir.valid_metric(lines, "centroid") == "epoch-centroid"


def test_a_log_line_without_a_numeric_valid_accuracy_is_left_out_with_one_warning(tmp_path):
    run = write_log(tmp_path / "pt", [{"epoch": 1, "valid_metric_acc": 0.5}, {"epoch": 2, "train_loss": 1.0},
                                      {"epoch": 3, "valid_metric_acc": None}, {"epoch": 4, "valid_acc": "0.5"}])
    warnings = []
    assert rundir.read_log(run, warn=warnings.append) == {1: 0.5}
    assert len(warnings) == 1 and "lines 2, 3, 4" in warnings[0]
    assert "with epoch and valid_acc or valid_metric_acc" in warnings[0]


@pytest.mark.parametrize("content, report, script", [
    (None, "not a run folder (no run.json)", "cannot be read (FileNotFoundError"),
    ('{"stage": "finet', "not valid JSON", "cannot be read (JSONDecodeError"),
    ("[1, 2]", "expected a JSON object, got list", "is not a run record (expected a JSON object, got list)"),
    ('{"stage": 3}', "not a run record ('stage' is int, not a string)", "is not a run record ('stage' is int"),
])
def test_one_reader_of_run_json_worded_for_a_report_and_for_a_script(tmp_path, content, report, script):
    if content is not None:
        (tmp_path / rundir.RUN_JSON).write_text(content)
    with pytest.raises(rundir.RunRecordError) as raised:
        rundir.read_run_json(tmp_path)
    assert report in str(raised.value) and isinstance(raised.value, ValueError)
    with pytest.raises(outdir.Refused) as refused:
        outdir.read_run_json(tmp_path)
    assert script in str(refused.value) and str(tmp_path / rundir.RUN_JSON) in str(refused.value)
    assert "move the folder aside" in str(refused.value)


def test_read_finished_needs_the_finished_flag_and_with_results_its_results(tmp_path):
    (tmp_path / rundir.RUN_JSON).write_text(json.dumps({"stage": "finetune", "finished": False}))
    with pytest.raises(ValueError, match="the finetune run is not finished"):
        rundir.read_finished(tmp_path, results=False)
    (tmp_path / rundir.RUN_JSON).write_text(json.dumps({"stage": "finetune", "finished": True}))
    assert rundir.read_finished(tmp_path, results=False)["finished"]
    with pytest.raises(ValueError, match="not finished"):
        rundir.read_finished(tmp_path)
    (tmp_path / rundir.RESULTS).write_text("{}")
    assert rundir.read_finished(tmp_path)["stage"] == "finetune"


def test_the_layout_names_outdir_builds_its_rules_from():
    # The names --overwrite removes and the temporaries a kill leaves, as they were spelled out before rundir.py.
    assert outdir.STAGE_FILES == {
        "pairtune": ["run.json", "log.jsonl", "checkpoint.pt", "best-e*.pt", "encoder", "encoder-last", "features",
                     "probe", "results.json"],
        "finetune": ["run.json", "log.jsonl", "checkpoint.pt", "best-e*.pt", "encoder", "head.pt", "features",
                     "results.json"],
        "probe": ["run.json", "head.pt", "features", "results.json"]}
    for name in ("run.json", "log.jsonl", "checkpoint.pt", "best-e12.pt", "results.json", "head.pt"):
        assert outdir.is_leftover_temporary(f".{name}.k2_9abcd.tmp")
        assert not outdir.is_leftover_temporary(f"{name}.k2_9abcd.tmp")
    for name in (".best-e.pt.k2_9abcd.tmp", ".best-ex.pt.k2_9abcd.tmp", ".encoder.k2_9abcd.tmp",
                 ".run.json.k2_9abc.tmp", ".runxjson.k2_9abcd.tmp"):
        assert not outdir.is_leftover_temporary(name)
    assert rundir.best_file_name(7) == "best-e7.pt" and rundir.EXPORT_INFO == "audioconfit.json"
    assert rundir.feature_dir("RUN", "esc50", 3).as_posix() == "RUN/features/esc50-fold3"
    assert rundir.feature_dir("RUN", "gtzan", None).as_posix() == "RUN/features/gtzan"


def test_the_layout_is_named_in_rundir_only():
    # One home for the layout: outside rundir.py, no project file spells a run record's or a log's name as a
    # string (prose in docstrings may name them). Written against the files themselves, so a new script
    # reading "run.json" by hand fails here.
    root = Path(__file__).resolve().parents[1]
    spelled = re.compile(r"""(?<!["'])["'](run\.json|log\.jsonl|checkpoint\.pt)["']"""
                         r"""|/ *["'](results\.json|head\.pt)["']""")
    found = [f"{path.name}:{number}: {line.strip()}" for path in sorted([*root.glob("*.py"), *root.glob("*.sh")])
             if path.name != "rundir.py"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if spelled.search(line)]
    assert not found, "\n".join(found)
