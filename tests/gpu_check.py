"""The GPU check: the CUDA-only branches that CI (no GPU) cannot reach, run unattended in one go and
written up as one markdown table, for a maintainer with a GPU at hand.

    bash tests/gpu_check.sh                        # gpu-check/gpu_check.md (also printed), about 5 min
    bash tests/gpu_check.sh --out /tmp/gpu-check
    bash tests/gpu_check.sh --smoke-on-cpu         # the same commands on CPU at tiny sizes (what CI runs)

The checks, each row a status (ok, FAILED: why, skipped: why) and what was measured:
  1. fused_supcon_loss against supcon_loss on CUDA, every mining mode: the loss and its gradient in
     float32 (to 1e-5 relative) and from bf16 inputs (2e-2); and no recompile when the batch size
     or the number of classes changes (Dynamo's graph count, as tests/test_fused_loss.py counts it);
     fused_multilabel_supcon_loss against multilabel_supcon_loss (jaccard and mulsupcon, every mining
     mode, float32 to 1e-5): on CUDA the jaccard label counts come from a bfloat16 GEMM
  2. bench.py --device cuda --sizes 4096,8192, its table copied into the report
  3. pairtune.py -> probe.py and finetune.py (-> predict.py over its test files on the device, which
     must give the run's test accuracy), 1 epoch on the demo data, --precision bf16, with a
     wav2vec2-base-sized encoder (Wav2Vec2Config() defaults, ~95M parameters) with RANDOM weights,
     built here and saved to a folder (no download): clips/s and peak memory from log.jsonl, test
     accuracy from results.json (chance level: the weights are random; the numbers that matter
     are the run's speed and memory)
  4. DDP: torchrun over every visible GPU (NCCL), both arms, 1 epoch; rank 0 must have written the
     run (run.json finished, encoder/). With one GPU the runs use one process and the NCCL row is
     skipped
  5. peak memory and clips/s of one epoch at batch 64: plain, --grad-checkpointing and --micro-batch
     16 (GradCache in PairTune, accumulation in FineTune); a variant that does not lower the peak
     FAILS

Every command runs in its own subprocess with a timeout (its whole process group is killed when it
runs over), so one failing or hanging check never stops the others; the exit status is 1 if any
row FAILED. Each command's output is kept in OUT/logs/; the runs themselves go to a temporary
folder that is removed at the end (--keep-work keeps them in OUT/work/).

Without CUDA the script says so in one line, writes the report with every row "skipped: no CUDA"
and exits 0. --smoke-on-cpu runs every command on CPU with tiny sizes (the tiny wav2vec2 saved to
a folder instead of the base-sized one, a 80-clip subset of the demo data, bench.py at B = 256,
512, DDP over 2 gloo processes), so CI proves that the commands run and that their output parses.
Its numbers measure nothing, and peak memory, a CUDA figure, shows "-".
"""
import argparse
import csv
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from losses import MINING_MODES  # noqa: E402  (after the repository is on the path)

RESULT = "GPU_CHECK_RESULT "  # prefix of the JSON line a worker subprocess prints for the parent
FP32_TOLERANCE, BF16_TOLERANCE = 1e-5, 2e-2  # as tests/test_fused_loss.py
TIMEOUT_S = 300  # per command: far above what one takes, so only a hang reaches it
DEMO_CLASSES = 10  # prepare.py demo: 10 classes of 24 train, 8 valid and 8 test clips


# ----------------------------------------------------------------------------------------------
# The report: rows, one markdown table, the exit status
# ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    check: str
    status: str = "ok"  # "ok", "FAILED: why" or "skipped: why"
    clips_per_s: float | None = None
    peak_mb: float | None = None
    test_acc: float | None = None
    details: str = ""
    seconds: float | None = None

    def fail(self, problems: list[str]):
        if problems:
            self.status = "FAILED: " + "; ".join(problems)
        return self


COLUMNS = ("check", "status", "clips/s", "peak MiB", "test acc", "s", "details")


def cell(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")  # a pipe would end the cell


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        cells = [cell(row.check), cell(row.status), cell(row.clips_per_s), cell(row.peak_mb, 0),
                 cell(row.test_acc, 4), cell(row.seconds, 0), cell(row.details)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def exit_status(rows: list[Row]) -> int:
    return 1 if any(row.status.startswith("FAILED") for row in rows) else 0


def report(rows: list[Row], heading: list[str], bench_output: str | None) -> str:
    text = "# GPU check\n\n" + "\n".join(heading) + "\n\n" + markdown_table(rows) + "\n"
    if bench_output:
        text += f"\n## bench.py's table\n\n```text\n{bench_output.rstrip()}\n```\n"
    return text


# ----------------------------------------------------------------------------------------------
# Running one command: its own process group, a timeout, its output kept in OUT/logs/
# ----------------------------------------------------------------------------------------------

@dataclass
class Result:
    rc: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    log: Path

    def problem(self) -> str | None:
        """Why the command failed, in a few words (the whole output is in the log), or None."""
        if self.rc is None:
            return f"timed out after {self.seconds:.0f} s (see {self.log.name})"
        if self.rc != 0:
            last = [line for line in self.stderr.splitlines() if line.strip()] or ["no output on stderr"]
            return f"rc {self.rc}: {last[-1].strip()[:200]} (see {self.log.name})"
        return None


RUNNING: set[subprocess.Popen] = set()  # the commands running now, killed if the check is interrupted
STOPPING = threading.Event()  # set on Ctrl-C: no new command starts
LOCK = threading.Lock()  # so that no command starts between the kill and the set


def run_command(command: list[str], log: Path, env: dict, timeout: float = TIMEOUT_S) -> Result:
    started = time.time()
    # A session of its own, so a timeout kills torchrun's workers and DataLoader workers too; killing
    # only the direct child would leave them holding the pipes (and the GPU).
    with LOCK:
        if STOPPING.is_set():
            raise KeyboardInterrupt  # not an Exception: it ends the task instead of failing a row
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        RUNNING.add(process)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        rc = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        rc = None
    finally:
        RUNNING.discard(process)
    seconds = time.time() - started
    log.write_text(f"$ {shlex.join(command)}\n# rc {rc}, {seconds:.1f} s\n\n{stdout}\n--- stderr ---\n{stderr}")
    return Result(rc, stdout, stderr, seconds, log)


def worker_result(result: Result) -> dict | None:
    """The JSON a worker subprocess (--worker) printed last, if it got that far."""
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT):]) if lines else None


# ----------------------------------------------------------------------------------------------
# Workers: what runs inside a subprocess of this script (--worker NAME)
# ----------------------------------------------------------------------------------------------

FUSED_SIZES = {  # (batch, classes): compiled at, then new sizes that must reuse it, then compared at
    "cuda": ((1000, 125), [(4096, 512), (777, 97), (96, 30), (20, 2)], [(4096, 512), (1000, 125), (333, 40)]),
    "cpu": ((48, 6), [(37, 6), (96, 30), (20, 2)], [(64, 8), (37, 5)]),
}
FUSED_DIM = 256  # the projection head's size


def fused_worker(device_name: str) -> dict:
    import torch
    import torch.nn.functional as F
    from torch._dynamo.utils import counters

    from losses import MULTILABEL_KINDS, fused_multilabel_supcon_loss, fused_supcon_loss, multilabel_supcon_loss
    from losses import supcon_loss

    device = torch.device(device_name)
    # pairtune.py trains with TF32 GEMMs; this compares the two losses' arithmetic, so exact float32.
    torch.set_float32_matmul_precision("highest")
    warm, new_sizes, compare_sizes = FUSED_SIZES[device.type]
    generator = torch.Generator().manual_seed(0)

    def batch(n, n_classes):
        z = F.normalize(torch.randn(n, FUSED_DIM, generator=generator, dtype=torch.float64), dim=1)
        return z.float().to(device), torch.randint(0, n_classes, (n,), generator=generator).to(device)

    def loss_and_grad(loss_fn, z, labels, mining):
        leaf = z.detach().clone().requires_grad_()
        loss = loss_fn(leaf, labels, mining=mining)
        (grad,) = torch.autograd.grad(loss, leaf)
        return loss.detach(), grad

    def relative_error(got, want):
        got, want = got.double(), want.double()
        return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()

    # One graph for every batch size: compiled at the first size, then none new (error_on_recompile
    # raises rather than letting Dynamo fall back to eager quietly).
    graphs = counters["stats"]["unique_graphs"]
    for mining in MINING_MODES:
        loss_and_grad(fused_supcon_loss, *batch(*warm), mining)
    compiled = counters["stats"]["unique_graphs"] - graphs
    recompile_errors = []
    for mining in MINING_MODES:
        try:
            with torch._dynamo.config.patch(error_on_recompile=True):
                for n, n_classes in new_sizes:
                    loss_and_grad(fused_supcon_loss, *batch(n, n_classes), mining)
        except Exception as error:  # a RecompileError, or whatever else the compiled path raised
            recompile_errors.append(f"{mining}: {type(error).__name__}: {str(error).strip()[:200]}")
    new_graphs = counters["stats"]["unique_graphs"] - graphs - compiled

    modes = {}
    for mining in MINING_MODES:
        errors = {"fp32 loss": 0.0, "fp32 grad": 0.0, "bf16 loss": 0.0, "bf16 grad": 0.0}
        finite, nontrivial = True, True
        for n, n_classes in compare_sizes:
            z, labels = batch(n, n_classes)
            for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                want = loss_and_grad(supcon_loss, z.to(dtype), labels, mining)
                got = loss_and_grad(fused_supcon_loss, z.to(dtype), labels, mining)
                errors[f"{name} loss"] = max(errors[f"{name} loss"], relative_error(got[0], want[0]))
                errors[f"{name} grad"] = max(errors[f"{name} grad"], relative_error(got[1], want[1]))
                finite &= bool(torch.isfinite(got[0]) and torch.isfinite(got[1]).all())
                nontrivial &= bool(want[0] > 0 and want[1].abs().max() > 0)  # not a comparison of zeros
        modes[mining] = {"errors": errors, "finite": finite, "nontrivial": nontrivial}
    multilabel = {}
    for kind in MULTILABEL_KINDS:  # multi-hot targets, 1-6 labels a clip out of the size's classes
        errors, finite, nontrivial = {"loss": 0.0, "grad": 0.0}, True, True
        for n, n_classes in compare_sizes:
            z, _ = batch(n, n_classes)
            scores = torch.rand(n, n_classes, generator=generator)
            labels_per_clip = torch.randint(1, 7, (n, 1), generator=generator).clamp(max=n_classes)
            targets = (scores.argsort(1).argsort(1) < labels_per_clip).float().to(device)
            for mining in MINING_MODES:
                want = loss_and_grad(lambda *a, **k: multilabel_supcon_loss(*a, **k, kind=kind), z, targets, mining)
                got = loss_and_grad(lambda *a, **k: fused_multilabel_supcon_loss(*a, **k, kind=kind), z, targets,
                                    mining)
                errors["loss"] = max(errors["loss"], relative_error(got[0], want[0]))
                errors["grad"] = max(errors["grad"], relative_error(got[1], want[1]))
                finite &= bool(torch.isfinite(got[0]) and torch.isfinite(got[1]).all())
                nontrivial &= bool(want[0] > 0 and want[1].abs().max() > 0)
        multilabel[kind] = {"errors": errors, "finite": finite, "nontrivial": nontrivial}
    z = batch(*compare_sizes[0])[0]
    similarity = z @ z.T  # the fused backward reads S[i, a] for S[a, i] (see fused_supcon_loss)
    return {"compiled": compiled, "new_graphs": new_graphs, "recompile_errors": recompile_errors,
            "modes": modes, "multilabel": multilabel, "symmetric_gemm": bool((similarity == similarity.T).all())}


def backbone_worker(folder: str, smoke: bool) -> dict:
    """A randomly initialised encoder saved as a pre-trained one would be, for --backbone FOLDER."""
    import torch
    import transformers

    import backbone
    if smoke:
        model, extractor = backbone.tiny_wav2vec2()
        what = "tiny wav2vec2 (backbone.tiny_wav2vec2), random weights"
    else:  # Wav2Vec2Config()'s defaults are wav2vec2-base's architecture; the extractor's, base's settings
        torch.manual_seed(0)
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config())
        extractor = transformers.Wav2Vec2FeatureExtractor()
        what = "wav2vec2-base size (Wav2Vec2Config() defaults), RANDOM WEIGHTS"
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return {"what": what, "parameters": sum(p.numel() for p in model.parameters())}


def smoke_manifest(manifest: Path) -> Path:
    """The demo manifest cut to 4 train, 2 valid and 2 test clips per class, beside it."""
    keep, seen, rows = {"train": 4, "valid": 2, "test": 2}, {}, []
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            key = (row["split"], row["label"])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= keep[row["split"]]:
                rows.append(row)
        fields = reader.fieldnames
    small = manifest.with_name("demo-smoke.csv")  # paths in it are relative to this folder, as in the manifest
    with open(small, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return small


# ----------------------------------------------------------------------------------------------
# The checks: each a task of one or more rows
# ----------------------------------------------------------------------------------------------

# The rows' titles, the same whatever runs (a report without CUDA lists them all as skipped)
FUSED_TITLES = ([f"fused loss = eager, mining {m}" for m in MINING_MODES]
                + ["fused loss: one graph for all batch sizes"]
                + [f"fused multi-label loss = eager, {kind}" for kind in ("jaccard", "mulsupcon")])
PIPELINE_TITLES = ["pairtune.py, 1 epoch", "probe.py of that run", "finetune.py, 1 epoch",
                   "predict.py of that run, its test files"]
DDP_TITLES = ["torchrun pairtune.py", "torchrun finetune.py", "DDP: one process group (NCCL; gloo on CPU)"]
MEMORY_VARIANTS = ("plain", "--grad-checkpointing", "--micro-batch")


@dataclass
class Sizes:
    """What the runs are given, on CUDA and in the CPU smoke run."""
    train: list[str]  # every pairtune.py / finetune.py run
    batch: int  # the pipeline runs'
    memory_batch: int
    memory_clips_per_class: int  # PairTune: P x K = memory_batch with P <= the demo's 10 classes
    micro_batch: int
    probe: list[str]
    bench: list[str]


CUDA_SIZES = Sizes(train=["--max-seconds", "4"], batch=32, memory_batch=64, memory_clips_per_class=8,
                   micro_batch=16, probe=[], bench=["--sizes", "4096,8192"])
SMOKE_SIZES = Sizes(train=["--max-seconds", "1"], batch=16, memory_batch=16,
                    memory_clips_per_class=4, micro_batch=4,
                    probe=["--lrs", "1e-2", "--batch-sizes", "32", "--epochs", "5"],
                    bench=["--sizes", "256,512", "--repeats", "1", "--rounds", "1"])


@dataclass
class Setup:
    smoke: bool
    device: str  # "cuda" or "cpu"
    gpus: int
    work: Path
    logs: Path
    env: dict
    sizes: Sizes
    manifest: Path | None = None  # set by the data task
    backbone: Path | None = None  # set by the backbone task
    bench_output: str | None = None

    def python(self, script: str, *args) -> list[str]:
        return [sys.executable, str(ROOT / script), *map(str, args)]

    def run(self, name: str, command: list[str]) -> Result:
        return run_command(command, self.logs / f"{name}.txt", self.env)

    def train(self, script: str, out: Path, *args) -> list[str]:
        # --overwrite: a rerun with --keep-work replaces the runs of the last one
        return self.python(script, "--dataset", self.manifest, "--backbone", self.backbone, "--epochs", 1,
                           "--precision", "bf16", "--device", self.device, "--out", out, "--overwrite",
                           *self.sizes.train, *args)


def task_data(setup: Setup) -> list[Row]:
    folder = setup.work / "demo"
    result = setup.run("prepare-demo", setup.python("prepare.py", "demo", "--out", folder))
    row = Row("setup: demo data (prepare.py demo)", seconds=result.seconds)
    if result.problem():
        return [row.fail([result.problem()])]
    setup.manifest = folder / "manifest.csv"
    row.details = "400 clips, 10 classes"
    if setup.smoke:
        setup.manifest = smoke_manifest(setup.manifest)
        row.details = "cut to 40 train, 20 valid, 20 test clips (smoke)"
    return [row]


def task_backbone(setup: Setup) -> list[Row]:
    folder = setup.work / ("wav2vec2-tiny-random" if setup.smoke else "wav2vec2-base-random")
    result = setup.run("backbone", worker_command("backbone", str(folder), *(["--smoke-on-cpu"] * setup.smoke)))
    row = Row("setup: random-weight encoder saved to a folder", seconds=result.seconds)
    built = worker_result(result)
    if result.problem() or built is None:
        return [row.fail([result.problem() or "the worker printed no result"])]
    setup.backbone = folder
    row.details = f"{built['what']}, {built['parameters'] / 1e6:.2f}M parameters"
    return [row]


def worker_command(name: str, *args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, *args]


def task_fused(setup: Setup) -> list[Row]:
    result = setup.run("fused-loss", worker_command("fused", setup.device))
    rows = [Row(title) for title in FUSED_TITLES]
    found = worker_result(result)
    if result.problem() or found is None:
        return [row.fail([result.problem() or "the worker printed no result"]) for row in rows]
    warm, new_sizes, compare_sizes = FUSED_SIZES[setup.device]
    for row, kind in zip(rows[len(MINING_MODES) + 1:], ("jaccard", "mulsupcon")):
        mode = found["multilabel"][kind]
        row.details = (f"max relative error over every mining mode, fp32: loss {mode['errors']['loss']:.1e}, grad "
                       f"{mode['errors']['grad']:.1e} (B = {', '.join(str(n) for n, _ in compare_sizes)}, 1-6 labels a "
                       "clip)")
        row.fail([f"{name} off by {error:.1e}" for name, error in mode["errors"].items() if error > FP32_TOLERANCE]
                 + ([] if mode["finite"] else ["non-finite loss or gradient"])
                 + ([] if mode["nontrivial"] else ["the eager loss or gradient was 0: nothing was compared"]))
    for row, mining in zip(rows, MINING_MODES):
        mode = found["modes"][mining]
        errors = mode["errors"]
        row.details = (f"max relative error, fp32: loss {errors['fp32 loss']:.1e}, grad {errors['fp32 grad']:.1e}; "
                       f"bf16 inputs: loss {errors['bf16 loss']:.1e}, grad {errors['bf16 grad']:.1e} "
                       f"(B = {', '.join(str(n) for n, _ in compare_sizes)}, d = {FUSED_DIM})")
        problems = [f"{name} off by {error:.1e}" for name, error in errors.items()
                    if error > (FP32_TOLERANCE if name.startswith("fp32") else BF16_TOLERANCE)]
        problems += [] if mode["finite"] else ["non-finite loss or gradient"]
        problems += [] if mode["nontrivial"] else ["the eager loss or gradient was 0: nothing was compared"]
        row.fail(problems)
    graphs = rows[len(MINING_MODES)]
    graphs.details = (f"{found['compiled']} graph(s) compiled at B = {warm[0]} ({len(MINING_MODES)} mining modes), "
                      f"{found['new_graphs']} more at B = {', '.join(str(n) for n, _ in new_sizes)}; "
                      f"S = Z Z^T bit-symmetric: {'yes' if found['symmetric_gemm'] else 'no'}")
    graphs.fail(found["recompile_errors"] + ([f"{found['new_graphs']} new graph(s)"] if found["new_graphs"] else [])
                + ([] if found["compiled"] else ["nothing was compiled: the fused path did not run"]))
    for row in rows:
        row.seconds = result.seconds
    return rows


BENCH_LINE = re.compile(r"^\s*(\d+)\s+(eager|fused|pml|floor)\s+([\d.]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def parse_bench(stdout: str) -> dict:
    """bench.py's table: {(B, method): {"ms", "x_floor", "x_fused", "peak_mib", "peak_bxb"}}."""
    table = {}
    for line in stdout.splitlines():
        match = BENCH_LINE.match(line)
        if match:
            values = [None if v == "-" else float(v) for v in match.groups()[2:]]
            table[int(match[1]), match[2]] = dict(zip(("ms", "x_floor", "x_fused", "peak_mib", "peak_bxb"), values))
    return table


def task_bench(setup: Setup) -> list[Row]:
    result = setup.run("bench", setup.python("bench.py", "--device", setup.device, *setup.sizes.bench))
    row = Row("bench.py: the fused loss's time and memory", seconds=result.seconds)
    if result.problem():
        return [row.fail([result.problem()])]
    setup.bench_output = result.stdout
    table = parse_bench(result.stdout)
    sizes = [int(b) for b in setup.sizes.bench[1].split(",")]
    missing = [f"B {b} {m}" for b in sizes for m in ("eager", "fused", "floor") if (b, m) not in table]
    if setup.device == "cuda":
        missing += [f"B {b} {m} peak" for b in sizes for m in ("eager", "fused") if table.get((b, m), {}).get(
            "peak_mib") is None]
    compile_line = re.search(r"first call \(compile\) ([\d.]+) s", result.stdout)
    parts = [f"compile {compile_line[1]} s" if compile_line else "no compile line"]
    for b in sizes if not missing else []:  # (each row has its ratios when eager, fused and floor ran)
        fused, eager = table[b, "fused"], table[b, "eager"]
        peak = f", peak {fused['peak_bxb']:.2f} B x B (eager {eager['peak_bxb']:.2f})" if fused["peak_bxb"] else ""
        parts.append(f"B {b}: fused {fused['ms']:.2f} ms = {fused['x_floor']:.2f}x floor, "
                     f"eager {eager['x_fused']:.2f}x fused{peak}")
    row.details = "; ".join(parts) + " (table below)"
    return [row.fail([f"not in its table: {', '.join(missing)}"] if missing else [])]


def read_run(out: Path, setup: Setup, results: Path | None = None, row: Row | None = None) -> Row:
    """The checks every training run gets: finished, its encoder saved, one epoch logged with its
    throughput (and on CUDA its peak memory), and a test accuracy where results are expected."""
    row, problems = row or Row(""), []
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    if not run.get("finished"):
        problems.append("run.json missing or not finished")
    elif run["args"].get("precision") != "bf16":
        problems.append(f"ran in {run['args'].get('precision')}, not bf16")
    if not (out / "encoder").is_dir():
        problems.append("no encoder/")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] if (
        out / "log.jsonl").is_file() else []
    if [line["epoch"] for line in log] != [1]:
        problems.append(f"log.jsonl epochs {[line['epoch'] for line in log]}, not [1]")
    else:
        row.clips_per_s, row.peak_mb = log[0].get("clips_per_s"), log[0].get("peak_memory_mb")
        if not row.clips_per_s or row.clips_per_s <= 0:
            problems.append("no clips_per_s in log.jsonl")
        if setup.device == "cuda" and not row.peak_mb:
            problems.append("no peak_memory_mb in log.jsonl")
    if results is not None:
        row.test_acc = json.loads(results.read_text()).get("test_acc") if results.is_file() else None
        if row.test_acc is None or not 0 <= row.test_acc <= 1:
            problems.append(f"no test_acc in {results.relative_to(out)}")
    return row.fail(problems)


def run_row(setup: Setup, title: str, name: str, command: list[str], out: Path, results=None, shown="") -> Row:
    """One training run's row; `shown`: its own flags, beyond the ones every run gets (in the heading)."""
    result = setup.run(name, command)
    row = Row(title, seconds=result.seconds, details=shown)
    if result.problem():
        return row.fail([result.problem()])
    return read_run(out, setup, results, row)


def task_pairtune_probe(setup: Setup) -> list[Row]:
    out = setup.work / "pipeline" / "pairtune"
    pairtune = run_row(setup, PIPELINE_TITLES[0], "pipeline-pairtune",
                       setup.train("pairtune.py", out, "--batch-size", setup.sizes.batch), out,
                       shown=f"--batch-size {setup.sizes.batch}")
    if pairtune.status != "ok":
        return [pairtune, Row(PIPELINE_TITLES[1], status="skipped: pairtune.py failed")]
    result = setup.run("pipeline-probe", setup.python("probe.py", "--ckpt", out, "--device", setup.device,
                                                      *setup.sizes.probe))
    probe = Row(PIPELINE_TITLES[1], seconds=result.seconds, details=shlex.join(setup.sizes.probe) or "its default grid")
    results = out / "probe" / "results.json"
    probe.test_acc = json.loads(results.read_text()).get("test_acc") if results.is_file() else None
    probe.fail([result.problem()] if result.problem() else [] if probe.test_acc is not None
               else ["no test_acc in probe/results.json"])
    return [pairtune, probe]


def task_finetune(setup: Setup) -> list[Row]:
    out = setup.work / "pipeline" / "finetune"
    finetune = run_row(setup, PIPELINE_TITLES[2], "pipeline-finetune",
                       setup.train("finetune.py", out, "--batch-size", setup.sizes.batch), out, out / "results.json",
                       shown=f"--batch-size {setup.sizes.batch}")
    if finetune.status != "ok":
        return [finetune, Row(PIPELINE_TITLES[3], status="skipped: finetune.py failed")]
    return [finetune, predict_row(setup, out)]


def predict_row(setup: Setup, run: Path) -> Row:
    """predict.py on the device over the run's test files: at the run's precision (bf16) and batching
    it must give the run's own test accuracy."""
    with open(setup.manifest, newline="") as f:
        truth = {str(setup.manifest.parent / row["path"]): row["label"] for row in csv.DictReader(f)
                 if row["split"] == "test"}
    result = setup.run("pipeline-predict", setup.python("predict.py", run, *truth, "--json", "--device", setup.device))
    row = Row(PIPELINE_TITLES[3], seconds=result.seconds, details="--json")
    if result.problem():
        return row.fail([result.problem()])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    row.test_acc = sum(line["top"][0]["label"] == truth[line["file"]] for line in lines) / max(1, len(truth))
    reported = json.loads((run / "results.json").read_text())["test_acc"]
    if len(lines) == len(truth) and abs(row.test_acc - reported) < 1e-6:
        return row
    return row.fail([f"{len(lines)} of {len(truth)} files, accuracy {row.test_acc:.4f}, the run's {reported:.4f}"])


def task_ddp(setup: Setup) -> list[Row]:
    processes = 2 if setup.smoke else setup.gpus
    # A P x K batch is shared in whole classes: P a multiple of the processes, at most the demo's 10
    pairtune_processes = min(processes, DEMO_CLASSES)
    pairtune_batch = 16 if setup.smoke else 4 * pairtune_processes * (DEMO_CLASSES // pairtune_processes)
    rows = []
    for script, n, batch in (("pairtune.py", pairtune_processes, pairtune_batch),
                             ("finetune.py", processes, setup.sizes.batch)):
        out = setup.work / "ddp" / script.removesuffix(".py")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                   *setup.train(script, out, "--batch-size", batch)[1:]]
        row = run_row(setup, DDP_TITLES[len(rows)], f"ddp-{script.removesuffix('.py')}", command, out,
                      out / "results.json" if script == "finetune.py" else None,
                      shown=f"--nproc-per-node {n} --batch-size {batch}")
        log = (setup.logs / f"ddp-{script.removesuffix('.py')}.txt").read_text()
        if n > 1 and row.status == "ok" and f", {n} processes" not in log:  # rank 0's start-up line
            row.fail([f"the run does not say it ran on {n} processes"])
        rows.append(row)
    group = Row(DDP_TITLES[2])
    backend = "gloo" if setup.smoke else "nccl"
    if processes < 2:
        group.status = "skipped: one GPU (NCCL needs two)"
    else:
        failed = [row.check for row in rows if row.status != "ok"]
        group.details = (f"{backend}: both arms over {processes} processes"
                         + (f" (PairTune {pairtune_processes})" if pairtune_processes < processes else "")
                         + ", rank 0 wrote each run")
        group.fail([f"{', '.join(failed)} failed"] if failed else [])
    return rows + [group]


def task_memory(setup: Setup, script: str, variant: str) -> list[Row]:
    out = setup.work / "memory" / f"{script.removesuffix('.py')}-{variant.strip('-')}"
    args = ["--batch-size", setup.sizes.memory_batch]
    if script == "pairtune.py":
        args += ["--clips-per-class", setup.sizes.memory_clips_per_class, "--only-best"]
    args += {"plain": [], "--grad-checkpointing": [variant], "--micro-batch": [variant, setup.sizes.micro_batch]}[
        variant]
    row = run_row(setup, memory_title(script, variant), f"memory-{out.name}", setup.train(script, out, *args), out,
                  shown=shlex.join(map(str, args)))
    shutil.rmtree(out, ignore_errors=True)  # a base-sized run's encoder is 360 MB
    return [row]


def memory_title(script: str, variant: str) -> str:
    return f"memory: {script} {variant}"


def compare_memory(rows: list[Row]):
    """Each variant's peak and speed as a share of its plain run's; on CUDA a variant must lower the peak."""
    by_title = {row.check: row for row in rows}
    for script in ("pairtune.py", "finetune.py"):
        plain = by_title[memory_title(script, "plain")]
        for variant in MEMORY_VARIANTS[1:]:
            row = by_title[memory_title(script, variant)]
            if row.status != "ok" or plain.status != "ok":
                continue
            shares = [f"{row.clips_per_s / plain.clips_per_s:.2f}x plain's clips/s"]
            if row.peak_mb and plain.peak_mb:
                shares.insert(0, f"{row.peak_mb / plain.peak_mb:.2f}x plain's peak")
                row.fail([f"peak {row.peak_mb:.0f} MiB, not below plain's {plain.peak_mb:.0f}"]
                         if row.peak_mb >= plain.peak_mb else [])
            row.details = ", ".join(shares) + "; " + row.details


@dataclass
class Task:
    titles: list[str]
    run: Callable[[Setup], list[Row]]
    is_setup: bool = False  # run before the others
    needs_setup: bool = False  # needs the demo data and the saved encoder


TASKS = [
    Task(["setup: demo data (prepare.py demo)"], task_data, is_setup=True),
    Task(["setup: random-weight encoder saved to a folder"], task_backbone, is_setup=True),
    Task(FUSED_TITLES, task_fused),
    Task(["bench.py: the fused loss's time and memory"], task_bench),
    Task(PIPELINE_TITLES[:2], task_pairtune_probe, needs_setup=True),
    Task(PIPELINE_TITLES[2:], task_finetune, needs_setup=True),
    Task(DDP_TITLES, task_ddp, needs_setup=True),
    *[Task([memory_title(script, variant)], partial(task_memory, script=script, variant=variant), needs_setup=True)
      for script in ("pairtune.py", "finetune.py") for variant in MEMORY_VARIANTS],
]


def run_task(task: Task, setup: Setup) -> list[Row]:
    """A task's rows; whatever goes wrong in it (even here, in the harness) fails its rows only."""
    started = time.time()
    try:
        if task.needs_setup and (setup.manifest is None or setup.backbone is None):
            rows = [Row(title, status="skipped: setup failed (see its row)") for title in task.titles]
        else:
            rows = task.run(setup)
            if [row.check for row in rows] != task.titles:
                raise RuntimeError(f"rows {[row.check for row in rows]} instead of {task.titles}")
    except Exception as error:
        rows = [Row(title, seconds=time.time() - started).fail([f"{type(error).__name__}: {error}"])
                for title in task.titles]
    for row in rows:
        print(f"gpu_check: {row.status[:120]}  {row.check} ({time.time() - started:.0f} s)", flush=True)
    return rows


def run_tasks(tasks: list[Task], setup: Setup, jobs: int) -> list[Row]:
    """The setup tasks first, then the others, `jobs` at a time; the rows in the tasks' order."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {id(task): pool.submit(run_task, task, setup) for task in tasks if task.is_setup}
        for future in futures.values():
            future.result()
        futures |= {id(task): pool.submit(run_task, task, setup) for task in tasks if not task.is_setup}
        return [row for task in tasks for row in futures[id(task)].result()]
    except KeyboardInterrupt:  # the commands are in sessions of their own: Ctrl-C does not reach them
        pool.shutdown(wait=False, cancel_futures=True)
        with LOCK:
            STOPPING.set()
            for process in RUNNING:
                os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        pool.shutdown()


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "gpu-check"), help="folder for gpu_check.md and logs/")
    p.add_argument("--smoke-on-cpu", action="store_true",
                   help="every check's commands on CPU at tiny sizes: proves they run and parse, measures nothing")
    p.add_argument("--jobs", type=int, default=None,
                   help="checks run at once (default 1 on CUDA, so each run's clips/s is its own; 2 for the smoke run)")
    p.add_argument("--keep-work", action="store_true", help="keep the runs and the saved encoder in OUT/work/")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # inside a check's subprocess: fused | backbone
    p.add_argument("worker_args", nargs="*", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def heading(setup: Setup, started: float) -> list[str]:
    import torch
    import transformers
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    if setup.smoke:
        where = "**smoke run on CPU** (tiny sizes: the commands ran and parsed; the numbers measure nothing)"
    else:
        where = f"CUDA: {torch.cuda.get_device_name(0)} x {setup.gpus}"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"{where}; torch {torch.__version__}, transformers {transformers.__version__}; commit {commit}; "
            f"{when}; {time.time() - started:.0f} s in all.",
            "",
            "The training runs use an encoder with **random weights** (see the setup row), on the demo data: "
            "their test accuracies are chance level and say nothing about the method; clips/s and peak memory "
            "(torch.cuda.max_memory_allocated over the epoch's training pass) are what they measure. "
            "Every command's output is in logs/.",
            "",
            f"Every training run: `SCRIPT --dataset {setup.manifest.name if setup.manifest else '-'} --backbone "
            f"{setup.backbone.name if setup.backbone else '-'} --epochs 1 --precision bf16 --device {setup.device} "
            f"{shlex.join(setup.sizes.train)}` and the flags in its row's details."]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        if args.worker == "fused":
            found = fused_worker(*args.worker_args)
        else:
            found = backbone_worker(args.worker_args[0], smoke=args.smoke_on_cpu)
        print(RESULT + json.dumps(found), flush=True)
        return 0

    started = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke_on_cpu:
        rows = [Row(title, status="skipped: no CUDA") for task in TASKS for title in task.titles]
        text = report(rows, ["No CUDA device (torch.cuda.is_available() is False): nothing was run. "
                             "--smoke-on-cpu runs the same commands on CPU."], None)
        (out / "gpu_check.md").write_text(text)
        print(f"gpu_check: skipped: no CUDA (torch.cuda.is_available() is False), nothing run; every row "
              f"marked skipped in {out / 'gpu_check.md'} (--smoke-on-cpu runs the commands on CPU)")
        return 0

    logs = out / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # no stale log from an earlier check
    logs.mkdir()
    work = out / "work" if args.keep_work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if args.smoke_on_cpu:  # two runs at once on a small CPU: threads that spin for a core the other holds
        env["OMP_NUM_THREADS"] = "1"  # made a tiny epoch 10x slower
    setup = Setup(smoke=args.smoke_on_cpu, device="cpu" if args.smoke_on_cpu else "cuda",
                  gpus=0 if args.smoke_on_cpu else torch.cuda.device_count(), work=work, logs=logs, env=env,
                  sizes=SMOKE_SIZES if args.smoke_on_cpu else CUDA_SIZES)
    print(f"gpu_check: {'smoke run on CPU' if setup.smoke else f'{setup.gpus} GPU(s)'}; logs in {logs}", flush=True)
    try:
        rows = run_tasks(TASKS, setup, args.jobs or (2 if setup.smoke else 1))
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    compare_memory(rows)
    text = report(rows, heading(setup, started), setup.bench_output)
    (out / "gpu_check.md").write_text(text)
    print("\n" + text)
    status = exit_status(rows)
    failed = sum(row.status.startswith("FAILED") for row in rows)
    print(f"gpu_check: {failed} of {len(rows)} rows FAILED" if status else f"gpu_check: no row FAILED ({len(rows)})")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("gpu_check: interrupted; the commands that were running were killed, no report written")
