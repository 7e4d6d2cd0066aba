"""eval.py on multi-label runs: the per-class AP table that replaces the confusion (lowest AP first, its values
the mean over runs computed here by hand), Figure 3's hardest classes as the lowest-AP ones with only clips
carrying exactly one of them drawn, the report's sections, Figure 2 of valid mAP, and the test features of a
real multi-label run (FSDD mixtures, the random `tiny` backbone) encoded with multi-hot targets."""
import json

import numpy as np
import pytest

from test_eval import ev

CLASSES = [f"c{i:02d}" for i in range(12)]
# Two runs' test_per_class_ap (None: no positive test clip in that run) and positives per class
AP_RUNS = [
    {"c00": 0.90, "c01": 0.20, "c02": 0.55, "c03": 0.10, "c04": 0.80, "c05": 0.30, "c06": None, "c07": 0.70,
     "c08": 0.45, "c09": 0.60, "c10": 0.35, "c11": 0.95},
    {"c00": 0.80, "c01": 0.30, "c02": 0.45, "c03": 0.12, "c04": 0.70, "c05": 0.30, "c06": None, "c07": 0.60,
     "c08": 0.55, "c09": None, "c10": 0.21, "c11": 0.85},
]
POSITIVES = [{c: 3 + i for i, c in enumerate(CLASSES)}, {c: 2 * i for i, c in enumerate(CLASSES)}]


def multilabel_results(method, seed, per_class_ap, positives=None, dataset="mix"):
    """A multi-label run's results.json (the contract's fields)."""
    present = [ap for ap in per_class_ap.values() if ap is not None]
    results = {"method": method, "dataset": dataset, "backbone": "tiny", "backbone_random_init": True, "seed": seed,
               "fold": None, "multilabel": True, "metric": "map", "test_map": sum(present) / len(present),
               "valid_map": 0.5, "test_micro_f1": 0.5, "test_macro_f1": 0.5, "classes": list(per_class_ap),
               "test_per_class_ap": per_class_ap, "thresholds": {c: 0.5 for c in per_class_ap}}
    if positives is not None:
        results["test_positives"] = positives
    return results


def write_tree(root, runs=AP_RUNS, positives=(None, None), log_field="valid_map"):
    """runs/mix/tiny/{finetune,pairtune}/seed-N as the training scripts leave them, multi-label: run.json,
    results.json (pairtune's in probe/), log.jsonl with the valid metric as `log_field`."""
    for arm in ("finetune", "pairtune"):
        for seed, (per_class_ap, counted) in enumerate(zip(runs, positives)):
            run_dir = root / f"mix/tiny/{arm}/seed-{seed}"
            results_dir = run_dir / "probe" if arm == "pairtune" else run_dir
            results_dir.mkdir(parents=True)
            run = {"stage": arm, "method": arm, "dataset": "mix", "backbone": "tiny", "backbone_random_init": True,
                   "classes": CLASSES, "args": {"seed": seed, "fold": None}, "finished": True}
            (run_dir / "run.json").write_text(json.dumps(run))
            if arm == "pairtune":
                (results_dir / "run.json").write_text(json.dumps({**run, "stage": "probe"}))
            (results_dir / "results.json").write_text(json.dumps(multilabel_results(arm, seed, per_class_ap,
                                                                                    counted)))
            field = log_field if arm == "finetune" else "valid_metric_map"
            (run_dir / "log.jsonl").write_text("".join(json.dumps({"epoch": e, field: 0.1 * e}) + "\n"
                                                       for e in (1, 2, 3)))
    return root


def expected_rows():
    """The per-class AP table of AP_RUNS by hand: mean over the runs that have an AP, lowest first, no AP last."""
    means = {}
    for c in CLASSES:
        values = [run[c] for run in AP_RUNS if run[c] is not None]
        means[c] = sum(values) / len(values) if values else None
    ranked = sorted((c for c in CLASSES if means[c] is not None), key=lambda c: means[c])
    return ranked + [c for c in CLASSES if means[c] is None], means


# ----------------------------------------------------------------------------------------------
# The per-class AP table
# ----------------------------------------------------------------------------------------------

def test_class_ap_rows_are_the_mean_over_runs_lowest_first():
    rows = ev.class_ap_rows([multilabel_results("finetune", s, ap, POSITIVES[s]) for s, ap in enumerate(AP_RUNS)])
    order, means = expected_rows()
    assert [row["class"] for row in rows] == order
    assert order[:4] == ["c03", "c01", "c10", "c05"] and order[-1] == "c06"  # means 0.11, 0.25, 0.28, 0.30; none
    for row in rows:
        assert row["ap"] == (None if means[row["class"]] is None else pytest.approx(means[row["class"]]))
        assert row["positives"] == POSITIVES[0][row["class"]] + POSITIVES[1][row["class"]]
    assert {row["class"]: row["runs"] for row in rows}["c09"] == 1  # the second run has no AP for c09
    # equal APs keep the runs' class order
    tied = ev.class_ap_rows([multilabel_results("finetune", 0, {"b": 0.5, "a": 0.5, "c": 0.1})])
    assert [row["class"] for row in tied] == ["c", "b", "a"]


def test_the_table_text_shows_percent_the_column_mean_and_the_classes_without_ap():
    results = [multilabel_results("finetune", 0, {"dog": 0.25, "cat": 0.5, "owl": None}, {"dog": 4, "cat": 7,
                                                                                           "owl": 0})]
    text = ev.describe_class_ap(ev.class_ap_rows(results), 1)
    assert text.splitlines()[:5] == ["| class | AP (%) | test positives |", "|---|---:|---:|",
                                     "| dog | 25.00 | 4 |", "| cat | 50.00 | 7 |", "| owl | – | 0 |"]
    assert text.splitlines()[-1] == ("macro mean of the column: 37.50% over 2 classes; no AP (no positive test "
                                     "clip): owl")
    without = ev.describe_class_ap(ev.class_ap_rows([multilabel_results("finetune", 0, {"dog": 0.25})]), 3)
    assert without.splitlines()[0] == "| class | AP (%), mean of 3 runs |"
    assert "test positives: not recorded in results.json (test_positives)" in without


@pytest.mark.parametrize("second, problem", [
    ({"a": 0.5, "c": 0.5}, "different class lists"),
    ({"a": 1.5, "b": 0.5}, "test_per_class_ap of 'a' must be a fraction in [0, 1] or null, got 1.5"),
])
def test_class_ap_rows_refuse_runs_that_do_not_fit(second, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        ev.class_ap_rows([multilabel_results("finetune", 0, {"a": 0.2, "b": 0.3}),
                          multilabel_results("finetune", 1, second)])


def test_confusion_of_a_multilabel_run_prints_and_writes_the_per_class_ap_table(tmp_path, capsys):
    write_tree(tmp_path, positives=POSITIVES)
    runs = [tmp_path / f"mix/tiny/finetune/seed-{seed}" for seed in (0, 1)]
    assert ev.main(["confusion", *map(str, runs), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "FINETUNE mix tiny (AP: the mean of 2 runs)"
    assert lines[1] == ("multi-label run(s): a clip carries several classes, so there is no confusion matrix; "
                        "instead each class's test average precision (results.json test_per_class_ap), lowest first.")
    assert lines[2] == "| class | AP (%), mean of 2 runs | test positives, summed over 2 runs |"
    order, means = expected_rows()
    assert lines[4] == f"| c03 | {100 * means['c03']:.2f} | {3 + 3 + 2 * 3} |"
    saved = json.loads((tmp_path / "out/per-class-ap.json").read_text())
    assert saved["multilabel"] is True and saved["runs"] == 2
    assert [row["class"] for row in saved["classes"]] == order
    assert [row["ap"] for row in saved["classes"]][:3] == pytest.approx([means[c] for c in order[:3]])
    assert not list((tmp_path / "out").glob("confusion*")) and "no confusion figure" in err

    assert ev.main(["confusion", str(runs[0])]) == 0  # one run: into its own folder
    assert json.loads((runs[0] / "per-class-ap.json").read_text())["classes"][0] == {
        "class": "c03", "ap": 0.10, "runs": 1, "positives": 6}


def test_confusion_refuses_multilabel_and_single_label_runs_together(tmp_path, capsys):
    write_tree(tmp_path)
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"method": "finetune", "dataset": "mix", "backbone": "tiny",
                                  "backbone_random_init": True, "seed": 5, "test_acc": 0.5, "classes": ["a"],
                                  "confusion": [[1]]}))
    code = ev.main(["confusion", str(tmp_path / "mix/tiny/finetune/seed-0"), str(single), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == ("error: some of these runs are multi-label (scored by mAP) and some are "
                                         "not: they cannot be summed")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**multilabel_results("finetune", 0, {"a": 0.5}), "test_per_class_ap": None}))
    assert ev.main(["confusion", str(broken)]) == 1
    assert "without test_per_class_ap" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Figure 3 and the report
# ----------------------------------------------------------------------------------------------

def multi_hot(seed=0, clips=60):
    """[clips, 12] multi-hot targets, 1-3 classes a clip, and features pointing at the sum of their classes."""
    rng = np.random.default_rng(seed)
    targets = np.zeros((clips, len(CLASSES)), dtype=np.float32)
    for row in targets:
        row[rng.choice(len(CLASSES), size=rng.integers(1, 4), replace=False)] = 1.0
    return targets, targets * 3 + rng.normal(size=targets.shape)


@pytest.fixture
def multilabel_features(monkeypatch):
    """eval.run_test_features of any run: multi-hot [N, 12] targets as a multi-label run's cache holds them;
    Figure 3 projected by PCA (as `--method pca`)."""
    targets, features = multi_hot()
    monkeypatch.setattr(ev, "run_test_features", lambda run_dir, device="auto", data_root=None:
                        (features, targets, CLASSES))
    project = ev.project_2d
    monkeypatch.setattr(ev, "project_2d", lambda points, method="auto", seed=0: project(points, "pca", seed))
    return targets


def test_figure_3_of_multilabel_runs_shows_the_lowest_ap_classes_and_clips_of_one_of_them(
        tmp_path, multilabel_features, capsys):
    pytest.importorskip("matplotlib")
    write_tree(tmp_path)
    ft, pt = tmp_path / "mix/tiny/finetune/seed-0", tmp_path / "mix/tiny/pairtune/seed-0"
    assert ev.main(["projection", "--finetune", str(ft), "--pairtune", str(pt), "--out", str(tmp_path / "u.png")]) == 0
    info = json.loads((tmp_path / "u.json").read_text())
    lowest = sorted((c for c in CLASSES if AP_RUNS[0][c] is not None), key=lambda c: AP_RUNS[0][c])[:9]
    assert info["classes"] == lowest  # seed 0's own AP, lowest first
    assert info["classes_from"].startswith("the 9 classes of lowest test AP of FINETUNE")
    # by a loop: a clip is drawn when it carries exactly one shown class, with that class
    shown = [CLASSES.index(c) for c in lowest]
    drawn, several = [], 0
    for row in multilabel_features:
        carried = [c for c in shown if row[c] == 1]
        several += len(carried) > 1
        if len(carried) == 1:
            drawn.append(CLASSES[carried[0]])
    assert [point[2] for point in info["finetune"]["points"]] == drawn
    assert info["multilabel"] == {"clips_with_several_shown_classes_left_out": several} and several > 0
    assert info["title"] == ("Test features of the 9 classes FINETUNE scores worst on test (lowest AP), of 12\n"
                             f"multi-label: the clips carrying exactly one of them ({several} carrying several "
                             "left out)")


def test_the_report_of_multilabel_runs(tmp_path, multilabel_features, capsys):
    pytest.importorskip("matplotlib")
    write_tree(tmp_path)
    assert ev.main(["report", str(tmp_path), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    md = (tmp_path / "report/report.md").read_text()
    assert "## Table 2: test mAP\n" in md and "| mix (mAP) |" in md
    assert "### Per-class AP (multi-label: in place of the confusion)" in md and "### Confusion" not in md
    order, means = expected_rows()
    saved = json.loads((tmp_path / "report/per-class-ap-mix-tiny_random_init-pairtune.json").read_text())
    assert [row["class"] for row in saved["classes"]] == order
    assert f"| c03 | {100 * means['c03']:.2f} |" in md
    # Figure 3 ranks by FINETUNE's AP averaged over its two runs (not one run's): the 9 lowest of those means
    figure = json.loads((tmp_path / "report/umap-mix-tiny_random_init.json").read_text())
    assert figure["classes"] == order[:9] and "FINETUNE's per-class AP averaged over its runs" in md
    assert ("### Figure 3: Test features of the 9 classes FINETUNE scores worst on test (lowest AP), of 12; "
            "multi-label: the clips") in md
    # Figure 2: valid mAP per epoch, from valid_map (FINETUNE) and valid_metric_map (PAIRTUNE)
    curves = json.loads((tmp_path / "report/curves.json").read_text())["mix · tiny (random init)"]
    assert curves["finetune"]["mean"] == pytest.approx([10.0, 20.0, 30.0]) and curves["finetune"]["score"] == "mAP"
    assert curves["finetune"]["metric"] == "its classifier's mAP"
    assert "FINETUNE's valid mAP is its classifier's" in md


def test_figure_2_of_multilabel_runs_is_titled_and_labelled_map(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import figures
    write_tree(tmp_path)
    caught = []
    save = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda plt, fig, *a, **k: caught.append(fig) or save(plt, fig, *a, **k))
    assert ev.main(["curves", str(tmp_path), "--out", str(tmp_path / "curves")]) == 0
    ax = caught[-1].axes[0]
    assert ax.get_title() == "Valid mAP per epoch: mix · tiny (random init)" and ax.get_ylabel() == "valid mAP (%)"


# ----------------------------------------------------------------------------------------------
# Test features of a real multi-label run: multi-hot targets (the random `tiny` backbone, FSDD mixtures)
# ----------------------------------------------------------------------------------------------

def test_run_test_features_of_a_multilabel_run_are_encoded_with_multi_hot_targets(tmp_path, mixture_manifest,
                                                                                    monkeypatch):
    import backbone
    import data
    import torch
    splits, classes = data.load_splits(str(mixture_manifest))
    assert data.is_multilabel(splits)
    encoder = backbone.load_encoder(backbone.TINY)  # random weights: the features only need to be the run's own
    run_dir = tmp_path / "run"
    encoder.save(run_dir / "encoder")
    (run_dir / "run.json").write_text(json.dumps({
        "stage": "finetune", "method": "finetune", "finished": True, "dataset": "mix", "backbone": "tiny",
        "classes": classes, "clips": {"test": len(splits["test"])}, "manifest": str(mixture_manifest),
        "args": {"max_seconds": 1.0, "fold": None, "seed": 0}}))
    features, labels, got_classes = ev.run_test_features(run_dir, "cpu")
    expected = data.label_targets(splits["test"], classes, True).numpy()
    assert got_classes == classes and labels.shape == (len(splits["test"]), len(classes))
    assert np.array_equal(labels, expected)
    assert labels.sum(axis=1).max() >= 2  # some clip carries several digits
    saved = backbone.load_encoder(str(run_dir / "encoder"))
    again, _ = backbone.extract_features(saved, splits["test"], classes, saved.chunk_seconds(1.0),
                                         torch.device("cpu"), multilabel=True)
    assert np.allclose(features, again.double().numpy(), atol=1e-5)
    # the second call is served by the cache the first wrote, its targets multi-hot as well
    monkeypatch.setattr(data, "load_audio", lambda *a, **k: pytest.fail("test audio decoded despite the cache"))
    cached_features, cached_labels, _ = ev.run_test_features(run_dir, "cpu")
    assert np.array_equal(cached_labels, expected) and np.allclose(cached_features, features)
