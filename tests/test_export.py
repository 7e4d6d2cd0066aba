"""export.py and predict.py: a run's classifier in transformers' format, and one-command prediction.

The exported model is checked against the run's own pipeline computed here from the run's files
(its encoder/ and head.pt, standardised by hand), on held-out clips no longer than the chunk
length; on the demo data with the tiny random wav2vec2 (and a random wav2vec2-base-like model that
takes no attention mask), and on real speech (FSDD) with the real pre-trained Whisper tiny.en.
"""
import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
import transformers
import yaml  # a dependency of transformers

import backbone
import data
import masked_whisper
from conftest import run_script

FAST = ["--epochs", 1, "--max-seconds", 1, "--batch-size", 16, "--lr", "1e-3", "--device", "cpu"]
PROBE_FAST = ["--lrs", "1e-2", "--batch-sizes", "32", "--epochs", 20, "--device", "cpu"]


@pytest.fixture(scope="module")
def demo_runs(demo_manifest, tmp_path_factory):
    """A pairtune run with its probe, a finetune run and a frozen encoder's probe, each exported."""
    root = tmp_path_factory.mktemp("export")
    run_script("pairtune.py", "--dataset", demo_manifest, "--backbone", "tiny", *FAST, "--out", root / "pairtune")
    run_script("probe.py", "--ckpt", root / "pairtune", *PROBE_FAST)
    run_script("finetune.py", "--dataset", demo_manifest, "--backbone", "tiny", *FAST, "--out", root / "finetune")
    run_script("probe.py", "--ckpt", "tiny", "--dataset", demo_manifest, "--max-seconds", 1, *PROBE_FAST,
               "--out", root / "frozen")
    for name in ("pairtune", "finetune", "frozen"):
        run_script("export.py", root / name, "--out", root / f"export-{name}")
    return root


def our_logits(run: Path, name: str, waves) -> torch.Tensor:
    """The run's classifier as its own scripts compute it, from its files."""
    if name == "frozen":
        encoder = backbone.load_encoder("tiny")
        head_file = run / "head.pt"
    else:
        encoder = backbone.load_encoder(str(run / "encoder"))
        head_file = run / ("probe/head.pt" if name == "pairtune" else "head.pt")
    saved = torch.load(head_file, weights_only=True)
    state = saved["head"] if "head" in saved else saved
    linear = torch.nn.Linear(encoder.hidden_size, state["weight"].shape[0])
    linear.load_state_dict(state)
    encoder.eval()
    with torch.no_grad():
        pooled = torch.cat([encoder(encoder.preprocess([w])) for w in waves])
        if "mean" in saved:  # the probe standardises with train statistics
            pooled = (pooled - saved["mean"]) / saved["std"]
        return linear(pooled)


def held_out_waves(manifest, seconds=1.0, n=12):
    splits, classes = data.load_splits(str(manifest))
    clips = splits["test"][:: max(1, len(splits["test"]) // n)][:n]
    return [data.load_audio(c.path, 16_000)[: int(seconds * 16_000)] for c in clips], classes


@pytest.mark.parametrize("name", ["pairtune", "finetune", "frozen"])
def test_the_export_loads_in_transformers_and_computes_what_the_run_computes(demo_runs, demo_manifest, name):
    folder = demo_runs / f"export-{name}"
    model = transformers.AutoModelForAudioClassification.from_pretrained(folder).eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    waves, classes = held_out_waves(demo_manifest)
    with torch.no_grad():
        theirs = torch.cat([model(**extractor(w, sampling_rate=16_000, return_tensors="pt")).logits for w in waves])
    ours = our_logits(demo_runs / name, name, waves)
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()
    assert [model.config.id2label[i] for i in range(len(classes))] == classes
    # transformers' own pipeline, given arrays (a path would need ffmpeg)
    classify = transformers.pipeline("audio-classification", model=str(folder), device="cpu")
    labels = [classify({"raw": w, "sampling_rate": 16_000}, top_k=1)[0]["label"] for w in waves]
    assert labels == [classes[i] for i in ours.argmax(1)]
    # another rate: the pipeline resamples with torchaudio, as our loader does, to the same label
    at_8k = waves[0][::2].copy()
    resampled = torchaudio.functional.resample(torch.from_numpy(at_8k), 8_000, 16_000).numpy()
    assert (classify({"raw": at_8k, "sampling_rate": 8_000}, top_k=1)[0]["label"]
            == classes[our_logits(demo_runs / name, name, [resampled]).argmax()])
    info = json.loads((folder / "audioconfit.json").read_text())
    check = info["export_check"]["transformers"]
    assert check["max_abs_logit_difference"] < 1e-4 and check["same_prediction"] == 1


def card_of(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_the_model_card_states_the_results_the_selection_and_the_commands(demo_runs):
    results = json.loads((demo_runs / "pairtune/probe/results.json").read_text())
    run = json.loads((demo_runs / "pairtune/run.json").read_text())
    front, body = card_of(demo_runs / "export-pairtune")
    assert front["pipeline_tag"] == "audio-classification" and front["library_name"] == "transformers"
    assert front.get("base_model") is None  # the tiny backbone is random: no base model to name
    assert front["model-index"][0]["results"][0]["dataset"]["name"] == run["dataset"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == results["test_acc"]
    assert "supervised-contrastive-learning" in front["tags"]
    assert f"test {results['test_acc']:.4f} (n={run['clips']['test']} clips)" in body
    assert f"valid {results['valid_acc']:.4f}" in body and f"(n={run['clips']['valid']})" in body
    assert "seed 0" in body and "RANDOMLY INITIALISED" in body
    assert f"the encoder's epoch ({run['selected_epoch']}) by {run['selected_by']}" in body
    assert "the probe's learning rate, batch size and epoch by valid accuracy" in body
    assert "python pairtune.py --dataset" in body and "python probe.py --ckpt" in body
    front, body = card_of(demo_runs / "export-finetune")
    assert "FineTune: end-to-end cross-entropy" in body and "probe's learning rate" not in body
    assert "supervised-contrastive-learning" not in front["tags"]
    _, body = card_of(demo_runs / "export-frozen")
    assert "a linear probe on the frozen randomly initialised encoder" in body


def test_the_card_names_a_hub_base_model_only_for_a_hub_id():
    import export
    about = lambda backbone, random_init=False: {"args": {"model": {"backbone": backbone}, "head": {}},
                                                 "backbone_random_init": random_init}
    assert export.hub_base_model(about("wav2vec2")) == "facebook/wav2vec2-base"  # an alias
    assert export.hub_base_model(about("openai/whisper-tiny.en")) == "openai/whisper-tiny.en"
    assert export.hub_base_model(about("wav2vec2", random_init=True)) is None
    for local in ("../shared/models/whisper-tiny.en-encoder", "/abs/models/x", "tiny", "models"):
        assert export.hub_base_model(about(local)) is None, local


def test_a_wav2vec2_base_like_model_without_attention_mask_exports_too(demo_manifest, tmp_path):
    # A randomly initialised model shaped like wav2vec2-base in what matters here: group norm, and a
    # feature extractor that returns no attention mask (the model is then given none).
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(32, 32), conv_kernel=(10, 8),
                                         conv_stride=(5, 8), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2, feat_extract_norm="group",
                                         do_stable_layer_norm=False)
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path / "base-like")
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=True).save_pretrained(
        tmp_path / "base-like")
    run_script("finetune.py", "--dataset", demo_manifest, "--backbone", tmp_path / "base-like", *FAST,
               "--out", tmp_path / "run")
    run_script("export.py", tmp_path / "run", "--out", tmp_path / "export")
    model = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "export").eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "export")
    waves, _ = held_out_waves(demo_manifest)
    inputs = [extractor(w, sampling_rate=16_000, return_tensors="pt") for w in waves]
    assert "attention_mask" not in inputs[0]
    with torch.no_grad():
        theirs = torch.cat([model(**x).logits for x in inputs])
    assert torch.allclose(theirs, our_logits(tmp_path / "run", "finetune", waves), atol=1e-4)


def test_a_copied_run_exports_its_own_encoder_and_a_changed_encoder_is_refused(demo_runs, tmp_path):
    import shutil
    copy = tmp_path / "copied"
    shutil.copytree(demo_runs / "pairtune", copy)
    run_script("export.py", copy, "--out", tmp_path / "from-copy")
    exported = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "from-copy")
    own = transformers.AutoModel.from_pretrained(copy / "encoder")
    assert all(torch.equal(a, b) for a, b in zip(exported.base_model.state_dict().values(), own.state_dict().values()))
    # the copy's encoder replaced by another run's: its classifier was not made with it
    shutil.rmtree(copy / "encoder")
    shutil.copytree(demo_runs / "finetune" / "encoder", copy / "encoder")
    refused = run_script("export.py", copy, "--out", tmp_path / "other", check=False)
    assert refused.returncode == 1 and "is not the one its classifier was made with" in refused.stderr
    assert not (tmp_path / "other").exists()


def test_the_export_folder_must_be_new_or_empty_unless_overwrite(demo_runs, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    refused = run_script("export.py", demo_runs / "finetune", "--out", tmp_path / "busy", check=False)
    assert refused.returncode == 1 and "is not empty (it has notes.txt)" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    refused = run_script("export.py", demo_runs / "finetune", "--out", demo_runs / "finetune" / "x", check=False)
    assert refused.returncode == 1 and "inside the run folder" in refused.stderr
    (tmp_path / "again").mkdir()  # empty: no --overwrite needed
    run_script("export.py", demo_runs / "finetune", "--out", tmp_path / "again", "--check-clips", 0)
    refused = run_script("export.py", demo_runs / "finetune", "--out", tmp_path / "again", "--check-clips", 0,
                         check=False)  # an earlier export too: it may be a clone with more in it
    assert refused.returncode == 1 and "--overwrite replaces only the files export.py writes" in refused.stderr
    run_script("export.py", demo_runs / "finetune", "--out", tmp_path / "again", "--check-clips", 0, "--overwrite")
    refused = run_script("export.py", tmp_path / "again", "--out", tmp_path / "twice", check=False)
    assert refused.returncode == 1 and "is an export already" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "busy"]  # no .partial left behind


def files_in(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    """The script stopped with one `error: ...` line, not a traceback; that line."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr[-3000:]
    return errors[0]


def test_overwrite_replaces_only_exports_own_files_in_a_cloned_export(demo_runs, demo_manifest, tmp_path):
    # An earlier export as the Hub gives it back: a clone with .git/, a notebook, an edited card, and
    # a weight shard of an export that was sharded (transformers would load the stale shard's index).
    clone = tmp_path / "clone"
    run_script("export.py", demo_runs / "finetune", "--out", clone, "--check-clips", 0)
    (clone / ".git" / "objects").mkdir(parents=True)
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (clone / ".git" / "objects" / "pack").write_bytes(b"\x00history")
    (clone / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (clone / "demo.ipynb").write_text("{}")
    (clone / "README.md").write_text((clone / "README.md").read_text() + "\nEdited by hand.\n")
    (clone / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")
    before = files_in(clone)
    refused = run_script("export.py", demo_runs / "pairtune", "--out", clone, check=False)
    line = one_error_line(refused)
    assert f"--out {clone} is not empty (it has .git, .gitattributes" in line
    assert "--overwrite replaces only the files export.py writes" in line and "leaves the rest" in line
    assert files_in(clone) == before, "nothing is touched without --overwrite"
    replaced = run_script("export.py", demo_runs / "pairtune", "--out", clone, "--overwrite", "--check-clips", 2)
    assert f"--overwrite: replacing export.py's files in {clone}; the 3 other(s) there stay as they are " \
           "(.git, .gitattributes, demo.ipynb)" in replaced.stdout
    after = files_in(clone)
    for kept in (".git/HEAD", ".git/objects/pack", ".gitattributes", "demo.ipynb"):
        assert after[kept] == before[kept], kept
    assert "model-00001-of-00002.safetensors" not in after  # export's name, not written this time
    assert set(after) == {".git/HEAD", ".git/objects/pack", ".gitattributes", "demo.ipynb", "README.md",
                          "audioconfit.json", "config.json", "model.safetensors", "preprocessor_config.json"}
    assert "Edited by hand" not in after["README.md"].decode() and "PairTune" in after["README.md"].decode()
    assert json.loads(after["audioconfit.json"])["about"]["method"] == "pairtune"
    model = transformers.AutoModelForAudioClassification.from_pretrained(clone).eval()  # the new weights
    extractor = transformers.AutoFeatureExtractor.from_pretrained(clone)
    waves, _ = held_out_waves(demo_manifest, n=4)
    with torch.no_grad():
        theirs = torch.cat([model(**extractor(w, sampling_rate=16_000, return_tensors="pt")).logits for w in waves])
    assert torch.allclose(theirs, our_logits(demo_runs / "pairtune", "pairtune", waves), atol=1e-4)
    assert not (tmp_path / "clone.partial").exists()


def test_an_export_that_does_not_compute_what_the_run_computes_is_not_written(demo_runs, tmp_path, monkeypatch):
    import export
    true_affine = export.affine_of
    monkeypatch.setattr(export, "affine_of", lambda head: (lambda w, b, c: (w, b + 1.0, c))(*true_affine(head)))
    with pytest.raises(SystemExit, match="does not compute what the run computes"):
        export.main([str(demo_runs / "pairtune"), "--out", str(tmp_path / "wrong")])
    assert not (tmp_path / "wrong").exists() and (tmp_path / "wrong.partial" / "config.json").exists()


def lock_naming(pid: int) -> str:
    """A folder lock's line (outdir's format: HOST PID START) naming process `pid`."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return f"{socket.gethostname()} {pid} {stat[stat.rindex(')') + 2:].split()[19]}\n"


def test_a_partial_folder_is_removed_only_as_exports_own_leftover(demo_runs, tmp_path, monkeypatch):
    import export
    # someone's folder that happens to be named OUT.partial: refused, not removed
    theirs = tmp_path / "a.partial"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    line = one_error_line(run_script("export.py", demo_runs / "finetune", "--out", tmp_path / "a", "--check-clips", 0,
                                     check=False))
    assert f"{theirs} is not export.py's" in line and "move it away" in line
    assert files_in(theirs) == {"notes.txt": b"mine"} and not (tmp_path / "a").exists()
    # export.py's own: a failed check leaves it for a look
    true_affine = export.affine_of
    monkeypatch.setattr(export, "affine_of", lambda head: (lambda w, b, c: (w, b + 1.0, c))(*true_affine(head)))
    with pytest.raises(SystemExit, match="does not compute what the run computes"):
        export.main([str(demo_runs / "finetune"), "--out", str(tmp_path / "b")])
    monkeypatch.undo()
    leftover = tmp_path / "b.partial"
    assert (leftover / "config.json").is_file() and not (leftover / ".lock").exists()
    # ... while its writer runs (a lock naming a live process): refused, naming it
    writer = subprocess.Popen(["sleep", "300"])
    try:
        (leftover / ".lock").write_text(lock_naming(writer.pid))
        before = files_in(leftover)
        line = one_error_line(run_script("export.py", demo_runs / "finetune", "--out", tmp_path / "b", check=False))
        assert f"{leftover} is in use by process {writer.pid}" in line
        assert files_in(leftover) == before and not (tmp_path / "b").exists()
    finally:
        writer.kill()
        writer.wait()
    # ... and once that writer is gone: removed, with a line saying so, and the export made
    done = run_script("export.py", demo_runs / "finetune", "--out", tmp_path / "b", "--check-clips", 2)
    assert f"took over the stale lock of {leftover}" in done.stdout
    assert f"removing {leftover}: an earlier export.py's" in done.stdout
    assert not leftover.exists() and (tmp_path / "b" / "model.safetensors").is_file()


@pytest.mark.parametrize("broken", ["nan-weights", "zero-std"])
def test_a_model_with_non_finite_logits_is_neither_exported_nor_predicted(demo_runs, demo_manifest, tmp_path, broken):
    # pairtune.py --lr 1e9 can end with NaN weights; a probe whose std is 0 has finite weights and
    # infinite logits (only the logits show it). NaN fails every comparison, so it passed the check.
    import shutil
    run = tmp_path / broken
    if broken == "nan-weights":
        shutil.copytree(demo_runs / "finetune", run)
        head = torch.load(run / "head.pt", weights_only=True)
        torch.save({k: torch.full_like(v, float("nan")) for k, v in head.items()}, run / "head.pt")
    else:
        shutil.copytree(demo_runs / "frozen", run)
        saved = torch.load(run / "head.pt", weights_only=True)
        torch.save({**saved, "std": torch.zeros_like(saved["std"])}, run / "head.pt")
    line = one_error_line(run_script("export.py", run, "--out", tmp_path / "out", check=False))
    assert "non-finite" in line and not (tmp_path / "out").exists()
    files = sorted((demo_manifest.parent / "audio" / "test").glob("*.wav"))[:3]
    result = run_script("predict.py", run, *files, "--json", check=False)
    line = one_error_line(result)
    assert "non-finite" in line and "NaN" not in result.stdout
    if broken == "zero-std":
        assert line.startswith(f"error: {files[0]}: the model gives non-finite scores (NaN or inf) for this file")


def test_an_unfinished_run_is_refused_by_name(demo_runs, tmp_path):
    import shutil
    copy = tmp_path / "pairtune"
    shutil.copytree(demo_runs / "pairtune", copy)
    probe_run = json.loads((copy / "probe/run.json").read_text())
    (copy / "probe/run.json").write_text(json.dumps({**probe_run, "finished": False}))
    result = run_script("export.py", copy, "--out", tmp_path / "out", check=False)
    assert result.returncode == 1 and f"{copy / 'probe'}: the probe run is not finished" in result.stderr
    result = run_script("predict.py", tmp_path, "x.wav", check=False)
    assert result.returncode == 1 and "neither a run folder" in result.stderr


def test_push_to_hub_is_one_create_and_one_upload(demo_runs, tmp_path, monkeypatch):
    # A stand-in for huggingface_hub's HfApi (our machines cannot reach the Hub): the calls it gets.
    import huggingface_hub

    import export
    calls = []

    class StandInApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            calls.append(("upload_folder", kwargs["repo_id"], files))

    monkeypatch.setattr(huggingface_hub, "HfApi", StandInApi)
    export.main([str(demo_runs / "finetune"), "--out", str(tmp_path / "up"), "--push-to-hub", "me/demo-ft",
                 "--private", "--check-clips", "0"])
    assert calls[0] == ("create_repo", "me/demo-ft", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][:2] == ("upload_folder", "me/demo-ft")
    expected = {"README.md", "audioconfit.json", "config.json", "model.safetensors", "preprocessor_config.json"}
    assert expected <= set(calls[1][2])


# ----------------------------------------------------------------------------------------------
# predict.py
# ----------------------------------------------------------------------------------------------

def predicted(stdout):
    return {line["file"]: line for line in map(json.loads, stdout.splitlines())}


def test_predict_on_a_folder_gives_the_reported_test_accuracy_from_a_run_and_from_its_export(demo_runs, demo_manifest):
    with open(demo_manifest) as f:
        truth = {str(demo_manifest.parent / r["path"]): r["label"] for r in csv.DictReader(f)
                 if r["split"] == "test"}
    for name, results_file in (("pairtune", "pairtune/probe/results.json"), ("finetune", "finetune/results.json")):
        reported = json.loads((demo_runs / results_file).read_text())["test_acc"]
        outputs = []
        for model in (demo_runs / name, demo_runs / f"export-{name}"):
            out = predicted(run_script("predict.py", model, demo_manifest.parent / "audio" / "test", "--json",
                                       "--top-k", 2).stdout)
            assert set(out) == set(truth) and all(len(p["top"]) == 2 for p in out.values())
            accuracy = np.mean([out[f]["top"][0]["label"] == truth[f] for f in truth])
            assert accuracy == pytest.approx(reported, abs=1e-6), (name, model)
            # per file, not only in sum: the confusion matrix of predict.py's labels is the run's
            results = json.loads((demo_runs / results_file).read_text())
            classes = results["classes"]
            confusion = np.zeros((len(classes), len(classes)), dtype=int)
            for f in truth:
                confusion[classes.index(truth[f]), classes.index(out[f]["top"][0]["label"])] += 1
            assert confusion.tolist() == results["confusion"], (name, model)
            outputs.append(out)
        # the run folder and its export: the same classes, the same probabilities (the export's
        # projector is the standardisation as a matrix: rounding apart)
        for file, line in outputs[0].items():
            other = outputs[1][file]["top"]
            assert [t["label"] for t in line["top"]] == [t["label"] for t in other]
            assert [t["probability"] for t in line["top"]] == pytest.approx([t["probability"] for t in other], abs=1e-5)


def test_predict_names_unusable_files_skips_them_and_exits_non_zero(demo_runs, demo_manifest, tmp_path):
    good = sorted((demo_manifest.parent / "audio" / "test").glob("*.wav"))[:2]
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "broken.wav").write_bytes(b"RIFF....not audio")
    (tmp_path / "notes.txt").write_text("not audio, not listed")
    result = run_script("predict.py", demo_runs / "finetune", *good, tmp_path, tmp_path / "gone.flac", check=False)
    assert result.returncode == 1
    assert f"{tmp_path / 'nested' / 'broken.wav'}: cannot be read as audio" in result.stderr
    assert f"{tmp_path / 'gone.flac'}: file not found" in result.stderr and "notes.txt" not in result.stderr
    assert "2 of 4 file(s) could not be used" in result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in good]
    probabilities = [float(cell.split()[1]) for cell in lines[0].split("\t")[1:]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert run_script("predict.py", demo_runs / "finetune", *good).returncode == 0


def joined_files(folder: Path, groups) -> Path:
    """One file per group of audio files, their samples end to end (all at one rate)."""
    import soundfile as sf
    folder.mkdir()
    for n, group in enumerate(groups):
        waves, rates = zip(*(sf.read(f, dtype="float32") for f in group))
        sf.write(folder / f"joined-{n}.wav", np.concatenate(waves), rates[0])
    return folder


def all_scores(model, inputs, *args) -> dict:
    """predict.py's probability of every class, per file."""
    out = predicted(run_script("predict.py", model, inputs, "--json", "--top-k", 100, *args).stdout)
    return {file: {t["label"]: t["probability"] for t in line["top"]} for file, line in out.items()}


def check_passes_bounded(monkeypatch, model, inputs, bound: int, samples_per_column: int = 1):
    """predict.main with --max-samples-per-pass `bound` gives the encoder at most `bound` samples a
    pass, several chunks in some; with the default, a batch this small goes whole, in one pass."""
    import predict
    passes = []
    forward = backbone.AudioEncoder.forward

    def recorded(self, inputs):
        passes.append(inputs["attention_mask"].shape)  # [chunks, samples or Whisper frames]
        return forward(self, inputs)

    monkeypatch.setattr(backbone.AudioEncoder, "forward", recorded)
    assert predict.main([str(model), str(inputs), "--max-samples-per-pass", str(bound)]) == 0
    assert len(passes) > 1 and all(rows * width * samples_per_column <= bound for rows, width in passes), passes
    assert max(rows for rows, _ in passes) > 1  # not only one chunk a pass
    chunks = sum(rows for rows, _ in passes)
    passes.clear()
    assert predict.main([str(model), str(inputs)]) == 0
    assert [rows for rows, _ in passes] == [chunks]


def test_predict_bounds_the_samples_of_a_forward_pass_with_the_same_scores(demo_runs, demo_manifest, tmp_path,
                                                                         monkeypatch):
    # Files of 1.9-7 s, several times the runs' 1-s chunk: all the chunks of a batch of clips went
    # through one forward pass (2.5 GB for four 5-minute files).
    test_files = sorted((demo_manifest.parent / "audio" / "test").glob("*.wav"))
    long = joined_files(tmp_path / "long", [test_files[0:3], test_files[10:14], test_files[20:22], test_files[30:35]])
    for model in (demo_runs / "finetune", demo_runs / "export-pairtune"):
        whole = all_scores(model, long)
        assert len(whole) == 4
        for bound in (1, 40_000):  # one chunk a pass; two of the 16,000-sample chunks a pass
            sliced = all_scores(model, long, "--max-samples-per-pass", bound)
            assert sliced.keys() == whole.keys()
            for file in whole:
                assert sliced[file] == pytest.approx(whole[file], abs=1e-5), (model, bound, file)
    check_passes_bounded(monkeypatch, demo_runs / "finetune", long, 40_000)


# ----------------------------------------------------------------------------------------------
# Real speech, real pre-trained Whisper tiny.en
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fsdd_whisper_run(fsdd_root, whisper_dir, tmp_path_factory):
    """FSDD digits (train takes 10-14, valid 5-6, test 0-2: 300 / 120 / 180 clips), one epoch of
    PairTune on Whisper tiny.en with its probe, one of FineTune, and their exports."""
    root = tmp_path_factory.mktemp("fsdd-export")
    rows = []
    for file in sorted((fsdd_root / "recordings").glob("*.wav")):
        digit, speaker, take = file.stem.split("_")
        split = {0: "test", 1: "test", 2: "test", 5: "valid", 6: "valid"}.get(int(take))
        split = split or ("train" if 10 <= int(take) <= 14 else None)
        if split:
            rows.append([str(file), digit, split, speaker])
    (root / "fsdd").mkdir()
    with open(root / "fsdd" / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split", "speaker"], *rows])
    run_script("pairtune.py", "--dataset", root / "fsdd", "--backbone", whisper_dir, "--epochs", 1,
               "--max-seconds", 2, "--batch-size", 32, "--device", "cpu", "--out", root / "pairtune")
    run_script("probe.py", "--ckpt", root / "pairtune", "--lrs", "1e-3", "--batch-sizes", "32", "--epochs", 40,
               "--device", "cpu")
    run_script("export.py", root / "pairtune", "--out", root / "export")
    run_script("finetune.py", "--dataset", root / "fsdd", "--backbone", whisper_dir, "--epochs", 1,
               "--max-seconds", 2, "--batch-size", 32, "--device", "cpu", "--out", root / "finetune")
    run_script("export.py", root / "finetune", "--out", root / "export-finetune")
    return root, {r[0]: r[1] for r in rows if r[2] == "test"}


def test_whisper_export_reproduces_the_probe_through_the_pipeline_and_predict(fsdd_whisper_run):
    """pairtune -> probe -> export -> transformers' pipeline on FSDD's test split gives the probe's
    test accuracy (with trust_remote_code=True: the folder's MaskedWhisperClassifier), and so does
    predict.py on the run and on the export; transformers' own WhisperForAudioClassification forced on
    the folder, which pools over 30 s of padding, is measured."""
    root, truth = fsdd_whisper_run
    reported = json.loads((root / "pairtune/probe/results.json").read_text())["test_acc"]
    files = sorted(truth)
    for model in (root / "pairtune", root / "export"):
        out = predicted(run_script("predict.py", model, *files, "--json").stdout)
        accuracy = np.mean([out[f]["top"][0]["label"] == truth[f] for f in files])
        assert accuracy == pytest.approx(reported, abs=1e-6), model
    waves = [data.load_audio(f, 16_000) for f in files]  # every FSDD clip is under 2 s: no chunking
    accuracy = {}
    unmasked = transformers.WhisperForAudioClassification.from_pretrained(root / "export").eval()
    for name, classify in (
            ("masked", transformers.pipeline("audio-classification", model=str(root / "export"), device="cpu",
                                             trust_remote_code=True)),
            ("transformers", transformers.pipeline("audio-classification", model=unmasked, device="cpu",
                                                   feature_extractor=transformers.AutoFeatureExtractor.from_pretrained(
                                                       root / "export")))):
        labels = [classify({"raw": w, "sampling_rate": 16_000}, top_k=1)[0]["label"] for w in waves]
        accuracy[name] = np.mean([label == truth[f] for label, f in zip(labels, files)])
    print(f"FSDD digits (n={len(files)}), whisper tiny.en, pairtune 1 epoch + probe: probe {reported:.4f}; "
          f"pipeline with trust_remote_code=True {accuracy['masked']:.4f}, with transformers' "
          f"WhisperForAudioClassification forced {accuracy['transformers']:.4f}", file=sys.stderr)
    assert accuracy["masked"] == pytest.approx(reported, abs=1e-6)
    # only what the feature extractor gives by default (30 s), not a batch padded to its longest clip
    masked = masked_whisper.MaskedWhisperClassifier.from_pretrained(root / "export")
    extractor = transformers.AutoFeatureExtractor.from_pretrained(root / "export")
    with pytest.raises(ValueError, match="takes 3000 mel frames"):
        masked(**extractor(waves[:2], sampling_rate=16_000, padding="longest", return_tensors="pt"))
    info = json.loads((root / "export/audioconfit.json").read_text())
    # the pipeline as the card loads it agrees; transformers' own class on these weights does not
    assert info["export_check"]["transformers"]["max_abs_logit_difference"] < 1e-4
    assert info["export_check"]["unmasked"]["same_prediction"] < 0.5  # stated, not hidden
    _, body = card_of(root / "export")
    assert "pads every input to 30 s and averages over all 1500 frames" in body
    assert "trust_remote_code=True" in body


def test_whisper_predict_bounds_its_forward_passes_with_the_same_scores(fsdd_whisper_run, tmp_path, monkeypatch):
    # Whisper's inputs are mel frames: a frame counts hop_length (160) samples of the bound.
    root, truth = fsdd_whisper_run
    files = sorted(truth)
    long = joined_files(tmp_path / "long", [files[0:8], files[20:26], files[40:50]])  # a few 2-s chunks each
    whole = all_scores(root / "export", long)
    for bound in (1, 70_000):  # one chunk a pass; two of the ~200-frame chunks a pass
        sliced = all_scores(root / "export", long, "--max-samples-per-pass", bound)
        assert sliced.keys() == whole.keys()
        for file in whole:
            assert sliced[file] == pytest.approx(whole[file], abs=1e-5), (bound, file)
    check_passes_bounded(monkeypatch, root / "export", long, 70_000, samples_per_column=160)


def test_a_whisper_finetune_export_predicts_its_reported_accuracy(fsdd_whisper_run):
    root, truth = fsdd_whisper_run
    reported = json.loads((root / "finetune/results.json").read_text())["test_acc"]
    files = sorted(truth)
    out = predicted(run_script("predict.py", root / "export-finetune", *files, "--json").stdout)
    assert np.mean([out[f]["top"][0]["label"] == truth[f] for f in files]) == pytest.approx(reported, abs=1e-6)
    check = json.loads((root / "export-finetune/audioconfit.json").read_text())["export_check"]
    assert check["transformers"]["max_abs_logit_difference"] < 1e-4 and check["transformers"]["same_prediction"] == 1
