"""export.py of a multi-label run: problem_type multi_label_classification, the valid-chosen thresholds in
config.json, and a card whose pipeline call returns every class's sigmoid probability.

A FineTune run on FSDD digit mixtures (tests/mixtures.py; skipped where ../shared is absent) with `tiny`, a
RANDOMLY INITIALISED 2-layer wav2vec2. What transformers' pipeline returns is checked against torch.sigmoid
of the logits computed here from the run's own encoder/ and head.pt, one clip at a time.
"""
import json
import re

import pytest
import torch
import transformers
import yaml  # a dependency of transformers

import backbone
import data
from conftest import run_script
from mixtures import make_mixtures
from trained import load_trained

@pytest.fixture(scope="module")
def exported(multilabel_export):
    return multilabel_export


def our_logits(run, waves) -> torch.Tensor:
    """The run's classifier from its files: encoder/ and head.pt's linear layer, one clip at a time."""
    encoder = backbone.load_encoder(str(run / "encoder")).eval()
    saved = torch.load(run / "head.pt", weights_only=True)
    linear = torch.nn.Linear(encoder.hidden_size, saved["head"]["weight"].shape[0])
    linear.load_state_dict(saved["head"])
    with torch.no_grad():
        return torch.cat([linear(encoder(encoder.preprocess([w]))) for w in waves])


def test_a_multilabel_export_says_so_in_its_config_and_keeps_its_thresholds(exported):
    _, run, folder = exported
    config = json.loads((folder / "config.json").read_text())
    saved = torch.load(run / "head.pt", weights_only=True)
    results = json.loads((run / "results.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["thresholds"] == dict(zip(saved["classes"], saved["thresholds"])) == results["thresholds"]
    info = json.loads((folder / "audioconfit.json").read_text())
    assert info["multilabel"] is True and info["thresholds"] == saved["thresholds"]
    # the round-trip check of export.py: transformers' logits are the run's
    check = info["export_check"]["transformers"]
    assert check["max_abs_logit_difference"] < 1e-4 and check["same_prediction"] == 1
    trained = load_trained(folder)
    assert trained["multilabel"] is True and trained["thresholds"] == saved["thresholds"]


def test_the_pipeline_gives_each_class_its_sigmoid_as_the_card_says(exported):
    manifest, run, folder = exported
    splits, classes = data.load_splits(str(manifest))
    waves = [data.load_audio(clip.path, 16_000) for clip in splits["test"][:6]]
    probabilities = torch.sigmoid(our_logits(run, waves))
    classify = transformers.pipeline("audio-classification", model=str(folder), device="cpu")
    for wave, ours in zip(waves, probabilities):
        # the card's call: every class, each with its own sigmoid (they need not sum to 1)
        scores = classify({"raw": wave, "sampling_rate": 16_000}, top_k=None, function_to_apply="sigmoid")
        assert sorted(s["label"] for s in scores) == classes
        theirs = torch.tensor([next(s["score"] for s in scores if s["label"] == c) for c in classes])
        assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
        # transformers 5.24 with nothing said: problem_type gives the sigmoid, and no top_k every class
        default = classify({"raw": wave, "sampling_rate": 16_000})
        assert [(s["label"], round(s["score"], 6)) for s in default] == [(s["label"], round(s["score"], 6))
                                                                         for s in scores]
        three = classify({"raw": wave, "sampling_rate": 16_000}, top_k=3)
        assert [s["score"] for s in three] == pytest.approx(sorted(ours.tolist(), reverse=True)[:3], abs=1e-5)


def test_the_card_tells_to_apply_a_sigmoid_lists_the_thresholds_and_its_code_runs(exported, tmp_path):
    manifest, run, folder = exported
    results = json.loads((run / "results.json").read_text())
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    front = yaml.safe_load(front)
    metric = front["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "map" and metric["value"] == results["test_map"]
    assert "multi-label" in front["tags"]
    assert "**sigmoid**" in body and 'top_k=None, function_to_apply="sigmoid"' in body
    assert f"test {results['test_map']:.4f}" in body and f"valid {results['valid_map']:.4f}" in body
    assert "FineTune: end-to-end binary cross-entropy (a sigmoid per class)" in body
    for c, t in results["thresholds"].items():
        assert f"| {c} | {t:.6g} |" in body
    # the card's Python, run as written on a test clip (a path would need ffmpeg; it reads with soundfile)
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    clip = data.load_splits(str(manifest))[0]["test"][0]
    namespace = {}
    exec(code.replace("THIS_FOLDER_OR_REPO", str(folder)).replace("clip.wav", clip.path), namespace)
    ours = torch.sigmoid(our_logits(run, [data.load_audio(clip.path, 16_000)]))[0]
    expected = [c for c, p in zip(results["classes"], ours.tolist()) if p >= results["thresholds"][c]]
    assert sorted(namespace["labels"]) == sorted(expected)


def test_a_multilabel_whisper_export_gives_the_runs_sigmoids_through_the_pipeline(fsdd_root, whisper_dir, tmp_path):
    """The real Whisper tiny.en encoder (../shared), FineTune for one epoch on the mixtures: the export,
    run by transformers with trust_remote_code=True (its MaskedWhisperClassifier), gives each class the
    sigmoid of the run's own logit, and its config says multi_label_classification."""
    manifest = make_mixtures(tmp_path / "mix", {"train": 24, "valid": 10, "test": 10}, seed=3, seconds=1.0,
                             recordings=fsdd_root / "recordings")
    run_script("finetune.py", "--dataset", manifest, "--backbone", whisper_dir, "--epochs", 1, "--max-seconds", 1,
               "--batch-size", 12, "--lr", "1e-4", "--device", "cpu", "--out", tmp_path / "run")
    run_script("export.py", tmp_path / "run", "--out", tmp_path / "export", "--check-clips", 4)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["model_type"] == "audioconfit-whisper"
    assert set(config["thresholds"]) == set(config["id2label"].values()) and len(config["thresholds"]) == 10
    check = json.loads((tmp_path / "export" / "audioconfit.json").read_text())["export_check"]["transformers"]
    assert check["max_abs_logit_difference"] < 1e-4
    splits, classes = data.load_splits(str(manifest))
    waves = [data.load_audio(clip.path, 16_000) for clip in splits["test"][:3]]
    ours = torch.sigmoid(our_logits(tmp_path / "run", waves))
    classify = transformers.pipeline("audio-classification", model=str(tmp_path / "export"), device="cpu",
                                     trust_remote_code=True)
    for wave, expected in zip(waves, ours):
        scores = classify({"raw": wave, "sampling_rate": 16_000}, top_k=None, function_to_apply="sigmoid")
        theirs = torch.tensor([next(s["score"] for s in scores if s["label"] == c) for c in classes])
        assert torch.allclose(theirs, expected, atol=1e-4), (theirs - expected).abs().max()
