"""What a script may write, and who is writing: the project's rules for output folders.

- A training or probe run writes into a folder that is new, empty, or a run of its own kind that the
  user asked to continue (--resume) or replace (--overwrite): check_run_folder. Replacing removes only
  the names the stage itself writes (clear_run); anything else in the folder is left alone.
- A file a script writes beside the user's files (a report, a table, a manifest) replaces only a file
  that the script wrote and that nobody has changed since: write_owned keeps, in the same folder, a
  record of the SHA-256 of each file it wrote (OWNED_RECORD, a line per write).
- One writer at a time: FolderLock holds FOLDER/.lock while a run writes there. run_all.sh takes the
  very same file, with the same one-line format and the same rules, so the two never disagree about
  who owns a folder; a script started by run_all.sh finds its runner (an ancestor process) named in
  the lock and goes on under it.

      .lock: HOST PID START [SLURM_JOB_ID]     START: field 22 of /proc/PID/stat (ticks since boot)

  On the lock's own host its holder is alive while PID runs with the same START (so a recycled pid
  is not taken for the holder); on another host, while Slurm still lists SLURM_JOB_ID (a lock
  without one is never taken over from another host). A lock that does not parse is reported, not
  taken over.

Standard library only: prepare.py and eval.py use it without loading torch.
"""
import datetime
import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import rundir
from rundir import BEST_GLOB, CHECKPOINT, ENCODER, ENCODER_LAST, FEATURES, HEAD, LOG_FILE, PROBE_DIR, RESULTS, RUN_JSON

LOCK = ".lock"
# What run_all.sh keeps in a run folder (its lock and the job's log): a folder holding only these is empty.
RUNNER_FILES = {LOCK, "job.log", "job.rc"}
OWNED_RECORD = ".audioconfit-written"

# The names each stage writes into its run folder, and only these are removed by --overwrite.
# A pairtune run's probe/ is its own stage 2 (probe.py's default --out), describing these weights.
STAGE_FILES = {
    "pairtune": [RUN_JSON, LOG_FILE, CHECKPOINT, BEST_GLOB, ENCODER, ENCODER_LAST, FEATURES, PROBE_DIR, RESULTS],
    "finetune": [RUN_JSON, LOG_FILE, CHECKPOINT, BEST_GLOB, ENCODER, HEAD, FEATURES, RESULTS],
    "probe": [RUN_JSON, HEAD, FEATURES, RESULTS],
}


class Refused(ValueError):
    """What the rules do not allow, or a file that cannot be used, said in one line (the scripts print
    it as `error: ...` and exit 1)."""


# ----------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------

def process_start(pid: int):
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot) as text; None if PID is gone
    or a zombie. The fields are read after the last ')', since the command name may hold either."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie or a dead process holds nothing


def lock_line(pid: int = None) -> str:
    pid = pid or os.getpid()
    slurm = os.environ.get("SLURM_JOB_ID", "")
    return f"{socket.gethostname()} {pid} {process_start(pid)}" + (f" {slurm}" if slurm else "")


def parse_lock(text: str):
    """(host, pid, start, slurm_job or None), or None for a line that is not a lock of this format."""
    parts = text.split()
    if len(parts) not in (3, 4) or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2], parts[3] if len(parts) == 4 else None


def slurm_job_gone(job: str) -> bool:
    """Whether Slurm says the job no longer runs or waits (as run_all.sh asks it); unknown is not gone."""
    try:
        listed = subprocess.run(["squeue", "-h", f"--jobs={job}", "-o", "%A"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if listed.returncode == 0:
        return job not in listed.stdout.split()
    return "Invalid job id" in listed.stdout + listed.stderr


def holder_gone(host, pid, start, slurm_job) -> str:
    """Why the lock's holder is gone ('' while it may still run)."""
    if host == socket.gethostname():
        return "" if process_start(pid) == start else f"process {pid} on {host} is gone"
    if slurm_job and slurm_job_gone(slurm_job):
        return f"Slurm job {slurm_job} of process {pid} on {host} is gone"
    return ""


def ancestors() -> set:
    """(pid, start) of this process and every process above it: a lock naming one is this run's."""
    found, pid = set(), os.getpid()
    while pid > 0:  # up to and including pid 1 (run_all.sh as a container's first process)
        start = process_start(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        found.add((pid, start))
        pid = int(stat[stat.rindex(")") + 2:].split()[1])  # field 4: the parent (0 above pid 1)
    return found


def describe_holder(host, pid, start, slurm_job) -> str:
    text = f"process {pid} on {host}"
    if host == socket.gethostname():
        try:  # ticks since boot -> a wall-clock time
            boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                        if line.startswith("btime "))
            when = datetime.datetime.fromtimestamp(boot + int(start) / os.sysconf("SC_CLK_TCK"))
            text += f", started {when:%Y-%m-%d %H:%M:%S}"
        except (OSError, StopIteration, ValueError):
            pass
    return text + (f" (Slurm job {slurm_job})" if slurm_job else "")


def take_flock(descriptor, seconds: float) -> bool:
    """An exclusive flock within `seconds`; False on a timeout or a file system without flock."""
    deadline = time.time() + seconds
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.time() > deadline:
                return False
            time.sleep(0.05)
        except OSError:
            return False


def in_use(folder, holder) -> Refused:
    """The refusal of a folder whose lock `holder` (parse_lock's) is alive."""
    path = Path(folder) / LOCK
    elsewhere = "" if holder[0] == socket.gethostname() else f" (another machine: delete {path} if that runner is gone)"
    return Refused(f"{folder} is in use by {describe_holder(*holder)} (its lock: {path}); wait for it to end, or give "
                   f"another --out{elsewhere}")


def check_not_in_use(folder):
    """Refused (as FolderLock would refuse) while a live runner other than this process's own holds
    FOLDER/.lock; reads only, so a script says so before it loads anything. Taking the lock decides."""
    try:
        holder = parse_lock((Path(folder) / LOCK).read_text())
    except OSError:
        return
    if holder is None or ((holder[1], holder[2]) in ancestors() and holder[0] == socket.gethostname()):
        return  # not a lock of ours (FolderLock says so), or run_all.sh's for the job that started us
    if not holder_gone(*holder):
        raise in_use(folder, holder)


class FolderLock:
    """FOLDER/.lock for the life of a run (a context manager). Taken when free or its holder is gone;
    kept by run_all.sh (an ancestor) when it started this process; otherwise Refused, naming the holder."""

    def __init__(self, folder):
        self.folder, self.path, self.owned = Path(folder), Path(folder) / LOCK, False

    def __enter__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise Refused(f"--out {self.folder} is a file, not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            mine = lock_line()
            for _ in range(3):  # a lock let go of, or created and not yet written, just now: look again
                if self._create(mine):
                    return self
                held = self._read()
                if held:
                    break
                time.sleep(0.1)
        except OSError as error:  # a read-only or foreign folder
            raise Refused(f"cannot write into {self.folder} ({error.strerror or error})") from None
        holder = parse_lock(held)
        if holder is None:
            raise Refused(f"{self.path} holds {held.strip()[:80]!r}, not a lock this project writes; delete it if "
                          "no runner uses this folder")
        if (holder[1], holder[2]) in ancestors() and holder[0] == socket.gethostname():
            return self  # run_all.sh's lock for the job that started us: ours to use, its to remove
        why = holder_gone(*holder)
        if why:
            # One taker at a time (a flock on the folder itself, as run_all.sh takes it: no file is left
            # behind), and the lock is removed only if it still names the holder found gone: two takers
            # never both win.
            mutex = os.open(self.folder, os.O_RDONLY)
            try:
                if take_flock(mutex, seconds=30):  # as run_all.sh waits; no flock here: no takeover
                    if self._read() == held:
                        self.path.unlink(missing_ok=True)
                        print(f"took over the stale lock of {self.folder} ({why})")
                    if self._create(mine):
                        return self
            finally:
                os.close(mutex)  # lets go of the flock
            holder = parse_lock(self._read()) or holder
        raise in_use(self.folder, holder)

    def _create(self, line) -> bool:
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as f:
            f.write(line + "\n")
        self.owned, self.line = True, line + "\n"
        return True

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def __exit__(self, *exc):
        if self.owned and self._read() == self.line:
            self.path.unlink(missing_ok=True)
        self.owned = False


# ----------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------

def read_run_json(folder) -> dict:
    """rundir.read_run_json, or Refused naming the file, and what to do, when it is not a run record (truncated,
    foreign): the scripts' message for a folder they are about to use."""
    try:
        return rundir.read_run_json(folder)
    except rundir.RunRecordError as error:
        if error.cause is not None:
            raise Refused(f"{error.path} cannot be read ({type(error.cause).__name__}: {str(error.cause)[:120]}); it "
                          "is not a run record this project wrote whole: move the folder aside and start the run "
                          "again") from None
        raise Refused(f"{error.path} is not a run record ({error.problem}); move the folder aside and start the run "
                      "again") from None


# A run's whole-file writes go through `.NAME.XXXXXXXX.tmp` (runs.temporary_beside: tempfile.mkstemp), so
# a kill before the rename leaves one of these, and nothing else of the user's has such a name.
_BEST = re.escape(rundir.BEST_FILE).replace(re.escape("{epoch}"), r"\d+")  # best-e<N>.pt
LEFTOVER = re.compile(r"\.(" + "|".join([*map(re.escape, (RUN_JSON, LOG_FILE, CHECKPOINT, RESULTS, HEAD)), _BEST])
                      + r")\.[a-z0-9_]{8}\.tmp")


def is_leftover_temporary(name: str) -> bool:
    """A temporary file of a run's that a kill left behind."""
    return LEFTOVER.fullmatch(name) is not None


def remove_leftover_temporaries(out):
    """A killed run's temporary files (a checkpoint's may be as large as the model): removed when the
    run starts again, under its lock (no writer of this run is left to finish them)."""
    for name in os.listdir(out) if Path(out).is_dir() else ():
        if is_leftover_temporary(name):
            (Path(out) / name).unlink(missing_ok=True)


def check_run_folder(out, stage: str, resume: bool, overwrite: bool, saved_epoch=None) -> str:
    """What a `stage` run may do with --out: "new" (new or empty), "resume" (its own unfinished run,
    --resume), "finished" (its own finished run, --resume), "replace" (its own run, --overwrite).
    Anything else is Refused with what is there and what to do. Reads only: called before the run
    loads anything (runs.check_folder_first) and again under the folder's lock.
    saved_epoch(): the epoch an unfinished training run has saved, for the message."""
    out = Path(out)
    training = stage != "probe"  # a probe keeps no checkpoint: continuing it is starting it again
    if resume and overwrite:
        raise Refused("--resume continues a run and --overwrite replaces it: give one of them")
    if out.exists() and not out.is_dir():
        raise Refused(f"--out {out} is a file, not a folder")
    present = {name for name in os.listdir(out) if not is_leftover_temporary(name)} if out.is_dir() else set()
    if not present - RUNNER_FILES:
        return "new"
    if RUN_JSON not in present:
        listed = sorted(present - RUNNER_FILES)
        raise Refused(f"--out {out} is not empty and holds no run (it has {', '.join(listed[:4])}"
                      f"{', ...' if len(listed) > 4 else ''}): give a new or empty folder")
    run = read_run_json(out)
    if run.get("stage") != stage:
        raise Refused(f"--out {out} holds a {run.get('stage')} run, not a {stage} run: give another --out")
    if overwrite:
        return "replace"
    if run.get("finished"):
        if resume:
            return "finished"
        extend = training and (out / CHECKPOINT).is_file()  # a finished run keeps it with --keep-checkpoint
        raise Refused(f"--out {out} holds a finished {stage} run" +
                      (f" ({run['epochs_run']} epoch{'s' * (run['epochs_run'] != 1)})" if run.get("epochs_run")
                       else "") +
                      ": --overwrite replaces it" + (", --resume extends it to more --epochs" if extend else "") +
                      "; or give another --out")
    if resume:
        return "resume"
    if not training:
        raise Refused(f"--out {out} holds an unfinished probe (a probe keeps no checkpoint): --resume or --overwrite "
                      "starts it again; or give another --out")
    epoch = saved_epoch() if saved_epoch else None
    saved = "no epoch saved" if not epoch else f"epoch {epoch} of {run.get('args', {}).get('epochs', '?')} saved"
    raise Refused(f"--out {out} holds an unfinished {stage} run ({saved}): --resume continues it, --overwrite "
                  "starts it again; or give another --out")


def remove_written(path):
    """Remove a file or folder a run wrote: a symlink itself (never what it points to), and a folder
    only while no live run holds its lock (a pairtune run's own probe/ may be running)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    elif (path / LOCK).exists():
        with FolderLock(path):  # Refused, naming the holder, while it runs
            shutil.rmtree(path)
    else:
        shutil.rmtree(path)


def clear_run(out, stage: str):
    """--overwrite: remove what a `stage` run writes into `out` (STAGE_FILES), nothing else."""
    for pattern in STAGE_FILES[stage]:
        for path in Path(out).glob(pattern):
            remove_written(path)
    remove_leftover_temporaries(out)


# ----------------------------------------------------------------------------------------------
# Files written beside the user's
# ----------------------------------------------------------------------------------------------

# The record is appended to, one line per write ("SHA256 NAME"; "- NAME" when removed; the last line
# of a name counts), so writing N files costs N short appends, not N rewrites of a growing file
# (prepare.py writes every clip of a dataset this way). It is parsed again only when it changed
# under us (its inode, size or time differ), hence this cache.
_parsed_records = {}


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _signature(path: Path):
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def _record(folder: Path) -> dict:
    """{file name: SHA-256 of what this project last wrote there} for one folder."""
    path = Path(folder) / OWNED_RECORD
    try:
        signature = _signature(path)
    except OSError:
        return {}
    cached = _parsed_records.get(path)
    if cached and cached[0] == signature:
        return cached[1]
    names = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        digest, _, name = line.partition(" ")
        if name and digest == "-":
            names.pop(name, None)
        elif name:
            names[name] = digest
    _parsed_records[path] = (signature, names)
    return names


def _note(folder: Path, name: str, digest: str):
    """Append one line to the folder's record (digest "-": removed)."""
    names = _record(folder)  # the cached dict itself, brought up to date below
    path = folder / OWNED_RECORD
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{digest} {name}\n")
    names.pop(name, None) if digest == "-" else names.__setitem__(name, digest)
    _parsed_records[path] = (_signature(path), names)


def may_replace(path) -> bool:
    """Whether `path` is free to write: missing, or written by this project and unchanged since."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return True
    if not path.is_file() or path.is_symlink():
        return False
    return _record(path.parent).get(path.name) == _digest(path.read_bytes())


def check_owned(path, script: str):
    """Refused when `path` holds a file this project did not write (or that was changed since)."""
    if not may_replace(path):
        raise Refused(f"{path} is there and was not written by {script} (or was changed since): it is left as it "
                      "is; move it away (or write elsewhere) and run again")


def write_owned(path, content, script: str):
    """Write `content` (str or bytes) to `path` whole, if may_replace allows, and record it as ours."""
    path = Path(path)
    check_owned(path, script)
    if "\n" in path.name or "\r" in path.name:  # the record holds a name a line
        raise Refused(f"{path!r}: a file name with a line break cannot be recorded")
    data = content.encode() if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own (never a user's file), renamed over the target once whole.
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _note(path.parent, path.name, _digest(data))


def remove_owned(path):
    """Remove `path` only if this project wrote it and it is unchanged; True if removed."""
    path = Path(path)
    if not path.is_file() or not may_replace(path):
        return False
    path.unlink()
    _note(path.parent, path.name, "-")
    return True
