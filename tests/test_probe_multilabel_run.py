"""probe.py end to end on real multi-label audio: FSDD spoken digits (../shared) mixed one to three to a
clip at random offsets and gains (conftest's mixture_manifest, tests/mixtures.py), the labels the union
of the digits, encoded by the `tiny` backbone (RANDOM weights: the numbers say nothing about any model,
only that each is computed as documented). Every number of results.json is recomputed here from the
cached features and head.pt."""
import csv
import json

import pytest
import torch

import multilabel
import rundir
from conftest import run_script
from test_multilabel_probes import naive_knn_scores, naive_map


def test_multilabel_probe_of_the_tiny_backbone(mixture_manifest, tmp_path):
    out = tmp_path / "probe"
    result = run_script("probe.py", "--backbone", "tiny", "--dataset", mixture_manifest, "--out", out,
                        "--lrs", "1e-3,1e-2", "--batch-sizes", "16", "--epochs", "15", "--knn-ks", "1,3,5")
    summary = result.stdout.strip().splitlines()[-1]
    assert "RANDOM INIT" in summary and "test/mAP" in summary and "valid/mAP" in summary and "acc" not in summary
    grid_lines = [line for line in result.stdout.splitlines() if line.startswith("lr ")]
    assert len(grid_lines) == 2 and all("valid/mAP" in line for line in grid_lines)  # the grid's lines too
    results = json.loads((out / "results.json").read_text())
    with open(mixture_manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({label for row in rows if row["split"] == "train" for label in row["label"].split(";")})
    n_test = sum(row["split"] == "test" for row in rows)
    assert results["classes"] == classes and results["multilabel"] is True and results["metric"] == "map"
    assert not {"test_acc", "valid_acc", "confusion", "knn_test_acc", "knn_valid_acc"} & set(results)
    for field in ("test_map", "valid_map", "test_micro_f1", "test_macro_f1",
                  "knn_test_map", "knn_valid_map", "knn_test_micro_f1", "knn_test_macro_f1"):
        assert 0 <= results[field] <= 1, field
    assert set(results["test_per_class_ap"]) == set(classes) == set(results["thresholds"])
    assert all(ap is None or 0 <= ap <= 1 for ap in results["test_per_class_ap"].values())
    assert all(0 <= t <= 1 for t in results["thresholds"].values())
    # the grid as single-label runs record it, valid_map in place of valid_acc; the best point chosen
    assert [(p["lr"], p["batch_size"]) for p in results["grid"]] == [(1e-3, 16), (1e-2, 16)]
    best = max(results["grid"], key=lambda p: (p["valid_map"], -p["valid_loss"]))
    assert (results["lr"], results["valid_map"], results["selected_epoch"]) == (
        best["lr"], best["valid_map"], best["selected_epoch"])

    # head.pt applied here, by hand, to the cached features: valid's thresholds, test's mAP and F1
    head = torch.load(out / "head.pt", weights_only=False)
    assert head["multilabel"] is True and head["classes"] == classes
    assert head["thresholds"] == [results["thresholds"][c] for c in classes]
    cache = rundir.feature_dir(out, results["dataset"], None)
    loaded = {s: torch.load(cache / f"{s}.pt", weights_only=False) for s in ("train", "valid", "test")}
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (
        (loaded[s]["features"], loaded[s]["labels"]) for s in ("train", "valid", "test"))
    assert test_y.shape == (n_test, len(classes)) and set(test_y.unique().tolist()) == {0.0, 1.0}
    sigmoid = lambda x: torch.sigmoid((((x - head["mean"]) / head["std"]) @ head["head"]["weight"].T
                                       + head["head"]["bias"]).double())
    valid_scores, test_scores = sigmoid(valid_x), sigmoid(test_x)
    assert results["valid_map"] == pytest.approx(naive_map(valid_scores.tolist(), valid_y.tolist()), abs=1e-6)
    assert results["test_map"] == pytest.approx(naive_map(test_scores.tolist(), test_y.tolist()), abs=1e-6)
    present = [ap for ap in results["test_per_class_ap"].values() if ap is not None]
    assert results["test_map"] == pytest.approx(sum(present) / len(present), abs=1e-6)
    assert head["thresholds"] == pytest.approx(multilabel.choose_thresholds(valid_scores, valid_y).tolist())
    said, truth = test_scores >= torch.tensor(head["thresholds"], dtype=torch.float64), test_y.bool()
    tp, fp, fn = (said & truth).sum().item(), (said & ~truth).sum().item(), (~said & truth).sum().item()
    assert results["test_micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)

    # the k-NN probe: k chosen on valid mAP (ties: the smaller), then test, by the naive loop
    by_k = {k: naive_map(naive_knn_scores(train_x, train_y, valid_x, k, 0.07), valid_y.tolist()) for k in (1, 3, 5)}
    k = max(by_k, key=lambda key: (round(by_k[key], 6), -key))
    assert results["knn_k"] == k and results["knn_valid_map"] == pytest.approx(by_k[k], abs=1e-6)
    assert results["knn_test_map"] == pytest.approx(
        naive_map(naive_knn_scores(train_x, train_y, test_x, k, 0.07), test_y.tolist()), abs=1e-6)
