"""Classify audio files with a trained classifier: a run folder or an export.py folder.

    python predict.py runs/gtzan/wav2vec2/pairtune/seed-0 song.wav more/ --top-k 3
    python predict.py export/gtzan-pairtune clips/ --json > predictions.jsonl

RUN_OR_EXPORT is a finished finetune run, a pairtune run with its probe (or the probe's folder), a
frozen encoder's probe, or a folder written by export.py. Files and folders (searched recursively
for audio files) are classified exactly as evaluation scores a clip: decoded with soundfile, mono,
resampled to the encoder's rate, cut into near-equal chunks of the run's chunk length when longer,
the chunks' pooled features averaged, then the classifier. Clips are batched by length as in
evaluation (--batch-size, default the run's) and at the run's precision, so a run's own test files
get the run's test scores (on the device type it was tested on: bf16 on a GPU is not fp32 on a CPU).

A clip's chunks all go into its batch, so a batch of long files holds many chunks: they go through
the encoder in forward passes of at most --max-samples-per-pass samples (the same scores, in
bounded memory).

Prints, per file, the top classes with their probabilities (--json: one JSON object a line). A
multi-label classifier (a run on multi-label data, or its export) scores each class on its own, by a
sigmoid, and prints instead the classes whose probability is at or above their thresholds (chosen on
valid by the run), most probable first, or "none above threshold" with the most probable class. A file
that cannot be used (missing, unreadable, empty, NaN samples) is reported by name and skipped; the
exit status is then 1. A model that gives non-finite scores (a diverged run's) stops the script at
the first file it does so for, with one line naming it.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import backbone
import data
import outdir
import runs
from trained import load_trained

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64"}
# Input samples per forward pass: 16 chunks of 10 s at 16 kHz, the largest pass a run's evaluation makes
# at the default --max-seconds and --eval-batch-size, so the GPU that evaluated such a run holds it.
# One pass this size took 2.5 GB above the model on a CPU in fp32 with a wav2vec2-base-sized encoder
# (its conv stack's activations; about half that in bf16), 0.2 GB with Whisper tiny.en.
MAX_SAMPLES_PER_PASS = 16 * 10 * 16_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="RUN_OR_EXPORT", help="a finished run folder, or an export.py folder")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="audio files, or folders searched for them")
    p.add_argument("--top-k", type=runs.positive_int, default=3, help="classes shown per file (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object a line (default: text, a line per file)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per batch (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (cuda if there is one, else cpu), cuda, cpu "
                                                    "(default: %(default)s)")
    p.add_argument("--precision", choices=backbone.PRECISIONS, default=None,
                   help="default: the run's (FineTune's --precision; auto for probes: bf16 on CUDA, else fp32)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes for decoding (default: %(default)s, decode in this process)")
    p.add_argument("--max-samples-per-pass", type=runs.positive_int, default=MAX_SAMPLES_PER_PASS,
                   help="input samples (chunks x padded length) per forward pass: lower it if long files run out "
                        "of memory, raise it for speed on a big GPU; the scores are the same (default: %(default)s)")
    return p.parse_args(argv)


def audio_files(inputs: list[str]) -> list[str]:
    """Files as given (whatever their suffix), and the audio files under folders, sorted; in order."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            files.append(name)  # a missing file is reported with the unusable ones
    return files


def main(argv=None):
    args = parse_args(argv)
    device = runs.resolve_device(args.device)
    trained = load_trained(args.model)
    encoder, head, classes = trained["encoder"].to(device), trained["head"].to(device), trained["classes"]

    # ---------------- the files: every usable one, the others named ----------------
    files = audio_files(args.inputs)
    if not files:
        sys.exit(f"error: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {' '.join(args.inputs)}")
    usable, unusable = [], []
    for index, path in enumerate(files):
        check = data.check_audio(path)
        if check.problem:
            unusable.append((path, check.problem))
            print(f"error: {path}: {check.problem}; skipped", file=sys.stderr)
        else:  # the label is unknown: any class will do, it is not read
            usable.append(data.Clip(path, classes[0], "test", where=f"input {index + 1}"))  # printed as given

    # ---------------- features as evaluation computes them, then the classifier ----------------
    if usable:
        features, _ = backbone.extract_features(encoder, usable, classes, trained["max_seconds"], device,
                                                args.batch_size or trained["eval_batch_size"], args.num_workers,
                                                desc="predicting", precision=args.precision or trained["precision"],
                                                max_samples_per_pass=args.max_samples_per_pass)
        with torch.no_grad():
            logits = head(features.to(device)).float()
        # a softmax over the classes, or (multi-label) each class's own sigmoid, in float64 as the run
        # compared them with its thresholds
        probabilities = (torch.sigmoid(logits.double()) if trained["multilabel"] else logits.softmax(1)).cpu()
        finite = logits.isfinite().all(1).cpu()  # the logits: a sigmoid turns an infinite one into 0 or 1
        top = probabilities.topk(min(args.top_k, len(classes)), dim=1)
        for row, (clip, values, indices, ok) in enumerate(zip(usable, top.values, top.indices, finite)):
            if not ok:  # a diverged run's weights: printed, NaN would read as a probability (and is not JSON)
                raise outdir.Refused(f"{clip.path}: the model gives non-finite scores (NaN or inf) for this file "
                                     f"({int((~finite).sum())} of {len(usable)} files in all); stopped here (a "
                                     "diverged run gives them: train it again with a lower --lr)")
            best = [(classes[i], round(float(v), 6)) for v, i in zip(values, indices)]
            if trained["multilabel"]:
                print_labels(clip.path, probabilities[row], classes, trained["thresholds"], best, args.json)
            elif args.json:
                print(json.dumps({"file": clip.path, "top": [{"label": c, "probability": p} for c, p in best]},
                                 allow_nan=False))
            else:
                print(f"{clip.path}\t" + "\t".join(f"{c} {p:.3f}" for c, p in best))
    if unusable:
        print(f"{len(unusable)} of {len(unusable) + len(usable)} file(s) could not be used (named above)",
              file=sys.stderr)
    return 1 if unusable or not usable else 0


def print_labels(path: str, probabilities, classes: list, thresholds: list, best: list, as_json: bool):
    """A multi-label prediction: the classes at or above their thresholds, most probable first, with
    their probabilities; "none above threshold" and the most probable class where none is. `best`: the
    top classes (label, probability), for --json's "top"."""
    above = sorted(((classes[c], float(p), thresholds[c]) for c, p in enumerate(probabilities.tolist())
                    if p >= thresholds[c]), key=lambda item: -item[1])
    if as_json:
        print(json.dumps({"file": path, "labels": [{"label": c, "probability": round(p, 6), "threshold": t}
                                                   for c, p, t in above],
                          "top": [{"label": c, "probability": p} for c, p in best]}, allow_nan=False))
    elif above:
        print(f"{path}\t" + "\t".join(f"{c} {p:.3f}" for c, p, _ in above))
    else:
        print(f"{path}\tnone above threshold (top: {best[0][0]} {best[0][1]:.3f})")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (data.DataError, outdir.Refused, OSError, ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")
