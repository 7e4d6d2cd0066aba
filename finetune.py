"""FineTune, the baseline: end-to-end cross-entropy, encoder + linear head, nothing frozen.

    encoder f_e -> masked mean pool -> linear -> softmax cross-entropy

Held to the same rules as PairTune + probe: same data, seeds, epochs, batch size, crop length and
optimiser; the epoch is chosen on valid accuracy and test is read once, at that epoch.

Multi-label data (data.is_multilabel: some clip carries several labels) gets a sigmoid per class:
the head's outputs are per-class logits trained with binary cross-entropy (mean over clips and
classes), the epoch is chosen on valid macro mAP (multilabel.py; ties keep the earlier epoch, as for
accuracy), and a threshold per class is chosen on valid at that epoch (the one maximising the class's
F1) for the F1 scores on test and for predict.py.

    python finetune.py --dataset gtzan --backbone wav2vec2
    python finetune.py --dataset demo --backbone tiny --epochs 3 --max-seconds 2 --out out/demo-ft
    torchrun --nproc-per-node 4 finetune.py --dataset gtzan --backbone wav2vec2   # 4 GPUs (ddp.py)

Under torchrun, --batch-size is the global batch, shuffled as one process would and dealt out to the
processes; --micro-batch M accumulates gradients over M clips at a time (the same step, less memory).

Without --out, the run goes to runs/<dataset>/<backbone>/finetune/[shots-K/]seed-N (fold-K with --fold),
where run_all.sh puts the same run; the folder is printed first. Arguments, data, backbone and folder are
checked before anything is written. When stdout is a log file, a progress line comes every --log-every
seconds: epoch, step, loss, clips/s and the ETA of the epoch and of the run.

Writes to --out: run.json (arguments, data, versions, the selected epoch), log.jsonl (epoch,
train_loss, valid_acc, valid_metric, seconds, clips_per_s; peak_memory_mb on CUDA), results.json
(test_acc at the best-valid epoch, valid_acc, selected_epoch, confusion; and knn_test_acc,
knn_valid_acc, knn_k: the k-NN probe of probes.py on the encoder's pooled features, before the head),
encoder/ and head.pt of the best-valid epoch, features/<dataset>[-fold<k>]/{train,valid,test}.pt
(its pooled features, for the k-NN probe and eval.py),
checkpoint.pt and best-e<epoch>.pt (to resume with --resume).

A multi-label run writes instead: log.jsonl's valid_map (not valid_acc); results.json with
"multilabel": true, "metric": "map", test_map and valid_map (macro mAP), test_micro_f1 and
test_macro_f1 (at the valid-chosen thresholds), test_per_class_ap ({class: AP, null for a class with
no positive test clip}; it replaces the confusion matrix), thresholds ({class: t}) and the k-NN probe's
knn_test_map, knn_valid_map, ...; head.pt as {"head": the linear layer's weights, "classes",
"multilabel": True, "thresholds": [t per class]}.
"""
import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

import backbone
import data
import ddp
import multilabel
import outdir
import probes
import rundir
import runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=runs.HelpFormatter)
    p.add_argument("--dataset", required=True, help="name under --data-root (e.g. gtzan) or a manifest CSV")
    p.add_argument("--data-root", default=None,
                   help="folder holding NAME/manifest.csv (default: $CONFIT_DATA or data/)")
    p.add_argument("--fold", type=int, default=None,
                   help="fold datasets (ESC-50): this fold is test, the rest train (default: none, the manifest's "
                        "splits)")
    p.add_argument("--shots", type=int, default=None, metavar="K",
                   help="few-shot: keep K train clips per class (drawn with --shot-seed; valid and test untouched; "
                        "default: all)")
    p.add_argument("--shot-seed", type=int, default=None, help="the draw of --shots (default: --seed)")
    p.add_argument("--valid-fraction", type=runs.fraction, default=None,
                   help="share of each class's train clips carved out as valid where the manifest has no valid rows "
                        "(whole speakers or groups where it has them; default: 0.1, or the run's own under --resume)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unusable audio (unreadable, empty, cut short, NaN/inf) with a warning, not stop")
    p.add_argument("--backbone", default="wav2vec2",
                   help="wav2vec2 | hubert | wavlm | tiny (random, for smoke runs) | any hub id or local directory; "
                        "an alias or hub id is downloaded from the Hugging Face Hub on first use, so it needs the "
                        "network or a filled Hugging Face cache (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/<dataset>/<backbone>/finetune/[shots-K/]seed-N, or fold-K, "
                        "the folder run_all.sh gives the same run)")
    p.add_argument("--epochs", type=runs.positive_int, default=40,
                   help="passes over the training set (default: %(default)s; paper: 40)")
    p.add_argument("--batch-size", type=runs.positive_int, default=32, help="clips per batch")
    p.add_argument("--max-seconds", type=runs.positive_float, default=10.0,
                   help="training crop length; evaluation averages features over chunks of this length")
    p.add_argument("--lr", type=runs.positive_float, default=5e-5,
                   help="Adam learning rate (default: %(default)s; paper: 5e-5)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and crops")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:1, cpu")
    p.add_argument("--precision", choices=backbone.PRECISIONS, default="auto",
                   help="encoder arithmetic: bf16 autocast or fp32 (auto: bf16 on CUDA where supported, else fp32)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the encoder's layer activations in backward: less memory, one more forward pass")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="accumulate each (per-process) batch's gradient this many clips at a time: the same step "
                        "with the memory of a micro-batch (default: the whole batch at once)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes for audio decoding (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--eval-batch-size", type=runs.positive_int, default=16,
                   help="clips per batch when encoding for evaluation")
    p.add_argument("--eval-cache-mb", type=float, default=1024,
                   help="memory for keeping valid's decoded inputs between epochs, so its clips are decoded once "
                        "(same features); over it, or 0, they are decoded every epoch")
    p.add_argument("--knn-ks", type=runs.comma_separated(runs.positive_int), default=",".join(map(str, probes.K_GRID)),
                   help="comma-separated k of the k-NN probe on the encoder's features, chosen on valid")
    p.add_argument("--knn-temperature", type=runs.positive_float, default=probes.TEMPERATURE,
                   help="k-NN votes are weighted exp(cosine similarity / T)")
    p.add_argument("--log-every", type=runs.non_negative_float, default=60, metavar="SECONDS",
                   help="when stdout is not a terminal (a log file), a progress line this often during training: "
                        "steps, loss, clips/s, ETA of the epoch and of the run (0: none; a terminal has a bar)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint.pt (a finished run is left as it is)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the finetune run in --out (only the files a run writes are removed)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep checkpoint.pt (weights + optimiser) and best-e<epoch>.pt after a finished run")
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(encoder, head, clips, classes, args, device, desc, cache_dir=None, batches=None, multi_label=False):
    """(score, logits [N, C], labels) of whole clips (chunk features averaged, then the linear head):
    score is the accuracy, or with multi_label the macro mAP of the sigmoid scores (the selection
    metric); labels are class indices [N], or with multi_label multi-hot targets [N, C].
    With cache_dir, the pooled features are also kept there (as probe.py keeps a PairTune run's);
    `batches`: the clips' inputs from backbone.batches_in_memory, not decoded again."""
    if cache_dir is None:
        features, labels = backbone.extract_features(encoder, clips, classes, args.max_seconds, device,
                                                     args.eval_batch_size, args.num_workers, desc=desc,
                                                     precision=args.precision, batches=batches,
                                                     multilabel=multi_label)
    else:
        features, labels = runs.cached_features(encoder, {desc: clips}, classes, cache_dir, args.max_seconds,
                                                device, (desc,), args.eval_batch_size, args.num_workers,
                                                precision=args.precision, multilabel=multi_label)[desc]
    runs.check_finite(features, f"the encoder's features of {desc}", f"training diverged; lower --lr (now {args.lr:g})")
    logits = head_logits(head, features, device)
    return (macro_map(logits, labels) if multi_label else accuracy(logits, labels)), logits, labels


@torch.no_grad()
def head_logits(head, features, device) -> torch.Tensor:
    """The head's logits [N, C] (on the CPU) of pooled features, in eval mode."""
    head_was_training = head.training
    head.eval()
    logits = head(features.to(device)).float().cpu()
    head.train(head_was_training)
    return logits


def accuracy(logits, labels) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def macro_map(logits, targets) -> float:
    """Macro mAP (multilabel.py) of the sigmoid scores of logits [N, C] against multi-hot targets [N, C]."""
    return multilabel.mean_average_precision(torch.sigmoid(logits.double()), targets)["map"]


def loss_sum(logits, labels) -> torch.Tensor:
    """The loss summed over the batch's clips: softmax cross-entropy of the class; for multi-label data
    (multi-hot labels [B, C]), each clip's binary cross-entropy averaged over its C classes, so that
    divided by the clips it is BCE's mean over clips and classes (BCEWithLogits' default)."""
    if labels.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / labels.shape[1]
    return F.cross_entropy(logits, labels, reduction="sum")


class Classifier(nn.Module):
    """logits = head(f_e(x)): one module, so DDP wraps one forward."""

    def __init__(self, encoder, head, precision):
        super().__init__()
        self.encoder, self.head, self.precision = encoder, head, precision

    def forward(self, inputs):
        with backbone.autocast(inputs["attention_mask"].device, self.precision):
            return self.head(self.encoder(inputs)).float()  # [B, classes]


def train_one_epoch(classifier, loader, optimizer, args, device, epoch, progress=None):
    """One pass; returns the mean loss and the clips seen (over all processes). `progress`
    (runs.Progress): told of each step."""
    classifier.train()
    total, batches, clips = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if ddp.is_main() else True)
    for inputs, labels in bar:
        inputs, labels = backbone.to_device(inputs, device), labels.to(device)
        batch_clips = ddp.total(len(labels), device)  # the global batch, over all processes
        micro_batch = args.micro_batch or len(labels)
        optimizer.zero_grad(set_to_none=True)
        batch_loss = torch.zeros((), device=device)
        for begin in range(0, len(labels), micro_batch):
            part = slice(begin, begin + micro_batch)
            last = begin + micro_batch >= len(labels)
            # DDP all-reduces the gradient once, after the last micro-batch.
            with contextlib.nullcontext() if last or ddp.world_size() == 1 else classifier.no_sync():
                logits = classifier({k: v[part] for k, v in inputs.items()})
                # Summed over clips and divided by the global batch's clips per process: summed over
                # micro-batches and averaged over processes by DDP, it is the global batch's mean loss,
                # whatever the shares' sizes.
                loss = loss_sum(logits, labels[part]) / (batch_clips / ddp.world_size())
                loss.backward()
            batch_loss += loss.detach()
        optimizer.step()  # a non-finite step is never saved: the run stops below, before its checkpoint
        batch_loss = ddp.average(batch_loss).item()  # NaN or inf if any micro-batch's loss was
        if not math.isfinite(batch_loss):
            raise outdir.Refused(f"non-finite loss at epoch {epoch}: training diverged; lower --lr (now {args.lr:g}) "
                                 "or check the data")
        total, batches, clips = total + batch_loss, batches + 1, clips + batch_clips
        bar.set_postfix(loss=f"{batch_loss:.4f}")
        if progress is not None:
            progress.step(batch_loss, batch_clips)
    return total / max(batches, 1), clips


def main(argv=None):
    # ---------------- errors first: everything that can be wrong, checked before anything is made ----------------
    args = parse_args(argv)
    if args.micro_batch is not None and args.micro_batch < 1:
        sys.exit(f"error: --micro-batch must be at least 1 (got {args.micro_batch})")
    out = runs.run_folder(args, "finetune")
    args.out = str(out)  # run.json records where the run went
    print(f"out: {out}")
    # Reading only: a folder that is not this run's to write is refused now, not after the data and the
    # model are loaded; under its lock (below) it is checked again.
    runs.check_folder_first(out, "finetune", args)
    args.valid_fraction = runs.resumed_setting(out, args, "valid_fraction", runs.VALID_FRACTION)
    device = set_up_device(args)
    if finished_already(args, out):
        return
    splits, classes, shots = load_data(args)
    encoder = load_backbone(args)

    # ---------------- the output folder: made, and held by its lock, from here (outdir.py) ----------------
    with runs.output_lock(out):
        runs.prepare_run_folder(out, "finetune", args)  # again: another run may have taken it in between
        train(args, out, device, splits, classes, shots, encoder)


def train(args, out: Path, device, splits, classes, shots, encoder):
    # ---------------- building networks ----------------
    multi_label = data.is_multilabel(splits)  # sigmoid per class, BCE, mAP (see the top of this file)
    head, classifier, optimizer = build_model(args, encoder, device, classes)
    loader, loader_generator = build_loader(args, encoder, splits, classes, device, multi_label)
    run = runs.new_run("finetune", args, data.dataset_name(args.dataset),
                       data.resolve_dataset(args.dataset, args.data_root), encoder, splits, classes)
    run["shots"] = shots  # None, or K, its seed and the classes short of K
    run["multilabel"] = multi_label

    # ---------------- resuming ----------------
    modules = {"encoder": encoder.model, "head": head}
    start_epoch, history, best = start_or_resume(args, out, run, modules, optimizer, loader_generator)

    # ---------------- training, selecting on valid ----------------
    valid_batches = decode_valid_once(args, encoder, splits, classes, start_epoch, multi_label)
    metric = "map" if multi_label else "acc"  # the selection metric, valid_map or valid_acc in log.jsonl
    progress = runs.Progress(args.epochs, args.log_every)  # lines in a log file; a terminal has tqdm's bar
    for epoch in range(start_epoch, args.epochs + 1):
        started = runs.start_epoch_clock(device)
        progress.start_epoch(epoch, len(loader))
        train_loss, clips = train_one_epoch(classifier, loader, optimizer, args, device, epoch, progress)
        progress.end_training()
        runs.check_finite(classifier, f"the weights after epoch {epoch}",
                          f"training diverged; lower --lr (now {args.lr:g})")
        throughput = runs.throughput(started, clips, device)  # clips/s and peak memory of the training pass
        valid_started = time.time()
        valid_score = selection_score(encoder, head, splits, classes, args, device, valid_batches, multi_label)
        line = {"epoch": epoch, "train_loss": round(train_loss, 6), f"valid_{metric}": round(valid_score, 6),
                "valid_metric": "classifier", "seconds": round(time.time() - started, 2),
                "valid_seconds": round(time.time() - valid_started, 2), **throughput}
        runs.log_epoch(out, history, line)
        progress.end_epoch()
        print(f"epoch {epoch}/{args.epochs}  train/loss {train_loss:.4f}  valid/{metric} {valid_score:.4f}  "
              f"{line['seconds']:.1f}s  {runs.describe_throughput(throughput)}  {progress.run_eta()}".rstrip(),
              flush=True)
        # The same rule for mAP as for accuracy: strictly better than every earlier epoch (ties keep the
        # earlier one); runs.py's best["valid_acc"] then holds the valid mAP.
        best = runs.keep_if_best(out, best, epoch, valid_score,
                                 {"encoder": encoder.model.state_dict(), "head": head.state_dict()})
        runs.save_checkpoint(out / rundir.CHECKPOINT, args, modules, optimizer, loader_generator, epoch, history, best)
        runs.drop_stale_best(out, best)

    # ---------------- testing the best-valid epoch, once ----------------
    if not ddp.is_main():  # the other processes are done: rank 0 tests and saves
        ddp.stop()
        return
    if multi_label:
        scores, nearest = score_best_multilabel(args, out, run, encoder, head, best, splits, classes, device)
        write_results_multilabel(args, out, run, encoder, head, history, best, scores, nearest)
        return
    test_acc, confusion, nearest = score_best(args, out, run, encoder, head, best, splits, classes, device)

    # ---------------- writing ----------------
    write_results(args, out, run, encoder, head, history, best, test_acc, confusion, nearest)


# ----------------------------------------------------------------------------------------------
# The steps of train()
# ----------------------------------------------------------------------------------------------

def set_up_device(args) -> torch.device:
    """This process's device (under torchrun, joining the group), its defaults, and the run's seed."""
    device = ddp.start(runs.resolve_device(args.device))
    if args.num_workers is None:  # on CPU, workers would compete with the model for the same cores
        args.num_workers = 4 if device.type == "cuda" else 0
    args.precision = backbone.resolve_precision(args.precision, device)
    if device.type == "cuda":  # TF32 tensor cores for what stays float32 (the head)
        torch.set_float32_matmul_precision("high")
    runs.seed_everything(args.seed)
    return device


def finished_already(args, out: Path) -> bool:
    """--resume of a run that has run all its epochs: tidied (under the folder's lock), said, and nothing
    more to do: no data or model is loaded."""
    if not (args.resume and runs.finished_epochs(out) >= args.epochs):
        return False
    with runs.output_lock(out):
        runs.prepare_run_folder(out, "finetune", args)
        if runs.finished_epochs(out) >= args.epochs:  # still, under the lock
            runs.tidy_finished(out)
    print(f"{out} holds a finished run of {runs.finished_epochs(out)} epochs; nothing to resume")
    ddp.stop()
    return True


def load_data(args):
    """(splits, classes, shots): the manifest's splits, cut to K train clips per class with --shots
    (shots: None, or K, its seed and the classes short of K)."""
    splits, classes = data.load_splits(args.dataset, args.data_root, args.fold, args.skip_bad,
                                       valid_fraction=args.valid_fraction)
    data.require_two_classes(classes, args.dataset, args.data_root)
    shots = None
    if args.shots is not None:  # the same K clips per class for every method with this K and seed
        splits, shots = data.keep_shots(splits, args.shots, args.seed if args.shot_seed is None else args.shot_seed)
    print(f"data: {data.dataset_name(args.dataset)}: " + ", ".join(f"{s} {len(c)}" for s, c in splits.items())
          + f" clips, {len(classes)} classes" + (", multi-label" if data.is_multilabel(splits) else ""))
    return splits, classes, shots


def load_backbone(args):
    """The encoder (on the CPU), or one line saying why it cannot be loaded (runs.load_backbone), and a
    --max-seconds it takes: before the run's folder is made."""
    encoder = runs.load_backbone(args.backbone)
    if encoder.chunk_seconds(args.max_seconds) != args.max_seconds:  # a training crop cannot be chunked
        sys.exit(f"error: --max-seconds {args.max_seconds} exceeds what {args.backbone} takes "
                 f"({encoder.max_seconds:.0f} s)")
    return encoder


def build_model(args, encoder, device, classes):
    """(head, classifier, optimizer): a linear head over the classes on the encoder (moved to the
    device), one module for DDP, and Adam over both."""
    encoder.to(device)
    head = nn.Linear(encoder.hidden_size, len(classes)).to(device)
    if args.grad_checkpointing:
        encoder.checkpoint_activations()
    classifier = ddp.wrap(Classifier(encoder, head, args.precision), device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=args.lr)
    print(f"backbone: {encoder.name}{' (RANDOM INIT)' if encoder.random_init else ''}, "
          f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M parameters, device {device}, "
          f"{args.precision}" + (f", {ddp.world_size()} processes" if ddp.world_size() > 1 else ""))
    ddp.seed_this_rank(args.seed)
    return head, classifier, optimizer


def build_loader(args, encoder, splits, classes, device, multi_label=False):
    """(loader, its generator): random crops of the train clips in shuffled global batches, each
    process taking its share; the generator seeds the shuffling and the workers' crops (resumable).
    The targets are class indices, or with multi_label multi-hot rows."""
    train_set = data.TrainClips(splits["train"], classes, encoder.sample_rate, args.max_seconds, multi_label)
    loader_generator = torch.Generator().manual_seed(args.seed)
    # The global batches, shuffled as DataLoader(shuffle=True) would; each process takes its share.
    batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(train_set, generator=loader_generator),
                                            args.batch_size, drop_last=False)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=ddp.ShardedBatches(batches, ddp.rank(), ddp.world_size()),
        num_workers=args.num_workers, collate_fn=data.CollateTrain(encoder.preprocess),
        pin_memory=device.type == "cuda", generator=loader_generator,  # seeds shuffling and the workers' crops
        worker_init_fn=ddp.worker_init(args.num_workers))
    return loader, loader_generator


def start_or_resume(args, out: Path, run: dict, modules: dict, optimizer, loader_generator):
    """(start_epoch, history, best): fresh, or from checkpoint.pt under --resume; run.json is written
    unfinished from here on, before an earlier run's results are removed."""
    start_epoch, history, best = runs.resume(out, args, modules, optimizer, loader_generator)
    if ddp.is_main():
        runs.write_json(out / rundir.RUN_JSON, run)  # unfinished from here on, before anything is removed
    runs.remove_old_results(out)
    return start_epoch, history, best


def decode_valid_once(args, encoder, splits, classes, start_epoch: int, multi_label=False):
    """Valid's decoded inputs, kept in memory (rank 0, within --eval-cache-mb): valid is encoded every
    epoch, and decoding it once gives the same features (as in pairtune.py). None: decoded each time."""
    if ddp.is_main() and start_epoch <= args.epochs and args.eval_cache_mb > 0:
        return backbone.batches_in_memory(encoder, splits["valid"], classes, args.max_seconds, args.eval_cache_mb,
                                          args.eval_batch_size, args.num_workers, desc="decoding valid",
                                          multilabel=multi_label)
    return None


def selection_score(encoder, head, splits, classes, args, device, valid_batches, multi_label=False) -> float:
    """The selection metric: the classifier's accuracy on valid, or its macro mAP for multi-label data,
    computed once, on rank 0, then shared, so every process selects the same epoch."""
    return ddp.broadcast_float(
        evaluate(encoder, head, splits["valid"], classes, args, device, "valid", batches=valid_batches,
                 multi_label=multi_label)[0] if ddp.is_main() else None, device)


def score_best(args, out: Path, run: dict, encoder, head, best: dict, splits, classes, device):
    """(test_acc, confusion, k-NN probe results) of the best-valid epoch's weights, loaded into encoder
    and head: test read once, after train and valid."""
    state = runs.load_best(out, best, device)
    encoder.model.load_state_dict(state["encoder"])
    head.load_state_dict(state["head"])
    # The test features stay in features/ for eval.py's analyses (anisotropy, UMAP), so it needs no re-encoding.
    feature_dir = rundir.feature_dir(out, run["dataset"], args.fold)
    # The k-NN probe on the encoder's pooled features (before the head), as probe.py scores the other
    # methods: train and valid encoded first, so test is still read last, once, for both classifiers.
    features = runs.cached_features(encoder, splits, classes, feature_dir, args.max_seconds, device,
                                    ("train", "valid"), args.eval_batch_size, args.num_workers,
                                    precision=args.precision)
    test_acc, logits, labels = evaluate(encoder, head, splits["test"], classes, args, device, "test",
                                        cache_dir=feature_dir)
    predictions = logits.argmax(1)
    features.update(runs.cached_features(encoder, splits, classes, feature_dir, args.max_seconds, device, ("test",),
                                         args.eval_batch_size, args.num_workers, precision=args.precision))  # cached
    nearest = probes.knn_results(features, len(classes), [int(k) for k in args.knn_ks.split(",")],
                                 args.knn_temperature)
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    return test_acc, confusion, nearest


def write_results(args, out: Path, run: dict, encoder, head, history, best, test_acc, confusion, nearest):
    """encoder/, head.pt and results.json of the best-valid epoch, then run.json marked finished."""
    runs.save_encoder(encoder, out / rundir.ENCODER)
    runs.atomic_save(head.state_dict(), out / rundir.HEAD)
    results = {"method": "finetune", "dataset": run["dataset"], "backbone": encoder.name,
               "backbone_random_init": encoder.random_init, "seed": args.seed, "fold": args.fold,
               "shots": args.shots,
               "test_acc": round(test_acc, 6), "valid_acc": round(best["valid_acc"], 6),
               "selected_epoch": best["epoch"],
               "epochs": args.epochs, "classes": run["classes"], "confusion": confusion.tolist(), **nearest}
    runs.write_json(out / rundir.RESULTS, results)
    run.update(finished=True, epochs_run=len(history), selected_epoch=best["epoch"],
               selected_by="valid_acc in log.jsonl: the classifier's accuracy on valid",
               selected_valid_acc=round(best["valid_acc"], 6))
    runs.write_json(out / rundir.RUN_JSON, run)
    if not args.keep_checkpoint:  # only needed to resume; encoder/ and head.pt hold the result
        runs.remove_checkpoints(out)
    ddp.stop()
    print(f"test/acc {test_acc:.4f} at the best-valid epoch {best['epoch']} (valid/acc {best['valid_acc']:.4f}); "
          f"k-NN test/acc {nearest['knn_test_acc']:.4f} (k {nearest['knn_k']}); wrote {out / rundir.RESULTS}")


def score_best_multilabel(args, out: Path, run: dict, encoder, head, best: dict, splits, classes, device):
    """(scores, k-NN probe results) of a multi-label run's best-valid epoch, loaded into encoder and
    head: thresholds chosen on valid's sigmoid scores, then test read once, after train and valid.
    scores: thresholds [C], test mAP (multilabel.mean_average_precision's dict) and test F1s."""
    state = runs.load_best(out, best, device)
    encoder.model.load_state_dict(state["encoder"])
    head.load_state_dict(state["head"])
    feature_dir = rundir.feature_dir(out, run["dataset"], args.fold)
    features = runs.cached_features(encoder, splits, classes, feature_dir, args.max_seconds, device,
                                    ("train", "valid"), args.eval_batch_size, args.num_workers,
                                    precision=args.precision, multilabel=True)
    valid_x, valid_y = features["valid"]
    runs.check_finite(valid_x, "the encoder's features of valid", f"training diverged; lower --lr (now {args.lr:g})")
    valid_probabilities = torch.sigmoid(head_logits(head, valid_x, device).double())
    thresholds = multilabel.choose_thresholds(valid_probabilities, valid_y)  # from valid only, never test
    _, logits, test_y = evaluate(encoder, head, splits["test"], classes, args, device, "test", cache_dir=feature_dir,
                                 multi_label=True)
    test_probabilities = torch.sigmoid(logits.double())
    features.update(runs.cached_features(encoder, splits, classes, feature_dir, args.max_seconds, device, ("test",),
                                         args.eval_batch_size, args.num_workers, precision=args.precision,
                                         multilabel=True))  # cached
    nearest = probes.knn_results(features, len(classes), [int(k) for k in args.knn_ks.split(",")],
                                 args.knn_temperature)
    scores = {"thresholds": thresholds, "test": multilabel.mean_average_precision(test_probabilities, test_y),
              "f1": multilabel.f1_scores(test_probabilities, test_y, thresholds), "positives": test_y.sum(0).tolist()}
    return scores, nearest


def write_results_multilabel(args, out: Path, run: dict, encoder, head, history, best, scores, nearest):
    """encoder/, head.pt (with its thresholds) and results.json of a multi-label run's best-valid
    epoch, then run.json marked finished. A class with no positive clip has no AP (null)."""
    classes = run["classes"]
    thresholds = [float(t) for t in scores["thresholds"]]  # unrounded: a valid clip's own score can be one
    runs.save_encoder(encoder, out / rundir.ENCODER)
    runs.atomic_save({"head": head.state_dict(), "classes": classes, "multilabel": True, "thresholds": thresholds},
                     out / rundir.HEAD)
    test_map, valid_map = scores["test"]["map"], best["valid_acc"]  # runs.keep_if_best's name for the metric
    results = {"method": "finetune", "dataset": run["dataset"], "backbone": encoder.name,
               "backbone_random_init": encoder.random_init, "seed": args.seed, "fold": args.fold,
               "shots": args.shots, "multilabel": True, "metric": "map",
               "test_map": round(test_map, 6), "valid_map": round(valid_map, 6),
               "test_micro_f1": round(scores["f1"]["micro_f1"], 6), "test_macro_f1": round(scores["f1"]["macro_f1"], 6),
               "selected_epoch": best["epoch"], "epochs": args.epochs, "classes": classes,
               "test_per_class_ap": {c: None if ap is None else round(ap, 6)
                                     for c, ap in zip(classes, scores["test"]["per_class"])},
               "test_positives": {c: int(n) for c, n in zip(classes, scores["positives"])},
               "thresholds": dict(zip(classes, thresholds)), **nearest}
    runs.write_json(out / rundir.RESULTS, results)
    run.update(finished=True, epochs_run=len(history), selected_epoch=best["epoch"],
               selected_by="valid_map in log.jsonl: the classifier's macro mAP on valid",
               selected_valid_map=round(valid_map, 6))
    runs.write_json(out / rundir.RUN_JSON, run)
    if not args.keep_checkpoint:
        runs.remove_checkpoints(out)
    ddp.stop()
    print(f"test/mAP {test_map:.4f} at the best-valid epoch {best['epoch']} (valid/mAP {valid_map:.4f}); "
          f"micro/macro F1 {scores['f1']['micro_f1']:.4f}/{scores['f1']['macro_f1']:.4f} at valid's thresholds; "
          f"k-NN test/mAP {nearest['knn_test_map']:.4f} (k {nearest['knn_k']}); wrote {out / rundir.RESULTS}")


if __name__ == "__main__":
    runs.stop_on_sigterm()
    try:
        main()
    except (data.DataError, outdir.Refused) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM: where the run stands, and how to continue it
        runs.interrupted(stop, runs.run_folder(parse_args(), "finetune"), sys.argv)
