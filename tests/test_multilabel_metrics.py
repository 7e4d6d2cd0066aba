"""multilabel.py: AP, macro mAP, thresholds and F1 against a hand-worked example, a naive loop and sklearn
(a test-only oracle, present through umap-learn; skipped where absent)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import multilabel  # noqa: E402


def test_hand_worked_example():
    # 3 clips, 2 classes. Class A ranks clip 1 (+), 2 (-), 3 (+): precision 1/1 at the first positive,
    # 2/3 at the second, AP = (1 + 2/3) / 2 = 5/6. Class B ranks 1 (-), 2 (+), 3 (-): AP = 1/2.
    targets = torch.tensor([[1, 0], [0, 1], [1, 0]])
    scores = torch.tensor([[0.9, 0.6], [0.8, 0.4], [0.3, 0.2]])
    result = multilabel.mean_average_precision(scores, targets)
    assert result["per_class"] == pytest.approx([5 / 6, 1 / 2])
    assert result["map"] == pytest.approx(2 / 3)
    assert result["skipped"] == 0


def test_tied_scores_cross_the_threshold_together():
    # One positive and one negative with the same score: precision at that step is 1/2, not 1.
    assert multilabel.average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)
    assert multilabel.average_precision(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)


def test_a_class_without_positives_is_skipped_not_zero():
    targets = torch.tensor([[1, 0], [0, 0], [1, 0]])
    scores = torch.tensor([[0.9, 0.6], [0.8, 0.4], [0.3, 0.2]])
    result = multilabel.mean_average_precision(scores, targets)
    assert result["per_class"][1] is None and result["skipped"] == 1
    assert result["map"] == pytest.approx(5 / 6)


def naive_average_precision(scores, targets):
    """From the definition: for each distinct threshold t (high to low), precision and recall of score >= t."""
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        chosen = [y for s, y in zip(scores, targets) if s >= t]
        recall = sum(chosen) / sum(targets)
        total += (recall - previous_recall) * sum(chosen) / len(chosen)
        previous_recall = recall
    return total


def random_problem(seed, n=60, classes=7, levels=None):
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, classes, generator=generator) < 0.3).long()
    targets[0] = 1  # every class has a positive
    scores = torch.rand(n, classes, generator=generator) + 0.5 * targets
    if levels:  # coarse scores: many ties
        scores = (scores * levels).round() / levels
    return scores, targets


@pytest.mark.parametrize("levels", [None, 4])
def test_average_precision_matches_a_naive_loop(levels):
    for seed in range(5):
        scores, targets = random_problem(seed, levels=levels)
        for c in range(targets.shape[1]):
            expected = naive_average_precision(scores[:, c].tolist(), targets[:, c].tolist())
            assert multilabel.average_precision(scores[:, c], targets[:, c]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("levels", [None, 4])
def test_against_sklearn(levels):
    metrics = pytest.importorskip("sklearn.metrics")
    for seed in range(5):
        scores, targets = random_problem(seed, levels=levels)
        expected = metrics.average_precision_score(targets.numpy(), scores.numpy(), average=None)
        result = multilabel.mean_average_precision(scores, targets)
        assert result["per_class"] == pytest.approx(list(expected), abs=1e-12)
        assert result["map"] == pytest.approx(metrics.average_precision_score(targets.numpy(), scores.numpy(),
                                                                              average="macro"), abs=1e-12)
        thresholds = multilabel.choose_thresholds(scores, targets)
        predicted = (scores.double() >= thresholds).long().numpy()
        f1 = multilabel.f1_scores(scores, targets, thresholds)
        assert f1["micro_f1"] == pytest.approx(metrics.f1_score(targets.numpy(), predicted, average="micro"))
        assert f1["macro_f1"] == pytest.approx(metrics.f1_score(targets.numpy(), predicted, average="macro"))


def test_thresholds_maximise_each_class_f1_over_every_candidate():
    def f1_at(scores, targets, t):
        predicted = scores >= t
        tp = int((predicted & (targets == 1)).sum())
        fp = int((predicted & (targets == 0)).sum())
        fn = int((~predicted & (targets == 1)).sum())
        return 2 * tp / (2 * tp + fp + fn)

    for seed in range(5):
        scores, targets = random_problem(seed, levels=6 if seed % 2 else None)
        thresholds = multilabel.choose_thresholds(scores, targets)
        for c in range(targets.shape[1]):
            candidates = {f1_at(scores[:, c].double(), targets[:, c], float(t)) for t in scores[:, c]}
            assert f1_at(scores[:, c].double(), targets[:, c], float(thresholds[c])) == pytest.approx(max(candidates))


def test_threshold_of_a_class_without_positives_is_the_default():
    scores = torch.tensor([[0.9, 0.2], [0.1, 0.3]])
    targets = torch.tensor([[1, 0], [0, 0]])
    assert multilabel.choose_thresholds(scores, targets).tolist() == [pytest.approx(0.9), 0.5]


def test_f1_hand_worked():
    # Class A: predicted {1, 2}, truth {1, 3}: TP 1, FP 1, FN 1 -> F1 1/2. Class B: predicted {2}, truth {2}:
    # F1 1. Micro: TP 2, FP 1, FN 1 -> 4 / 6. Macro: 3/4.
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.1]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 0]])
    result = multilabel.f1_scores(scores, targets, torch.tensor([0.5, 0.5]))
    assert result["micro_f1"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx(3 / 4)
