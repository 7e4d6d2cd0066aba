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

Writes to --out: run.json (arguments, data, versions, the selected epoch), log.jsonl (one line per
epoch: epoch, train_loss, valid_acc, valid_metric, seconds, clips_per_s; peak_memory_mb on CUDA),
checkpoint.pt and best-e<epoch>.pt (the best-valid weights so far; both to resume with --resume),
encoder/ (the encoder of the epoch with the best valid accuracy, ties to the earlier epoch, as
finetune.py selects; with its feature extractor, loadable with transformers alone) and
encoder-last/ (the last epoch's, unless --only-best).
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
import runs
from losses import fused_supcon_loss, supcon_loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="name under --data-root (e.g. gtzan) or a manifest CSV")
    p.add_argument("--data-root", default=None, help="folder holding NAME/manifest.csv (default $CONFIT_DATA or data/)")
    p.add_argument("--fold", type=int, default=None, help="fold datasets (ESC-50): this fold is test, the rest train")
    p.add_argument("--shots", type=int, default=None, metavar="K",
                   help="few-shot: keep K train clips per class (drawn with --shot-seed; valid and test untouched)")
    p.add_argument("--shot-seed", type=int, default=None, help="the draw of --shots (default: --seed)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unusable audio (unreadable, empty, cut short, NaN/inf) with a warning, not stop")
    p.add_argument("--backbone", default="wav2vec2",
                   help="wav2vec2 | hubert | wavlm | tiny (random, for smoke runs) | any hub id or local directory")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--epochs", type=runs.positive_int, default=40, help="passes over the training set (paper: 40)")
    p.add_argument("--batch-size", type=runs.positive_int, default=32,
                   help="clips per batch = classes per batch x --clips-per-class (at least two classes)")
    p.add_argument("--clips-per-class", type=runs.positive_int, default=4,
                   help="K clips of each class in a batch (>= 2, so anchors have positives)")
    p.add_argument("--max-seconds", type=runs.positive_float, default=10.0,
                   help="training crop length; evaluation averages features over chunks of this length")
    p.add_argument("--lr", type=runs.positive_float, default=5e-5, help="Adam learning rate (paper: 5e-5)")
    p.add_argument("--temperature", type=runs.positive_float, default=0.1, help="SupCon temperature tau (paper: 0.1)")
    p.add_argument("--projection-dim", type=runs.positive_int, default=256,
                   help="size p of the projection head (paper: 256)")
    p.add_argument("--mining", choices=["ms", "batch-hard", "none"], default="ms",
                   help="hard-pair mining: multi-similarity (default), hardest pair per anchor, or all pairs")
    p.add_argument("--epsilon", type=runs.finite_float, default=0.1, help="margin of multi-similarity mining")
    p.add_argument("--loss", choices=["fused", "eager"], default="fused",
                   help="fused: the torch.compile'd loss with a closed-form backward (compiles once, tens of "
                        "seconds on CPU); eager: the reference implementation, same values (no compiler needed)")
    p.add_argument("--select-by", choices=["centroid", "knn", "probe"], default="centroid",
                   help="per-epoch valid metric that picks the saved epoch, on features of valid and of a fixed "
                        "train subset: nearest class centroid (cheapest), k-NN vote, or a quick linear probe "
                        "(300 full-batch Adam steps more per epoch); all encode those clips once per epoch")
    p.add_argument("--knn-k", type=runs.positive_int, default=10, help="neighbours for --select-by knn")
    p.add_argument("--centroid-clips-per-class", type=runs.positive_int, default=32,
                   help="train clips per class encoded each epoch for the valid metric (centroids, neighbours "
                        "or probe training set)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, sampling and crops")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:1, cpu")
    p.add_argument("--precision", choices=backbone.PRECISIONS, default="auto",
                   help="encoder arithmetic: bf16 autocast or fp32 (auto: bf16 on CUDA where supported, else fp32)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the encoder's layer activations in backward: less memory, one more forward pass")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="encode each (per-process) batch this many clips at a time, the loss still over the whole "
                        "batch (gradient caching): the memory of a micro-batch, one more forward pass")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes for audio decoding (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--eval-batch-size", type=runs.positive_int, default=16,
                   help="clips per batch when encoding for evaluation")
    p.add_argument("--eval-cache-mb", type=float, default=1024,
                   help="memory for keeping the valid metric's decoded inputs between epochs, so its clips are "
                        "decoded once (same features); over it, or 0, they are decoded every epoch")
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
    return args


# ----------------------------------------------------------------------------------------------
# Evaluation on valid: the metric that selects the saved epoch (and feeds the convergence curve)
# ----------------------------------------------------------------------------------------------

def centroid_subset(train_clips, per_class):
    """The first `per_class` clips of each class, by path: the same subset every epoch."""
    chosen, counts = [], {}
    for clip in sorted(train_clips, key=lambda c: c.path):
        if counts.get(clip.label, 0) < per_class:
            chosen.append(clip)
            counts[clip.label] = counts.get(clip.label, 0) + 1
    return chosen


def decode_once(encoder, train_clips, valid_clips, classes, args):
    """The valid metric's inputs, decoded and preprocessed once, within --eval-cache-mb together:
    {"train subset": batches, "valid": batches}, None for clips to decode again every epoch."""
    kept, left_mb = {"train subset": None, "valid": None}, args.eval_cache_mb
    for name, clips in (("train subset", train_clips), ("valid", valid_clips)):
        if args.eval_cache_mb > 0:
            kept[name] = backbone.batches_in_memory(encoder, clips, classes, args.max_seconds, left_mb,
                                                    args.eval_batch_size, args.num_workers, desc=f"decoding {name}")
            left_mb -= backbone.size_mb(kept[name] or [])
    return kept


def valid_accuracy(encoder, train_clips, valid_clips, classes, args, device, decoded=None):
    """The per-epoch valid metric that selects the epoch (--select-by), on L2-normalised encoder
    features (r, not z): train features come from a fixed per-class subset of train. `decoded`:
    the clips' inputs from decode_once (None: decode them now)."""
    decoded = decoded or {"train subset": None, "valid": None}
    kwargs = dict(max_seconds=args.max_seconds, device=device, batch_size=args.eval_batch_size,
                  num_workers=args.num_workers, precision=args.precision)
    train_x, train_y = backbone.extract_features(encoder, train_clips, classes, desc="train subset",
                                                 batches=decoded["train subset"], **kwargs)
    valid_x, valid_y = backbone.extract_features(encoder, valid_clips, classes, desc="valid",
                                                 batches=decoded["valid"], **kwargs)
    runs.check_finite(torch.cat([train_x, valid_x]), "the valid metric's features", f"lower --lr (now {args.lr:g})")
    train_x, valid_x = F.normalize(train_x, dim=1), F.normalize(valid_x, dim=1)
    if args.select_by == "centroid":
        predictions = centroid_predictions(train_x, train_y, valid_x, len(classes))
    elif args.select_by == "knn":
        predictions = knn_predictions(train_x, train_y, valid_x, len(classes), args.knn_k)
    else:  # on the training device: at TIMIT's size this is real work (see the README)
        predictions = probe_predictions(train_x.to(device), train_y.to(device), valid_x.to(device),
                                        len(classes)).cpu()
    return (predictions == valid_y).float().mean().item()


def centroid_predictions(train_x, train_y, valid_x, n_classes):
    """Nearest class centroid by cosine."""
    centroids = torch.zeros(n_classes, train_x.shape[1]).index_add_(0, train_y, train_x)
    return (valid_x @ F.normalize(centroids, dim=1).T).argmax(1)


def knn_predictions(train_x, train_y, valid_x, n_classes, k):
    """Majority vote of the k most cosine-similar train clips; a tied vote goes to the class whose
    voters are more similar in total."""
    similarity, index = (valid_x @ train_x.T).topk(min(k, len(train_y)), dim=1)
    votes = torch.zeros(len(valid_x), n_classes).scatter_add_(1, train_y[index], torch.ones_like(similarity))
    closeness = torch.zeros(len(valid_x), n_classes).scatter_add_(1, train_y[index], similarity)
    most_votes = votes == votes.max(dim=1, keepdim=True).values
    return closeness.masked_fill(~most_votes, -math.inf).argmax(1)


def probe_predictions(train_x, train_y, valid_x, n_classes, steps=300, lr=0.01):
    """A quick linear probe: softmax regression trained full-batch with Adam from zero weights
    (deterministic), a cheap stand-in for probe.py's grid search."""
    head = nn.Linear(train_x.shape[1], n_classes, device=train_x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(head(train_x), train_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return head(valid_x).argmax(1)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

class Embedder(nn.Module):
    """z = f_p(r) with r = f_e(x), both on the unit sphere: one module, so DDP wraps one forward."""

    def __init__(self, encoder, head, precision):
        super().__init__()
        self.encoder, self.head, self.precision = encoder, head, precision

    def forward(self, inputs):
        with backbone.autocast(inputs["attention_mask"].device, self.precision):
            pooled = self.encoder(inputs)  # [B, d]
        r = F.normalize(pooled.float(), dim=1)  # representation on the unit sphere
        return F.normalize(self.head(r), dim=1)  # [B, p] projection on the unit sphere


def train_one_epoch(embedder, loader, optimizer, args, device, epoch):
    """One pass; returns the mean loss and the clips seen (over all processes)."""
    embedder.train()
    loss_fn = fused_supcon_loss if args.loss == "fused" else supcon_loss
    total, batches, clips = 0.0, 0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if ddp.is_main() else True)
    for inputs, labels in progress:
        inputs = backbone.to_device(inputs, device)
        labels = ddp.gather(labels.to(device))  # the global batch's labels, in rank order
        finite_z = []

        def batch_loss(z):  # SupCon over every process's z: the global batch, as one process would see it
            z = ddp.gather_with_grad(z)
            # z's finiteness too: multi-similarity mining never mines a NaN similarity, so NaN embeddings
            # give a finite loss. Kept on the device, read with the loss below (no extra synchronisation).
            finite_z.append(torch.isfinite(z.detach()).all())
            return loss_fn(z, labels, temperature=args.temperature, mining=args.mining, epsilon=args.epsilon)

        optimizer.zero_grad(set_to_none=True)
        if args.micro_batch and args.micro_batch < len(inputs["attention_mask"]):
            loss = gradient_cached_backward(embedder, inputs, batch_loss, args.micro_batch, device)
        else:
            loss = batch_loss(embedder(inputs))
            loss.backward()
        optimizer.step()  # a non-finite step is never saved: the run stops below, before its checkpoint
        loss_value, z_ok = torch.stack([loss.detach().float(), finite_z[0].float()]).tolist()
        if not (math.isfinite(loss_value) and z_ok):
            raise outdir.Refused(f"non-finite {'loss' if z_ok else 'embeddings'} at epoch {epoch}: training diverged; "
                                 f"lower --lr (now {args.lr:g}) or check the data")
        total, batches, clips = total + loss_value, batches + 1, clips + len(labels)
        progress.set_postfix(loss=f"{loss_value:.4f}")
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
    the collated batch, so each clip keeps the padding it has in the whole batch."""
    rows = len(inputs["attention_mask"])
    parts = [{k: v[i:i + micro_batch] for k, v in inputs.items()} for i in range(0, rows, micro_batch)]
    single = getattr(embedder, "module", embedder)  # without the DDP wrapper: pass 1 needs no gradient hooks
    states, z_parts = [], []
    with torch.no_grad():
        for part in parts:
            states.append(rng_state(device))
            z_parts.append(single(part))
    z = torch.cat(z_parts).requires_grad_()
    loss = batch_loss(z)
    loss.backward()  # only as far as z: z.grad = dL/dz for this process's rows
    for i, (part, state) in enumerate(zip(parts, states)):
        set_rng_state(state, device)
        last = i == len(parts) - 1
        with contextlib.nullcontext() if last or embedder is single else embedder.no_sync():
            embedder(part).backward(z.grad[i * micro_batch:(i + 1) * micro_batch])
    return loss.detach()


def rng_state(device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def check_fused_loss(args, device):
    """Compile the fused loss now, on a tiny batch, so a machine without a working compiler fails
    before the data and model are loaded. The graph is reused by every later batch size."""
    generator = torch.Generator().manual_seed(0)  # its own generator: the run's random stream is untouched
    z = F.normalize(torch.randn(8, args.projection_dim, generator=generator), dim=1).to(device).requires_grad_()
    labels = torch.arange(8, device=device) % 2
    try:
        fused_supcon_loss(z, labels, args.temperature, args.mining, args.epsilon).backward()
    except Exception as error:  # compiler missing or broken: Inductor raises several types
        sys.exit(f"error: the fused loss could not be compiled on {device} ({type(error).__name__}: "
                 f"{str(error)[:300]}). Rerun with --loss eager (same results, slower).")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    # The output folder before anything else (outdir.py): held by its lock while the run writes there,
    # and new, empty, or this kind of run asked to be continued (--resume) or replaced (--overwrite).
    with runs.output_lock(out):
        runs.prepare_run_folder(out, "pairtune", args)
        train(args, out)


def train(args, out: Path):
    device = ddp.start(runs.resolve_device(args.device))  # this process's device; under torchrun, joins the group
    if args.num_workers is None:  # on CPU, workers would compete with the model for the same cores
        args.num_workers = 4 if device.type == "cuda" else 0
    args.precision = backbone.resolve_precision(args.precision, device)
    if device.type == "cuda":  # TF32 tensor cores for what stays float32 (the head, the loss's GEMMs)
        torch.set_float32_matmul_precision("high")
    runs.seed_everything(args.seed)
    if args.resume and runs.finished_epochs(out) >= args.epochs:
        runs.tidy_finished(out)
        print(f"{out} holds a finished run of {runs.finished_epochs(out)} epochs; nothing to resume")
        ddp.stop()
        return
    if args.loss == "fused":
        check_fused_loss(args, device)

    # ---------------- preparing data ----------------
    splits, classes = data.load_splits(args.dataset, args.data_root, args.fold, args.skip_bad)
    data.require_two_classes(classes, args.dataset, args.data_root)
    shots = None
    if args.shots is not None:  # the same K clips per class for every method with this K and seed
        splits, shots = data.keep_shots(splits, args.shots, args.seed if args.shot_seed is None else args.shot_seed)
    print(f"data: {data.dataset_name(args.dataset)}: " + ", ".join(f"{s} {len(c)}" for s, c in splits.items())
          + f" clips, {len(classes)} classes")

    # ---------------- building networks ----------------
    encoder = backbone.load_encoder(args.backbone).to(device)
    if encoder.chunk_seconds(args.max_seconds) != args.max_seconds:  # a training crop cannot be chunked
        sys.exit(f"error: --max-seconds {args.max_seconds} exceeds what {args.backbone} takes "
                 f"({encoder.max_seconds:.0f} s)")
    head = nn.Linear(encoder.hidden_size, args.projection_dim).to(device)  # f_p, discarded after training
    if args.grad_checkpointing:
        encoder.checkpoint_activations()
    embedder = ddp.wrap(Embedder(encoder, head, args.precision), device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=args.lr)
    print(f"backbone: {encoder.name}{' (RANDOM INIT)' if encoder.random_init else ''}, "
          f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M parameters, device {device}, "
          f"{args.precision}" + (f", {ddp.world_size()} processes" if ddp.world_size() > 1 else ""))
    ddp.seed_this_rank(args.seed)

    if args.shots is not None and args.shots < args.clips_per_class:
        # Said, not hidden: the sampler repeats a class's clips to fill its K places in a batch, so
        # some positives are two random crops of one clip; a clip no longer than the crop is the same
        # audio twice (no dropout in some encoders: the same embedding), so such pairs teach nothing
        # and the loss then comes from the negatives.
        print(f"note: --shots {args.shots} < --clips-per-class {args.clips_per_class}: a batch repeats a class's "
              f"clips, so positives include two random --max-seconds {args.max_seconds:g} crops of one clip "
              "(identical audio where the clip is no longer than the crop)", file=sys.stderr)
    train_set = data.TrainClips(splits["train"], classes, encoder.sample_rate, args.max_seconds)
    loader_generator = torch.Generator().manual_seed(args.seed)
    class_index = {c: i for i, c in enumerate(classes)}
    sampler = data.ClassBalancedBatchSampler([class_index[c.label] for c in splits["train"]],
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
    centroid_clips = centroid_subset(splits["train"], args.centroid_clips_per_class)

    run = runs.new_run("pairtune", args, data.dataset_name(args.dataset),
                       data.resolve_dataset(args.dataset, args.data_root), encoder, splits, classes)
    run["shots"] = shots  # None, or K, its seed and the classes short of K

    # ---------------- resuming ----------------
    selection = {k: getattr(args, k) for k in ("select_by", "knn_k", "centroid_clips_per_class")}
    modules = {"encoder": encoder.model, "head": head}
    start_epoch, history, best = runs.resume(out, args, modules, optimizer, loader_generator)
    if ddp.is_main():
        runs.write_json(out / "run.json", run)  # unfinished from here on, before anything is removed
    runs.remove_old_results(out)

    # ---------------- training, selecting on valid (the same rule as finetune.py) ----------------
    # The valid metric encodes the same clips every epoch: decoding them once gives the same features.
    decoded = (decode_once(encoder, centroid_clips, splits["valid"], classes, args)
               if ddp.is_main() and start_epoch <= args.epochs else None)
    for epoch in range(start_epoch, args.epochs + 1):
        started = runs.start_epoch_clock(device)
        sampler.set_epoch(epoch)
        train_loss, clips = train_one_epoch(embedder, loader, optimizer, args, device, epoch)
        runs.check_finite(embedder, f"the weights after epoch {epoch}",
                          f"training diverged; lower --lr (now {args.lr:g})")
        throughput = runs.throughput(started, clips, device)  # clips/s and peak memory of the training pass
        # Once, on rank 0, then shared: every process selects the same epoch.
        valid_started = time.time()
        valid_acc = ddp.broadcast_float(
            valid_accuracy(encoder, centroid_clips, splits["valid"], classes, args, device, decoded)
            if ddp.is_main() else None, device)
        line = {"epoch": epoch, "train_loss": round(train_loss, 6), "valid_acc": round(valid_acc, 6),
                "valid_metric": args.select_by, "seconds": round(time.time() - started, 2),
                "valid_seconds": round(time.time() - valid_started, 2), **throughput}
        runs.log_epoch(out, history, line)
        print(f"epoch {epoch}/{args.epochs}  train/loss {train_loss:.4f}  valid/{args.select_by}_acc {valid_acc:.4f}  "
              f"{line['seconds']:.1f}s  {runs.describe_throughput(throughput)}", flush=True)
        best = runs.keep_if_best(out, best, epoch, valid_acc, {"encoder": encoder.model.state_dict()})
        runs.save_checkpoint(out / "checkpoint.pt", args, modules, optimizer, loader_generator, epoch, history, best)
        runs.drop_stale_best(out, best)

    # ---------------- saving: the best-valid encoder (the one probe.py uses) and the last ----------------
    if not ddp.is_main():  # the other processes are done: rank 0 saves
        ddp.stop()
        return
    if args.only_best:
        outdir.remove_written(out / "encoder-last")  # a previous run's, in a reused --out
    else:
        runs.save_encoder(encoder, out / "encoder-last")
    encoder.model.load_state_dict(runs.load_best(out, best, device)["encoder"])
    runs.save_encoder(encoder, out / "encoder")
    run.update(finished=True, epochs_run=len(history), selected_epoch=best["epoch"], selection=selection,
               selected_by=f"valid_acc in log.jsonl: {args.select_by} accuracy on valid",
               selected_valid_acc=round(best["valid_acc"], 6))
    runs.write_json(out / "run.json", run)
    if not args.keep_checkpoint:  # only needed to resume; encoder/ holds the result
        runs.remove_checkpoints(out)
    ddp.stop()
    print(f"saved the encoder of the best-valid epoch {best['epoch']} (valid/{args.select_by}_acc "
          f"{best['valid_acc']:.4f}) to {out / 'encoder'}" + ("" if args.only_best else
          f", the last epoch's to {out / 'encoder-last'}") + f"; next: python probe.py --ckpt {out}")


if __name__ == "__main__":
    runs.stop_on_sigterm()
    try:
        main()
    except (data.DataError, outdir.Refused) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM: where the run stands, and how to continue it
        runs.interrupted(stop, parse_args().out, sys.argv)
