"""Kill anywhere, then resume: a tiny PairTune run killed with SIGKILL at chosen writes (before and
after the rename of each kind of file runs.py writes; one folder killed again in each resume, a copy
of it resumed after every kill) and at random moments, then resumed with --resume, ends exactly as
the uninterrupted run: the same log.jsonl (but for its timings), the same selected epoch,
bit-identical encoders and the same files in its folder.

Every run is a real process killed for real: a fork of one server process that has imported torch
and transformers once (each fresh interpreter would spend seconds importing them, and a dozen runs
are needed). A fork runs pairtune.py as `python pairtune.py ...` would, through runpy, with
os.replace wrapped to SIGKILL itself at a chosen call: test scaffolding only, production code has
no hooks."""
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT

SERVER = r'''
import json, os, runpy, signal, sys, traceback
import pairtune, transformers
transformers.Wav2Vec2Model, transformers.Wav2Vec2FeatureExtractor  # lazy modules: import them before forking
print("ready", flush=True)
for request in sys.stdin:
    argv, kill, log = json.loads(request)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the run: output to its log, killed at the kill-th os.replace onto a file of that name
        sys.stdin.close()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        real_replace, seen = os.replace, []

        out_dir = os.path.abspath(argv[argv.index("--out") + 1])

        def replace(src, dst):
            if not os.path.abspath(dst).startswith(out_dir + os.sep):  # e.g. data's record of checked files
                return real_replace(src, dst)
            seen.append(os.path.basename(dst))
            hit = kill is not None and seen[-1] == kill[0] and seen.count(kill[0]) == kill[1]
            if hit and kill[2] == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
            if hit:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
        sys.argv = ["pairtune.py", *argv]
        code = 0
        try:
            runpy.run_path("pairtune.py", run_name="__main__")
        except SystemExit as stop:  # as the interpreter reports it
            if isinstance(stop.code, int) or stop.code is None:
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        print("os.replace onto:", json.dumps(seen), flush=True)
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
'''

EPOCHS = 4
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def server():
    # One thread per run: on a busy 2-core machine this file took half the time it takes with two
    # (spinning threads wait on each other); every run, the uninterrupted one too, runs alike.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n", "the run server did not start"
    yield process
    process.kill()  # idle between runs; sparing it torch's second of interpreter shutdown
    process.wait()


@pytest.fixture(scope="module")
def small_manifest(demo_manifest, tmp_path_factory) -> Path:
    """4 of the demo's classes, 3 train and 3 valid clips each (and a test clip): a run of 4 epochs
    takes a few seconds, and valid accuracy still moves between epochs."""
    rows = list(csv.DictReader(open(demo_manifest, newline="")))
    classes = sorted({row["label"] for row in rows})[:4]
    wanted = {"train": 3, "valid": 3, "test": 1}
    kept, counts = [], {}
    for row in rows:
        key = (row["split"], row["label"])
        if row["label"] in classes and counts.get(key, 0) < wanted[row["split"]]:
            counts[key] = counts.get(key, 0) + 1
            kept.append([str(demo_manifest.parent / row["path"]), row["label"], row["split"]])
    manifest = tmp_path_factory.mktemp("small") / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *kept])
    return manifest


class Runs:
    """Starts runs of one tiny PairTune configuration in the server, each in its own --out."""

    def __init__(self, server, manifest, logs: Path):
        self.server, self.logs, self.count = server, logs, 0
        self.args = ["--dataset", str(manifest), "--backbone", "tiny", "--epochs", str(EPOCHS), "--max-seconds", "1",
                     "--batch-size", "8", "--clips-per-class", "2", "--lr", "1e-3", "--loss", "eager",
                     "--device", "cpu", "--num-workers", "0", "--seed", "17"]

    def run(self, out: Path, resume: bool, kill=None, kill_after: float | None = None):
        """(exit code, output) of one run; kill = (file name, n, "before" | "after"): SIGKILL at the
        n-th os.replace onto that name, before or after it; kill_after: SIGKILL after that many seconds."""
        self.count += 1
        log = self.logs / f"run{self.count}.log"
        argv = self.args + ["--out", str(out)] + (["--resume"] if resume else [])
        self.server.stdin.write(json.dumps([argv, kill, str(log)]) + "\n")
        self.server.stdin.flush()
        pid = int(self.server.stdout.readline())
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # already finished
                pass
        code = int(self.server.stdout.readline())
        return code, log.read_text()

    def resume_to_the_end(self, out: Path):
        """Resume once, uninterrupted: it must finish. (A refusal with a clear "error:" would at least
        be no crash, but every kill in this file leaves a folder that can be resumed.)"""
        code, output = self.run(out, resume=True)
        what = "a traceback" if "Traceback" in output else "a clear error" if "error:" in output else "no reason given"
        assert code == 0, f"resuming {out} after a kill failed ({code}, {what}):\n{output[-3000:]}"


@pytest.fixture(scope="module")
def runs(server, small_manifest, tmp_path_factory):
    return Runs(server, small_manifest, tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def straight(runs, tmp_path_factory):
    """The uninterrupted run, how long it took, and the files it wrote through os.replace, in order."""
    out = tmp_path_factory.mktemp("straight") / "run"
    started = time.time()
    code, output = runs.run(out, resume=False)
    assert code == 0, output
    return out, time.time() - started, json.loads(output.split("os.replace onto:")[-1])


def files(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())


def assert_ends_like(out: Path, straight: Path, after: str):
    def log(run):
        lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        timings = ("seconds", "valid_seconds", "clips_per_s")
        return [{k: v for k, v in line.items() if k not in timings} for line in lines]

    def selection(run):
        run = json.loads((run / "run.json").read_text())
        return run["finished"], run["epochs_run"], run["selected_epoch"], run["selected_valid_acc"]

    assert log(out) == log(straight), f"log.jsonl after {after}"
    assert selection(out) == selection(straight), f"run.json after {after}"
    for encoder in ("encoder", "encoder-last"):
        weights, expected = (load_file(run / encoder / "model.safetensors") for run in (out, straight))
        assert weights.keys() == expected.keys()
        assert all(weights[k].equal(expected[k]) for k in expected), f"other weights in {encoder}/ after {after}"
    left_over, missing = set(files(out)) - set(files(straight)), set(files(straight)) - set(files(out))
    assert not left_over and not missing, f"after {after}: left over {sorted(left_over)}, missing {sorted(missing)}"


# ----------------------------------------------------------------------------------------------
# Kills at chosen writes
# ----------------------------------------------------------------------------------------------

# Each process of one folder, in turn, is killed at a chosen os.replace, counted within that process.
# With seed 17 valid accuracy peaks at epochs 1, 2 and 4 (3 is below 2), so a fresh run writes these files
# (a resumed one first rewrites log.jsonl from its checkpoint, then run.json, then goes on as here):
WRITES = ["run.json", "best-e1.pt", "checkpoint.pt", "best-e2.pt", "checkpoint.pt", "checkpoint.pt", "best-e4.pt",
          "checkpoint.pt", "run.json"]
KILLS = [  # (file, n-th write of it in that process, before or after the rename), a file the kill leaves
    # (a pattern: whole-file writes go through a temporary file of their own, .NAME.XXXXXXXX.tmp)
    (("run.json", 1, "before"), ".run.json.*.tmp"),  # before any checkpoint: resumed by a fresh start
    (("checkpoint.pt", 2, "after"), "best-e1.pt"),  # after epoch 2's checkpoint, before best-e1.pt is dropped
    (("log.jsonl", 1, "before"), ".log.jsonl.*.tmp"),  # the resume's rewrite of the log
    (("log.jsonl", 1, "after"), "log.jsonl"),
    (("best-e4.pt", 1, "before"), ".best-e4.pt.*.tmp"),  # epoch 3 done, epoch 4's best weights written
    (("best-e4.pt", 1, "after"), "best-e4.pt"),  # ... and renamed, the checkpoint still epoch 3's
    (("checkpoint.pt", 1, "before"), ".checkpoint.pt.*.tmp"),  # epoch 4's checkpoint
    (("checkpoint.pt", 1, "after"), "best-e2.pt"),  # ... renamed, the stale best-e2.pt not yet dropped
    (("run.json", 2, "before"), ".run.json.*.tmp"),  # the end: encoders saved, run.json not yet finished
    (("run.json", 2, "after"), "checkpoint.pt"),  # finished, the checkpoint not yet removed
]


def test_kills_at_each_kind_of_write_resume_to_the_uninterrupted_end(runs, straight, tmp_path):
    straight, _, writes = straight
    assert writes == WRITES  # else the kill points below do not hit the moments their comments name
    out = tmp_path / "run"
    for number, (kill, left) in enumerate(KILLS):
        code, output = runs.run(out, resume=number > 0, kill=kill)
        assert code == KILLED, f"kill {kill} did not happen ({code}):\n{output[-3000:]}"
        assert list(out.glob(left)), f"kill {kill} left no {left}: {files(out)}"
        # a copy is resumed to the end; the folder itself goes on to the next kill
        resumed = shutil.copytree(out, tmp_path / f"resumed-after-kill-{number + 1}")
        runs.resume_to_the_end(resumed)
        assert_ends_like(resumed, straight, f"kill {number + 1} at {kill}")


# ----------------------------------------------------------------------------------------------
# Kills at random moments
# ----------------------------------------------------------------------------------------------

def test_kills_at_random_moments_resume_to_the_uninterrupted_end(runs, straight, tmp_path):
    # Fresh runs killed at moments drawn (fixed seed) over how long the uninterrupted run took, each
    # then resumed to the end. A run that ends before its kill (the machine got faster) is no kill:
    # it is compared all the same, and its time scales the next draws.
    straight, seconds, _ = straight
    rng = random.Random(13)
    kills = 0
    for attempt in range(8):
        out = tmp_path / f"run{attempt}"
        started = time.time()
        code, output = runs.run(out, resume=False, kill_after=rng.uniform(0.05, 0.95) * seconds)
        assert code in (0, KILLED), f"run {attempt} failed ({code}):\n{output[-3000:]}"
        if code == KILLED:
            kills += 1
            runs.resume_to_the_end(out)
        else:
            seconds = time.time() - started
        assert_ends_like(out, straight, f"a kill at a random moment (run {attempt})")
        if kills == 3:
            return
    raise AssertionError(f"only {kills} of 8 runs were killed before they ended")
