"""Export a trained classifier as a transformers audio-classification model, with a model card.

    python export.py runs/gtzan/wav2vec2/pairtune/seed-0 --out export/gtzan-pairtune   # pairtune + probe
    python export.py runs/gtzan/wav2vec2/finetune/seed-0 --out export/gtzan-finetune   # FineTune
    python export.py RUN --out DIR --push-to-hub user/name                             # and upload it

RUN is a finished finetune run, a pairtune run with its probe (or the probe's own folder), or a
frozen encoder's probe. DIR then loads with transformers alone (Whisper: trust_remote_code=True, below):

    model = transformers.AutoModelForAudioClassification.from_pretrained(DIR)
    classify = transformers.pipeline("audio-classification", model=DIR)
    classify({"raw": wave, "sampling_rate": 16000})    # an array: a file path would need ffmpeg

The classifier is folded into the model's own head. transformers' classifiers compute
classifier(mean over frames of projector(hidden)); our probe computes linear(standardise(mean over
frames of hidden)). The standardisation is affine, and an affine map commutes with the mean, so it
becomes the projector (weight diag(1/std), bias -mean/std) and the probe's linear layer the
classifier; FineTune's head is the classifier after an identity projector.

Whisper: transformers' WhisperForAudioClassification pads every input to 30 s and averages over
the padding; our encoder averages over the clip's own frames. Same weights, other features (on
FSDD: chance level). So a Whisper export is not a "whisper" model: its config.json has its own
model_type (masked_whisper.MODEL_TYPE) and names, in auto_map, the classes of masked_whisper.py,
which is copied into DIR (the one definition of the masked pooling, torch and transformers only).
transformers then refuses DIR without trust_remote_code=True (a ValueError saying so), and with it
runs masked_whisper.MaskedWhisperClassifier, which reads the feature extractor's attention mask
(turned on in the export) and pools as the run did; predict.py on DIR computes the same without
running the folder's code.

Clips longer than the run's chunk length: we average the chunks' features, transformers takes the
whole clip at once (wav2vec2 family) or its first 30 s (Whisper); the card says so.

A multi-label run (sigmoid per class) exports with problem_type "multi_label_classification" in
config.json, for which transformers' audio-classification pipeline applies a sigmoid to each class's
logit rather than a softmax (transformers 5.24, AudioClassificationPipeline.postprocess), and the
per-class thresholds chosen on valid as config.json's "thresholds" ({class: t}; also in
audioconfit.json). The card gives the call that returns every class's probability,
classify(..., top_k=None, function_to_apply="sigmoid"), and lists the thresholds.

The folder is written as DIR.partial and loaded back the way the card tells a Hub user to load it,
transformers' pipeline (with trust_remote_code=True for Whisper), which is compared with the run's
own pipeline on up to --check-clips valid clips (cut to the chunk length, one at a time): the
largest logit difference and the share of equal predictions go into the card and audioconfit.json.
Only if it agrees, with finite logits, are the files moved into DIR; else the script exits 1.

DIR must be new or empty. A folder with anything in it (an earlier export, the same one cloned from
the Hub with its .git/) takes --overwrite, which replaces only the files export.py writes
(EXPORT_FILES) and leaves every other file as it is. DIR.partial is export.py's own while it writes
(its lock and a marker file); a leftover one whose writer is gone is removed, anything else named
DIR.partial is refused, not removed.
"""
import argparse
import copy
import fnmatch
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import torch
import transformers
from huggingface_hub import EvalResult, ModelCardData  # a dependency of transformers

import backbone
import data
import masked_whisper
import outdir
import probes
import rundir
import runs
from rundir import EXPORT_INFO
from trained import load_trained


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished finetune run, pairtune run with its probe, or probe folder")
    p.add_argument("--out", required=True, help="the folder to write (a transformers model folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out (an earlier export, a clone of it): replaces only the files "
                        "export.py writes there, keeps the others (default: refuse a non-empty --out)")
    p.add_argument("--check-clips", type=int, default=16,
                   help="valid clips on which the exported model is compared with the run's pipeline, 0 for none "
                        "(default: %(default)s)")
    p.add_argument("--data-root", default=None,
                   help="folder holding NAME/manifest.csv, for the check (default: the manifest the run recorded, "
                        "else $CONFIT_DATA, else data/)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="upload DIR to this Hugging Face repo, which needs a token: huggingface-cli login "
                        "(default: no upload)")
    p.add_argument("--private", action="store_true",
                   help="with --push-to-hub: create the repo private (default: public)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Our classifier as a transformers model
# ----------------------------------------------------------------------------------------------

def affine_of(head) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    """(projector weight, projector bias, classifier) for a ProbeHead or FineTune's linear head."""
    if isinstance(head, probes.ProbeHead):
        return torch.diag(1 / head.std), -head.mean / head.std, head.linear
    width = head.in_features
    return torch.eye(width), torch.zeros(width), head


# A Whisper export's code: masked_whisper.py itself, copied into the folder, and its classes named in
# config.json for transformers' Auto classes (loaded only with trust_remote_code=True).
WHISPER_CODE = Path(masked_whisper.__file__).name
WHISPER_AUTO_MAP = {"AutoConfig": f"{masked_whisper.__name__}.MaskedWhisperConfig",
                    "AutoModelForAudioClassification": f"{masked_whisper.__name__}.MaskedWhisperClassifier"}


def to_transformers(trained: dict):
    """The run's encoder with its classifier as the model's projector + classifier, labels named.
    Whisper: a masked_whisper.MaskedWhisperClassifier under its own model_type, whose auto_map points
    transformers at the copy of masked_whisper.py that export.py puts beside it."""
    encoder, classes = trained["encoder"], trained["classes"]
    config_class = masked_whisper.MaskedWhisperConfig if encoder.whisper else type(encoder.model.config)
    config = config_class.from_dict(encoder.model.config.to_dict())  # a copy
    width = encoder.hidden_size
    config.update(dict(classifier_proj_size=width, use_weighted_layer_sum=False, num_labels=len(classes),
                       id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)}))
    if trained["multilabel"]:  # a sigmoid per class in transformers' pipeline; the valid-chosen thresholds
        config.update(dict(problem_type="multi_label_classification",
                           thresholds=dict(zip(classes, trained["thresholds"]))))
    if encoder.whisper:  # our Whisper encoder is already a WhisperForAudioClassification: take its encoder
        config.auto_map = dict(WHISPER_AUTO_MAP)
        model = masked_whisper.MaskedWhisperClassifier(config)
        model.encoder.load_state_dict(encoder.model.encoder.state_dict())
    else:
        model = transformers.AutoModelForAudioClassification.from_config(config)
        model.base_model.load_state_dict(encoder.model.state_dict())
    weight, bias, linear = affine_of(trained["head"])
    with torch.no_grad():
        model.projector.weight.copy_(weight)
        model.projector.bias.copy_(bias)
        model.classifier.weight.copy_(linear.weight)
        model.classifier.bias.copy_(linear.bias)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The check: the exported model, as transformers runs it, against the run's pipeline
# ----------------------------------------------------------------------------------------------

def hub_pipeline(folder: Path, whisper: bool):
    """The folder loaded as the card tells a Hub user to load it: transformers' pipeline (running the
    folder's masked_whisper.py for Whisper)."""
    return transformers.pipeline("audio-classification", model=str(folder), device="cpu",
                                 trust_remote_code=True if whisper else None)


def pipeline_logits(classify, wave, classes: list) -> torch.Tensor:
    """The pipeline's raw scores (function_to_apply="none": the logits) of every class, in class order."""
    scores = classify({"raw": wave, "sampling_rate": classify.feature_extractor.sampling_rate},
                      top_k=len(classes), function_to_apply="none")
    by_label = {score["label"]: score["score"] for score in scores}
    return torch.tensor([by_label[c] for c in classes])


@torch.no_grad()
def compare_on_valid(trained: dict, out: Path, n_clips: int, data_root) -> dict | None:
    """The logits of transformers' pipeline on the folder (one clip at a time) against ours, on the
    first n_clips valid clips of the run's dataset, each cut to the chunk length. For Whisper, also
    what transformers' own WhisperForAudioClassification computes with these weights (pooling over
    the 30-s padding): measured for the card, not what a user gets."""
    about = trained["about"]
    if n_clips <= 0:
        print("note: --check-clips 0: the exported model is not compared with the run's pipeline")
        return None
    source = Path(about["manifest"])
    if not source.is_file():
        try:
            source = data.resolve_dataset(about["dataset"], data_root)
        except data.DataError:
            print(f"note: the check is skipped: {about['manifest']} is not there (give --data-root)")
            return None
    # only the clips checked are decoded (not every file of the dataset, as the scripts' check does)
    splits, _ = data.load_splits(str(source), None, about["fold"], check_files=False)
    encoder, head, classes = trained["encoder"], trained["head"], trained["classes"]
    classify = hub_pipeline(out, encoder.whisper)
    limit = int(trained["max_seconds"] * encoder.sample_rate)
    ours, theirs, checked = [], {name: [] for name in CHECKED if name == "transformers" or encoder.whisper}, 0
    for clip in splits["valid"]:
        if checked == n_clips:
            break
        try:
            wave = data.load_audio(clip.path, encoder.sample_rate)[:limit]
        except data.DataError:  # an unusable file (one a --skip-bad run left out): the next one
            continue
        checked += 1
        ours.append(head(encoder(encoder.preprocess([wave])))[0])
        theirs["transformers"].append(pipeline_logits(classify, wave, classes))
        if encoder.whisper:  # the parent class's forward on the same weights and the pipeline's input
            inputs = classify.feature_extractor(wave, sampling_rate=encoder.sample_rate, return_tensors="pt")
            theirs["unmasked"].append(transformers.WhisperForAudioClassification.forward(classify.model, **inputs)
                                      .logits[0])
    if not checked:
        print("note: the check is skipped: no usable valid clip")
        return None
    ours = torch.stack(ours)
    # Non-finite logits (a diverged run's weights, or finite ones that overflow) fail here, not in the
    # comparison below: NaN > 1e-4 is False, and NaN rows give the same argmax on both sides.
    bad = int((~ours.isfinite().all(1)).sum())
    if bad:
        raise outdir.Refused(f"the run's classifier gives non-finite logits (NaN or inf) on {bad} of {checked} valid "
                             "clips: it is not usable (did the run diverge? train it again with a lower --lr); "
                             "nothing is exported")
    check = {"clips": checked, "split": "valid"}
    for name, logits in theirs.items():
        logits = torch.stack(logits)
        bad = int((~logits.isfinite().all(1)).sum())
        if bad and name == "unmasked":  # only measured for the card: left out, and the export goes on
            continue
        if bad:
            raise outdir.Refused(f"the exported model ({CHECKED[name]}) gives non-finite logits (NaN or inf) on {bad} "
                                 f"of {checked} valid clips where the run's are finite; nothing is exported")
        check[name] = {"max_abs_logit_difference": float((ours - logits).abs().max()),
                       "same_prediction": float((ours.argmax(1) == logits.argmax(1)).float().mean())}
    return check


WHISPER_POOLING = (f"the mean over the clip's own frames, as the run: {WHISPER_CODE}'s MaskedWhisperClassifier "
                   "(transformers with trust_remote_code=True) and predict.py; transformers' own "
                   "WhisperForAudioClassification would pool over its 30 s of padding")
# What the check compares with the run, by its key in audioconfit.json's export_check
CHECKED = {"transformers": "transformers' pipeline, loaded as the card says",
           "unmasked": "transformers' own WhisperForAudioClassification on these weights"}


# ----------------------------------------------------------------------------------------------
# The model card
# ----------------------------------------------------------------------------------------------

def command_of(script: str, args: dict) -> str:
    """A runnable command line from a run's recorded arguments (every value explicit)."""
    words = ["python", script]
    for name, value in args.items():
        if value is None or value is False or name in ("resume",):
            continue
        words.append("--" + name.replace("_", "-"))
        if value is not True:
            words.append(str(value))
    return shlex.join(words)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_base_model(about: dict) -> str | None:
    """The Hub id the encoder started from, for the card's base_model: an alias's, or a hub id given as
    --backbone; none for a random control or a local folder (named in the card's text instead)."""
    given = about["args"]["model"].get("backbone") or about["args"]["head"].get("ckpt") or ""
    given = backbone.ALIASES.get(given, given)
    if about["backbone_random_init"] or not HUB_ID.fullmatch(given) or given.startswith((".", "/")):
        return None
    return None if Path(given).exists() else given


USE_TRANSFORMERS = """```python
import soundfile, transformers
classify = transformers.pipeline("audio-classification", model="THIS_FOLDER_OR_REPO")
wave, rate = soundfile.read("clip.wav", dtype="float32", always_2d=True)
classify({"raw": wave.mean(1), "sampling_rate": rate}, top_k=3)  # an array; a file path needs ffmpeg
```"""
# A multi-label export: every class's own probability (sigmoid), then the classes at or above their thresholds
USE_MULTILABEL = """```python
import soundfile, transformers
classify = transformers.pipeline("audio-classification", model="THIS_FOLDER_OR_REPO"REMOTE_CODE)
wave, rate = soundfile.read("clip.wav", dtype="float32", always_2d=True)
scores = classify({"raw": wave.mean(1), "sampling_rate": rate}, top_k=None, function_to_apply="sigmoid")
thresholds = classify.model.config.thresholds  # {class: threshold}, chosen on valid
labels = [s["label"] for s in scores if s["score"] >= thresholds[s["label"]]]
```

This model is **multi-label**: a clip may carry several classes, each scored on its own by a
**sigmoid** of its logit (not a softmax over the classes). `config.json` has `problem_type:
multi_label_classification`, for which transformers' audio-classification pipeline already applies a
sigmoid (transformers 5.24), and a call without `top_k` returns every class; the call above says both
explicitly, so it returns every class with its probability, sorted by score. A class is predicted
where its probability is at or above its threshold (below; `thresholds` in `config.json`), chosen on
the valid split to maximise that class's F1."""

WHISPER_NOTE = f"""**`trust_remote_code=True` is needed**: it runs `{WHISPER_CODE}` from this folder (torch and
transformers only: a config, a pooling function, one classifier; read it first), whose
`MaskedWhisperClassifier` pools Whisper's encoder over the clip's own frames, as the run did (the
check below). Without it, transformers refuses the folder, in `pipeline` and in
`AutoModelForAudioClassification.from_pretrained` alike: a `ValueError` ("... contains custom code
which must be executed to correctly load the model ... Please pass the argument
`trust_remote_code=True`"; an interactive session asks first). In AudioConFit,
`python predict.py THIS_FOLDER files...` computes the same without running the folder's code."""
USE_WHISPER = """```python
import soundfile, transformers
classify = transformers.pipeline("audio-classification", model="THIS_FOLDER_OR_REPO", trust_remote_code=True)
wave, rate = soundfile.read("clip.wav", dtype="float32", always_2d=True)
classify({"raw": wave.mean(1), "sampling_rate": rate}, top_k=3)  # an array; a file path needs ffmpeg
```

""" + WHISPER_NOTE


def model_card(trained: dict, check: dict | None) -> str:
    about, classes = trained["about"], trained["classes"]
    given = about["args"]["model"].get("backbone") or about["args"]["head"].get("ckpt") or about["backbone"]
    base, hub_base = backbone.ALIASES.get(given, given), hub_base_model(about)
    encoder_kind = "randomly initialised" if about["backbone_random_init"] else "pre-trained"
    method = {"pairtune": "AudioConFit: PairTune (supervised contrastive fine-tuning on hard-mined pairs), "
                          "then a linear probe on the frozen tuned encoder",
              "finetune": "FineTune: end-to-end cross-entropy, encoder and linear head",
              "frozen": f"a linear probe on the frozen {encoder_kind} encoder"}[about["method"]]
    repeat = f"fold {about['fold']}" if about["fold"] is not None else f"seed {about['seed']}"
    clips = about["clips"]
    if about["method"] == "pairtune":
        commands = [command_of("pairtune.py", about["args"]["model"]), command_of("probe.py", about["args"]["head"])]
    elif about["method"] == "finetune":
        commands = [command_of("finetune.py", about["args"]["model"])]
    else:
        commands = [command_of("probe.py", about["args"]["head"])]
    selection = ("no training of the encoder" if about["method"] == "frozen" else
                 f"the encoder's epoch ({about['selected_epoch']}) by {about['selected_by']}")
    multi_label = trained["multilabel"]
    valid_metric = "valid macro mAP" if multi_label else "valid accuracy"
    if about["method"] != "finetune":
        selection += (f"; the probe's learning rate, batch size and epoch by {valid_metric} (ties: lower valid "
                      "loss)")
    if multi_label:
        selection += "; the per-class thresholds on valid, at the selected weights"
        method = method.replace("end-to-end cross-entropy", "end-to-end binary cross-entropy (a sigmoid per class)")
    whisper = trained["encoder"].whisper
    divergence = (
        "transformers' own `WhisperForAudioClassification` pads every input to 30 s and averages over all "
        "1500 frames, padding included, where AudioConFit averages over the clip's own frames: on these "
        "weights it computes other features than the ones the classifier was trained on, and its "
        "predictions differ (the check below). So this folder is not a `whisper` model: its `model_type` "
        f"is `{masked_whisper.MODEL_TYPE}`, whose classes are in `{WHISPER_CODE}` (above); do not load it "
        "as a `WhisperForAudioClassification`. `MaskedWhisperClassifier` reads the feature extractor's "
        "attention mask (turned on in `preprocessor_config.json`) and averages over the clip's frames. "
        "A clip longer than 30 s is cut to its first 30 s by the feature extractor; AudioConFit's "
        "evaluation and `predict.py` cut it into near-equal chunks of the chunk length and average "
        "their features."
        if whisper else
        "On a clip no longer than the chunk length, transformers computes what the run computed "
        "(the check below). A longer clip is cut into near-equal chunks by AudioConFit's evaluation and "
        "`predict.py`, which average the chunks' features; transformers takes it whole. A clip shorter "
        "than the encoder's receptive field (400 samples for wav2vec2-base) is zero-padded to it by "
        "AudioConFit; transformers cannot encode it.")
    if check is None:
        check_text = "not run (--check-clips 0, or the run's dataset was not found)."
    else:
        check_text = (f"on {check['clips']} {check['split']} clips (cut to {trained['max_seconds']:g} s), one "
                      "at a time through transformers' pipeline, against the run's own pipeline:\n")
        for name in CHECKED:
            if name in check:
                check_text += (f"\n- `{CHECKED[name]}`: largest logit difference "
                               f"{check[name]['max_abs_logit_difference']:.2e}, same prediction on "
                               f"{100 * check[name]['same_prediction']:.1f}% of them")
    tags = ["audio-classification", "audioconfit"] + (
        ["supervised-contrastive-learning"] if about["method"] == "pairtune" else [])
    # The Hub's card metadata (model-index included) through huggingface_hub's own class
    metric, value, metric_name = (("map", about["test_map"], "test macro mAP") if multi_label else
                                  ("accuracy", about["test_acc"], "test accuracy"))
    front = ModelCardData(library_name="transformers", pipeline_tag="audio-classification", base_model=hub_base,
                          metrics=[metric], tags=tags + (["multi-label"] if multi_label else []),
                          model_name=f"{about['dataset']}-{about['method']}",
                          eval_results=[EvalResult(task_type="audio-classification", dataset_type=about["dataset"],
                                                   dataset_name=about["dataset"], metric_type=metric,
                                                   metric_value=value, metric_name=metric_name)])
    random_note = " (RANDOMLY INITIALISED: a control, not a pre-trained model)" if about["backbone_random_init"] else ""
    local = (" (a local folder)" if hub_base is None and not about["backbone_random_init"] and base != backbone.TINY
             else "")
    body = f"""# {about['dataset']} classifier: {about['method']} of {Path(base).name}

- **Base model:** `{base}`{local}{random_note}
- **Dataset:** {about['dataset']}, {repeat}; {clips.get('train', 0)} train, {clips.get('valid', 0)} valid,
  {clips.get('test', 0)} test clips; {len(classes)} classes: {', '.join(classes)}
- **Method:** {method}.
{scored(about, clips, repeat)}
- **Selection:** {selection}; test was read once, after it.
- **Chunk length:** {trained['max_seconds']:g} s.

## Use

{use_text(whisper, multi_label)}
{thresholds_table(classes, trained["thresholds"]) if multi_label else ""}
## Where transformers computes something else

{divergence}

Check at export: {check_text}

## How it was made

```bash
{chr(10).join(commands)}
python export.py RUN --out THIS_FOLDER
```

Runs (paths on the machine that made them): {', '.join(f'{k} `{v}`' for k, v in about['runs'].items())}.
"""
    return f"---\n{front.to_yaml()}\n---\n{body}"


def scored(about: dict, clips: dict, repeat: str) -> str:
    """The card's line of results: accuracy, or a multi-label run's macro mAP and F1s."""
    test, valid = clips.get("test", 0), clips.get("valid", 0)
    if not about.get("multilabel"):
        return (f"- **Accuracy:** test {about['test_acc']:.4f} (n={test} clips), valid {about['valid_acc']:.4f}\n"
                f"  (n={valid}), one run ({repeat}).")
    results = about["results"]
    return (f"- **Macro mAP** (multi-label): test {about['test_map']:.4f} (n={test} clips), valid "
            f"{about['valid_map']:.4f}\n  (n={valid}), one run ({repeat}); at the thresholds chosen on valid, test "
            f"micro F1 {results['test_micro_f1']:.4f}, macro F1 {results['test_macro_f1']:.4f}.")


def use_text(whisper: bool, multi_label: bool) -> str:
    """The card's Use section: the pipeline call (a multi-label one returns every class's sigmoid)."""
    if not multi_label:
        return USE_WHISPER if whisper else USE_TRANSFORMERS
    text = USE_MULTILABEL.replace("REMOTE_CODE", ", trust_remote_code=True" if whisper else "")
    return text + ("\n\n" + WHISPER_NOTE if whisper else "")


def thresholds_table(classes: list, thresholds: list) -> str:
    """The valid-chosen threshold of each class, as a Markdown table."""
    rows = "".join(f"| {c} | {t:.6g} |\n" for c, t in zip(classes, thresholds))
    return ("\nThresholds (chosen on valid; a class is predicted where its probability is at or above its own):"
            f"\n\n| class | threshold |\n|---|---|\n{rows}")


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------

# What export.py writes into --out, and so all that --overwrite replaces there: save_pretrained of the
# model (config, weights; sharded with an index above transformers' shard size) and of the feature
# extractor, a Whisper export's code, then the card and audioconfit.json.
EXPORT_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
                "preprocessor_config.json", WHISPER_CODE, "README.md", EXPORT_INFO]
# Marks DIR.partial as export.py's own (beside its outdir.FolderLock while it writes): only such a
# folder is ever emptied by export.py.
PARTIAL_MARK = ".audioconfit-export-partial"


def is_export_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in EXPORT_FILES)


def listed(names: list, most: int = 5) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def check_out_folder(out: Path, run: Path, overwrite: bool):
    """Refuse an --out in or above a run (its run.json, its encoder/), a file, or a folder with
    anything in it unless --overwrite (an earlier export too: it may be a clone with its .git/)."""
    resolved, run = out.resolve(), run.resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / rundir.RUN_JSON).is_file():
            raise outdir.Refused(f"--out {out} is inside the run folder {folder}; export elsewhere")
    if resolved in run.parents:
        raise outdir.Refused(f"--out {out} holds the run {run}; export elsewhere")
    if out.exists() and not out.is_dir():
        raise outdir.Refused(f"--out {out} is a file, not a folder")
    there = sorted(os.listdir(out)) if out.is_dir() else []
    if there and not overwrite:
        raise outdir.Refused(f"--out {out} is not empty (it has {listed(there)}): --overwrite replaces only the "
                             f"files export.py writes ({', '.join(EXPORT_FILES)}) and leaves the rest; or give a "
                             "new or empty folder")


def claim_partial(partial: Path):
    """Before taking its lock: DIR.partial must be new, empty (a lock at most: a writer killed before
    its mark) or marked as export.py's. Anything else is someone's: refused, nothing removed."""
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise outdir.Refused(f"{partial} is not export.py's: move it away")
    names = set(os.listdir(partial)) - outdir.RUNNER_FILES if partial.is_dir() else set()
    if names and PARTIAL_MARK not in names:
        raise outdir.Refused(f"{partial} is not export.py's (no {PARTIAL_MARK} in it): move it away")


def clear_leftover(partial: Path):
    """Under its lock, so its writer is gone: empty DIR.partial of what an earlier export.py left
    (a kill, a failed check). Only names export.py writes there are removed; others stop the export."""
    names = sorted(set(os.listdir(partial)) - outdir.RUNNER_FILES)
    if not names:
        return
    foreign = [name for name in names if (partial / name).is_dir() or not (
        is_export_file(name) or name == PARTIAL_MARK or name.endswith(".tmp"))]
    if foreign:
        raise outdir.Refused(f"{partial} is an earlier export.py's, but holds files it does not write "
                             f"({listed(foreign)}): move them away")
    print(f"removing {partial}: an earlier export.py's unfinished or unchecked folder (its writer is gone)")
    for name in names:
        (partial / name).unlink()


def move_into(partial: Path, out: Path):
    """The checked files into DIR one at a time (os.replace: each one whole), every other file of DIR
    left as it is. audioconfit.json, which makes DIR an export to predict.py, goes first out and last
    in: a kill midway leaves no folder taken for a whole export. An earlier export's files that this
    one does not write (weight shards) go too: transformers could load them instead."""
    names = sorted(set(os.listdir(partial)) - outdir.RUNNER_FILES - {PARTIAL_MARK})
    unlisted = [name for name in names if not is_export_file(name)]
    if unlisted:  # a transformers release that saves more: add its names to EXPORT_FILES
        raise RuntimeError(f"export.py wrote {listed(unlisted)} in {partial}, which EXPORT_FILES does not name; "
                           f"nothing was moved to {out}")
    there = sorted(os.listdir(out)) if out.is_dir() else []
    if there:
        kept = [name for name in there if not is_export_file(name)]
        print(f"--overwrite: replacing export.py's files in {out}; the {len(kept)} other(s) there stay as they are"
              + (f" ({listed(kept)})" if kept else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_INFO).unlink(missing_ok=True)
    for name in there:
        if is_export_file(name) and name not in names:
            (out / name).unlink(missing_ok=True)
    for name in sorted(names, key=lambda name: name == EXPORT_INFO):
        os.replace(partial / name, out / name)


def main(argv=None):
    args = parse_args(argv)
    out, run_dir = Path(args.out), Path(args.run)
    if (run_dir / EXPORT_INFO).is_file():
        raise outdir.Refused(f"{run_dir} is an export already (push it with --push-to-hub from its run, or upload "
                             "the folder with huggingface_hub)")
    check_out_folder(out, run_dir, args.overwrite)
    trained = load_trained(run_dir)
    # Written whole into DIR.partial and moved to DIR only once it has passed its check: a kill, a failed
    # check or a missing file never leaves a folder that loads but is not the run's classifier.
    partial = out.with_name(out.name + ".partial")
    claim_partial(partial)
    with outdir.FolderLock(partial):  # another export.py to the same --out: refused, naming it
        clear_leftover(partial)
        (partial / PARTIAL_MARK).write_text(f"export.py writes {out} here first; the next export.py to {out} "
                                            "removes what it leaves\n")
        to_transformers(trained).save_pretrained(partial)
        extractor = copy.deepcopy(trained["encoder"].extractor)
        if trained["encoder"].whisper:  # for MaskedWhisperClassifier (the parent class ignores the mask)
            extractor.return_attention_mask = True
            shutil.copyfile(masked_whisper.__file__, partial / WHISPER_CODE)  # the code auto_map names
        extractor.save_pretrained(partial)
        check = compare_on_valid(trained, partial, args.check_clips, args.data_root)
        info = {"about": trained["about"], "max_seconds": trained["max_seconds"],
                "eval_batch_size": trained["eval_batch_size"], "precision": trained["precision"],
                "classes": trained["classes"], "multilabel": trained["multilabel"],
                "thresholds": trained["thresholds"], "export_check": check,
                "pooling": (WHISPER_POOLING if trained["encoder"].whisper
                            else "the mean over the clip's frames, as the run")}
        runs.write_json(partial / EXPORT_INFO, info)
        runs.write_text(partial / "README.md", model_card(trained, check))
        for name, result in (check or {}).items():
            if isinstance(result, dict):
                print(f"check, {CHECKED[name]}, on {check['clips']} valid clips: largest logit difference "
                      f"{result['max_abs_logit_difference']:.2e}, same prediction "
                      f"{100 * result['same_prediction']:.1f}%")
        # The model that must agree: what the card tells a user to load.
        agreeing = (check or {}).get("transformers")
        if agreeing and not (agreeing["max_abs_logit_difference"] <= 1e-4 and agreeing["same_prediction"] == 1):
            sys.exit(f"error: the exported model does not compute what the run computes (above); it is left in "
                     f"{partial} for a look, not in {out}")
        if trained["encoder"].whisper:
            print(f"note: a Whisper export runs its own {WHISPER_CODE} (the run's pooling over the clip's frames): "
                  "transformers loads it only with trust_remote_code=True (see the card)")
        move_into(partial, out)
        (partial / PARTIAL_MARK).unlink()
    try:
        partial.rmdir()
    except OSError:  # not empty: another export.py to the same --out took it meanwhile
        pass
    metric = "map" if trained["multilabel"] else "acc"
    print(f"exported {run_dir} -> {out} ({trained['about']['method']}, test/{metric} "
          f"{trained['about'][f'test_{metric}']:.4f})")
    if args.push_to_hub:
        push_to_hub(out, args.push_to_hub, args.private)


def push_to_hub(folder: Path, repo: str, private: bool):
    """The upload: huggingface_hub (a dependency of transformers), with the token of `huggingface-cli login`."""
    from huggingface_hub import HfApi
    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                      commit_message="AudioConFit export")
    print(f"uploaded {folder} to https://huggingface.co/{repo}")


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, outdir.Refused, OSError, ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")
