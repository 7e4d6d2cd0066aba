"""Tests for `grid.py plan`: jobs done and left, and device-hours from earlier runs' logs, on a hand-built
tree of manifests (no audio) and runs whose run.json, log.jsonl and results.json mimic finetune.py's,
pairtune.py's and probe.py's. Every expected number is worked out by hand in the comments."""

import io
import json
import sys
from pathlib import Path

import pytest

import grid

CLASSES = [f"class{i}" for i in range(10)]


def write_manifest(path, per_class, folds=None):
    """A manifest of 10 classes, per_class = {split: clips of each class}; with folds, a fold column. The audio
    files do not exist: the plan reads rows only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,split" + (",fold" if folds else "")]
    for label in CLASSES:
        for split, count in per_class.items():
            for i in range(count):
                fold = f",{i % folds + 1}" if folds else ""
                rows.append(f"audio/{label}_{split}_{i}.wav,{label},{split}{fold}")
    path.write_text("\n".join(rows) + "\n")
    return path


def write_run(run_dir, stage, lines, finished=True, probed=None, dataset="demo", backbone="tiny", device="cpu",
              clips=None):
    """A finetune.py or pairtune.py run folder: run.json (as runs.new_run writes it, marked finished at the end),
    log.jsonl and, when finished, results.json (FineTune) or, when probed, probe/ (PairTune)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    args = {"dataset": dataset, "backbone": backbone, "device": device, "seed": 0, "fold": None, "epochs": 40}
    if stage == "pairtune":
        args["centroid_clips_per_class"] = 32
    run = {"stage": stage, "args": args, "dataset": dataset, "manifest": f"data/{dataset}/manifest.csv",
           "backbone": backbone, "backbone_random_init": backbone == "tiny", "classes": CLASSES,
           "clips": clips or {"train": 240, "valid": 80, "test": 80}, "finished": finished}
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "log.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "train_loss": 2.3, "valid_acc": 0.1,
                                                           **line}) + "\n" for i, line in enumerate(lines)))
    results = {"method": stage, "dataset": dataset, "backbone": backbone, "seed": 0, "fold": None,
               "test_acc": 0.1, "valid_acc": 0.1}
    if finished and stage == "finetune":
        (run_dir / "results.json").write_text(json.dumps(results))
    if probed is not None:
        (run_dir / "probe").mkdir()
        (run_dir / "probe" / "run.json").write_text(json.dumps({**run, "stage": "probe", "method": "pairtune",
                                                                "finished": probed}))
        (run_dir / "probe" / "results.json").write_text(json.dumps(results))


# demo's tiny FineTune epochs: 10, 40, 40 s, and 10, 10 s of a killed run: median 10 s (mean 22 s; 40 s
# without the killed run's). PairTune's: median 8 s; 100 clips/s and 0.01 s per clip of its valid metric
# (3.2 s over valid 80 + its train subset min(240, 32 x 10) = 320 clips).
FINETUNE_LINES = [{"seconds": s, "valid_metric": "classifier", "valid_seconds": 1.0, "clips_per_s": 30.0}
                  for s in (10, 40, 40)]
PAIRTUNE_LINES = [{"seconds": s, "valid_metric": "centroid", "valid_seconds": v, "clips_per_s": c,
                   "peak_memory_mb": 900.0} for s, v, c in ((8, 3.2, 100), (8, 3.2, 100), (12, 6.4, 50))]


@pytest.fixture
def tree(tmp_path):
    """Manifests, earlier runs and a job list of 2 search jobs and 8 grid jobs."""
    write_manifest(tmp_path / "data" / "demo" / "manifest.csv", {"train": 24, "valid": 8, "test": 8})
    write_manifest(tmp_path / "data" / "gtzan" / "manifest.csv", {"train": 40, "valid": 10, "test": 10})
    runs = tmp_path / "runs"
    write_run(runs / "demo/tiny/finetune/seed-0", "finetune", FINETUNE_LINES)  # done
    write_run(runs / "demo/tiny/finetune/seed-1", "finetune", [{"seconds": 10}] * 2, finished=False)  # killed
    write_run(runs / "demo/tiny/pairtune/seed-0", "pairtune", PAIRTUNE_LINES, probed=True, device="auto")  # done
    write_run(runs / "demo/tiny/pairtune/seed-1", "pairtune", PAIRTUNE_LINES, probed=False, device="auto")
    jobs = [("runs-search/demo/tiny/finetune/batch-32/seed-0", "demo", "tiny", "finetune", ""),
            ("runs/demo/tiny/finetune/seed-0", "demo", "tiny", "finetune", ""),
            ("runs/demo/tiny/finetune/seed-1", "demo", "tiny", "finetune", ""),
            ("runs/demo/tiny/finetune/seed-2", "demo", "tiny", "finetune", ""),
            ("runs/demo/tiny/pairtune/seed-0", "demo", "tiny", "pairtune", ""),
            ("runs/demo/tiny/pairtune/seed-1", "demo", "tiny", "pairtune", ""),
            ("runs/gtzan/tiny/pairtune/seed-0", "gtzan", "tiny", "pairtune", ""),
            ("runs/gtzan/tiny/pairtune/seed-1", "gtzan", "tiny", "pairtune", ""),
            ("runs/gtzan/wav2vec2/finetune/seed-0", "gtzan", "wav2vec2", "finetune", ""),
            ("runs/esc50/tiny/pairtune/fold-3", "esc50", "tiny", "pairtune", "3")]
    tsv = "".join(f"{n}\t{tmp_path / out}\t{dataset}\t{backbone}\t{arm}\t40\t{fold}\n"
                  for n, (out, dataset, backbone, arm, fold) in enumerate(jobs, 1))
    return tmp_path, tsv


def plan(root, tsv, monkeypatch, capsys, search_jobs=2):
    monkeypatch.setattr(sys, "stdin", io.StringIO(tsv))
    code = grid.main(["plan", "--search-jobs", str(search_jobs), "--logs", str(root / "runs"),
                    "--logs", str(root / "runs-search"), "--logs", str(root / "runs-timing"),
                    "--data-root", str(root / "data")])
    return code, capsys.readouterr().out


def row(out, dataset, backbone, arm):
    """(left, s/epoch, hours, source) of one cell's table row."""
    for line in out.splitlines():
        fields = line.split()
        if fields[:3] == [dataset, backbone, arm]:
            return fields[3], fields[4], fields[5], " ".join(fields[6:])
    raise AssertionError(f"no row for {dataset} {backbone} {arm} in:\n{out}")


def test_counts_jobs_done_and_left_by_grid_py_done_rule(tree, monkeypatch, capsys):
    # done: the finished FineTune run and the PairTune run whose probe finished; not done: a killed run, a
    # PairTune run whose probe has not finished, and every job without a folder.
    code, out = plan(*tree, monkeypatch, capsys)
    assert code == 0
    assert out.splitlines()[0] == ("jobs: 10 total, 2 done, 8 left (batch-size search: 2 total, 1 done, 1 left; "
                                   "grid: 8 total, 1 done, 7 left)")


def test_same_cell_is_the_median_epoch_times_epochs(tree, monkeypatch, capsys):
    _, out = plan(*tree, monkeypatch, capsys)
    # median of 10, 40, 40 and the killed run's 10, 10 s = 10 s; 3 jobs x 40 epochs x 10 s = 1200 s = 0.33 h
    assert row(out, "demo", "tiny", "finetune") == ("3", "10.0", "0.33", "same cell (2 logs, cpu)")
    # median 8 s; 1 job x 40 x 8 s = 320 s = 0.09 h; device auto with peak_memory_mb: CUDA
    assert row(out, "demo", "tiny", "pairtune") == ("1", "8.0", "0.09", "same cell (2 logs, cuda)")


def test_other_dataset_is_scaled_by_clips(tree, monkeypatch, capsys):
    _, out = plan(*tree, monkeypatch, capsys)
    # demo's PairTune runs predate --select-by (centroid: their metric encoded 320 train clips + 80 valid); a job
    # not started selects by epoch-centroid, which encodes valid only. gtzan: train 400 clips / 100 clips/s = 4 s,
    # plus the valid metric's 100 valid clips x 0.01 s = 1 s: 5 s an epoch; 2 jobs x 40 epochs x 5 s = 400 s = 0.11 h
    assert row(out, "gtzan", "tiny", "pairtune") == ("2", "5.0", "0.11", "scaled from demo (2 logs, cuda)")
    # 1200 + 320 + 400 = 1920 s = 0.53 h; search: one FineTune job, 400 s = 0.11 h; grid 1520 s = 0.42 h
    assert "total 8 0.53 + 2 unmeasured job(s)" in " ".join(out.split())
    assert "of which batch-size search 0.11 h, grid 0.42 h" in out


def test_a_job_started_with_a_train_subset_metric_is_scaled_with_it(tree, monkeypatch, capsys):
    root, tsv = tree
    # gtzan seed-1 was started (and killed before its first epoch) with --select-by centroid: its metric also
    # encodes min(400, 32 x 10) = 320 train clips, 420 clips x 0.01 s = 4.2 s; 4 + 4.2 = 8.2 s an epoch. seed-0,
    # not started: 5 s (above). (40 x 5 + 40 x 8.2) s = 528 s = 0.15 h, 6.6 s an epoch on average.
    started = root / "runs/gtzan/tiny/pairtune/seed-1"
    started.mkdir(parents=True)
    (started / "run.json").write_text(json.dumps({"stage": "pairtune", "finished": False,
                                                  "args": {"select_by": "centroid"}}))
    _, out = plan(root, tsv, monkeypatch, capsys)
    assert row(out, "gtzan", "tiny", "pairtune") == ("2", "6.6", "0.15", "scaled from demo (2 logs, cuda)")


def test_scaled_rates_count_a_train_subset_only_for_the_metrics_that_encode_one():
    lines = [{"seconds": 10, "valid_seconds": 2}]
    run = lambda args: {"stage": "pairtune", "clips": {"train": 240, "valid": 80}, "classes": CLASSES, "args": args}
    # epoch-centroid encodes the 80 valid clips: 2 s / 80; centroid (or a run from before --select-by) also
    # min(240, 32 x 10) = 240 train clips: 2 s / 320. The training pass is 240 clips / (10 - 2) s either way.
    assert grid.scaled_rates([{"run": run({"select_by": "epoch-centroid"}), "lines": lines}]) == (30.0, 0.025, False)
    for args in ({"select_by": "centroid"}, {"select_by": "knn"}, {"select_by": "linear"}, {}):
        assert grid.scaled_rates([{"run": run(args), "lines": lines}]) == (30.0, 2 / 320, False)


def test_unmeasured_cells_print_a_timing_command(tree, monkeypatch, capsys):
    root, tsv = tree
    _, out = plan(root, tsv, monkeypatch, capsys)
    assert row(out, "gtzan", "wav2vec2", "finetune") == ("1", "–", "–", "unmeasured")
    assert "no log of wav2vec2 finetune" in out
    assert (f"python finetune.py --dataset gtzan --backbone wav2vec2 --epochs 1 --data-root {root / 'data'} "
            f"--out {root / 'runs-timing/gtzan/wav2vec2/finetune'}") in out
    # demo's tiny PairTune logs could be scaled, but esc50 has no manifest to count its clips
    assert row(out, "esc50", "tiny", "pairtune") == ("1", "–", "–", "unmeasured")
    assert "no manifest to scale demo's logs by" in out
    assert (f"python pairtune.py --dataset esc50 --backbone tiny --epochs 1 --fold 3 --data-root {root / 'data'} "
            f"--out {root / 'runs-timing/esc50/tiny/pairtune'}") in out


def test_older_logs_without_valid_seconds_or_clips_per_s(tmp_path, monkeypatch, capsys):
    write_manifest(tmp_path / "data" / "gtzan" / "manifest.csv", {"train": 40, "valid": 10, "test": 10})
    write_run(tmp_path / "runs/demo/hubert/finetune/seed-0", "finetune", [{"seconds": 12}], backbone="hubert")
    tsv = f"1\t{tmp_path / 'runs/gtzan/hubert/finetune/seed-0'}\tgtzan\thubert\tfinetune\t40\t\n"
    code, out = plan(tmp_path, tsv, monkeypatch, capsys, search_jobs=0)
    assert code == 0 and out.splitlines()[0] == "jobs: 1 total, 0 done, 1 left"
    # 12 s = 240 train / c + 80 valid / (3c): c = 266.67 / 12 = 22.22 clips/s, 0.015 s a valid clip; gtzan:
    # 400 / 22.22 + 100 x 0.015 = 18 + 1.5 = 19.5 s an epoch; x 40 = 780 s = 0.22 h, marked as assumed
    assert row(out, "gtzan", "hubert", "finetune") == ("1", "19.5", "0.22", "scaled from demo (1 log, cpu)*")
    assert "assumed to take a third of a training step" in out


def test_scaled_rates_from_valid_seconds_without_clips_per_s():
    run = {"stage": "finetune", "clips": {"train": 240, "valid": 80}, "classes": CLASSES}
    # the training pass is the epoch less the metric: 240 clips / (10 - 2) s; the metric 2 s / 80 clips
    assert grid.scaled_rates([{"run": run, "lines": [{"seconds": 10, "valid_seconds": 2}]}]) == (30.0, 0.025, False)


def test_planned_clips_of_a_fold_dataset_carve_valid_from_train(tmp_path):
    # 10 classes x 20 clips in folds 1-5: fold 3 is test, the other 16 a class train, of which
    # carve_valid takes round(0.1 x 16) = 2 a class into valid
    manifest = write_manifest(tmp_path / "esc50" / "manifest.csv", {"train": 20}, folds=5)
    assert grid.planned_clips(manifest, 3) == {"train": 140, "valid": 20, "classes": 10}


def test_a_bad_job_line_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\tout\tdemo\ttiny\tfinetune\tforty\t\n"))
    assert grid.main(["plan", "--logs", str(tmp_path)]) == 1
    assert "job line 1: epochs 'forty'" in capsys.readouterr().err
