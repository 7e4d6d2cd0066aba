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
"""
import argparse
import ctypes
import statistics
import time

import torch

import losses


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
    p.add_argument("--seed", type=int, default=0, help="random seed of the embeddings and labels")
    return p.parse_args(argv)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(batch, dim, device, generator):
    """Unit-norm embeddings and labels with batch/8 classes of 8, shuffled (as P x K batches)."""
    z = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    n_classes = max(1, batch // 8)
    labels = (torch.arange(batch) % n_classes)[torch.randperm(batch, generator=generator)].to(device)
    return z, labels


def loss_step(loss_fn, z, labels):
    """One forward + backward, as a training step runs it."""
    leaf = z.detach().requires_grad_()
    loss_fn(leaf, labels).backward()
    return leaf.grad


def build_methods(args, device):
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


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = build_methods(args, device)
    generator = torch.Generator().manual_seed(args.seed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; d = {args.dim}; mining = {args.mining}; "
          f"median of {args.rounds} x {args.repeats}")

    if "fused" in methods:  # the one compile, timed apart: later calls of any B reuse it
        z, y = make_inputs(sizes[0], args.dim, device, generator)
        synchronize(device)
        start = time.perf_counter()
        loss_step(methods["fused"], z, y)
        synchronize(device)
        first = time.perf_counter() - start
        print(f"fused: first call (compile) {first:.1f} s")

    header = f"{'B':>6} {'method':>6} {'fwd+bwd ms':>11} {'x floor':>8} {'x fused':>8} {'peak MiB':>9} {'B x B':>6}"
    print(header)
    print("-" * len(header))
    for batch in sizes:
        z, y = make_inputs(batch, args.dim, device, generator)
        dense_grad = torch.randn(batch, batch, generator=generator).to(device)

        def floor_step():
            similarity = z @ z.T
            return similarity, dense_grad @ z

        steps = {m: (lambda fn=fn: loss_step(fn, z, y)) for m, fn in methods.items() if m != "floor"}
        if "floor" in args.methods.split(","):
            steps["floor"] = floor_step
        times = median_ms(steps, device, args.repeats, args.rounds)
        peaks = {m: peak_extra_bytes(step, device) for m, step in steps.items()}
        matrix = batch * batch * 4
        for m in steps:
            ratio_floor = f"{times[m] / times['floor']:.2f}" if "floor" in times else "-"
            ratio_fused = f"{times[m] / times['fused']:.2f}" if "fused" in times else "-"
            peak = peaks[m]
            peak_text = f"{peak / 2**20:9.1f} {peak / matrix:6.2f}" if peak is not None else f"{'-':>9} {'-':>6}"
            print(f"{batch:>6} {m:>6} {times[m]:>11.2f} {ratio_floor:>8} {ratio_fused:>8} {peak_text}")
        print()


if __name__ == "__main__":
    main()
