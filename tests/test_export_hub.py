"""A Whisper export as a Hub user loads it (transformers' pipeline, nothing from this repository), and
the --help of export.py and predict.py.

The run is small and real: FineTune for one epoch on 40 FSDD recordings with the pre-trained Whisper
tiny.en encoder (skipped where ../shared is absent). Its classifier is recomputed here from the run's
own files (encoder/ and head.pt), independently of export.py, trained.py and predict.py.
"""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

import backbone
import data
from conftest import run_script

# 2 speakers' take 10 to train, another speaker's take 5 to select, a third's take 0 to test: 20 / 10 / 10 clips
SPLITS = {("jackson", 10): "train", ("george", 10): "train", ("theo", 5): "valid", ("lucas", 0): "test"}


@pytest.fixture(scope="module")
def whisper_export(fsdd_root, whisper_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    rows = []
    for file in sorted((fsdd_root / "recordings").glob("*.wav")):
        digit, speaker, take = file.stem.split("_")
        if (speaker, int(take)) in SPLITS:
            rows.append([str(file), digit, SPLITS[speaker, int(take)], speaker])
    (root / "fsdd").mkdir()
    with open(root / "fsdd" / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split", "speaker"], *rows])
    run_script("finetune.py", "--dataset", root / "fsdd", "--backbone", whisper_dir, "--epochs", 1,
               "--max-seconds", 2, "--batch-size", 8, "--device", "cpu", "--out", root / "run")
    run_script("export.py", root / "run", "--out", root / "export", "--check-clips", 4)
    test = [row for row in rows if row[2] == "test"]
    return root, [row[0] for row in test]


def run_logits(run, files) -> torch.Tensor:
    """The run's classifier from its files: its encoder's masked mean pool, then its linear head."""
    encoder = backbone.load_encoder(str(run / "encoder")).eval()
    linear = torch.nn.Linear(encoder.hidden_size, len(json.loads((run / "run.json").read_text())["classes"]))
    linear.load_state_dict(torch.load(run / "head.pt", weights_only=True))
    with torch.no_grad():
        return torch.cat([linear(encoder(encoder.preprocess([data.load_audio(f, 16_000)]))) for f in files])


def test_a_whisper_export_gives_the_runs_predictions_through_transformers_pipeline(whisper_export):
    root, files = whisper_export
    classes = json.loads((root / "run" / "run.json").read_text())["classes"]
    ours = run_logits(root / "run", files)
    assert len(set(ours.argmax(1).tolist())) > 1  # not one class for every clip: the labels below say something
    # What the card tells a Hub user to run: transformers' pipeline on the folder, nothing of ours imported
    classify = transformers.pipeline("audio-classification", model=str(root / "export"), trust_remote_code=True,
                                     device="cpu")
    waves = [data.load_audio(f, 16_000) for f in files]  # FSDD clips are under the run's 2 s: no chunking
    scores = [{s["label"]: s["score"] for s in classify({"raw": w, "sampling_rate": 16_000}, top_k=len(classes),
                                                        function_to_apply="none")} for w in waves]
    theirs = torch.tensor([[s[c] for c in classes] for s in scores])
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()
    labels = [classify({"raw": w, "sampling_rate": 16_000}, top_k=1)[0]["label"] for w in waves]
    assert labels == [classes[i] for i in ours.argmax(1)]
    # predict.py on the export: the same labels
    out = [json.loads(line) for line in run_script("predict.py", root / "export", *files, "--json").stdout.splitlines()]
    assert [line["top"][0]["label"] for line in out] == labels
    # the export's own check went through the pipeline, and the card says how to load it
    check = json.loads((root / "export" / "audioconfit.json").read_text())["export_check"]
    assert check["transformers"]["max_abs_logit_difference"] < 1e-4 and check["transformers"]["same_prediction"] == 1
    card = (root / "export" / "README.md").read_text()
    assert 'pipeline("audio-classification", model="THIS_FOLDER_OR_REPO", trust_remote_code=True)' in card
    assert "Without it, transformers refuses the folder" in card


def test_without_trust_remote_code_transformers_refuses_a_whisper_export(whisper_export):
    root, files = whisper_export
    # A user's one-liner, in a fresh interpreter that has never seen this repository
    one_liner = f"import transformers; transformers.pipeline('audio-classification', model={str(root / 'export')!r})"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", one_liner], cwd=root, capture_output=True, text=True,
                            env={**env, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()
    assert last[-1] == "Please pass the argument `trust_remote_code=True` to allow custom code to be run.", last[-3:]
    assert f"ValueError: The repository {root / 'export'} contains custom code which must be executed" in result.stderr
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        transformers.AutoModelForAudioClassification.from_pretrained(root / "export")
    # nor is the masked classifier silently unmasked when it is given no attention mask
    model = transformers.AutoModelForAudioClassification.from_pretrained(root / "export", trust_remote_code=True)
    features = transformers.AutoFeatureExtractor.from_pretrained(root / "export")(
        data.load_audio(files[0], 16_000), sampling_rate=16_000, return_tensors="pt")["input_features"]
    with pytest.raises(ValueError, match="needs the feature extractor's attention_mask"):
        model(input_features=features)


def test_an_export_made_before_whispers_own_model_type_still_predicts(whisper_export, tmp_path):
    # An export as export.py wrote it before: model_type whisper, no auto_map, no code in the folder
    import shutil
    root, files = whisper_export
    old = tmp_path / "old-export"
    shutil.copytree(root / "export", old)
    (old / "masked_whisper.py").unlink()
    config = json.loads((old / "config.json").read_text())
    del config["auto_map"]
    (old / "config.json").write_text(json.dumps({**config, "model_type": "whisper",
                                                 "architectures": ["WhisperForAudioClassification"]}))
    new_out = run_script("predict.py", root / "export", *files, "--json")
    old_out = run_script("predict.py", old, *files, "--json")
    assert old_out.stdout == new_out.stdout
    assert "export the run again for a folder that transformers runs right" in old_out.stderr
    assert "export the run again" not in new_out.stderr


# ----------------------------------------------------------------------------------------------
# --help: every default, and nothing done
# ----------------------------------------------------------------------------------------------

def help_blocks(text: str) -> dict:
    """--help's options section as {"--option": its help, on one line}."""
    blocks, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = stripped.split()[0].rstrip(",")
            blocks[current] = stripped
        elif current and stripped:
            blocks[current] += " " + stripped
    return blocks


@pytest.mark.parametrize("script, required", [("export.py", ["RUN", "--out", "DIR"]),
                                              ("predict.py", ["RUN", "FILE"])])
def test_help_shows_every_default_and_does_nothing_else(script, required, tmp_path):
    import importlib
    result = run_script(script, "--help", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no folder, no file
    blocks = help_blocks(result.stdout)
    defaults = vars(importlib.import_module(script[:-3]).parse_args(required))
    for name, default in defaults.items():
        option = "--" + name.replace("_", "-")
        if option not in blocks or option in required:  # a positional argument, or a required option
            continue
        if default is None or default is False:  # no value, or a flag: said in words (the run's, off, ...)
            assert "default: " in blocks[option], (option, blocks[option])
        else:
            assert f"(default: {default}" in blocks[option], (option, blocks[option])
    assert len(blocks) > 5  # the options were found at all
