"""PairTune, stage 1 of AudioConFit: supervised-contrastive fine-tuning of a pre-trained audio encoder.

    encoder f_e -> masked mean pool -> r (L2-normalised) -> linear f_p to 256 -> z (L2-normalised)
    -> SupCon loss (tau 0.1) over hard pairs mined by cosine (multi-similarity mining)

The projection head f_p is discarded afterwards: `--out/encoder/` holds only the fine-tuned encoder,
which probe.py (stage 2) freezes and reads out with a linear classifier.

    python pairtune.py --dataset gtzan --backbone wav2vec2            # the paper's defaults
    python pairtune.py --dataset demo --backbone tiny --epochs 3 --max-seconds 2 --out out/demo
    python probe.py --ckpt out/demo
    torchrun --nproc-per-node 4 pairtune.py --dataset gtzan --backbone wav2vec2   # 4 GPUs (ddp.py)

Under torchrun, --batch-size is the global batch: each process encodes its share (whole classes of
the P x K batch) and the loss sees every process's embeddings. --micro-batch M encodes a batch M clips
at a time with the loss still over the whole batch (gradient caching), for big batches on one GPU.

The epoch kept is the one whose --select-by metric on valid is best (ties to the earlier epoch, as
finetune.py selects). The default, epoch-centroid, is the nearest class centroid by cosine with the
centroids averaged from the r the epoch's training pass computed anyway, so it costs only the encoding
of valid, as FineTune's classifier on valid does; centroid, knn and linear encode a fixed train subset
(--centroid-clips-per-class) after each epoch as well, knn and linear being probes.py's k-NN and linear
probes, the ones the tables report.

Without --out, the run goes to runs/<dataset>/<backbone>/pairtune/[shots-K/]seed-N (fold-K with --fold),
where run_all.sh puts the same run; the folder is printed first. Arguments, data, backbone and folder are
checked before anything is written. When stdout is a log file, a progress line comes every --log-every
seconds: epoch, step, loss, clips/s and the ETA of the epoch and of the run.

Writes to --out: run.json (arguments, data, versions, the selected epoch), log.jsonl (one line per
epoch: epoch, train_loss, valid_metric_acc (the --select-by metric's accuracy on valid; valid_metric_map,
its macro mAP, on multi-label data), valid_metric (its name), seconds, valid_seconds, clips_per_s;
peak_memory_mb on CUDA), checkpoint.pt and best-e<epoch>.pt (the best-valid weights so far; both to resume
with --resume), encoder/ (the encoder of the selected epoch, with its feature extractor, loadable with
transformers alone) and encoder-last/ (the last epoch's, unless --only-best).
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
import outdir
import probes
import rundir
import runs
import multilabel
from losses import fused_multilabel_supcon_loss, fused_supcon_loss, multilabel_supcon_loss, supcon_loss


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
                   help="output folder (default: runs/<dataset>/<backbone>/pairtune/[shots-K/]seed-N, or fold-K, "
                        "the folder run_all.sh gives the same run)")
    p.add_argument("--epochs", type=runs.positive_int, default=40,
                   help="passes over the training set (default: %(default)s; paper: 40)")
    p.add_argument("--batch-size", type=runs.positive_int, default=32,
                   help="clips per batch = classes per batch x --clips-per-class (at least two classes)")
    p.add_argument("--clips-per-class", type=runs.positive_int, default=4,
                   help="K clips of each class in a batch (>= 2, so anchors have positives)")
    p.add_argument("--max-seconds", type=runs.positive_float, default=10.0,
                   help="training crop length; evaluation averages features over chunks of this length")
    p.add_argument("--lr", type=runs.positive_float, default=5e-5,
                   help="Adam learning rate (default: %(default)s; paper: 5e-5)")
    p.add_argument("--temperature", type=runs.positive_float, default=0.1,
                   help="SupCon temperature tau (default: %(default)s; paper: 0.1)")
    p.add_argument("--projection-dim", type=runs.positive_int, default=256,
                   help="size p of the projection head (default: %(default)s; paper: 256)")
    p.add_argument("--mining", choices=["ms", "batch-hard", "none"], default="ms",
                   help="hard-pair mining: multi-similarity (ms), hardest pair per anchor, or all pairs")
    p.add_argument("--epsilon", type=runs.finite_float, default=0.1, help="margin of multi-similarity mining")
    p.add_argument("--loss", choices=["fused", "eager"], default="fused",
                   help="fused: the torch.compile'd loss with a closed-form backward (compiles once, tens of "
                        "seconds on CPU); eager: the reference implementation, same values (no compiler needed)")
    p.add_argument("--multilabel-loss", choices=["jaccard", "mulsupcon"], default="jaccard",
                   help="the loss on multi-label data (labels joined by ';'): jaccard, SupCon with each positive "
                        "weighted by the Jaccard overlap of the two clips' label sets (Audibert et al. 2024); "
                        "mulsupcon, each (clip, label) an anchor whose positives carry that label (Zhang & Wu, AAAI "
                        "2024). Both are today's SupCon on single-label data; unused there")
    p.add_argument("--select-by", choices=[*SELECTION_METRICS, "probe"], default=None,
                   help="per-epoch valid metric that picks the saved epoch, on encoder features r: epoch-centroid "
                        "(default: nearest class centroid, centroids from the epoch's own training pass, so only "
                        "valid is encoded), centroid (centroids from a fixed train subset encoded each epoch), knn "
                        "(the k-NN probe's weighted vote over that subset) or linear (the linear probe at one grid "
                        "point, trained on that subset; `probe` is its old name). A --resume without it keeps the "
                        "run's own metric")
    p.add_argument("--knn-k", type=runs.positive_int, default=10, help="neighbours for --select-by knn")
    p.add_argument("--centroid-clips-per-class", type=runs.positive_int, default=32,
                   help="train clips per class encoded each epoch for --select-by centroid, knn and linear "
                        "(centroids, neighbours or probe training set); unused by epoch-centroid")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, sampling and crops")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:1, cpu")
    p.add_argument("--precision", choices=backbone.PRECISIONS, default="auto",
                   help="encoder arithmetic: bf16 autocast or fp32 (auto: bf16 on CUDA where supported, else fp32)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the encoder's layer activations in backward: less memory, one more forward pass")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="encode each (per-process) batch this many clips at a time, the loss still over the whole "
                        "batch (gradient caching): the memory of a micro-batch, one more forward pass (default: "
                        "the whole batch at once)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes for audio decoding (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--eval-batch-size", type=runs.positive_int, default=16,
                   help="clips per batch when encoding for evaluation")
    p.add_argument("--eval-cache-mb", type=float, default=1024,
                   help="memory for keeping the valid metric's decoded inputs between epochs, so its clips are "
                        "decoded once (same features); over it, or 0, they are decoded every epoch")
    p.add_argument("--log-every", type=runs.non_negative_float, default=60, metavar="SECONDS",
                   help="when stdout is not a terminal (a log file), a progress line this often during training: "
                        "steps, loss, clips/s, ETA of the epoch and of the run (0: none; a terminal has a bar)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint.pt (a finished run is left as it is)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the pairtune run in --out (only the files a run writes are removed)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep checkpoint.pt (weights + optimiser) and best-e<epoch>.pt after a finished run")
    p.add_argument("--only-best", action="store_true",
                   help="save only encoder/ (the best-valid epoch), not also encoder-last/ (the last epoch)")
    args = p.parse_args(argv)
    if args.clips_per_class < 2:
        p.error(f"--clips-per-class must be at least 2, so that anchors have positives (got {args.clips_per_class})")
    if args.batch_size < 2 * args.clips_per_class:  # one class a batch: no negatives, a loss of 0 all run long
        p.error(f"--batch-size {args.batch_size} holds fewer than two classes of --clips-per-class "
                f"{args.clips_per_class}: give at least {2 * args.clips_per_class}")
    if args.micro_batch is not None and args.micro_batch < 1:
        p.error(f"--micro-batch must be at least 1 (got {args.micro_batch})")
    if args.select_by == "probe":  # the old name: the quick probe it named is now probes.py's linear probe
        args.select_by = "linear"
    if args.select_by is None and not args.resume:  # under --resume, main() takes the run's own (resumed_metric)
        args.select_by = DEFAULT_METRIC
    return args


# ----------------------------------------------------------------------------------------------
# Evaluation on valid: the metric that selects the saved epoch (and feeds the convergence curve)
# ----------------------------------------------------------------------------------------------

# --select-by: what each metric is, in the words run.json's selected_by gives
SELECTION_METRICS = {
    "epoch-centroid": "nearest class centroid by cosine, the centroids averaged from the L2-normalised r of the "
                      "epoch's own training pass",
    "centroid": "nearest class centroid by cosine, the centroids from --centroid-clips-per-class train clips "
                "encoded after the epoch",
    "knn": "the k-NN probe (probes.knn_predict: exp(cos/T)-weighted vote of --knn-k neighbours) over "
           "--centroid-clips-per-class train clips encoded after the epoch",
    "linear": "the linear probe (probes.train_linear at lr {lr:g}, batch {batch}, {epochs} epochs) trained on "
              "--centroid-clips-per-class train clips encoded after the epoch",
}
DEFAULT_METRIC = "epoch-centroid"
# --select-by linear: one point of probe.py's grid (its largest lr, its larger batch, its epochs), not a grid
# search every epoch; seeded, so the metric of given features is always the same
LINEAR_PROBE = {"lr": 1e-2, "batch": 128, "epochs": 100, "seed": 0}


def resumed_metric(args, out: Path) -> str:
    """--select-by for a --resume that does not give it: the metric the run was started with (its
    run.json's arguments; a run started before epoch-centroid was the default says centroid and keeps
    it), or the default where there is no checkpoint to resume from."""
    if args.select_by is not None:
        return args.select_by
    if (out / rundir.CHECKPOINT).exists():
        saved = (outdir.read_run_json(out).get("args") or {}).get("select_by")
        if saved:  # "probe", the old name, becomes "linear": runs.resume then refuses it as another metric
            return "linear" if saved == "probe" else saved
    return DEFAULT_METRIC


def centroid_subset(train_clips, per_class):
    """The first `per_class` clips of each class, by path: the same subset every epoch. A multi-label
    clip is taken while one of its labels has fewer, and counts for each of its labels."""
    chosen, counts = [], {}
    for clip in sorted(train_clips, key=lambda c: c.path):
        if any(counts.get(label, 0) < per_class for label in clip.labels):
            chosen.append(clip)
            for label in clip.labels:
                counts[label] = counts.get(label, 0) + 1
    return chosen


def metric_train_clips(train_clips, args):
    """The train clips the valid metric encodes after each epoch: none for epoch-centroid (its
    centroids come from the training pass), else the fixed per-class subset."""
    return [] if args.select_by == "epoch-centroid" else centroid_subset(train_clips, args.centroid_clips_per_class)


def decode_once(args, encoder, train_clips, splits, classes, start_epoch: int):
    """The valid metric's inputs, decoded and preprocessed once (rank 0, with epochs left to run),
    within --eval-cache-mb together: {"train subset": batches, "valid": batches}, None for clips to
    decode again every epoch (and for an empty train subset, which is never encoded). The metric
    encodes the same clips every epoch: decoding them once gives the same features."""
    kept, left_mb = {"train subset": None, "valid": None}, args.eval_cache_mb
    if not ddp.is_main() or start_epoch > args.epochs:
        return kept
    for name, clips in (("train subset", train_clips), ("valid", splits["valid"])):
        if args.eval_cache_mb > 0 and clips:
            kept[name] = backbone.batches_in_memory(encoder, clips, classes, args.max_seconds, left_mb,
                                                    args.eval_batch_size, args.num_workers, desc=f"decoding {name}",
                                                    multilabel=data.is_multilabel(splits))
            left_mb -= backbone.size_mb(kept[name] or [])
    return kept


def valid_accuracy(encoder, train_clips, valid_clips, classes, args, device, decoded=None, epoch_centroids=None,
                   multilabel=False):
    """The per-epoch valid metric that selects the epoch (--select-by), on encoder features (r, not z):
    its accuracy, or on multi-label data its macro mAP (valid_map). epoch-centroid takes its centroids
    from `epoch_centroids` ((per-class mean of the training pass's r, clips per class), from
    train_one_epoch); the others encode `train_clips`, a fixed per-class subset of train. `decoded`:
    the clips' inputs from decode_once (None: decode them now)."""
    decoded = decoded or {"train subset": None, "valid": None}
    kwargs = dict(max_seconds=args.max_seconds, device=device, batch_size=args.eval_batch_size,
                  num_workers=args.num_workers, precision=args.precision, multilabel=multilabel)
    valid_x, valid_y = backbone.extract_features(encoder, valid_clips, classes, desc="valid",
                                                 batches=decoded["valid"], **kwargs)
    runs.check_finite(valid_x, "the valid metric's features", f"lower --lr (now {args.lr:g})")
    if multilabel:
        return valid_map(encoder, train_clips, valid_x, valid_y, classes, args, decoded, kwargs, epoch_centroids)
    if args.select_by == "epoch-centroid":
        unseen = [classes[i] for i in (epoch_centroids[1] == 0).nonzero().flatten().tolist()]
        if unseen:  # not expected: the sampler visits every class each epoch
            print(f"warning: the training pass saw no clip of {', '.join(unseen)}: the epoch-centroid metric "
                  "cannot predict these classes this epoch", file=sys.stderr)
        predictions = nearest_centroid(*epoch_centroids, F.normalize(valid_x, dim=1))
        return (predictions == valid_y).float().mean().item()
    train_x, train_y = backbone.extract_features(encoder, train_clips, classes, desc="train subset",
                                                 batches=decoded["train subset"], **kwargs)
    runs.check_finite(train_x, "the valid metric's features", f"lower --lr (now {args.lr:g})")
    if args.select_by == "centroid":
        predictions = centroid_predictions(F.normalize(train_x, dim=1), train_y, F.normalize(valid_x, dim=1),
                                           len(classes))
    elif args.select_by == "knn":  # the reported k-NN probe's vote (it normalises the features itself)
        predictions = probes.knn_predict(train_x, train_y, valid_x, args.knn_k, len(classes))
    else:
        return linear_probe_accuracy(train_x, train_y, valid_x, valid_y, len(classes))
    return (predictions == valid_y).float().mean().item()


def valid_map(encoder, train_clips, valid_x, valid_y, classes, args, decoded, kwargs, epoch_centroids):
    """valid_accuracy's metric on multi-label data: the macro mAP on valid of each class's score, the
    cosine to the class centroid (a class's centroid: the mean r of the clips carrying it), the k-NN
    probe's class scores (probes.knn_scores) or the linear probe's sigmoid outputs."""
    if args.select_by == "epoch-centroid":
        scores = centroid_similarity(*epoch_centroids, F.normalize(valid_x, dim=1))
        return multilabel.mean_average_precision(scores, valid_y)["map"]
    train_x, train_y = backbone.extract_features(encoder, train_clips, classes, desc="train subset",
                                                 batches=decoded["train subset"], **kwargs)
    runs.check_finite(train_x, "the valid metric's features", f"lower --lr (now {args.lr:g})")
    if args.select_by == "linear":  # train_linear selects its epoch by valid mAP and returns it
        return linear_probe_accuracy(train_x, train_y, valid_x, valid_y, len(classes))
    if args.select_by == "centroid":
        scores = centroid_similarity(train_y.T @ F.normalize(train_x, dim=1), train_y.sum(0),
                                     F.normalize(valid_x, dim=1))
    else:
        scores = probes.knn_scores(train_x, train_y, valid_x, args.knn_k, len(classes))
    return multilabel.mean_average_precision(scores, valid_y)["map"]


def centroid_predictions(train_x, train_y, valid_x, n_classes):
    """Nearest class centroid by cosine, the centroids from the (L2-normalised) train features."""
    sums = torch.zeros(n_classes, train_x.shape[1]).index_add_(0, train_y, train_x)
    return nearest_centroid(sums, torch.bincount(train_y, minlength=n_classes), valid_x)


def nearest_centroid(centroids, counts, valid_x):
    """Each valid clip's most cosine-similar class centroid (only directions matter: a centroid may be
    given as a sum or a mean, valid_x at any scale). A class with no features (counts 0) has no
    centroid and is never predicted: its valid clips count as errors."""
    return centroid_similarity(centroids, counts, valid_x).argmax(1)


def centroid_similarity(centroids, counts, valid_x):
    """[valid, classes] cosine of each valid clip to each class centroid; -inf for a class with no
    features (counts 0), which then ranks below every other class."""
    similarity = valid_x @ F.normalize(centroids, dim=1).T
    return similarity.masked_fill(counts == 0, -math.inf)


def linear_probe_accuracy(train_x, train_y, valid_x, valid_y, n_classes):
    """probes.train_linear at one point of probe.py's grid (LINEAR_PROBE), on features standardised
    with the train subset's statistics as probe.py standardises them: its best-valid epoch's accuracy."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    # train_linear seeds torch's global generator: forked, so the run's own random stream (crops,
    # dropout) goes on as it would under any other metric
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        _, accuracy, _, _ = probes.train_linear((train_x - mean) / std, train_y, (valid_x - mean) / std, valid_y,
                                                n_classes, LINEAR_PROBE["lr"], LINEAR_PROBE["batch"],
                                                LINEAR_PROBE["epochs"], LINEAR_PROBE["seed"])
    return accuracy


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

class Embedder(nn.Module):
    """z = f_p(r) with r = f_e(x), both on the unit sphere: one module, so DDP wraps one forward.
    With with_r, (z, r): the training pass's r also gives the epoch's class centroids."""

    def __init__(self, encoder, head, precision):
        super().__init__()
        self.encoder, self.head, self.precision = encoder, head, precision

    def forward(self, inputs, with_r=False):
        with backbone.autocast(inputs["attention_mask"].device, self.precision):
            pooled = self.encoder(inputs)  # [B, d]
        r = F.normalize(pooled.float(), dim=1)  # representation on the unit sphere
        z = F.normalize(self.head(r), dim=1)  # [B, p] projection on the unit sphere
        return (z, r) if with_r else z


class EpochCentroids:
    """Per-class sums and counts of the r a training pass computes (detached: no graph is kept), for
    --select-by epoch-centroid; under torchrun each process adds its own clips and `result` sums them
    over the processes (every process must call it)."""

    def __init__(self, n_classes: int, dim: int, device):
        self.sums = torch.zeros(n_classes, dim + 1, device=device)  # the last column counts the clips

    def add(self, r, labels):
        rows = torch.cat([r.detach().float(), torch.ones_like(r[:, :1])], dim=1)
        if labels.dim() == 2:  # multi-hot: a clip adds to the sum of each class it carries
            self.sums += labels.float().T @ rows
        else:
            self.sums.index_add_(0, labels, rows)

    def result(self):
        """(centroids [classes, d], clips [classes]) on the CPU: each class's mean r over the pass, all
        processes together (zeros, and 0 clips, for a class the pass did not see)."""
        total = ddp.summed(self.sums).cpu()
        counts = total[:, -1]
        return total[:, :-1] / counts.clamp(min=1).unsqueeze(1), counts.long()


def train_one_epoch(embedder, loader, optimizer, args, device, epoch, centroids=None, progress=None):
    """One pass; returns the mean loss and the clips seen (over all processes). `centroids`
    (EpochCentroids): each batch's r (this process's clips) is added to it; `progress`
    (runs.Progress): told of each step."""
    embedder.train()
    loss_fn = fused_supcon_loss if args.loss == "fused" else supcon_loss
    multilabel_loss_fn = fused_multilabel_supcon_loss if args.loss == "fused" else multilabel_supcon_loss
    total, batches, clips = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if ddp.is_main() else True)
    for inputs, labels in bar:
        inputs = backbone.to_device(inputs, device)
        own_labels = labels.to(device)
        labels = ddp.gather(own_labels)  # the global batch's labels, in rank order
        finite_z = []

        def batch_loss(z):  # SupCon over every process's z: the global batch, as one process would see it
            z = ddp.gather_with_grad(z)
            # z's finiteness too: multi-similarity mining never mines a NaN similarity, so NaN embeddings
            # give a finite loss. Kept on the device, read with the loss below (no extra synchronisation).
            finite_z.append(torch.isfinite(z.detach()).all())
            if labels.dim() == 2:  # multi-hot targets: multi-label data (--multilabel-loss)
                return multilabel_loss_fn(z, labels, temperature=args.temperature, mining=args.mining,
                                          epsilon=args.epsilon, kind=args.multilabel_loss)
            return loss_fn(z, labels, temperature=args.temperature, mining=args.mining, epsilon=args.epsilon)

        optimizer.zero_grad(set_to_none=True)
        if args.micro_batch and args.micro_batch < len(inputs["attention_mask"]):
            loss, r = gradient_cached_backward(embedder, inputs, batch_loss, args.micro_batch, device)
        else:
            z, r = embedder(inputs, with_r=True)
            loss = batch_loss(z)
            loss.backward()
        if centroids is not None:  # the r the step used, before the step moves the weights
            centroids.add(r, own_labels)
        optimizer.step()  # a non-finite step is never saved: the run stops below, before its checkpoint
        loss_value, z_ok = torch.stack([loss.detach().float(), finite_z[0].float()]).tolist()
        if not (math.isfinite(loss_value) and z_ok):
            raise outdir.Refused(f"non-finite {'loss' if z_ok else 'embeddings'} at epoch {epoch}: training diverged; "
                                 f"lower --lr (now {args.lr:g}) or check the data")
        total, batches, clips = total + loss_value, batches + 1, clips + len(labels)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if progress is not None:
            progress.step(loss_value, len(labels))
    return total / max(batches, 1), clips


def gradient_cached_backward(embedder, inputs, batch_loss, micro_batch, device):
    """GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
    Setup"): the gradient of the whole batch's loss with the activation memory of one micro-batch.

    1. encode the batch micro-batch by micro-batch without a graph, giving z;
    2. take the loss on all of z (and, under torchrun, every other process's) and dL/dz;
    3. encode each micro-batch again with a graph and backpropagate its rows of dL/dz.
    The second pass must see the same dropout (and LayerDrop) as the first, or dL/dz would belong to
    other embeddings: each micro-batch's random state is saved before pass 1 and restored for pass 2.
    Under DDP the gradients are all-reduced once, on the last micro-batch. The inputs are sliced from
    the collated batch, so each clip keeps the padding it has in the whole batch. Returns the loss and
    pass 1's r (this process's rows, no graph): the batch's r, as the plain step computes it."""
    rows = len(inputs["attention_mask"])
    parts = [{k: v[i:i + micro_batch] for k, v in inputs.items()} for i in range(0, rows, micro_batch)]
    single = getattr(embedder, "module", embedder)  # without the DDP wrapper: pass 1 needs no gradient hooks
    states, z_parts, r_parts = [], [], []
    with torch.no_grad():
        for part in parts:
            states.append(rng_state(device))
            z_part, r_part = single(part, with_r=True)
            z_parts.append(z_part)
            r_parts.append(r_part)
    z = torch.cat(z_parts).requires_grad_()
    loss = batch_loss(z)
    loss.backward()  # only as far as z: z.grad = dL/dz for this process's rows
    for i, (part, state) in enumerate(zip(parts, states)):
        set_rng_state(state, device)
        last = i == len(parts) - 1
        with contextlib.nullcontext() if last or embedder is single else embedder.no_sync():
            embedder(part).backward(z.grad[i * micro_batch:(i + 1) * micro_batch])
    return loss.detach(), torch.cat(r_parts)


def rng_state(device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def check_fused_loss(args, device, multilabel=False):
    """Compile the fused loss now, on a tiny batch, so a machine without a working compiler fails
    before the run's folder is made (and after the quicker checks). The graph is reused by every later
    batch size."""
    generator = torch.Generator().manual_seed(0)  # its own generator: the run's random stream is untouched
    z = F.normalize(torch.randn(8, args.projection_dim, generator=generator), dim=1).to(device).requires_grad_()
    labels = torch.arange(8, device=device) % 2
    try:
        if multilabel:  # the multi-hot targets of the same pairs
            fused_multilabel_supcon_loss(z, F.one_hot(labels, 3).float(), args.temperature, args.mining,
                                         args.epsilon, kind=args.multilabel_loss).backward()
        else:
            fused_supcon_loss(z, labels, args.temperature, args.mining, args.epsilon).backward()
    except Exception as error:  # compiler missing or broken: Inductor raises several types
        sys.exit(f"error: the fused loss could not be compiled on {device} ({type(error).__name__}: "
                 f"{str(error)[:300]}). Rerun with --loss eager (same results, slower).")


def main(argv=None):
    # ---------------- errors first: everything that can be wrong, checked before anything is made ----------------
    args = parse_args(argv)
    out = runs.run_folder(args, "pairtune")
    args.out = str(out)  # run.json records where the run went
    print(f"out: {out}")
    # Reading only: a folder that is not this run's to write is refused now, not after the data, the
    # model and the loss are loaded; under its lock (below) it is checked again.
    runs.check_folder_first(out, "pairtune", args)
    args.select_by = resumed_metric(args, out)  # a --resume without --select-by: the run's own metric
    args.valid_fraction = runs.resumed_setting(out, args, "valid_fraction", runs.VALID_FRACTION)
    device = set_up_device(args)
    if finished_already(args, out):
        return
    splits, classes, shots = load_data(args)
    encoder = load_backbone(args)
    if args.loss == "fused":
        check_fused_loss(args, device, data.is_multilabel(splits))

    # ---------------- the output folder: made, and held by its lock, from here (outdir.py) ----------------
    with runs.output_lock(out):
        runs.prepare_run_folder(out, "pairtune", args)  # again: another run may have taken it in between
        train(args, out, device, splits, classes, shots, encoder)


def train(args, out: Path, device, splits, classes, shots, encoder):
    # ---------------- building networks ----------------
    head, embedder, optimizer = build_model(args, encoder, device)
    loader, loader_generator, sampler = build_loader(args, encoder, splits, classes, device)
    run = runs.new_run("pairtune", args, data.dataset_name(args.dataset),
                       data.resolve_dataset(args.dataset, args.data_root), encoder, splits, classes)
    run["shots"] = shots  # None, or K, its seed and the classes short of K

    # ---------------- resuming ----------------
    modules = {"encoder": encoder.model, "head": head}
    start_epoch, history, best = start_or_resume(args, out, run, modules, optimizer, loader_generator)

    # ---------------- training, selecting on valid (the same rule as finetune.py) ----------------
    multilabel = data.is_multilabel(splits)  # several labels a clip: the metric is mAP, not accuracy
    metric_name = "map" if multilabel else "acc"
    metric_clips = metric_train_clips(splits["train"], args)  # none for epoch-centroid
    decoded = decode_once(args, encoder, metric_clips, splits, classes, start_epoch)
    progress = runs.Progress(args.epochs, args.log_every)  # lines in a log file; a terminal has tqdm's bar
    for epoch in range(start_epoch, args.epochs + 1):
        started = runs.start_epoch_clock(device)
        sampler.set_epoch(epoch)
        progress.start_epoch(epoch, len(loader))
        centroids = EpochCentroids(len(classes), encoder.hidden_size, device)
        train_loss, clips = train_one_epoch(embedder, loader, optimizer, args, device, epoch, centroids, progress)
        progress.end_training()
        runs.check_finite(embedder, f"the weights after epoch {epoch}",
                          f"training diverged; lower --lr (now {args.lr:g})")
        epoch_centroids = centroids.result()  # summed over the processes: every process takes part
        throughput = runs.throughput(started, clips, device)  # clips/s and peak memory of the training pass
        # Once, on rank 0, then shared: every process selects the same epoch.
        valid_started = time.time()
        valid_acc = ddp.broadcast_float(
            valid_accuracy(encoder, metric_clips, splits["valid"], classes, args, device, decoded, epoch_centroids,
                           multilabel)
            if ddp.is_main() else None, device)
        line = {"epoch": epoch, "train_loss": round(train_loss, 6), f"valid_metric_{metric_name}": round(valid_acc, 6),
                "valid_metric": args.select_by, "seconds": round(time.time() - started, 2),
                "valid_seconds": round(time.time() - valid_started, 2), **throughput}
        runs.log_epoch(out, history, line)
        progress.end_epoch()
        print(f"epoch {epoch}/{args.epochs}  train/loss {train_loss:.4f}  valid/{args.select_by}_{metric_name} "
              f"{valid_acc:.4f}  "
              f"{line['seconds']:.1f}s  {runs.describe_throughput(throughput)}  {progress.run_eta()}".rstrip(),
              flush=True)
        best = runs.keep_if_best(out, best, epoch, valid_acc, {"encoder": encoder.model.state_dict()})
        runs.save_checkpoint(out / rundir.CHECKPOINT, args, modules, optimizer, loader_generator, epoch, history,
                             best)
        runs.drop_stale_best(out, best)

    # ---------------- saving: the best-valid encoder (the one probe.py uses) and the last ----------------
    if not ddp.is_main():  # the other processes are done: rank 0 saves
        ddp.stop()
        return
    save_best(args, out, encoder, best, device)

    # ---------------- writing ----------------
    write_results(args, out, run, history, best, metric_name)


# ----------------------------------------------------------------------------------------------
# The steps of train()
# ----------------------------------------------------------------------------------------------

def set_up_device(args) -> torch.device:
    """This process's device (under torchrun, joining the group), the --num-workers and --precision
    defaults for it, and the run's seed."""
    device = ddp.start(runs.resolve_device(args.device))
    if args.num_workers is None:  # on CPU, workers would compete with the model for the same cores
        args.num_workers = 4 if device.type == "cuda" else 0
    args.precision = backbone.resolve_precision(args.precision, device)
    if device.type == "cuda":  # TF32 tensor cores for what stays float32 (the head, the loss's GEMMs)
        torch.set_float32_matmul_precision("high")
    runs.seed_everything(args.seed)
    return device


def finished_already(args, out: Path) -> bool:
    """A --resume of a run that has all its epochs: tidied (under the folder's lock), said, and nothing
    else to do: no data or model is loaded."""
    if not (args.resume and runs.finished_epochs(out) >= args.epochs):
        return False
    with runs.output_lock(out):
        runs.prepare_run_folder(out, "pairtune", args)
        if runs.finished_epochs(out) >= args.epochs:  # still, under the lock
            runs.tidy_finished(out)
    print(f"{out} holds a finished run of {runs.finished_epochs(out)} epochs; nothing to resume")
    ddp.stop()
    return True


def load_data(args):
    """(splits, classes, shots): the manifest's splits (every file decoded once: a bad one stops the run
    here, before its folder is made), cut to --shots clips per class if asked."""
    splits, classes = data.load_splits(args.dataset, args.data_root, args.fold, args.skip_bad,
                                       valid_fraction=args.valid_fraction)
    data.require_two_classes(classes, args.dataset, args.data_root)
    shots = None
    if args.shots is not None:  # the same K clips per class for every method with this K and seed
        splits, shots = data.keep_shots(splits, args.shots, args.seed if args.shot_seed is None else args.shot_seed)
    print(f"data: {data.dataset_name(args.dataset)}: " + ", ".join(f"{s} {len(c)}" for s, c in splits.items())
          + f" clips, {len(classes)} classes")
    return splits, classes, shots


def load_backbone(args):
    """The encoder (on the CPU), or one line saying why it cannot be loaded (runs.load_backbone), and a
    --max-seconds it takes: before the run's folder is made."""
    encoder = runs.load_backbone(args.backbone)
    if encoder.chunk_seconds(args.max_seconds) != args.max_seconds:  # a training crop cannot be chunked
        sys.exit(f"error: --max-seconds {args.max_seconds} exceeds what {args.backbone} takes "
                 f"({encoder.max_seconds:.0f} s)")
    return encoder


def build_model(args, encoder, device):
    """(head f_p, the Embedder (DDP-wrapped under torchrun), Adam over the encoder and head), the
    encoder moved to the device; then each process's own random stream (ddp.seed_this_rank)."""
    encoder.to(device)
    head = nn.Linear(encoder.hidden_size, args.projection_dim).to(device)  # f_p, discarded after training
    if args.grad_checkpointing:
        encoder.checkpoint_activations()
    embedder = ddp.wrap(Embedder(encoder, head, args.precision), device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=args.lr)
    print(f"backbone: {encoder.name}{' (RANDOM INIT)' if encoder.random_init else ''}, "
          f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M parameters, device {device}, "
          f"{args.precision}" + (f", {ddp.world_size()} processes" if ddp.world_size() > 1 else ""))
    ddp.seed_this_rank(args.seed)
    return head, embedder, optimizer


def build_loader(args, encoder, splits, classes, device):
    """(loader, its generator, the P x K sampler): random crops of train in class-balanced batches,
    each process taking whole classes of the global batch."""
    if args.shots is not None and args.shots < args.clips_per_class:
        # Said, not hidden: the sampler repeats a class's clips to fill its K places in a batch, so
        # some positives are two random crops of one clip; a clip no longer than the crop is the same
        # audio twice (no dropout in some encoders: the same embedding), so such pairs teach nothing
        # and the loss then comes from the negatives.
        print(f"note: --shots {args.shots} < --clips-per-class {args.clips_per_class}: a batch repeats a class's "
              f"clips, so positives include two random --max-seconds {args.max_seconds:g} crops of one clip "
              "(identical audio where the clip is no longer than the crop)", file=sys.stderr)
    multilabel = data.is_multilabel(splits)
    train_set = data.TrainClips(splits["train"], classes, encoder.sample_rate, args.max_seconds, multilabel)
    loader_generator = torch.Generator().manual_seed(args.seed)
    class_index = {c: i for i, c in enumerate(classes)}
    # Multi-label: a clip is listed under each of its labels, and batches are P labels x K clips carrying each.
    labels = [[class_index[label] for label in c.labels] if multilabel else class_index[c.label]
              for c in splits["train"]]
    sampler = data.ClassBalancedBatchSampler(labels,
                                             classes_per_batch=max(1, args.batch_size // args.clips_per_class),
                                             clips_per_class=args.clips_per_class, seed=args.seed)
    if sampler.classes_per_batch % ddp.world_size():  # each process takes whole classes of the P x K batch
        sys.exit(f"error: a batch of {sampler.classes_per_batch} classes x {args.clips_per_class} clips cannot be "
                 f"shared by {ddp.world_size()} processes in whole classes; make --batch-size / --clips-per-class "
                 f"a multiple of {ddp.world_size()}")
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=ddp.ShardedBatches(sampler, ddp.rank(), ddp.world_size()),
        num_workers=args.num_workers, collate_fn=data.CollateTrain(encoder.preprocess),
        pin_memory=device.type == "cuda", generator=loader_generator,  # seeds the workers' crops
        worker_init_fn=ddp.worker_init(args.num_workers))
    return loader, loader_generator, sampler


def start_or_resume(args, out: Path, run, modules, optimizer, loader_generator):
    """(start_epoch, history, best): a fresh start, or the checkpoint's state under --resume; then
    run.json, unfinished, and the old results gone."""
    start_epoch, history, best = runs.resume(out, args, modules, optimizer, loader_generator)
    if args.select_by == "knn" and any("valid_acc" in line for line in history):
        # logged before knn was the k-NN probe's weighted vote (a majority vote then): another metric
        sys.exit(f"error: {out} was selected so far by the old --select-by knn (a majority vote, logged as "
                 "valid_acc), not the k-NN probe's weighted vote it now is: start the run again (--overwrite)")
    if ddp.is_main():
        runs.write_json(out / rundir.RUN_JSON, run)  # unfinished from here on, before anything is removed
    runs.remove_old_results(out)
    return start_epoch, history, best


def save_best(args, out: Path, encoder, best, device):
    """encoder/ with the selected epoch's weights (the one probe.py uses), and encoder-last/ with the
    last epoch's unless --only-best."""
    if args.only_best:
        outdir.remove_written(out / rundir.ENCODER_LAST)  # a previous run's, in a reused --out
    else:
        runs.save_encoder(encoder, out / rundir.ENCODER_LAST)
    encoder.model.load_state_dict(runs.load_best(out, best, device)["encoder"])
    runs.save_encoder(encoder, out / rundir.ENCODER)


def write_results(args, out: Path, run, history, best, metric_name="acc"):
    """run.json finished, with the selected epoch and what selected it; the checkpoints removed unless
    --keep-checkpoint; the next command."""
    selection = {k: getattr(args, k) for k in ("select_by", "knn_k", "centroid_clips_per_class")}
    about = SELECTION_METRICS[args.select_by].format(**LINEAR_PROBE)
    run.update(finished=True, epochs_run=len(history), selected_epoch=best["epoch"], selection=selection,
               selected_by=f"valid_metric_{metric_name} in log.jsonl: the "
                           + ("macro mAP" if metric_name == "map" else "accuracy")
                           + f" on valid of {args.select_by}, {about}",
               **{f"selected_valid_{metric_name}": round(best["valid_acc"], 6)})  # keep_if_best's name for either
    runs.write_json(out / rundir.RUN_JSON, run)
    if not args.keep_checkpoint:  # only needed to resume; encoder/ holds the result
        runs.remove_checkpoints(out)
    ddp.stop()
    print(f"saved the encoder of the best-valid epoch {best['epoch']} (valid/{args.select_by}_{metric_name} "
          f"{best['valid_acc']:.4f}) to {out / rundir.ENCODER}" + ("" if args.only_best else
          f", the last epoch's to {out / rundir.ENCODER_LAST}") + f"; next: python probe.py --ckpt {out}")


if __name__ == "__main__":
    runs.stop_on_sigterm()
    try:
        main()
    except (data.DataError, outdir.Refused) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM: where the run stands, and how to continue it
        runs.interrupted(stop, runs.run_folder(parse_args(), "pairtune"), sys.argv)
