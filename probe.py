"""Linear probe, stage 2 of AudioConFit: freeze the encoder, train linear + softmax on pooled features.

    python probe.py --ckpt out/                                # a PairTune run: dataset etc. from run.json
    python probe.py --ckpt wav2vec2 --dataset gtzan            # the frozen pre-trained encoder, no PairTune
    python probe.py --ckpt ../shared/models/whisper-tiny.en-encoder --dataset data/fsdd-digit --random-init

Each split is encoded once (whole clips, chunked, as in the other stages) and the features are cached
in CKPT/features/ for a run's own probe (OUT/features/ for a frozen backbone, or for a probe with
another --dataset, --fold or --max-seconds than its run, which must then be given its own --out).
A grid over learning rates and batch sizes is trained on the cached train features; the
configuration and epoch are chosen on valid accuracy (ties: lower valid loss, then grid order).
Beside it, the k-NN probe (knn.py) on the same features, its k chosen on valid. Test is read once,
with the chosen classifiers.

Writes OUT/results.json (default CKPT/probe/ for a run, out/probe-<backbone>/ otherwise): test_acc,
valid_acc, the chosen lr, batch size and epoch, the whole grid, the test confusion matrix, and the
k-NN probe's knn_test_acc, knn_valid_acc, knn_k (its grid in knn_grid); and
OUT/run.json (stage "probe": arguments as used, provenance, the run probed), marked finished after.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import backbone
import data
import knn
import outdir
import runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True,
                   help="a pairtune.py output folder, or a backbone alias, hub id or directory "
                        "(frozen pre-trained encoder)")
    p.add_argument("--dataset", default=None, help="overrides the run's dataset (needed when --ckpt is a backbone)")
    p.add_argument("--data-root", default=None, help="folder holding NAME/manifest.csv")
    p.add_argument("--fold", type=int, default=None, help="overrides the run's fold")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unusable audio files with a warning (on for a run that was made with it)")
    p.add_argument("--shots", type=int, default=None, metavar="K",
                   help="few-shot: K train clips per class (default: the run's); valid and test untouched")
    p.add_argument("--shot-seed", type=int, default=None, help="the draw of --shots (default: the run's, else --seed)")
    p.add_argument("--max-seconds", type=runs.positive_float, default=None,
                   help="evaluation chunk length (default: the run's, else 10)")
    p.add_argument("--random-init", action="store_true",
                   help="probe the backbone's architecture with random weights (a control)")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--lrs", type=runs.comma_separated(runs.positive_float), default="1e-4,1e-3,1e-2",
                   help="comma-separated Adam learning rates of the grid")
    p.add_argument("--batch-sizes", type=runs.comma_separated(runs.positive_int), default="32,128",
                   help="comma-separated batch sizes of the grid")
    p.add_argument("--epochs", type=runs.positive_int, default=100,
                   help="epochs per grid point (on cached features: cheap)")
    p.add_argument("--knn-ks", type=runs.comma_separated(runs.positive_int), default=",".join(map(str, knn.K_GRID)),
                   help="comma-separated k of the k-NN probe's grid, chosen on valid")
    p.add_argument("--knn-temperature", type=runs.positive_float, default=knn.TEMPERATURE,
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
# The linear classifier and its grid search
# ----------------------------------------------------------------------------------------------

def train_linear(train_x, train_y, valid_x, valid_y, n_classes, lr, batch_size, epochs, seed):
    """Adam on linear + softmax; returns the best-valid epoch's (state, valid_acc, valid_loss, epoch)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(train_x.shape[1], n_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    best = None
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(head(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = head(valid_x)
            acc = (logits.argmax(1) == valid_y).float().mean().item()
            valid_loss = F.cross_entropy(logits, valid_y).item()
        if best is None or (acc, -valid_loss) > (best[1], -best[2]):
            best = ({k: v.clone() for k, v in head.state_dict().items()}, acc, valid_loss, epoch)
    return best


def main(argv=None):
    args = parse_args(argv)
    ckpt = Path(args.ckpt)
    run_file = ckpt / "run.json"
    device = runs.resolve_device(args.device)
    if args.num_workers is None:  # on CPU, workers would compete with the model for the same cores
        args.num_workers = 4 if device.type == "cuda" else 0

    # ---------------- what to probe ----------------
    run = None
    if run_file.exists():  # a PairTune run
        run = outdir.read_run_json(ckpt)
        if not run.get("finished"):
            sys.exit(f"error: {ckpt} is an unfinished run (no final encoder); finish it with pairtune.py --resume")
        if run.get("stage") != "pairtune":
            sys.exit(f"error: {ckpt} is a {run.get('stage')} run, not a pairtune run; probe its backbone instead")
        run_args = run["args"]
        method, backbone_name, random_init = "pairtune", run["backbone"], run["backbone_random_init"]
        encoder = backbone.load_encoder(str(ckpt / "encoder"))
        runs.check_finite(encoder.model, f"the encoder of {ckpt}", "the run diverged: train it again with a lower --lr")
        dataset = args.dataset or run["manifest"]
        data_root = args.data_root or run_args.get("data_root")
        fold = args.fold if args.fold is not None else run_args.get("fold")
        max_seconds = args.max_seconds or run_args["max_seconds"]
        seed = args.seed if args.seed is not None else run_args["seed"]
        # The run's clips, no fewer: a run that skipped unusable files is probed without them too, and
        # a few-shot run's probe trains on the same K clips per class.
        skip_bad = args.skip_bad or run_args.get("skip_bad", False)
        shots = args.shots if args.shots is not None else run_args.get("shots")
        run_shot_seed = run_args.get("shot_seed") if run_args.get("shot_seed") is not None else run_args["seed"]
        shot_seed = args.shot_seed if args.shot_seed is not None else run_shot_seed
        # The probe with the run's own data and chunk length is the run's stage 2: RUN/probe/, with its
        # features in RUN/features/, where eval.py reads the run's test features. Any other probe is a
        # side experiment: it must be given its own --out, and keeps its features there.
        run_settings = (args.dataset is None and fold == run_args.get("fold")
                        and encoder.chunk_seconds(max_seconds) == encoder.chunk_seconds(run_args["max_seconds"])
                        and shots == run_args.get("shots") and (shots is None or shot_seed == run_shot_seed))
        if not run_settings and (not args.out or Path(args.out).resolve() == (ckpt / "probe").resolve()):
            sys.exit(f"error: with another --dataset, --fold, --max-seconds or --shots than the run's, this probe is "
                     f"not the run's own stage 2: give it an --out other than {ckpt / 'probe'}")
        out = Path(args.out) if args.out else ckpt / "probe"
        feature_root = ckpt if run_settings else out
    else:  # a backbone: the frozen pre-trained (or, with --random-init, untrained) encoder
        if not args.dataset:
            sys.exit("error: --ckpt is not a pairtune run folder (no run.json), so --dataset is needed")
        method = "frozen"
        seed = args.seed if args.seed is not None else 0
        encoder = backbone.load_encoder(args.ckpt, random_init=args.random_init, seed=seed)
        backbone_name, random_init = encoder.name, encoder.random_init
        dataset, data_root, fold, skip_bad = args.dataset, args.data_root, args.fold, args.skip_bad
        shots, shot_seed = args.shots, args.shot_seed if args.shot_seed is not None else seed
        max_seconds = args.max_seconds or 10.0
        tag = backbone_name.replace("/", "_") + ("-random" if random_init else "")
        fold_tag = ("" if fold is None else f"-fold{fold}") + ("" if shots is None else f"-shots{shots}")
        default_out = Path("out") / f"probe-{tag}-{data.dataset_name(dataset)}{fold_tag}-seed{seed}"
        out = Path(args.out) if args.out else default_out
        feature_root = out
    # The output folder (outdir.py): held by its lock from here, and new, empty, or a probe asked to be redone.
    with runs.output_lock(out):
        if runs.prepare_run_folder(out, "probe", args) == "finished":
            print(f"{out} holds a finished probe; nothing to do (--overwrite probes again)")
            return
        encoder = encoder.to(device)
        max_seconds = encoder.chunk_seconds(max_seconds)

        # ---------------- preparing data ----------------
        splits, classes = data.load_splits(dataset, data_root, fold, skip_bad)
        data.require_two_classes(classes, dataset, data_root)
        shot_info = None
        if shots is not None:
            splits, shot_info = data.keep_shots(splits, shots, shot_seed)
        dataset_label = run["dataset"] if method == "pairtune" and not args.dataset else data.dataset_name(dataset)
        cache_dir = runs.feature_dir(feature_root, dataset_label, fold)
        # The probe is a run of its own (eval.py finds runs by run.json), unfinished until results.json is written.
        probe_run = runs.new_run("probe", args, dataset_label, data.resolve_dataset(dataset, data_root), encoder,
                                 splits, classes)
        # The arguments as used; a local --ckpt folder as an absolute path (export.py loads it from anywhere).
        ckpt_used = str(Path(args.ckpt).resolve()) if Path(args.ckpt).is_dir() else args.ckpt
        probe_run.update(args={**vars(args), "seed": seed, "fold": fold, "max_seconds": max_seconds,
                               "skip_bad": skip_bad, "shots": shots, "shot_seed": shot_seed, "ckpt": ckpt_used},
                         shots=shot_info,
                         method=method, backbone=backbone_name, backbone_random_init=random_init,
                         probe_of=str(ckpt.resolve()) if run else None)
        runs.write_json(out / "run.json", probe_run)
        # test is encoded only once the classifier is chosen: nothing before that can look at it
        features = runs.cached_features(encoder, splits, classes, cache_dir, max_seconds, device, ("train", "valid"),
                                            args.eval_batch_size, args.num_workers)
        (train_x, train_y), (valid_x, valid_y) = features["train"], features["valid"]
        runs.check_finite(torch.cat([train_x, valid_x]), f"the features of {backbone_name} on train and valid",
                          "its weights are not usable (a diverged run: train it again with a lower --lr)")
        # Standardise with train statistics: an affine map the linear layer could absorb, so the model
        # class is unchanged, but one lr grid then suits every backbone's feature scale.
        mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
        standardise = lambda x: (x - mean) / std

        # ---------------- grid search on valid ----------------
        grid, best = [], None
        lrs = [float(v) for v in args.lrs.split(",")]
        batch_sizes = [int(v) for v in args.batch_sizes.split(",")]
        started = time.time()
        for lr in lrs:
            for batch_size in batch_sizes:
                state, valid_acc, valid_loss, epoch = train_linear(
                    standardise(train_x), train_y, standardise(valid_x), valid_y, len(classes), lr, batch_size,
                    args.epochs, seed)
                if not math.isfinite(valid_loss):  # this lr diverged: recorded, never selected
                    grid.append({"lr": lr, "batch_size": batch_size, "diverged": True})
                    print(f"lr {lr:g}  batch {batch_size}  diverged (non-finite valid loss): not selectable")
                    continue
                point = {"lr": lr, "batch_size": batch_size, "valid_acc": round(valid_acc, 6),
                         "valid_loss": round(valid_loss, 6), "selected_epoch": epoch}
                grid.append(point)
                print(f"lr {lr:g}  batch {batch_size}  valid/acc {valid_acc:.4f}  valid/loss {valid_loss:.4f}  "
                      f"epoch {epoch}", flush=True)
                # Compare the recorded (rounded) numbers, so results.json always agrees with its own grid.
                rank = lambda p: (p["valid_acc"], -p["valid_loss"])
                if best is None or rank(point) > rank(best[1]):
                    best = (state, point)

        if best is None:
            raise outdir.Refused(f"every point of the probe's grid diverged (lrs {args.lrs}): give smaller --lrs")

        # ---------------- testing the chosen classifier, once ----------------
        state, chosen = best
        head = nn.Linear(train_x.shape[1], len(classes))
        head.load_state_dict(state)
        test_x, test_y = runs.cached_features(encoder, splits, classes, cache_dir, max_seconds, device, ("test",),
                                                 args.eval_batch_size, args.num_workers)["test"]
        runs.check_finite(test_x, f"the features of {backbone_name} on test", "its weights are not usable")
        with torch.no_grad():
            predictions = head(standardise(test_x)).argmax(1)
        test_acc = (predictions == test_y).float().mean().item()
        # The k-NN probe on the same features (L2-normalised): k chosen on valid, then test read once.
        nearest = knn.knn_results({"train": (train_x, train_y), "valid": (valid_x, valid_y), "test": (test_x, test_y)},
                                  len(classes), [int(k) for k in args.knn_ks.split(",")], args.knn_temperature)
        confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
        confusion.index_put_((test_y, predictions), torch.ones_like(test_y), accumulate=True)
        runs.atomic_save({"head": state, "mean": mean, "std": std, "classes": classes}, out / "head.pt")
        results = {"method": method, "dataset": dataset_label, "backbone": backbone_name,
                   "backbone_random_init": random_init, "seed": seed, "fold": fold, "shots": shots,
                   "test_acc": round(test_acc, 6), "valid_acc": chosen["valid_acc"], "lr": chosen["lr"],
                   "batch_size": chosen["batch_size"], "selected_epoch": chosen["selected_epoch"], "grid": grid,
                   "epochs": args.epochs, "max_seconds": max_seconds, "classes": classes,
                   "confusion": confusion.tolist(), "grid_seconds": round(time.time() - started, 2), **nearest}
        runs.write_json(out / "results.json", results)
        runs.write_json(out / "run.json", {**probe_run, "finished": True})
        print(f"{method} probe of {backbone_name}{' (RANDOM INIT)' if random_init else ''} on {dataset_label}: "
              f"test/acc {test_acc:.4f} (valid/acc {chosen['valid_acc']:.4f}, lr {chosen['lr']:g}, "
              f"batch {chosen['batch_size']}); k-NN test/acc {nearest['knn_test_acc']:.4f} (valid/acc "
              f"{nearest['knn_valid_acc']:.4f}, k {nearest['knn_k']}); wrote {out / 'results.json'}")


if __name__ == "__main__":
    runs.stop_on_sigterm()
    try:
        main()
    except (data.DataError, outdir.Refused) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM
        runs.interrupted(stop, parse_args().out, sys.argv, keeps_checkpoint=False)
