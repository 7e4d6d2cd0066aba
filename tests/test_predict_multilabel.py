"""predict.py with a multi-label classifier: the classes at or above their valid-chosen thresholds, with
their sigmoid probabilities, from a run folder and from its export.

A FineTune run on FSDD digit mixtures (tests/mixtures.py; skipped where ../shared is absent) with `tiny`, a
RANDOMLY INITIALISED 2-layer wav2vec2. The expected labels are computed here from the run's encoder/ and
head.pt, one clip at a time.
"""
import json
import shutil

import pytest
import torch

import backbone
import data
from conftest import run_script

@pytest.fixture(scope="module")
def mixture_run(multilabel_export):
    return multilabel_export


def expected_labels(run, paths):
    """{path: [(label, probability)] at or above the head.pt thresholds, most probable first}, and the
    probabilities [N, C], from the run's own files."""
    encoder = backbone.load_encoder(str(run / "encoder")).eval()
    saved = torch.load(run / "head.pt", weights_only=True)
    linear = torch.nn.Linear(encoder.hidden_size, len(saved["classes"]))
    linear.load_state_dict(saved["head"])
    with torch.no_grad():
        probabilities = torch.sigmoid(torch.cat([linear(encoder(encoder.preprocess([data.load_audio(p, 16_000)])))
                                                 for p in paths]).double())
    expected = {}
    for path, row in zip(paths, probabilities.tolist()):
        # a probability within float noise of its threshold could fall either side: none is, or the test says so
        assert all(abs(p - t) > 1e-6 for p, t in zip(row, saved["thresholds"])), (path, row)
        above = [(c, p) for c, p, t in zip(saved["classes"], row, saved["thresholds"]) if p >= t]
        expected[path] = sorted(above, key=lambda item: -item[1])
    return expected, probabilities, saved["classes"]


def parse(line):
    """A text line of predict.py: (file, [(label, probability)])."""
    path, *fields = line.split("\t")
    return path, [(field.rsplit(" ", 1)[0], float(field.rsplit(" ", 1)[1])) for field in fields]


def test_predict_prints_the_labels_above_their_thresholds_from_a_run_and_its_export(mixture_run):
    """Text from the run folder, --json from its export: the same labels, those computed here."""
    manifest, run, folder = mixture_run
    paths = [clip.path for clip in data.load_splits(str(manifest))[0]["test"]]
    expected, _, _ = expected_labels(run, paths)
    lines = run_script("predict.py", run, *paths).stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == paths
    for path, line in zip(paths, lines):
        labels = expected[path]
        if not labels:
            assert line.startswith(f"{path}\tnone above threshold (top: ")
            continue
        printed = parse(line)[1]
        assert [c for c, _ in printed] == [c for c, _ in labels]
        assert [p for _, p in printed] == pytest.approx([p for _, p in labels], abs=6e-4)
    saved = torch.load(run / "head.pt", weights_only=True)
    threshold_of = dict(zip(saved["classes"], saved["thresholds"]))
    records = [json.loads(line) for line in run_script("predict.py", folder, *paths, "--json").stdout.splitlines()]
    assert [record["file"] for record in records] == paths
    for record in records:
        labels = expected[record["file"]]
        assert [item["label"] for item in record["labels"]] == [c for c, _ in labels]
        assert [item["probability"] for item in record["labels"]] == pytest.approx([p for _, p in labels], abs=1e-5)
        assert [item["threshold"] for item in record["labels"]] == pytest.approx([threshold_of[c] for c, _ in labels])
    assert any(expected.values())  # some file has labels above its thresholds: the check above is not empty


def test_predict_says_none_above_threshold_with_the_top_label(mixture_run, tmp_path):
    """Thresholds raised to 1 in a copy of the export: no class reaches its own, and the most probable
    one is named instead."""
    manifest, run, folder = mixture_run
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["thresholds"] = {c: 1.0 for c in config["thresholds"]}
    (copy / "config.json").write_text(json.dumps(config))
    paths = [clip.path for clip in data.load_splits(str(manifest))[0]["test"][:4]]
    _, probabilities, classes = expected_labels(run, paths)
    lines = run_script("predict.py", copy, *paths).stdout.splitlines()
    for path, line, row in zip(paths, lines, probabilities):
        top = int(row.argmax())
        assert line.startswith(f"{path}\tnone above threshold (top: {classes[top]} ")
        assert float(line.rsplit(" ", 1)[1].rstrip(")")) == pytest.approx(float(row[top]), abs=6e-4)


def test_a_multilabel_probe_predicts_and_exports_with_its_own_thresholds(mixture_run, tmp_path):
    """probe.py's sigmoid probe of the frozen (random) encoder: predict.py applies its standardisation,
    linear layer and thresholds (head.pt), and its export says multi_label_classification."""
    manifest = mixture_run[0]
    probe = tmp_path / "probe"
    run_script("probe.py", "--ckpt", "tiny", "--dataset", manifest, "--max-seconds", 1, "--lrs", "1e-2",
               "--batch-sizes", 32, "--epochs", 10, "--device", "cpu", "--out", probe)
    saved = torch.load(probe / "head.pt", weights_only=True)
    assert saved["multilabel"] is True and len(saved["thresholds"]) == len(saved["classes"])
    paths = [clip.path for clip in data.load_splits(str(manifest))[0]["test"]]
    encoder = backbone.load_encoder("tiny").eval()  # the frozen probe's encoder: random, seeded as the probe's
    linear = torch.nn.Linear(encoder.hidden_size, len(saved["classes"]))
    linear.load_state_dict(saved["head"])
    with torch.no_grad():
        pooled = torch.cat([encoder(encoder.preprocess([data.load_audio(p, 16_000)])) for p in paths])
        probabilities = torch.sigmoid(linear((pooled - saved["mean"]) / saved["std"]).double())
    lines = run_script("predict.py", probe, *paths, "--json").stdout.splitlines()
    for line, row in zip(lines, probabilities.tolist()):
        record = json.loads(line)
        assert all(abs(p - t) > 1e-6 for p, t in zip(row, saved["thresholds"]))
        above = {c for c, p, t in zip(saved["classes"], row, saved["thresholds"]) if p >= t}
        assert {item["label"] for item in record["labels"]} == above
    run_script("export.py", probe, "--out", tmp_path / "export", "--check-clips", 4)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["thresholds"] == dict(zip(saved["classes"], saved["thresholds"]))
    assert "by valid macro mAP" in (tmp_path / "export" / "README.md").read_text()
