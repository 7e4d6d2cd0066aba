"""Linear probe, stage 2 of AudioConFit: freeze the encoder, train linear + softmax (multi-label: sigmoid) on
pooled features.

    python probe.py --ckpt out/                                # a PairTune run: dataset etc. from run.json
    python probe.py --backbone wav2vec2 --dataset gtzan        # the frozen pre-trained encoder, no PairTune
    python probe.py --backbone ../shared/models/whisper-tiny.en-encoder --dataset data/fsdd-digit --random-init

--ckpt also takes a backbone, as it always has (`--ckpt wav2vec2 --dataset gtzan` is the second line):
a folder holding run.json is a run, anything else a backbone; --backbone says so explicitly.

Each split is encoded once (whole clips, chunked, as in the other stages) and the features are cached
in CKPT/features/ for a run's own probe (OUT/features/ for a frozen backbone, or for a probe with
another --dataset, --fold or --max-seconds than its run, which must then be given its own --out).
A grid over learning rates and batch sizes is trained on the cached train features (probes.train_linear);
the configuration and epoch are chosen on valid accuracy (ties: lower valid loss, then grid order).
Beside it, the k-NN probe (probes.knn_results) on the same features, its k chosen on valid. Test is
read once, with the chosen classifiers.

Multi-label data (a manifest row with several labels, data.is_multilabel): linear + sigmoid trained with
binary cross-entropy, the grid and epoch chosen on valid macro mAP (ties: lower valid loss, then grid
order), and per-class thresholds chosen on valid (best F1) with the chosen classifier; the k-NN probe
scores each class by its neighbours' weighted votes, its k chosen on valid mAP.

Writes OUT/results.json (default CKPT/probe/ for a run, runs/<dataset>/<backbone>/frozen/seed-N for a
backbone, as run_all.sh names its frozen arm; printed first): test_acc,
valid_acc, the chosen lr, batch size and epoch, the whole grid, the test confusion matrix, and the
k-NN probe's knn_test_acc, knn_valid_acc, knn_k (its grid in knn_grid); for multi-label data
"multilabel": true, "metric": "map", test_map and valid_map (macro mAP) in place of test_acc and
valid_acc, test_micro_f1 and test_macro_f1 at the thresholds, test_per_class_ap, test_positives and
thresholds ({class: value}) in place of the confusion matrix, and knn_test_map, knn_valid_map, knn_test_micro_f1,
knn_test_macro_f1; OUT/head.pt (the classifier: head, mean, std, classes; for multi-label data also
"multilabel": True and "thresholds", one per class); and
OUT/run.json (stage "probe": arguments as used, provenance, the run probed), marked finished after.
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

import backbone
import data
import multilabel
import outdir
import probes
import rundir
import runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=runs.HelpFormatter)
    probed = p.add_mutually_exclusive_group(required=True)
    probed.add_argument("--ckpt", help="a pairtune.py output folder (one holding run.json); anything else is taken "
                                       "as a backbone, as with --backbone")
    probed.add_argument("--backbone", help="a frozen pre-trained encoder: alias (wav2vec2, hubert, wavlm, tiny), "
                                           "hub id or local directory; needs --dataset. An alias or hub id is "
                                           "downloaded from the Hugging Face Hub on first use: it needs the network "
                                           "or a filled Hugging Face cache")
    p.add_argument("--dataset", default=None, help="overrides the run's dataset (needed for a backbone)")
    p.add_argument("--data-root", default=None,
                   help="folder holding NAME/manifest.csv (default: the run's, else $CONFIT_DATA or data/)")
    p.add_argument("--fold", type=int, default=None, help="overrides the run's fold (default: the run's, else none)")
    p.add_argument("--valid-fraction", type=runs.fraction, default=None,
                   help="share of train carved out as valid where the manifest has no valid rows (default: the "
                        "run's, else 0.1)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unusable audio files with a warning (on for a run that was made with it)")
    p.add_argument("--shots", type=int, default=None, metavar="K",
                   help="few-shot: K train clips per class (default: the run's); valid and test untouched")
    p.add_argument("--shot-seed", type=int, default=None, help="the draw of --shots (default: the run's, else --seed)")
    p.add_argument("--max-seconds", type=runs.positive_float, default=None,
                   help="evaluation chunk length (default: the run's, else 10)")
    p.add_argument("--random-init", action="store_true",
                   help="probe the backbone's architecture with random weights (a control)")
    p.add_argument("--out", default=None,
                   help="output folder (default: RUN/probe/ for a run; runs/<dataset>/<backbone>/frozen/[shots-K/]"
                        "seed-N, or fold-K, for a backbone, the folder run_all.sh gives it; frozen-random with "
                        "--random-init)")
    p.add_argument("--lrs", type=runs.comma_separated(runs.positive_float), default="1e-4,1e-3,1e-2",
                   help="comma-separated Adam learning rates of the grid")
    p.add_argument("--batch-sizes", type=runs.comma_separated(runs.positive_int), default="32,128",
                   help="comma-separated batch sizes of the grid")
    p.add_argument("--epochs", type=runs.positive_int, default=100,
                   help="epochs per grid point (on cached features: cheap)")
    p.add_argument("--knn-ks", type=runs.comma_separated(runs.positive_int), default=",".join(map(str, probes.K_GRID)),
                   help="comma-separated k of the k-NN probe's grid, chosen on valid")
    p.add_argument("--knn-temperature", type=runs.positive_float, default=probes.TEMPERATURE,
                   help="k-NN votes are weighted exp(cosine similarity / T)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the run's, else 0)")
    p.add_argument("--device", default="auto", help="device for encoding: auto, cuda, cpu")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes for audio decoding (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--eval-batch-size", type=runs.positive_int, default=16, help="clips per batch when encoding")
    p.add_argument("--resume", action="store_true",
                   help="a finished probe in --out is left as it is; an unfinished one starts again (no checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace the probe in --out (only a probe's own files)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# What to probe: a PairTune run's encoder, or a backbone's
# ----------------------------------------------------------------------------------------------

@dataclass
class Probed:
    """The frozen encoder a probe reads and the settings it is read with (the run's, or the arguments')."""
    method: str  # "pairtune" (a run's encoder) or "frozen" (a backbone)
    encoder: backbone.AudioEncoder
    backbone_name: str
    random_init: bool
    dataset: str
    data_root: str | None
    dataset_label: str  # the name in results.json and features/
    fold: int | None
    valid_fraction: float  # the share of train carved as valid where the manifest has no valid rows
    max_seconds: float  # before the encoder's chunk length caps it
    seed: int
    skip_bad: bool
    shots: int | None
    shot_seed: int | None
    out: Path
    feature_root: Path  # features/ lives here
    run_dir: Path | None  # the PairTune run probed, None for a backbone
    given: str  # --ckpt or --backbone as given


def set_up_device(args) -> torch.device:
    """The device that encodes the clips, and --num-workers' default for it."""
    device = runs.resolve_device(args.device)
    if args.num_workers is None:  # on CPU, workers would compete with the model for the same cores
        args.num_workers = 4 if device.type == "cuda" else 0
    return device


def load_frozen_encoder(args) -> Probed:
    """The encoder to probe and its settings: a PairTune run folder's (--ckpt RUN: the run's data, seed
    and chunk length unless overridden), or a backbone's (--backbone, or --ckpt naming no run folder)."""
    if args.backbone is not None:
        if (Path(args.backbone) / rundir.RUN_JSON).exists():
            sys.exit(f"error: {args.backbone} is a run folder (it holds run.json): probe a pairtune run with --ckpt")
        return frozen_backbone(args, args.backbone)
    if (Path(args.ckpt) / rundir.RUN_JSON).exists():
        return pairtune_run(args, Path(args.ckpt))
    return frozen_backbone(args, args.ckpt)


def pairtune_run(args, ckpt: Path) -> Probed:
    """A finished PairTune run's best-valid encoder, probed with the run's own settings by default."""
    run = outdir.read_run_json(ckpt)
    if not run.get("finished"):
        sys.exit(f"error: {ckpt} is an unfinished run (no final encoder); finish it with pairtune.py --resume")
    if run.get("stage") != "pairtune":
        sys.exit(f"error: {ckpt} is a {run.get('stage')} run, not a pairtune run; probe its backbone instead")
    run_args = run["args"]
    encoder = runs.load_backbone(str(ckpt / rundir.ENCODER))
    runs.check_finite(encoder.model, f"the encoder of {ckpt}", "the run diverged: train it again with a lower --lr")
    fold = args.fold if args.fold is not None else run_args.get("fold")
    # the run's valid split (a run from before --valid-fraction carved the default share)
    run_fraction = run_args.get("valid_fraction") or runs.VALID_FRACTION
    valid_fraction = args.valid_fraction if args.valid_fraction is not None else run_fraction
    max_seconds = args.max_seconds or run_args["max_seconds"]
    # The run's clips, no fewer: a run that skipped unusable files is probed without them too, and
    # a few-shot run's probe trains on the same K clips per class.
    shots = args.shots if args.shots is not None else run_args.get("shots")
    run_shot_seed = run_args.get("shot_seed") if run_args.get("shot_seed") is not None else run_args["seed"]
    shot_seed = args.shot_seed if args.shot_seed is not None else run_shot_seed
    # The probe with the run's own data and chunk length is the run's stage 2: RUN/probe/, with its
    # features in RUN/features/, where eval.py reads the run's test features. Any other probe is a
    # side experiment: it must be given its own --out, and keeps its features there.
    run_settings = (args.dataset is None and fold == run_args.get("fold") and valid_fraction == run_fraction
                    and encoder.chunk_seconds(max_seconds) == encoder.chunk_seconds(run_args["max_seconds"])
                    and shots == run_args.get("shots") and (shots is None or shot_seed == run_shot_seed))
    if not run_settings and (not args.out or Path(args.out).resolve() == (ckpt / rundir.PROBE_DIR).resolve()):
        sys.exit(f"error: with another --dataset, --fold, --valid-fraction, --max-seconds or --shots than the run's, "
                 f"this probe is not the run's own stage 2: give it an --out other than {ckpt / rundir.PROBE_DIR}")
    out = Path(args.out) if args.out else ckpt / rundir.PROBE_DIR
    dataset = args.dataset or run["manifest"]
    return Probed(method="pairtune", encoder=encoder, backbone_name=run["backbone"],
                  random_init=run["backbone_random_init"], dataset=dataset,
                  data_root=args.data_root or run_args.get("data_root"),
                  dataset_label=data.dataset_name(dataset) if args.dataset else run["dataset"], fold=fold,
                  valid_fraction=valid_fraction,
                  max_seconds=max_seconds, seed=args.seed if args.seed is not None else run_args["seed"],
                  skip_bad=args.skip_bad or run_args.get("skip_bad", False), shots=shots, shot_seed=shot_seed,
                  out=out, feature_root=ckpt if run_settings else out, run_dir=ckpt, given=args.ckpt)


def frozen_backbone(args, given: str) -> Probed:
    """A backbone: the frozen pre-trained (or, with --random-init, untrained) encoder."""
    if not args.dataset:
        if args.backbone is not None:
            sys.exit("error: --backbone needs --dataset")
        sys.exit("error: --ckpt is not a pairtune run folder (no run.json), so --dataset is needed")
    seed = args.seed if args.seed is not None else 0
    encoder = runs.load_backbone(given, random_init=args.random_init, seed=seed)
    shots, fold = args.shots, args.fold
    # run_all.sh's folder for the frozen arm (a random-init control beside it, never in it)
    method = "frozen-random" if encoder.random_init and given != backbone.TINY else "frozen"
    out = Path(args.out) if args.out else rundir.default_run_dir(method, args.dataset, given, seed, fold, shots)
    return Probed(method="frozen", encoder=encoder, backbone_name=encoder.name, random_init=encoder.random_init,
                  dataset=args.dataset, data_root=args.data_root, dataset_label=data.dataset_name(args.dataset),
                  fold=fold, valid_fraction=args.valid_fraction or runs.VALID_FRACTION,
                  max_seconds=args.max_seconds or 10.0, seed=seed, skip_bad=args.skip_bad, shots=shots,
                  shot_seed=args.shot_seed if args.shot_seed is not None else seed, out=out, feature_root=out,
                  run_dir=None, given=given)


# ----------------------------------------------------------------------------------------------
# The steps of a probe
# ----------------------------------------------------------------------------------------------

def load_data(probed: Probed):
    """The splits and classes, cut to K train clips per class for a few-shot probe (shot_info: None or its draw)."""
    splits, classes = data.load_splits(probed.dataset, probed.data_root, probed.fold, probed.skip_bad,
                                       valid_fraction=probed.valid_fraction)
    data.require_two_classes(classes, probed.dataset, probed.data_root)
    shot_info = None
    if probed.shots is not None:
        splits, shot_info = data.keep_shots(splits, probed.shots, probed.shot_seed)
    return splits, classes, shot_info


def start_run(args, probed: Probed, encoder, splits, classes, shot_info, max_seconds) -> dict:
    """OUT/run.json, unfinished until results.json is written (eval.py finds runs by run.json)."""
    probe_run = runs.new_run("probe", args, probed.dataset_label,
                             data.resolve_dataset(probed.dataset, probed.data_root), encoder, splits, classes)
    # The arguments as used; a local folder as an absolute path (export.py loads it from anywhere). A
    # backbone is recorded as --ckpt whichever flag named it: that is where trained.load_trained and
    # export.py's command line read a frozen probe's encoder, and the two flags exclude each other.
    given = str(Path(probed.given).resolve()) if Path(probed.given).is_dir() else probed.given
    used = {name: value for name, value in vars(args).items() if name != "backbone"}
    probe_run.update(args={**used, "seed": probed.seed, "fold": probed.fold, "valid_fraction": probed.valid_fraction,
                           "max_seconds": max_seconds,
                           "skip_bad": probed.skip_bad, "shots": probed.shots, "shot_seed": probed.shot_seed,
                           "ckpt": given},
                     shots=shot_info,
                     method=probed.method, backbone=probed.backbone_name, backbone_random_init=probed.random_init,
                     probe_of=str(probed.run_dir.resolve()) if probed.run_dir else None)
    runs.write_json(probed.out / rundir.RUN_JSON, probe_run)
    return probe_run


def grid_search(args, train_x, train_y, valid_x, valid_y, n_classes: int, seed: int):
    """probes.train_linear at every (lr, batch size); returns the grid as recorded and the chosen
    (state, point): best valid accuracy (valid mAP for multi-hot labels), then lower valid loss, then
    grid order."""
    metric = "map" if train_y.dim() == 2 else "acc"  # the grid's keys: valid_map or valid_acc
    shown = {"map": "mAP", "acc": "acc"}[metric]
    grid, best = [], None
    for lr in [float(v) for v in args.lrs.split(",")]:
        for batch_size in [int(v) for v in args.batch_sizes.split(",")]:
            state, valid_score, valid_loss, epoch = probes.train_linear(
                train_x, train_y, valid_x, valid_y, n_classes, lr, batch_size, args.epochs, seed)
            if not math.isfinite(valid_loss):  # this lr diverged: recorded, never selected
                grid.append({"lr": lr, "batch_size": batch_size, "diverged": True})
                print(f"lr {lr:g}  batch {batch_size}  diverged (non-finite valid loss): not selectable")
                continue
            point = {"lr": lr, "batch_size": batch_size, f"valid_{metric}": round(valid_score, 6),
                     "valid_loss": round(valid_loss, 6), "selected_epoch": epoch}
            grid.append(point)
            print(f"lr {lr:g}  batch {batch_size}  valid/{shown} {valid_score:.4f}  valid/loss {valid_loss:.4f}  "
                  f"epoch {epoch}", flush=True)
            # Compare the recorded (rounded) numbers, so results.json always agrees with its own grid.
            rank = lambda p: (p[f"valid_{metric}"], -p["valid_loss"])
            if best is None or rank(point) > rank(best[1]):
                best = (state, point)
    if best is None:
        raise outdir.Refused(f"every point of the probe's grid diverged (lrs {args.lrs}): give smaller --lrs")
    return grid, best


def encode(args, probed: Probed, encoder, splits, classes, max_seconds, device, names, lever: str) -> dict:
    """{split: (features, labels)} of the named splits, from features/ or encoded into it; stops on NaN or inf.
    Labels are class indices [N], or multi-hot rows [N, C] for multi-label data."""
    cache_dir = rundir.feature_dir(probed.feature_root, probed.dataset_label, probed.fold)
    precision = "auto"  # bf16 on CUDA: how trained.py re-encodes a probe's clips
    features = runs.cached_features(encoder, splits, classes, cache_dir, max_seconds, device, names,
                                    args.eval_batch_size, args.num_workers, precision, data.is_multilabel(splits))
    runs.check_finite(torch.cat([features[name][0] for name in names]),
                      f"the features of {probed.backbone_name} on {' and '.join(names)}", lever)
    return features


def score_test(state, test_x, test_y, n_classes: int):
    """The chosen linear classifier's test accuracy and predictions (test_x standardised)."""
    head = nn.Linear(test_x.shape[1], n_classes)
    head.load_state_dict(state)
    with torch.no_grad():
        predictions = head(test_x).argmax(1)
    return (predictions == test_y).float().mean().item(), predictions


def score_test_multilabel(state, valid_x, valid_y, test_x, test_y, classes) -> dict:
    """The chosen sigmoid classifier on test (valid_x and test_x standardised): per-class thresholds
    chosen on valid's scores (best F1 per class), then test's macro mAP, per-class AP and micro/macro F1
    at those thresholds. Returns the results.json fields and the thresholds (a tensor, for head.pt)."""
    head = nn.Linear(test_x.shape[1], len(classes))
    head.load_state_dict(state)
    with torch.no_grad():
        valid_scores, test_scores = probes.sigmoid_scores(head(valid_x)), probes.sigmoid_scores(head(test_x))
    thresholds = multilabel.choose_thresholds(valid_scores, valid_y)
    average = multilabel.mean_average_precision(test_scores, test_y)
    f1 = multilabel.f1_scores(test_scores, test_y, thresholds)
    fields = {"test_map": round(average["map"], 6), "test_micro_f1": round(f1["micro_f1"], 6),
              "test_macro_f1": round(f1["macro_f1"], 6),
              # None (null): a class with no positive test clip has no AP, and is left out of test_map
              "test_per_class_ap": {c: None if ap is None else round(ap, 6)
                                    for c, ap in zip(classes, average["per_class"])},
              "test_positives": {c: int(n) for c, n in zip(classes, test_y.sum(0).tolist())},
              "thresholds": {c: float(t) for c, t in zip(classes, thresholds)}}
    return fields, thresholds


def confusion_matrix(labels, predictions, n_classes: int) -> torch.Tensor:
    """[true class, predicted class] counts."""
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    return confusion


def summary(results: dict) -> str:
    """The printed line's numbers: test and valid accuracy, or for multi-label data macro mAP and F1."""
    chosen = f"lr {results['lr']:g}, batch {results['batch_size']}"
    if results.get("multilabel"):
        return (f"test/mAP {results['test_map']:.4f}, micro-F1 {results['test_micro_f1']:.4f}, macro-F1 "
                f"{results['test_macro_f1']:.4f} (valid/mAP {results['valid_map']:.4f}, {chosen}); k-NN test/mAP "
                f"{results['knn_test_map']:.4f}, micro-F1 {results['knn_test_micro_f1']:.4f} (valid/mAP "
                f"{results['knn_valid_map']:.4f}, k {results['knn_k']})")
    return (f"test/acc {results['test_acc']:.4f} (valid/acc {results['valid_acc']:.4f}, {chosen}); k-NN test/acc "
            f"{results['knn_test_acc']:.4f} (valid/acc {results['knn_valid_acc']:.4f}, k {results['knn_k']})")


def write_results(out: Path, probe_run: dict, head: dict, results: dict):
    """head.pt, results.json, then run.json marked finished: a probe with results is a finished probe."""
    runs.atomic_save(head, out / rundir.HEAD)
    runs.write_json(out / rundir.RESULTS, results)
    runs.write_json(out / rundir.RUN_JSON, {**probe_run, "finished": True})


def finished_already(args, out: Path) -> bool:
    """A --resume of a finished probe: said, and nothing else to do (no data is read). False if,
    under the lock, the folder is no longer a finished probe (main goes on)."""
    with runs.output_lock(out):
        if runs.prepare_run_folder(out, "probe", args) != "finished":
            return False
    print(f"{out} holds a finished probe; nothing to do (--overwrite probes again)")
    return True


def main(argv=None):
    args = parse_args(argv)
    device = set_up_device(args)

    # ---------------- errors first: what to probe, the output folder and the data, before anything is made ----
    probed = load_frozen_encoder(args)  # an encoder that cannot be loaded: one line (runs.load_backbone)
    out = probed.out
    print(f"out: {out}")
    # Reading only: a folder that is not this probe's to write is refused now; under its lock, again.
    if runs.check_folder_first(out, "probe", args) == "finished" and finished_already(args, out):
        return
    splits, classes, shot_info = load_data(probed)
    multi = data.is_multilabel(splits)  # sigmoid, BCE and mAP instead of softmax and accuracy

    # ---------------- the output folder: made, and held by its lock, from here (outdir.py) ----------------
    with runs.output_lock(out):
        if runs.prepare_run_folder(out, "probe", args) == "finished":  # again: another probe may have come
            print(f"{out} holds a finished probe; nothing to do (--overwrite probes again)")
            return
        encoder = probed.encoder.to(device)
        max_seconds = encoder.chunk_seconds(probed.max_seconds)
        probe_run = start_run(args, probed, encoder, splits, classes, shot_info, max_seconds)
        # test is encoded only once the classifier is chosen: nothing before that can look at it
        features = encode(args, probed, encoder, splits, classes, max_seconds, device, ("train", "valid"),
                          "its weights are not usable (a diverged run: train it again with a lower --lr)")
        (train_x, train_y), (valid_x, valid_y) = features["train"], features["valid"]
        # Standardise with train statistics: an affine map the linear layer could absorb, so the model
        # class is unchanged, but one lr grid then suits every backbone's feature scale.
        mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
        standardise = lambda x: (x - mean) / std

        # ---------------- grid search on valid ----------------
        started = time.time()
        grid, (state, chosen) = grid_search(args, standardise(train_x), train_y, standardise(valid_x), valid_y,
                                            len(classes), probed.seed)

        # ---------------- testing the chosen classifiers, once ----------------
        features.update(encode(args, probed, encoder, splits, classes, max_seconds, device, ("test",),
                               "its weights are not usable"))
        test_x, test_y = features["test"]
        head = {"head": state, "mean": mean, "std": std, "classes": classes}
        if multi:
            scored, thresholds = score_test_multilabel(state, standardise(valid_x), valid_y, standardise(test_x),
                                                       test_y, classes)
            scored = {"multilabel": True, "metric": "map", "test_map": scored["test_map"],
                      "valid_map": chosen["valid_map"], **scored}
            head.update(multilabel=True, thresholds=thresholds.tolist())
        else:
            test_acc, predictions = score_test(state, standardise(test_x), test_y, len(classes))
            scored = {"test_acc": round(test_acc, 6), "valid_acc": chosen["valid_acc"]}
        # The k-NN probe on the same features (L2-normalised): k chosen on valid, then test read once.
        nearest = probes.knn_results(features, len(classes), [int(k) for k in args.knn_ks.split(",")],
                                     args.knn_temperature)

        # ---------------- writing ----------------
        results = {"method": probed.method, "dataset": probed.dataset_label, "backbone": probed.backbone_name,
                   "backbone_random_init": probed.random_init, "seed": probed.seed, "fold": probed.fold,
                   "shots": probed.shots, **scored,
                   "lr": chosen["lr"], "batch_size": chosen["batch_size"], "selected_epoch": chosen["selected_epoch"],
                   "grid": grid, "epochs": args.epochs, "max_seconds": max_seconds, "classes": classes,
                   **({} if multi else {"confusion": confusion_matrix(test_y, predictions, len(classes)).tolist()}),
                   "grid_seconds": round(time.time() - started, 2), **nearest}
        write_results(out, probe_run, head, results)
        print(f"{probed.method} probe of {probed.backbone_name}{' (RANDOM INIT)' if probed.random_init else ''} on "
              f"{probed.dataset_label}: {summary(results)}; wrote {out / rundir.RESULTS}")


if __name__ == "__main__":
    runs.stop_on_sigterm()
    try:
        main()
    except (data.DataError, outdir.Refused) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM
        runs.interrupted(stop, parse_args().out, sys.argv, keeps_checkpoint=False)
