"""finetune.py on multi-label data: a sigmoid per class trained with binary cross-entropy, the epoch chosen
on valid macro mAP, thresholds chosen on valid, test read once.

The data are real audio: FSDD digits mixed one to three at a time (tests/mixtures.py, skipped where
../shared is absent). The backbone is `tiny`, a RANDOMLY INITIALISED 2-layer wav2vec2: the numbers are
not a result, only what the tests check them against. Every number of results.json is recomputed here
from the run's saved encoder/ and head.pt, one clip at a time, with sklearn as the oracle.
"""
import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import backbone
import data
import ddp
import finetune
from conftest import run_script
from mixtures import make_mixtures

# sklearn, the test-only oracle (it comes with umap-learn in requirements-test.txt)
sklearn_metrics = pytest.importorskip("sklearn.metrics")
average_precision_score, f1_score = sklearn_metrics.average_precision_score, sklearn_metrics.f1_score

FAST = ["--backbone", "tiny", "--epochs", 2, "--max-seconds", 1, "--batch-size", 16, "--lr", "1e-3",
        "--device", "cpu"]


def bce_by_hand(logits, targets) -> float:
    """Binary cross-entropy with logits, averaged over clips and classes, written from its formula."""
    total, count = 0.0, 0
    for row, target_row in zip(logits.tolist(), targets.tolist()):
        for x, y in zip(row, target_row):
            p = 1 / (1 + math.exp(-x))
            total -= y * math.log(p) + (1 - y) * math.log(1 - p)
            count += 1
    return total / count


def test_the_multilabel_loss_is_bce_averaged_over_clips_and_classes():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 4, generator=generator, dtype=torch.float64)
    targets = (torch.rand(6, 4, generator=generator) < 0.4).double()
    assert finetune.loss_sum(logits, targets).item() / 6 == pytest.approx(bce_by_hand(logits, targets), abs=1e-12)
    # one label per clip: cross-entropy as before
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    assert finetune.loss_sum(logits, labels).item() == pytest.approx(
        -sum(torch.log_softmax(logits, 1)[i, c].item() for i, c in enumerate(labels)), abs=1e-10)


def without_randomness(encoder):
    """Dropout, LayerDrop and wav2vec2's SpecAugment masks off: two forward passes in training mode then
    compute the same logits."""
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    encoder.model.config.update(dict(layerdrop=0.0, mask_time_prob=0.0, mask_feature_prob=0.0))
    return encoder


def test_a_training_step_reports_the_batch_bce_of_its_logits_in_micro_batches():
    """train_one_epoch's loss of one batch of multi-hot targets, taken 2 clips at a time, is the hand BCE
    of the classifier's logits before the step (no dropout or masking: the forward passes are the same)."""
    torch.manual_seed(0)
    encoder = without_randomness(backbone.load_encoder("tiny"))
    head = nn.Linear(encoder.hidden_size, 3)
    rng = np.random.default_rng(1)
    waves = [(0.1 * rng.standard_normal(int(rng.integers(2400, 4000)))).astype(np.float32) for _ in range(5)]
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.float32)
    inputs = encoder.preprocess(waves)
    classifier = ddp.wrap(finetune.Classifier(encoder, head, "fp32"), torch.device("cpu"))
    classifier.train()
    with torch.no_grad():
        logits = classifier(inputs)
    args = argparse.Namespace(micro_batch=2, lr=0.1)
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1)
    loss, clips = finetune.train_one_epoch(classifier, [(inputs, targets)], optimizer, args, torch.device("cpu"), 1)
    assert clips == 5
    assert loss == pytest.approx(bce_by_hand(logits.double(), targets.double()), abs=1e-5)


# ----------------------------------------------------------------------------------------------
# A whole run
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixture_run(fsdd_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-multilabel")
    manifest = make_mixtures(root / "mix", {"train": 40, "valid": 15, "test": 15}, seed=0, seconds=1.0,
                             recordings=fsdd_root / "recordings")
    result = run_script("finetune.py", "--dataset", manifest, *FAST, "--out", root / "run")
    return manifest, root / "run", result.stdout


def sigmoid_scores(run, clips, classes):
    """(sigmoid scores [N, C], multi-hot targets [N, C]) of clips, from the run's saved encoder/ and
    head.pt, each clip encoded alone (all are 1 s, the chunk length: one chunk each)."""
    encoder = backbone.load_encoder(str(run / "encoder")).eval()
    saved = torch.load(run / "head.pt", weights_only=True)
    linear = nn.Linear(encoder.hidden_size, len(classes))
    linear.load_state_dict(saved["head"])
    with torch.no_grad():
        pooled = torch.cat([encoder(encoder.preprocess([data.load_audio(c.path, 16_000)])) for c in clips])
        scores = torch.sigmoid(linear(pooled).double())
    targets = np.array([[float(c in clip.labels) for c in classes] for clip in clips])
    return scores.numpy(), targets


def best_f1_threshold(scores, truth) -> float:
    """The threshold (one of the scores) of best F1 for one class; the highest among equal F1s."""
    best = None
    for t in sorted(set(scores.tolist()), reverse=True):
        f1 = f1_score(truth, scores >= t, zero_division=0)
        if best is None or f1 > best[0]:
            best = (f1, t)
    return best[1]


def test_a_multilabel_run_writes_map_f1_thresholds_and_per_class_ap(mixture_run):
    manifest, run, stdout = mixture_run
    results = json.loads((run / "results.json").read_text())
    splits, classes = data.load_splits(str(manifest))
    assert results["multilabel"] is True and results["metric"] == "map"
    assert "test_acc" not in results and "confusion" not in results
    assert results["classes"] == classes and len(classes) == 10  # the ten digits, named
    # log.jsonl names its valid metric mAP; the epoch is the first with the best valid mAP
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and all("valid_acc" not in line for line in lines)
    valid_maps = [line["valid_map"] for line in lines]
    assert results["selected_epoch"] == 1 + valid_maps.index(max(valid_maps))
    assert results["valid_map"] == pytest.approx(max(valid_maps), abs=1e-6)
    assert json.loads((run / "run.json").read_text())["multilabel"] is True

    # valid: its mAP again, and each class's threshold of best F1 (sklearn's F1 over every candidate); this
    # draw's valid split lacks a digit: out of the mean, and its threshold is 0.5 (a sigmoid's even odds)
    valid_scores, valid_y = sigmoid_scores(run, splits["valid"], classes)
    present = [c for c in range(len(classes)) if valid_y[:, c].any()]
    assert len(present) == len(classes) - 1
    assert results["valid_map"] == pytest.approx(
        np.mean([average_precision_score(valid_y[:, c], valid_scores[:, c]) for c in present]), abs=1e-5)
    thresholds = [best_f1_threshold(valid_scores[:, c], valid_y[:, c]) if c in present else 0.5
                  for c in range(len(classes))]
    assert [results["thresholds"][c] for c in classes] == pytest.approx(thresholds, abs=1e-5)

    # test: mAP, per-class AP and F1 at valid's thresholds (every class has a positive test clip)
    test_scores, test_y = sigmoid_scores(run, splits["test"], classes)
    assert test_y.any(0).all()
    per_class = [average_precision_score(test_y[:, c], test_scores[:, c]) for c in range(len(classes))]
    assert [results["test_per_class_ap"][c] for c in classes] == pytest.approx(per_class, abs=1e-5)
    assert results["test_map"] == pytest.approx(np.mean(per_class), abs=1e-5)
    predicted = test_scores >= np.array([results["thresholds"][c] for c in classes])
    assert results["test_micro_f1"] == pytest.approx(f1_score(test_y, predicted, average="micro"), abs=1e-5)
    assert results["test_macro_f1"] == pytest.approx(f1_score(test_y, predicted, average="macro"), abs=1e-5)

    # head.pt carries what trained.py, export.py and predict.py need
    saved = torch.load(run / "head.pt", weights_only=True)
    assert saved["multilabel"] is True and saved["classes"] == classes
    assert saved["thresholds"] == [results["thresholds"][c] for c in classes]
    # the k-NN probe on the encoder's features, scored by mAP too (probes.knn_results)
    for key in ("knn_test_map", "knn_valid_map", "knn_test_micro_f1", "knn_test_macro_f1", "knn_k"):
        assert key in results, key
    assert f"test/mAP {results['test_map']:.4f}" in stdout and "multi-label" in stdout
    # test encoded once, after train and valid (features/ then serves the k-NN probe)
    assert stdout.count("encoded test:") == 1 and stdout.index("encoded test:") > stdout.index("encoded valid:")
