"""Benchmark of the SupCon + mining loss: forward + backward time and peak memory, in one process.

    python bench.py                          # B = 256, 1024, 2048, 4096; d = 256; CPU or CUDA
    python bench.py --sizes 4096,8192 --device cuda
    python bench.py --mining none --repeats 20

For each batch size B (about B/8 classes, 8 clips each), the time of loss(z).backward() for:
  eager   losses.supcon_loss, autograd through the eager graph (the reference)
  fused   losses.fused_supcon_loss: closed-form backward, torch.compile'd passes over S
  pml     pytorch-metric-learning SupConLoss + MultiSimilarityMiner (when installed; mining ms)
  floor   S = Z Z^T plus dZ = G Z for a dense G: the two GEMMs that any exact method needs
Times are medians over --rounds blocks of --repeats consecutive runs, each after a warm-up run, the
methods' blocks interleaved (so that a shared machine's drift hits all alike); compile time is
reported apart. Peak memory
is what a call adds on top of its inputs: on CUDA torch.cuda.max_memory_allocated; on CPU the rise
of the process's peak resident memory (Linux VmHWM, reset through /proc/self/clear_refs, with freed
heap memory handed back before each measurement), so it counts every allocation, PyTorch's or not.
It is also given in units of one B x B float32 matrix.

With --multilabel, the multi-label loss (--multilabel-loss, jaccard by default) on multi-hot targets:

    python bench.py --multilabel --sizes 1024,2048,4096
    python bench.py --multilabel --multilabel-loss mulsupcon --mining none

For each B: --multilabel-classes classes (200) and 1 to --max-labels labels (6) per clip, drawn at random;
  eager   losses.multilabel_supcon_loss
  fused   losses.fused_multilabel_supcon_loss
  floor   as above: the two GEMMs over Z (the targets' own GEMM, B x C x B, is not in it)
  single  losses.fused_supcon_loss on the single-label inputs above (B/8 classes of 8): the single-label
          fused step at the same B, timed in the same interleaved rounds
and a line with fused / single, the ratio the issue bounds at 1.3. On a CPU shared with other jobs,
OMP_NUM_THREADS=1 gives steadier ratios: a preempted thread stalls a 2-thread kernel at random.

With --steps, one PairTune training step against one FineTune training step instead:

    python bench.py --steps --backbone ../shared/models/whisper-tiny.en-encoder --repeats 3
    python bench.py --steps --backbone wav2vec2 --device cuda --batch-size 32 --crop-seconds 10

Both arms get the same backbone (each its own copy, head and Adam at lr 5e-5, encoder in train mode)
and the same batch: --batch-size random waves of --crop-seconds (P classes x K = --clips-per-class
labels, as PairTune's sampler lays them out), collated through the encoder's preprocessor as the
training loader does, already on the device. A step, as the training scripts run it:
  pairtune  encoder -> normalize -> linear to --dim -> normalize -> SupCon (--loss, --mining) -> backward -> Adam
  finetune  encoder -> linear to P classes -> cross-entropy -> backward -> Adam
Times are medians as above; the fused loss's compile is timed apart. Decoding, resampling and
preprocessing (the loader's work, in the main process on CPU) are in neither step. Run it on an idle
machine: other processes on the same cores stall the arms unequally (Whisper tiny.en on 2 cores,
B = 32, 2 s: pairtune/finetune 0.98-1.13 in five idle runs, up to 3.6 beside other jobs).

Then an epoch of each arm on a data set of --train-clips and --valid-clips clips of --classes classes:
its training pass (the arm's batches an epoch times its median step; PairTune's step also adds r to
the epoch's class centroids, as pairtune.py's does) and its valid metric (median of --rounds, each after
a warm-up; the inputs preprocessed beforehand, as --eval-cache-mb keeps them):
  pairtune  --select-by: epoch-centroid encodes valid (eval mode, --eval-batch-size) and takes the nearest
            centroid; centroid, knn and linear also encode --centroid-clips-per-class train clips per class
            and take the nearest centroid, probes.knn_predict, or probes.train_linear at pairtune.py's
            one grid point
  finetune  encodes valid and applies its classifier
and the ratio of the two epochs, pairtune/finetune.
"""
import argparse
import ctypes
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import backbone
import data
import losses
import probes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="256,1024,2048,4096", help="comma-separated batch sizes B")
    p.add_argument("--dim", type=int, default=256, help="embedding size p (the projection head's)")
    p.add_argument("--mining", default="ms", choices=losses.MINING_MODES, help="mining mode")
    p.add_argument("--repeats", type=int, default=10, help="consecutive timed runs per method, size and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each timing every method's block of runs")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--methods", default="eager,fused,pml,floor", help="which methods to run")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the embeddings and labels (--steps: of the waves and the heads)")
    p.add_argument("--multilabel", action="store_true",
                   help="time the multi-label loss on multi-hot targets, beside the single-label fused step")
    p.add_argument("--multilabel-loss", choices=losses.MULTILABEL_KINDS, default="jaccard",
                   help="--multilabel: the multi-label loss")
    p.add_argument("--multilabel-classes", type=int, default=200, help="--multilabel: classes C of the targets")
    p.add_argument("--max-labels", type=int, default=6, help="--multilabel: each clip has 1 to this many labels")
    p.add_argument("--steps", action="store_true",
                   help="time one PairTune training step against one FineTune step instead of the loss alone")
    p.add_argument("--backbone", default="tiny",
                   help="--steps: alias, hub id or local directory, as the training scripts take it")
    p.add_argument("--batch-size", type=int, default=32,
                   help="--steps: clips per batch (rounded down to P classes x --clips-per-class)")
    p.add_argument("--clips-per-class", type=int, default=4, help="--steps: K clips of each class in a batch")
    p.add_argument("--crop-seconds", type=float, default=2.0,
                   help="--steps: length of every clip (the training scripts' --max-seconds)")
    p.add_argument("--loss", choices=["fused", "eager"], default="fused", help="--steps: PairTune's loss")
    p.add_argument("--train-clips", type=int, default=300, help="--steps, per epoch: clips in the training set")
    p.add_argument("--valid-clips", type=int, default=120, help="--steps, per epoch: clips in valid")
    p.add_argument("--classes", type=int, default=10, help="--steps, per epoch: classes in the data set")
    p.add_argument("--select-by", choices=SELECT_BY, default="epoch-centroid",
                   help="--steps, per epoch: PairTune's valid metric, as pairtune.py's --select-by")
    p.add_argument("--centroid-clips-per-class", type=int, default=32,
                   help="--steps, per epoch: train clips per class the centroid, knn and linear metrics encode")
    p.add_argument("--knn-k", type=int, default=10, help="--steps, per epoch: k of --select-by knn")
    p.add_argument("--eval-batch-size", type=int, default=16, help="--steps, per epoch: clips per valid batch")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The loss benchmark: inputs, methods, timing (median_ms, also used by --steps), peak memory
# ----------------------------------------------------------------------------------------------

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(batch, dim, device, generator):
    """Unit-norm embeddings and labels with batch/8 classes of 8, shuffled (as P x K batches)."""
    z = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    n_classes = max(1, batch // 8)
    labels = (torch.arange(batch) % n_classes)[torch.randperm(batch, generator=generator)].to(device)
    return z, labels


def make_multilabel_inputs(batch, dim, device, generator, n_classes=200, max_labels=6):
    """Unit-norm embeddings and multi-hot targets [B, C]: each clip 1 to max_labels distinct labels
    (capped at C), the count and the labels drawn uniformly at random."""
    z = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    counts = torch.randint(1, max_labels + 1, (batch, 1), generator=generator)
    # argsort of uniform noise is a random permutation per row: the positions of its `count` smallest
    # values are `count` distinct labels drawn uniformly
    targets = (torch.rand(batch, n_classes, generator=generator).argsort(dim=1) < counts).float()
    return z, targets.to(device)


def loss_step(loss_fn, z, labels):
    """One forward + backward, as a training step runs it."""
    leaf = z.detach().requires_grad_()
    loss_fn(leaf, labels).backward()
    return leaf.grad


def build_methods(args, device):
    if args.multilabel:  # y: multi-hot targets; pml has no multi-label SupCon
        kind = args.multilabel_loss
        methods = {
            "eager": lambda z, y: losses.multilabel_supcon_loss(z, y, mining=args.mining, kind=kind),
            "fused": lambda z, y: losses.fused_multilabel_supcon_loss(z, y, mining=args.mining, kind=kind),
        }
        return {name: fn for name, fn in methods.items() if name in args.methods.split(",")}
    methods = {
        "eager": lambda z, y: losses.supcon_loss(z, y, mining=args.mining),
        "fused": lambda z, y: losses.fused_supcon_loss(z, y, mining=args.mining),
    }
    if args.mining == "ms":
        try:
            from pytorch_metric_learning import losses as pml_losses, miners as pml_miners
            supcon = pml_losses.SupConLoss(temperature=0.1)
            miner = pml_miners.MultiSimilarityMiner(epsilon=0.1)
            methods["pml"] = lambda z, y: supcon(z, y, miner(z, y))
        except ImportError:
            print("pml: pytorch-metric-learning is not installed; skipped (pip install pytorch-metric-learning)")
    return {name: fn for name, fn in methods.items() if name in args.methods.split(",")}


def median_ms(steps, device, repeats, rounds):
    """Median time of each step over `rounds` blocks of `repeats` consecutive runs, the methods'
    blocks interleaved.

    Consecutive runs of one method, as in training, keep its own steady state (caches, and the
    heap's reuse of the last step's freed B x B buffers); interleaving the blocks spreads a shared
    machine's drift over every method instead of giving each a different stretch of time.
    """
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            step()  # warm-up after the other methods: caches, heap, and for fused the compiled kernels
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                step()
                synchronize(device)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_extra_bytes(step, device):
    """Bytes a call adds at its peak over what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap memory back, so reuse cannot hide
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak resident set) to the current resident set
    except OSError:
        return None  # not Linux/glibc: no CPU figure
    before = resident_kib("VmRSS")
    step()
    return (resident_kib("VmHWM") - before) * 1024


def resident_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


# ----------------------------------------------------------------------------------------------
# --steps: one PairTune training step against one FineTune training step
# ----------------------------------------------------------------------------------------------

STEP_LR = 5e-5  # both scripts' default; a step's time does not depend on it
SELECT_BY = ("epoch-centroid", "centroid", "knn", "linear")  # pairtune.py's --select-by metrics
LINEAR_PROBE = {"lr": 1e-2, "batch": 128, "epochs": 100, "seed": 0}  # pairtune.py's LINEAR_PROBE (a script: copied)


def step_batch(encoder, args, device, generator):
    """--batch-size random waves of the crop length with P x K labels (each class's K clips side by
    side, as ClassBalancedBatchSampler yields them), collated as the training loader collates."""
    per_class = args.clips_per_class
    n_classes = max(1, args.batch_size // per_class)
    samples = int(args.crop_seconds * encoder.sample_rate)
    # labels as data.TrainClips gives them: 0-d LongTensors, which the collate stacks
    batch = [(0.1 * torch.randn(samples, generator=generator).numpy(), torch.tensor(c))
             for c in range(n_classes) for _ in range(per_class)]
    inputs, labels = data.CollateTrain(encoder.preprocess)(batch)
    # On the device once: both arms would pay the same copy, and the loader overlaps it in training.
    return backbone.to_device(inputs, device), labels.to(device), n_classes


def training_step(head_size, args, device, forward_loss):
    """A fresh encoder, a linear head to head_size and Adam over both, as in the training scripts;
    returns the step (forward_loss(encoder, head) -> loss, backward, Adam), the encoder and the head."""
    encoder = backbone.load_encoder(args.backbone).to(device).train()
    head = nn.Linear(encoder.hidden_size, head_size).to(device).train()
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=STEP_LR)

    def step():
        loss = forward_loss(encoder, head)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step, encoder, head


def eval_inputs(encoder, n_clips, n_classes, args, generator):
    """n_clips random waves of the crop length (one chunk each) with labels cycling over the classes,
    collated into evaluation batches as backbone.batches_in_memory keeps them: (batches, labels)."""
    samples = int(args.crop_seconds * encoder.sample_rate)
    labels = torch.arange(n_clips) % n_classes
    collate = data.CollateEval(encoder.preprocess)
    batches = [collate([([0.1 * torch.randn(samples, generator=generator).numpy()], labels[i], i)
                        for i in range(begin, min(begin + args.eval_batch_size, n_clips))])
               for begin in range(0, n_clips, args.eval_batch_size)]
    return batches, labels


def valid_metrics(arms, args, device, generator):
    """{arm: the valid metric's call} for one epoch: PairTune's --select-by, FineTune's classifier."""
    pairtune_encoder, finetune_encoder, finetune_head = arms
    per_class = min(args.centroid_clips_per_class, max(1, args.train_clips // args.classes))
    valid, valid_y = eval_inputs(pairtune_encoder, args.valid_clips, args.classes, args, generator)
    subset, subset_y = eval_inputs(pairtune_encoder, per_class * args.classes, args.classes, args, generator)
    centroids = torch.randn(args.classes, pairtune_encoder.hidden_size, generator=generator)  # the pass's, in use

    def encode(encoder, batches, n):
        return backbone.extract_features(encoder, [None] * n, None, args.crop_seconds, device, desc="bench",
                                         batches=batches)[0]

    def pairtune_metric():
        valid_x = F.normalize(encode(pairtune_encoder, valid, args.valid_clips), dim=1)
        if args.select_by == "epoch-centroid":
            return (valid_x @ F.normalize(centroids, dim=1).T).argmax(1)
        train_x = encode(pairtune_encoder, subset, len(subset_y))
        if args.select_by == "centroid":
            sums = torch.zeros(args.classes, train_x.shape[1]).index_add_(0, subset_y, F.normalize(train_x, dim=1))
            return (valid_x @ F.normalize(sums, dim=1).T).argmax(1)
        if args.select_by == "knn":
            return probes.knn_predict(train_x, subset_y, valid_x, args.knn_k, args.classes)
        mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
        with torch.random.fork_rng(devices=[]):
            return probes.train_linear((train_x - mean) / std, subset_y, (valid_x - mean) / std, valid_y,
                                       args.classes, LINEAR_PROBE["lr"], LINEAR_PROBE["batch"],
                                       LINEAR_PROBE["epochs"], LINEAR_PROBE["seed"])[1]

    def finetune_metric():
        with torch.no_grad():
            return finetune_head(encode(finetune_encoder, valid, args.valid_clips).to(device)).argmax(1)
    return {"pairtune": pairtune_metric, "finetune": finetune_metric}


def epochs_table(step_ms, metrics, n_classes_per_batch, args, device):
    """The per-epoch rows: training pass, valid metric and epoch seconds of each arm, and their ratio."""
    metric_ms = median_ms(metrics, device, 1, args.rounds)
    per_class = args.clips_per_class
    # PairTune's sampler: about one pass, at least every class once (data.ClassBalancedBatchSampler);
    # FineTune's: ceil(N / B)
    classes_per_batch = min(n_classes_per_batch, args.classes)
    batches = {"pairtune": max(math.ceil(args.train_clips / (classes_per_batch * per_class)),
                               math.ceil(args.classes / classes_per_batch)),
               "finetune": math.ceil(args.train_clips / (n_classes_per_batch * per_class))}
    names = {"pairtune": args.select_by, "finetune": "classifier"}
    print(f"\nper epoch: {args.train_clips} train clips, {args.valid_clips} valid clips, {args.classes} classes")
    header = f"{'epoch':>8} {'batches':>8} {'train s':>9} {'metric s':>9} {'epoch s':>9}  valid metric"
    print(header)
    print("-" * len(header))
    epoch_s = {}
    for arm in ("pairtune", "finetune"):
        train_s, valid_s = batches[arm] * step_ms[arm] / 1e3, metric_ms[arm] / 1e3
        epoch_s[arm] = train_s + valid_s
        print(f"{arm:>8} {batches[arm]:>8} {train_s:>9.3f} {valid_s:>9.3f} {epoch_s[arm]:>9.3f}  {names[arm]}")
    print(f"epoch pairtune/finetune {epoch_s['pairtune'] / epoch_s['finetune']:.3f}")


def bench_steps(args, device):
    torch.manual_seed(args.seed)  # the heads' initialisation
    generator = torch.Generator().manual_seed(args.seed)
    encoder = backbone.load_encoder(args.backbone)  # only for the preprocessor and the printout
    inputs, labels, n_classes = step_batch(encoder, args, device, generator)
    batch = len(labels)
    loss_fn = losses.fused_supcon_loss if args.loss == "fused" else losses.supcon_loss

    class_sums = None

    def pairtune_loss(encoder, head):
        nonlocal class_sums
        with backbone.autocast(device):
            pooled = encoder(inputs)  # [B, d]
        r = F.normalize(pooled.float(), dim=1)
        if class_sums is None:
            class_sums = torch.zeros(n_classes, r.shape[1] + 1, device=device)
        # pairtune.py's EpochCentroids.add: the epoch-centroid metric's share of the step
        class_sums.index_add_(0, labels, torch.cat([r.detach(), torch.ones_like(r[:, :1])], dim=1))
        z = F.normalize(head(r), dim=1)  # [B, p]
        return loss_fn(z, labels, mining=args.mining)

    def finetune_loss(encoder, head):
        with backbone.autocast(device):
            logits = head(encoder(inputs))  # [B, classes]
        return F.cross_entropy(logits.float(), labels)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; backbone {encoder.name} "
          f"({sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M parameters); B = {batch} "
          f"({n_classes} classes x {args.clips_per_class}), crop {args.crop_seconds:g} s; "
          f"loss {args.loss}, mining {args.mining}; median of {args.rounds} x {args.repeats}")
    del encoder

    if args.loss == "fused":  # the one compile, timed apart (the training scripts do it at start-up)
        z, y = make_inputs(batch, args.dim, device, generator)
        synchronize(device)
        start = time.perf_counter()
        loss_step(lambda z, y: losses.fused_supcon_loss(z, y, mining=args.mining), z, y)
        synchronize(device)
        print(f"fused: first call (compile) {time.perf_counter() - start:.1f} s")

    pairtune_step, pairtune_encoder, _ = training_step(args.dim, args, device, pairtune_loss)
    finetune_step, finetune_encoder, finetune_head = training_step(n_classes, args, device, finetune_loss)
    steps = {"pairtune": pairtune_step, "finetune": finetune_step}
    times = median_ms(steps, device, args.repeats, args.rounds)
    header = f"{'step':>8} {'ms/step':>10} {'clips/s':>9}"
    print(header)
    print("-" * len(header))
    for arm, ms in times.items():
        print(f"{arm:>8} {ms:>10.2f} {batch / ms * 1e3:>9.1f}")
    print(f"pairtune/finetune {times['pairtune'] / times['finetune']:.3f}")
    metrics = valid_metrics((pairtune_encoder, finetune_encoder, finetune_head), args, device, generator)
    epochs_table(times, metrics, n_classes, args, device)


# ----------------------------------------------------------------------------------------------
# Main: the loss benchmark (the default), or --steps
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if args.steps:
        return bench_steps(args, device)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = build_methods(args, device)
    generator = torch.Generator().manual_seed(args.seed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    labels_text = (f"; multi-label {args.multilabel_loss}, {args.multilabel_classes} classes, "
                   f"1-{args.max_labels} labels a clip" if args.multilabel else "")
    print(f"device: {name}; torch {torch.__version__}; d = {args.dim}; mining = {args.mining}{labels_text}; "
          f"median of {args.rounds} x {args.repeats}")

    def inputs(batch):
        if args.multilabel:
            return make_multilabel_inputs(batch, args.dim, device, generator, args.multilabel_classes,
                                          args.max_labels)
        return make_inputs(batch, args.dim, device, generator)

    def single(z, y):  # --multilabel: the single-label fused step, on make_inputs' labels
        return losses.fused_supcon_loss(z, y, mining=args.mining)
    with_single = args.multilabel and "fused" in methods
    first_calls = {}
    if "fused" in methods:
        first_calls["fused"] = (methods["fused"], *inputs(sizes[0]))
    if with_single:
        first_calls["single"] = (single, *make_inputs(sizes[0], args.dim, device, generator))
    for method, (fn, z, y) in first_calls.items():  # the compiles, timed apart: later calls of any B reuse them
        synchronize(device)
        start = time.perf_counter()
        loss_step(fn, z, y)
        synchronize(device)
        first = time.perf_counter() - start
        print(f"{method}: first call (compile) {first:.1f} s")

    header = f"{'B':>6} {'method':>6} {'fwd+bwd ms':>11} {'x floor':>8} {'x fused':>8} {'peak MiB':>9} {'B x B':>6}"
    print(header)
    print("-" * len(header))
    for batch in sizes:
        z, y = inputs(batch)
        dense_grad = torch.randn(batch, batch, generator=generator).to(device)

        def floor_step():
            similarity = z @ z.T
            return similarity, dense_grad @ z

        steps = {m: (lambda fn=fn: loss_step(fn, z, y)) for m, fn in methods.items() if m != "floor"}
        if "floor" in args.methods.split(","):
            steps["floor"] = floor_step
        if with_single:
            _, single_labels = make_inputs(batch, args.dim, device, generator)
            steps["single"] = lambda: loss_step(single, z, single_labels)
        times = median_ms(steps, device, args.repeats, args.rounds)
        peaks = {m: peak_extra_bytes(step, device) for m, step in steps.items()}
        matrix = batch * batch * 4
        for m in steps:
            ratio_floor = f"{times[m] / times['floor']:.2f}" if "floor" in times else "-"
            ratio_fused = f"{times[m] / times['fused']:.2f}" if "fused" in times else "-"
            peak = peaks[m]
            peak_text = f"{peak / 2**20:9.1f} {peak / matrix:6.2f}" if peak is not None else f"{'-':>9} {'-':>6}"
            print(f"{batch:>6} {m:>6} {times[m]:>11.2f} {ratio_floor:>8} {ratio_fused:>8} {peak_text}")
        if with_single:
            print(f"B = {batch}: multi-label fused / single-label fused {times['fused'] / times['single']:.2f}")
        print()


if __name__ == "__main__":
    main()
