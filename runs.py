"""Run bookkeeping for the stage scripts: one run = one folder, its files written whole (through a
temporary file), so that a kill leaves no half-written file and --resume continues from the last
checkpoint exactly as an uninterrupted run would (tests/test_kill.py: PairTune killed before and
after each kind of write, and at random moments).

The folder's layout, and every reader of it, are rundir.py's; this module writes the files (run.json,
log.jsonl, checkpoint.pt, best-e<epoch>.pt, the feature cache). Reading a finished run's classifier
back (for export.py and predict.py) is trained.py's.

PairTune and FineTune keep their best-valid epoch by the same rule, `keep_if_best`, so the fairness
of the comparison rests on this one implementation. Each stage script keeps its own forward pass,
loss and epoch loop.

Under torchrun every rank calls resume, log_epoch, keep_if_best, save_checkpoint and the removal
functions in the same order; only rank 0 writes or removes files, and the checkpoint holds every
rank's random states (a run started on N processes resumes on N).
"""
import argparse
import contextlib
import json
import logging
import math
import os
import random
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import data
import ddp
import outdir
import rundir
from backbone import ALIASES, FRONTEND_VERSION, TINY, AudioEncoder, extract_features, load_encoder


# ----------------------------------------------------------------------------------------------
# Files written whole
# ----------------------------------------------------------------------------------------------

def atomic_save(obj, path):
    """torch.save through a temporary file, so a kill never leaves a half-written file."""
    with temporary_beside(path) as tmp:
        torch.save(obj, tmp)


def write_text(path, text: str):
    """Text through a temporary file, like atomic_save."""
    with temporary_beside(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def temporary_beside(path):
    """A new temporary file in `path`'s folder (a name of its own, created exclusively: never a file or
    symlink someone left there), renamed onto `path` once written; removed if the write fails."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        yield Path(name)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")  # NaN is not JSON: an error, not a file


# Plain numpy arrays (of unsigned ints): the random state in checkpoints written before 2026-12 held
# numpy's as an array, so that those resume. Arrays of numbers only: building them runs no code.
NUMPY_ARRAYS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def load_plain(path, recover: str, map_location="cpu"):
    """A file this project wrote with torch.save, read back as tensors and plain data only
    (weights_only=True: nothing in it can run code, whoever made it). A file that is truncated, not
    ours, or holds anything else stops with one line naming it and `recover` (what to do)."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAYS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise outdir.Refused(f"{path} is missing; {recover}") from None
    except Exception as error:  # torch raises several types; its advice (turn weights_only off) must not reach users
        kind = "holds more than tensors and plain data" if "weights_only" in str(error) else "cannot be read"
        raise outdir.Refused(f"{path} {kind} ({type(error).__name__}): it is not a whole file written by this "
                             f"project, and is not loaded; {recover}") from None


def check_finite(tensors, what: str, lever: str = ""):
    """Stop when any of `tensors` (a tensor, a state dict or a module) holds NaN or inf: such a model
    passes no later stage. `what` says where; `lever` what to change."""
    if isinstance(tensors, torch.nn.Module):
        tensors = tensors.state_dict()
    items = tensors.items() if isinstance(tensors, dict) else [("", tensors)]
    for name, tensor in items:
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise outdir.Refused(f"non-finite values (NaN or inf) in {what}{f' ({name})' if name else ''}"
                                 + (f"; {lever}" if lever else ""))


# ----------------------------------------------------------------------------------------------
# Arguments, the output folder, stopping
# ----------------------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 epochs or a batch of 0 clips is a mistake, said at once)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a temperature, a length in seconds, a learning rate)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (a margin)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (an interval where 0 means off)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (a share of the clips)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default in its help: "(default: X)" is
    added unless the help already shows it (%(default)s) or there is none to show (None, a flag).
    A default of None is said in words in the help, where it depends on something else."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        nothing_to_show = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "%(default)" in help_text or nothing_to_show or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)"


def comma_separated(item_type):
    """argparse type: comma-separated values, each checked by item_type; kept as the text given (as
    run.json has always recorded it)."""
    def check(text: str) -> str:
        for item in text.split(","):
            item_type(item)
        return text
    return check


VALID_FRACTION = data.VALID_FRACTION  # the default --valid-fraction (data.load_splits')


def run_folder(args, method: str) -> Path:
    """--out, or where the run goes without it: rundir.default_run_dir, the folder run_all.sh gives the
    same run (runs/<dataset>/<backbone>/<method>/[shots-K/]seed-N), so that two arms, datasets,
    backbones or seeds never share a folder by default."""
    if args.out:
        return Path(args.out)
    return rundir.default_run_dir(method, args.dataset, args.backbone, args.seed, args.fold, args.shots)


def check_folder_first(out, stage: str, args):
    """check_run_folder's verdict for --out before the data and the model are loaded, reading only
    (Refused now, and no folder made); prepare_run_folder checks again under the lock, as another run
    may take the folder in between. Rank 0 decides, as there; None on the other ranks under torchrun."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    outdir.check_not_in_use(out)  # a run that is writing there: said first, whatever the folder holds now
    return outdir.check_run_folder(out, stage, args.resume, args.overwrite, lambda: saved_epoch(out))


def resumed_setting(out, args, name: str, default):
    """A data setting (e.g. valid_fraction) left out on the command line: the run's own under --resume
    (its run.json's arguments; `default` for a run from before the setting existed, the value it ran
    with), else `default`."""
    given = getattr(args, name)
    if given is not None:
        return given
    if args.resume and (Path(out) / rundir.RUN_JSON).is_file():
        saved = (outdir.read_run_json(out).get("args") or {}).get(name)
        return default if saved is None else saved
    return default


def load_backbone(name: str, **kwargs) -> AudioEncoder:
    """backbone.load_encoder, or Refused in one line (no traceback) saying what was tried and, for a
    hub id, how to fill the Hugging Face cache for offline use. Called before the run's folder is made,
    so a backbone that cannot be loaded leaves nothing behind."""
    source = ALIASES.get(name, name)
    looks_like_path = Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if name not in ALIASES and name != TINY and looks_like_path and not Path(name).expanduser().exists():
        raise outdir.Refused(f"backbone {name}: no such folder (a local model folder holds config.json); or give "
                             f"an alias ({', '.join([*ALIASES, TINY])}) or a Hugging Face hub id")
    # huggingface_hub logs each failed request as it retries: the one line below says it all
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        return load_encoder(name, **kwargs)
    except OSError as error:  # not found, not in the cache, no network
        text = " ".join(str(error).split())  # one line
        if not Path(name).expanduser().is_dir():
            text += (f" For offline use, fill the Hugging Face cache where there is network "
                     f"(`huggingface-cli download {source}`), then run with HF_HUB_OFFLINE=1.")
        raise outdir.Refused(text) from None
    except ValueError as error:  # an unsupported architecture, weights missing from the checkpoint
        raise outdir.Refused(" ".join(str(error).split())) from None
    finally:
        hub_logger.setLevel(level)


def output_lock(out):
    """The run folder's lock (outdir.FolderLock) for the life of the run, taken by rank 0 alone under
    torchrun (RANK from the environment: the process group does not exist yet)."""
    return outdir.FolderLock(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def prepare_run_folder(out, stage: str, args) -> str:
    """check_run_folder's verdict for --out (Refused if the folder is not this run's to write), and
    with --overwrite the earlier run's files removed (only the names a `stage` run writes). Called
    under the folder's lock (output_lock); None on the other ranks under torchrun."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 decides (and writes) for all
        return None
    state = outdir.check_run_folder(out, stage, args.resume, args.overwrite, lambda: saved_epoch(out))
    if state == "replace":
        print(f"--overwrite: replacing the {stage} run in {out}")
    if state != "new" and (Path(out) / rundir.PROBE_DIR).is_dir():
        with outdir.FolderLock(Path(out) / rundir.PROBE_DIR):  # its own probe must not be running (Refused, naming it)
            pass
    if state == "replace":
        outdir.clear_run(out, stage)
    outdir.remove_leftover_temporaries(out)
    return state


def saved_epoch(out):
    """The epoch RUN/checkpoint.pt holds (None without a readable one); mmap: the weights are not read."""
    try:
        return torch.load(Path(out) / rundir.CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:
        return None


def stop_on_sigterm():
    """SIGTERM (kill, scancel, a Slurm time limit) ends a run as Ctrl-C does: through KeyboardInterrupt,
    so the lock is let go and the user is told where the run stands (interrupted)."""
    def handler(signum, frame):
        raise Terminated
    signal.signal(signal.SIGTERM, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that it ends as Ctrl-C does (exit status 143, not 130)."""


def interrupted(stop: KeyboardInterrupt, out, argv: list, keeps_checkpoint: bool = True):
    """The one line a stage prints when stopped (rank 0 alone under torchrun), then its exit: the last
    saved epoch and the command that continues the run."""
    code = 143 if isinstance(stop, Terminated) else 130
    if int(os.environ.get("RANK", "0")) != 0:
        sys.exit(code)
    command = [a for a in argv if a not in ("--resume", "--overwrite")]
    epoch = saved_epoch(out) if keeps_checkpoint else None
    if epoch is None:
        what = "a probe keeps no checkpoint" if not keeps_checkpoint else "no epoch was saved"
        print(f"interrupted: {what}; start it again with: {shlex.join(['python', *command, '--resume'])}",
              file=sys.stderr)
    else:
        print(f"interrupted: {out} holds epoch {epoch} (checkpoint.pt); continue with: "
              f"{shlex.join(['python', *command, '--resume'])}", file=sys.stderr)
    sys.exit(code)


# ----------------------------------------------------------------------------------------------
# Device, provenance, random states
# ----------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def package_versions() -> dict:
    import platform
    import torchaudio
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchaudio": torchaudio.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def git_revision() -> dict:
    """Commit and dirty flag of the code that produced a run (None outside a git checkout)."""
    import subprocess
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                                    text=True).stdout.strip())
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_states(loader_generator: torch.Generator) -> dict:
    """Every random state a training loop draws from, for an exact resume; plain data and tensors only
    (numpy's key as a list of ints), so a checkpoint loads with torch.load(weights_only=True)."""
    name, key, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, key.tolist(), position, has_gauss, cached_gaussian],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": loader_generator.get_state()}


def restore_random_states(states: dict, loader_generator: torch.Generator):
    random.setstate(states["python"])
    name, key, position, has_gauss, cached_gaussian = states["numpy"]  # key: a list (an array before 2026-12)
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    loader_generator.set_state(states["loader"])


# ----------------------------------------------------------------------------------------------
# One training run: run.json, checkpoint, the best-valid epoch
# ----------------------------------------------------------------------------------------------

def new_run(stage: str, args, dataset: str, manifest: Path, encoder: AudioEncoder, splits: dict,
            classes: list) -> dict:
    """run.json's contents at the start: unfinished until the stage has written its results."""
    return {"stage": stage, "args": vars(args), "dataset": dataset, "manifest": str(Path(manifest).resolve()),
            "backbone": encoder.name, "backbone_random_init": encoder.random_init,
            "classes": classes, "clips": {s: len(c) for s, c in splits.items()},
            "versions": package_versions(), "git": git_revision(), "frontend": FRONTEND_VERSION, "finished": False}


def finished_epochs(out: Path) -> int:
    """Epochs of a finished run in `out` (0 if none): --resume leaves such a run alone. run.json is
    marked finished only after the results are written, so the flag alone is enough."""
    run = outdir.read_run_json(out) if (Path(out) / rundir.RUN_JSON).exists() else {}
    return run.get("epochs_run", 0) if run.get("finished") else 0


def tidy_finished(out: Path):
    """A kill between marking a run finished and removing its checkpoints leaves them behind: removed
    when --resume finds the run finished, as the run would have, unless it was told to keep them."""
    run = outdir.read_run_json(out)
    if not run.get("args", {}).get("keep_checkpoint", True):
        remove_checkpoints(out)  # (a run from before --keep-checkpoint existed kept them: left alone)


def remove_old_results(out):
    """Results of an earlier run in this output folder (or of this run before it was extended with
    --resume) describe other weights: removed, so that neither eval.py nor run_all.sh's skip test can
    take them for the new run's. Called once run.json marks the run unfinished."""
    if not ddp.is_main():
        return
    for stale in (rundir.RESULTS, rundir.PROBE_DIR, rundir.FEATURES):
        outdir.remove_written(Path(out) / stale)  # a probe/ that is running stops this run, naming it


def best_file(out, epoch: int) -> Path:
    """The best weights go to a file named by their epoch, and the checkpoint names the one it
    means: a kill between the two writes then leaves the checkpoint's own best file in place."""
    return Path(out) / rundir.best_file_name(epoch)


# Flags a resumed run may change: where and how fast it runs, how long, and what it keeps, never
# its numbers. Every other flag must equal the checkpoint's.
# --grad-checkpointing and --micro-batch trade memory for time, the step's arithmetic unchanged.
MAY_CHANGE_ON_RESUME = ("epochs", "device", "num_workers", "eval_batch_size", "resume", "overwrite", "out",
                        "keep_checkpoint", "only_best", "grad_checkpointing", "micro_batch", "eval_cache_mb",
                        "log_every")


def save_checkpoint(path, args, modules: dict, optimizer, loader_generator, epoch, history, best):
    """One dict: the run's arguments, unwrapped weights of each module, optimizer, every rank's random
    states (so a resumed run continues exactly as an uninterrupted one would), and the best-valid
    epoch so far. Every rank calls it (their random states are gathered); rank 0 writes."""
    rng = ddp.gather_objects(random_states(loader_generator))
    if ddp.is_main():
        atomic_save({"args": vars(args), **{name: m.state_dict() for name, m in modules.items()},
                     "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history, "best": best,
                     "rng": rng}, path)


# Settings added since checkpoints were first written, with the value a run from before them used, so
# that such a run still resumes (where the stage has the setting: multilabel_loss is pairtune.py's).
ADDED_SINCE = {"valid_fraction": VALID_FRACTION, "multilabel_loss": "jaccard"}


def settings_differences(saved: dict, now: dict) -> list[str]:
    """'--flag saved (now new)' for each argument outside MAY_CHANGE_ON_RESUME that differs."""
    saved = {**{name: value for name, value in ADDED_SINCE.items() if name in now}, **saved}
    return [f"--{name.replace('_', '-')} {saved.get(name)!r} (now {now.get(name)!r})"
            for name in sorted(set(saved) | set(now))
            if name not in MAY_CHANGE_ON_RESUME and saved.get(name) != now.get(name)]


def resume(out: Path, args, modules: dict, optimizer, loader_generator):
    """(start_epoch, history, best) of a fresh run, or of the checkpoint in `out` under --resume.

    A fresh run starts a fresh log.jsonl. A resumed one must have been started with the same
    settings (settings_differences, else it stops naming each differing flag), gets its weights,
    optimizer and random states back, and its log.jsonl rewritten from the checkpoint's history, so
    lines of an epoch cut short by a kill are gone and that epoch is logged once, when it is run again.
    """
    checkpoint_path = Path(out) / rundir.CHECKPOINT
    if args.resume and finished_epochs(out) and not checkpoint_path.exists():
        sys.exit(f"error: {out} holds a finished run without checkpoint.pt, so it cannot be extended to "
                 f"{args.epochs} epochs; start it again with --overwrite (and keep checkpoints with --keep-checkpoint)")
    if not (args.resume and checkpoint_path.exists()):
        if ddp.is_main():
            (Path(out) / rundir.LOG_FILE).unlink(missing_ok=True)
        return 1, [], {"epoch": 0, "valid_acc": -1.0}
    fresh_start = "start the run again (--overwrite instead of --resume, or another --out)"
    # map to CPU: RNG states must stay CPU tensors; load_state_dict moves weights to the device.
    state = load_plain(checkpoint_path, "start the run again with --overwrite (or give another --out)")
    if not isinstance(state, dict) or "args" not in state:
        sys.exit(f"error: {checkpoint_path} was written before checkpoints carried their run's arguments, so "
                 f"resuming cannot check that the settings are the same; {fresh_start}")
    differences = settings_differences(state["args"], vars(args))
    if differences:
        sys.exit(f"error: {checkpoint_path} cannot be resumed with other settings than it was started with: "
                 f"{'; '.join(differences)}. Resume with the run's settings, or {fresh_start}")
    if "best" not in state or not best_file(out, state["best"]["epoch"]).exists():
        sys.exit(f"error: {checkpoint_path} cannot be resumed: its best-valid weights "
                 f"(best-e<epoch>.pt) are missing; {fresh_start}")
    # Read now, not after the epochs left: a damaged best file stops the resume before any training.
    load_plain(best_file(out, state["best"]["epoch"]), fresh_start)
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # (one process's, before torchrun)
    if len(rng) != ddp.world_size():
        sys.exit(f"error: {checkpoint_path} was written by a run of {len(rng)} process(es) and this one has "
                 f"{ddp.world_size()}: resume with as many (torchrun --nproc-per-node {len(rng)}), or {fresh_start}")
    # A kill between a checkpoint and drop_stale_best leaves the previous best file behind, and a
    # resume that has no epoch left to run would never drop it.
    drop_stale_best(out, state["best"])
    for name, module in modules.items():
        module.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])
    restore_random_states(rng[ddp.rank()], loader_generator)
    if ddp.is_main():
        write_text(Path(out) / rundir.LOG_FILE, "".join(json.dumps(line) + "\n" for line in state["history"]))
    print(f"resumed from {checkpoint_path} after epoch {state['epoch']}")
    return state["epoch"] + 1, state["history"], state["best"]


def log_epoch(out: Path, history: list, line: dict):
    """Append one epoch's line to the history and to log.jsonl (a kill mid-line is mended by resume)."""
    history.append(line)
    if not ddp.is_main():
        return
    with open(Path(out) / rundir.LOG_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def keep_if_best(out: Path, best: dict, epoch: int, valid_acc: float, weights: dict) -> dict:
    """The selection rule of both arms: an epoch whose valid accuracy is strictly better than every
    earlier one becomes the best (ties keep the earlier epoch), and its weights are saved."""
    if valid_acc > best["valid_acc"]:
        best = {"epoch": epoch, "valid_acc": valid_acc}
        if ddp.is_main():
            atomic_save({**weights, **best}, best_file(out, epoch))
    return best


def drop_stale_best(out: Path, best: dict):
    """Remove best-e*.pt files other than the current best; only after the checkpoint names it."""
    if not ddp.is_main():
        return
    for stale in Path(out).glob(rundir.BEST_GLOB):
        if stale != best_file(out, best["epoch"]):
            stale.unlink()


def load_best(out: Path, best: dict, device) -> dict:
    return load_plain(best_file(out, best["epoch"]), "start the run again with --overwrite", map_location=device)


def start_epoch_clock(device) -> float:
    """The epoch's start time; on CUDA also the start of its peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return time.time()


def throughput(started: float, clips: int, device) -> dict:
    """The training pass's clips per second (over all processes) and, on CUDA, its peak memory."""
    measured = {"clips_per_s": round(clips / max(time.time() - started, 1e-9), 2)}
    if device.type == "cuda":
        measured["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return measured


def describe_throughput(measured: dict) -> str:
    text = f"{measured['clips_per_s']:.1f} clips/s"
    return text + (f", peak {measured['peak_memory_mb']:.0f} MiB" if "peak_memory_mb" in measured else "")


def duration(seconds: float) -> str:
    """A time left, read at a glance: 35s, 2m10s, 1h20m."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress a person can read in a log file (nohup, Slurm): while stdout is not a terminal, one
    line every `every` seconds of training (0: none), on rank 0 only (a terminal has tqdm's bar):

        epoch 3/40  step 120/400  loss 1.234  35.2 clips/s  epoch ETA 2m10s  run ETA 1h20m

    loss: the mean over the epoch's steps so far; clips/s: the epoch's so far (all processes). The
    epoch's ETA is its steps left at its pace so far, plus its valid pass as measured in the epochs
    this process has run; the run's adds every epoch left at the mean measured time of those whole
    epochs (training and valid), or, before the first has ended, at this epoch's pace. `clock`: a
    test's fake time."""

    def __init__(self, epochs: int, every: float, stream=None, clock=time.monotonic, enabled=None):
        self.epochs, self.every, self.clock = epochs, every, clock
        self.stream = stream if stream is not None else sys.stdout
        if enabled is None:
            enabled = every > 0 and ddp.is_main() and not self.stream.isatty()
        self.enabled = enabled
        self.whole, self.valid = [], []  # seconds of each whole epoch and of its valid pass, as measured

    def start_epoch(self, epoch: int, steps: int):
        self.epoch, self.steps, self.done, self.clips, self.loss_sum = epoch, steps, 0, 0, 0.0
        self.started = self.last_line = self.clock()
        self.trained = None

    def step(self, loss: float, clips: int):
        """After each training step: its loss and the clips it took (all processes)."""
        self.done, self.clips, self.loss_sum = self.done + 1, self.clips + clips, self.loss_sum + loss
        now = self.clock()
        if self.enabled and now - self.last_line >= self.every:
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def end_training(self):
        """The epoch's training pass is over; its valid pass begins."""
        self.trained = self.clock()

    def end_epoch(self):
        """The epoch is over, valid included: its times count in the ETAs from here on."""
        now = self.clock()
        self.whole.append(now - self.started)
        self.valid.append(now - (self.trained if self.trained is not None else now))

    def line(self, now: float) -> str:
        elapsed = now - self.started
        per_step = elapsed / max(self.done, 1)
        valid = sum(self.valid) / len(self.valid) if self.valid else 0.0
        epoch_left = per_step * (self.steps - self.done) + valid
        per_epoch = sum(self.whole) / len(self.whole) if self.whole else per_step * self.steps + valid
        run_left = epoch_left + per_epoch * (self.epochs - self.epoch)
        return (f"epoch {self.epoch}/{self.epochs}  step {self.done}/{self.steps}  "
                f"loss {self.loss_sum / max(self.done, 1):.4f}  {self.clips / max(elapsed, 1e-9):.1f} clips/s  "
                f"epoch ETA {duration(epoch_left)}  run ETA {duration(run_left)}")

    def run_eta(self) -> str:
        """After end_epoch: the time the epochs left will take at the mean measured epoch ('' if none left)."""
        left = self.epochs - self.epoch
        return f"run ETA {duration(left * sum(self.whole) / len(self.whole))}" if left and self.whole else ""


def save_encoder(encoder: AudioEncoder, folder: Path):
    """encoder.save into a fresh folder: the run's earlier one is removed first (a symlink left there is
    removed, not followed), so no file of another run's, or of anyone's, is written through."""
    outdir.remove_written(folder)
    encoder.save(folder)


def remove_checkpoints(out: Path):
    """At the end of a run: the checkpoint and best file are only needed to resume."""
    if not ddp.is_main():
        return
    (Path(out) / rundir.CHECKPOINT).unlink(missing_ok=True)
    for best in Path(out).glob(rundir.BEST_GLOB):
        best.unlink()


# ----------------------------------------------------------------------------------------------
# Feature cache: RUN/features/<dataset>[-fold<k>]/<split>.pt
# ----------------------------------------------------------------------------------------------

def weights_fingerprint(encoder: AudioEncoder) -> str:
    """SHA-1 of every weight, so a cache never serves features of another encoder (~1 s for 95M)."""
    import hashlib
    digest = hashlib.sha1()
    for name, tensor in encoder.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return digest.hexdigest()


def cache_key(clips, classes, max_seconds, fingerprint: str) -> dict:
    """What a cached feature file must match: the same clips, classes, chunk length, weights and front end."""
    return {"paths": [c.path for c in clips], "classes": classes, "max_seconds": max_seconds,
            "encoder": fingerprint, "frontend": FRONTEND_VERSION}


def cache_serves(saved, classes, max_seconds, fingerprint: str, clips=None, n_clips=None) -> bool:
    """Whether a loaded cache file was made by these weights for these classes and chunk length, and
    for these clips: their paths (clips), or only their number (n_clips) where the data may have
    moved since (eval.py on a copied run)."""
    if not saved:
        return False
    key = saved.get("key", {})
    same_clips = (key.get("paths") == [c.path for c in clips] if clips is not None
                  else len(key.get("paths", ())) == n_clips)
    return (same_clips and key.get("classes") == classes and key.get("max_seconds") == max_seconds
            and key.get("encoder") == fingerprint and key.get("frontend") == FRONTEND_VERSION)


def load_cache(file):
    """A feature cache file's contents, or None when it is missing or unreadable (then re-encoded)."""
    if not Path(file).is_file():
        return None
    try:  # tensors and plain data only: a cache in a shared run folder runs no code
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, foreign or older file is only a cache miss (not torch's advice)
        print(f"feature cache {file} is not a whole file of tensors ({type(error).__name__}): not used, encoding "
              "again")
        return None
    return saved if isinstance(saved, dict) else None


def cached_features(encoder: AudioEncoder, splits, classes, cache_dir, max_seconds: float, device, names,
                    batch_size: int = 16, num_workers: int = 0, precision: str = "auto",
                    multilabel: bool = False) -> dict:
    """{split: (features [N, d], labels [N], or multi-hot [N, C] with multilabel)} for the splits in
    `names`, from cache_dir/<split>.pt when
    it holds the very same clips and weights, else encoded (extract_features) and saved there.

    probe.py caches train, valid and test of the encoder it probes (a PairTune run's own probe in
    the run's folder, any other probe in its own), finetune.py the same three splits of its selected
    epoch (test for its linear head and, with train and valid, for the k-NN probe), and eval.py reads
    (or fills) the test file for its analyses of test representations."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    features = {}
    fingerprint = weights_fingerprint(encoder)
    for split in names:
        file = cache_dir / f"{split}.pt"
        saved = load_cache(file)
        if (cache_serves(saved, classes, max_seconds, fingerprint, clips=splits[split])
                and (saved["labels"].dim() == 2) == multilabel):  # multi-hot targets for multi-label data
            features[split] = (saved["features"], saved["labels"])
            continue
        started = time.time()
        feats, labels = extract_features(encoder, splits[split], classes, max_seconds, device, batch_size,
                                         num_workers, desc=f"encoding {split}", precision=precision,
                                         multilabel=multilabel)
        atomic_save({"key": cache_key(splits[split], classes, max_seconds, fingerprint),
                     "features": feats, "labels": labels}, file)
        print(f"encoded {split}: {len(labels)} clips in {time.time() - started:.1f}s -> {file}")
        features[split] = (feats, labels)
    return features
