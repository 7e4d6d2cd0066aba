"""A trained classifier read back for use, by export.py and predict.py.

`load_trained` takes a finished FineTune run, a PairTune run with its probe (or that probe's folder),
a frozen encoder's probe, or an export.py folder (`load_export`), and returns the encoder and the
classifier head as the run computed them, with the chunk length, precision and provenance those two
scripts need. It refuses an unfinished run, non-finite weights, and an encoder other than the one
the classifier was made with (`check_weights`); it warns when a Whisper run's features came from an
older front end (backbone.FRONTEND_VERSION).

A multi-label classifier (its head.pt has "multilabel": True; an export's config.json has problem_type
"multi_label_classification") comes back with multilabel True and its thresholds: one per class, chosen
on valid, for a sigmoid score (a class is predicted where its probability is at or above its threshold).
"""
import json
import sys
from pathlib import Path

import torch
import transformers

import masked_whisper
import outdir
import rundir
from backbone import FRONTEND_VERSION, AudioEncoder, load_encoder
from rundir import EXPORT_INFO, HEAD, PROBE_DIR, RESULTS, RUN_JSON, feature_dir, read_finished
from probes import ProbeHead
from runs import check_finite, load_cache, load_plain, weights_fingerprint


def load_trained(path) -> dict:
    """A finished classifier: a finetune run, a pairtune run with its probe (or that probe's folder),
    a frozen encoder's probe, or an export.py folder. Returns encoder (AudioEncoder), head (pooled
    features -> logits), classes, max_seconds (the chunk length evaluation used), precision and
    eval_batch_size (how it encoded), multilabel and thresholds (a list per class, or None for a
    single-label classifier), and about (method, dataset, backbone, seed, fold, results, the runs it
    came from)."""
    path = Path(path)
    if (path / EXPORT_INFO).is_file():
        return load_export(path)
    if not (path / RUN_JSON).is_file():
        raise FileNotFoundError(f"{path}: neither a run folder ({RUN_JSON}) nor an export ({EXPORT_INFO})")
    stage = outdir.read_run_json(path).get("stage")
    if stage == "pairtune":
        read_finished(path, results=False)
        if not (path / PROBE_DIR / RUN_JSON).is_file():
            raise FileNotFoundError(f"{path}: this pairtune run has no probe yet: python probe.py --ckpt {path}")
        return load_trained(path / PROBE_DIR)
    if stage == "finetune":
        run = read_finished(path)
        encoder = load_encoder(str(path / "encoder"))
        linear = torch.nn.Linear(encoder.hidden_size, len(run["classes"]))
        # map_location (load_plain's default, CPU): a head saved on a GPU loads on a machine without one
        saved = load_plain(path / HEAD, "train the run again (finetune.py --overwrite)")
        # A single-label head.pt is the linear layer's state; a multi-label one holds it under "head",
        # beside its thresholds.
        linear.load_state_dict(saved["head"] if "head" in saved else saved)
        head, runs_used, model_run, model_dir = linear, {"finetune": str(path.resolve())}, run, path
    elif stage == "probe":
        run = read_finished(path)
        saved = load_plain(path / HEAD, "probe again (probe.py --overwrite)")
        if run["method"] == "pairtune":
            # A run's own probe is RUN/probe/: the run beside it, wherever the run was copied or moved to
            # (probe_of is where it was probed); a side probe's run is found by probe_of.
            own = rundir.is_runs_own_probe(path.resolve())
            model_dir = path.resolve().parent if own else Path(run["probe_of"])
            if not (model_dir / RUN_JSON).is_file():
                raise FileNotFoundError(f"{path}: the pairtune run it probed, {model_dir}, is not there")
            model_run = outdir.read_run_json(model_dir)
            encoder = load_encoder(str(model_dir / "encoder"))
            runs_used = {"pairtune": str(model_dir), "probe": str(path.resolve())}
        else:  # a frozen backbone (pre-trained, or --random-init with its seed)
            model_run, model_dir = run, path
            encoder = load_encoder(run["args"]["ckpt"], random_init=run["backbone_random_init"],
                                   seed=run["args"]["seed"])
            runs_used = {"probe": str(path.resolve())}
        linear = torch.nn.Linear(encoder.hidden_size, len(saved["classes"]))
        linear.load_state_dict(saved["head"])
        head = ProbeHead(linear, saved["mean"], saved["std"])
    else:
        raise ValueError(f"{path}: a {stage} run holds no classifier (finetune, pairtune + probe, or probe)")
    check_finite(encoder.model, f"the encoder of {model_dir}", "the run diverged: train it again with a lower --lr")
    check_finite(head, f"the classifier of {path}", "the run diverged: train it again with a lower --lr")
    check_weights(encoder, model_dir, path, run)
    if encoder.whisper and model_run.get("frontend") != FRONTEND_VERSION:
        print(f"warning: {model_dir} was trained before the Whisper front end of version {FRONTEND_VERSION} "
              "(zeros past each clip, ceil(samples / hop) frames): its clips' features now differ a little from "
              "the ones its classifier was trained on", file=sys.stderr)
    try:
        results = json.loads((path / RESULTS).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise outdir.Refused(f"{path / RESULTS} cannot be read ({type(error).__name__}); run the stage again "
                             "with --overwrite") from None
    multi_label, thresholds = saved_thresholds(saved, run["classes"], path / HEAD)
    about = {"method": run.get("method", stage), "dataset": run["dataset"], "backbone": run["backbone"],
             "backbone_random_init": run["backbone_random_init"], "seed": run["args"]["seed"],
             "fold": run["args"].get("fold"), "multilabel": multi_label,
             # accuracy, or a multi-label run's macro mAP (results.json's "metric": "map")
             **{key: results[key] for key in (("test_map", "valid_map") if multi_label else ("test_acc", "valid_acc"))},
             "clips": run["clips"], "manifest": run["manifest"], "runs": runs_used,
             "args": {"model": model_run["args"], "head": run["args"]}, "stage": model_run["stage"],
             "selected_epoch": model_run.get("selected_epoch"), "selected_by": model_run.get("selected_by"),
             "results": {k: v for k, v in results.items() if k != "confusion"}}
    # How the run encoded its test clips: FineTune at its --precision, probe.py at "auto" (bf16 on CUDA).
    precision = run["args"].get("precision", "auto") if stage == "finetune" else "auto"
    return {"encoder": encoder.eval(), "head": head.eval(), "classes": run["classes"],
            "max_seconds": encoder.chunk_seconds(run["args"]["max_seconds"]), "precision": precision,
            "eval_batch_size": run["args"].get("eval_batch_size", 16), "multilabel": multi_label,
            "thresholds": thresholds, "about": about}


def saved_thresholds(saved, classes: list, where) -> tuple[bool, list | None]:
    """(multilabel, thresholds) of a head.pt: (False, None) for a single-label classifier; a multi-label
    one must carry a threshold per class (chosen on valid), or predictions could not be made."""
    if not (isinstance(saved, dict) and saved.get("multilabel")):
        return False, None
    thresholds = saved.get("thresholds")
    if thresholds is None or len(thresholds) != len(classes):
        raise ValueError(f"{where}: a multi-label classifier without a threshold per class ({len(classes)}); "
                         "train or probe the run again with --overwrite")
    return True, [float(t) for t in thresholds]


def check_weights(encoder: AudioEncoder, model_dir: Path, classifier_dir: Path, run: dict):
    """Refuse an encoder other than the one the classifier was made with (a run folder changed after
    its probe, another revision of a hub model): its weights' SHA-1 against the run's cached test
    features, where they are cached."""
    cache = feature_dir(classifier_dir if run["stage"] == "probe" and run["method"] == "frozen" else model_dir,
                        run["dataset"], run["args"].get("fold")) / "test.pt"
    saved = load_cache(cache)
    if saved and saved.get("key", {}).get("encoder") not in (None, weights_fingerprint(encoder)):
        raise ValueError(f"{classifier_dir}: the encoder found ({model_dir}) is not the one its classifier was "
                         f"made with (its weights differ from those that encoded {cache})")


def load_export(path: Path) -> dict:
    """An export.py folder, read back as our own pipeline computes it: the encoder's masked mean pool
    (AudioEncoder), then the model's projector and classifier (mean pooling commutes with them).
    A Whisper export (model_type masked_whisper.MODEL_TYPE) is loaded with this repository's
    masked_whisper, never with the code in the folder; one made before it had its own model_type
    ("whisper") still loads, with a note that transformers alone gets it wrong."""
    info = json.loads((path / EXPORT_INFO).read_text())
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == masked_whisper.MODEL_TYPE:
        model = masked_whisper.MaskedWhisperClassifier.from_pretrained(path)
    else:
        model = transformers.AutoModelForAudioClassification.from_pretrained(path)
    if model_type == "whisper":
        print(f"note: {path} is a Whisper export made before export.py gave Whisper its own model_type: "
              "predict.py computes the run's predictions from it, transformers' pipeline does not (it pools over "
              "30 s of padding); export the run again for a folder that transformers runs right", file=sys.stderr)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(path)
    whisper = isinstance(model, transformers.WhisperForAudioClassification)
    encoder = AudioEncoder(model if whisper else model.base_model, extractor, name=info["about"]["backbone"],
                           random_init=info["about"]["backbone_random_init"])
    check_finite(model, f"the export {path}", "the run it came from diverged: train it again with a lower --lr")
    head = torch.nn.Sequential(model.projector, model.classifier)
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    # A multi-label export: problem_type and the valid-chosen thresholds ({class: t}) in config.json
    multi_label = model.config.problem_type == "multi_label_classification"
    saved = getattr(model.config, "thresholds", None)
    if multi_label and not (isinstance(saved, dict) and set(saved) == set(classes)):
        raise ValueError(f"{path / 'config.json'}: a multi-label export without a threshold per class; "
                         "export the run again")
    thresholds = [float(saved[c]) for c in classes] if multi_label else None
    return {"encoder": encoder.eval(), "head": head.eval(), "classes": classes, "max_seconds": info["max_seconds"],
            "precision": info.get("precision", "auto"), "eval_batch_size": info["eval_batch_size"],
            "multilabel": multi_label, "thresholds": thresholds, "about": info["about"]}
