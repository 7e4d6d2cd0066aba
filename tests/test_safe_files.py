"""Nothing lost, nothing executed (issue 24), for the stage scripts: the files the project reads back
load without unpickling code; a run writes only into a folder that is new, empty or its own run asked
to continue (--resume) or be replaced (--overwrite), one writer at a time (the lock run_all.sh shares);
a model with NaN or inf in it stops the stage that meets it; bad arguments and damaged files are one
line, not a traceback. Every test runs the scripts as a user would (subprocesses, tiny random
backbone, demo data); each failed on 80864bb."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import outdir
from conftest import ROOT, run_script

FAST = ["--backbone", "tiny", "--max-seconds", "1", "--batch-size", "16", "--lr", "1e-3"]


def fast(script):
    """Quick settings; PairTune's reference loss (the fused one compiles for tens of seconds)."""
    return FAST + (["--loss", "eager"] if script == "pairtune.py" else [])


PAIRTUNE = fast("pairtune.py")
PROBE_FAST = ["--lrs", "1e-2", "--batch-sizes", "32", "--epochs", "5"]


def one_line_error(result, *words):
    """Exit 1 or 2, one `error:` line (or the interrupted line) on stderr, no traceback, naming `words`."""
    assert result.returncode in (1, 2), (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "weights_only" not in result.stdout + result.stderr  # torch's advice never reaches the user
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, (word, last)
    return last


class Payload:
    """What a hostile run folder could hold: unpickling it would run `touch SENTINEL`."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def plant(path, sentinel):
    """Replace a file the project reads back by a pickle whose loading runs code."""
    torch.save({"key": {}, "features": Payload(sentinel), "head": Payload(sentinel)}, path)


@pytest.fixture(scope="module")
def runs_made(demo_manifest, tmp_path_factory):
    """A finished PairTune run with its probe, and a FineTune run that kept its checkpoint."""
    root = tmp_path_factory.mktemp("safe")
    pairtune, finetune = root / "pairtune", root / "finetune"
    run_script("pairtune.py", "--dataset", demo_manifest, *PAIRTUNE, "--epochs", 1, "--out", pairtune)
    run_script("probe.py", "--ckpt", pairtune, *PROBE_FAST)
    run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--epochs", 1, "--out", finetune, "--keep-checkpoint")
    return {"pairtune": pairtune, "finetune": finetune, "root": root}


def a_test_clip(demo_manifest):
    return sorted((demo_manifest.parent / "audio" / "test").glob("*.wav"))[0]


def copy_run(source, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock*"))
    return target


# ----------------------------------------------------------------------------------------------
# Nothing executed from a run folder
# ----------------------------------------------------------------------------------------------

def test_a_planted_feature_cache_runs_nothing_and_is_encoded_again(runs_made, demo_manifest, tmp_path):
    run = copy_run(runs_made["pairtune"], tmp_path)
    sentinel = tmp_path / "ran"
    cache = run / "features" / demo_manifest.parent.name
    results = []
    # Each reader meets planted files (a reader that encodes again replaces them for the next one).
    for command in (["predict.py", run, a_test_clip(demo_manifest)], ["export.py", run, "--out", tmp_path / "export"],
                    ["eval.py", "report", tmp_path], ["probe.py", "--ckpt", run, *PROBE_FAST, "--overwrite"]):
        for split in ("train", "valid", "test"):
            plant(cache / f"{split}.pt", sentinel)
        results.append(run_script(*command, check=False))
    assert not sentinel.exists()
    for result in results:
        assert "weights_only" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert results[-1].returncode == 0 and "encoding again" in results[-1].stdout
    # the caches were made again, and load as plain tensors
    assert torch.load(cache / "test.pt", weights_only=True)["features"].ndim == 2


@pytest.mark.parametrize("which", ["checkpoint.pt", "best"])
def test_a_planted_checkpoint_or_best_file_runs_nothing(runs_made, demo_manifest, tmp_path, which):
    run = copy_run(runs_made["finetune"], tmp_path)
    sentinel = tmp_path / "ran"
    target = run / "checkpoint.pt" if which == "checkpoint.pt" else next(run.glob("best-e*.pt"))
    plant(target, sentinel)
    # As if killed after its last checkpoint: --resume reads checkpoint.pt, then (no epoch left) the best file
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "finished": False}))
    result = run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--epochs", 1, "--out", run,
                        "--keep-checkpoint", "--resume", check=False)
    assert not sentinel.exists()
    one_line_error(result, target.name, "--overwrite")


def test_a_planted_head_runs_nothing(runs_made, demo_manifest, tmp_path):
    clip = a_test_clip(demo_manifest)
    for name in ("finetune", "pairtune"):
        run = copy_run(runs_made[name], tmp_path, name)
        sentinel = tmp_path / f"ran-{name}"
        plant(run / ("head.pt" if name == "finetune" else "probe/head.pt"), sentinel)
        for command in (["predict.py", run, clip], ["export.py", run, "--out", tmp_path / f"export-{name}"]):
            result = run_script(*command, check=False)
            assert not sentinel.exists()
            one_line_error(result, "head.pt")


def test_a_checkpoint_of_the_previous_version_still_resumes(runs_made, demo_manifest, tmp_path):
    # Before this change the checkpoint held numpy's random state as it comes (an array of uint32).
    import numpy as np
    run = copy_run(runs_made["finetune"], tmp_path)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for states in state["rng"]:
        name, key, *rest = states["numpy"]
        states["numpy"] = (name, np.array(key, dtype=np.uint32), *rest)
    torch.save(state, run / "checkpoint.pt")
    resumed = run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--epochs", 2, "--out", run, "--resume")
    assert "resumed from" in resumed.stdout and json.loads((run / "run.json").read_text())["epochs_run"] == 2


def test_checkpoints_hold_only_tensors_and_plain_data(runs_made):
    state = torch.load(runs_made["finetune"] / "checkpoint.pt", weights_only=True)  # raised on 80864bb (numpy)
    assert state["epoch"] == 1 and isinstance(state["rng"][0]["numpy"][1], list)


# ----------------------------------------------------------------------------------------------
# Folders the user owns are never emptied
# ----------------------------------------------------------------------------------------------

def users_folder(path):
    """A folder of the user's that happens to use the names a run writes."""
    (path / "features").mkdir(parents=True)
    (path / "features" / "mine.npy").write_text("the user's")
    (path / "probe").mkdir()
    (path / "probe" / "notes.txt").write_text("the user's")
    for name in ("results.json", "log.jsonl", "paper.tex"):
        (path / name).write_text("the user's")
    return {p: p.read_text() for p in path.rglob("*") if p.is_file()}


def unchanged(files):
    return all(p.is_file() and p.read_text() == text for p, text in files.items())


@pytest.mark.parametrize("script", ["pairtune.py", "finetune.py"])
def test_a_users_folder_is_refused_as_out(demo_manifest, tmp_path, script):
    files = users_folder(tmp_path / "mine")
    result = run_script(script, "--dataset", demo_manifest, *fast(script), "--epochs", 1, "--out", tmp_path / "mine",
                        check=False)
    one_line_error(result, "not empty", "holds no run")
    assert unchanged(files) and set(os.listdir(tmp_path / "mine")) == {"features", "probe", "results.json",
                                                                       "log.jsonl", "paper.tex"}


def test_finetune_into_the_data_folder_is_refused(demo_manifest, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_manifest.parent, data)
    (data / "features").mkdir()
    (data / "features" / "precious.pt").write_text("the user's")
    (data / "results.json").write_text("the user's")
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    result = run_script("finetune.py", "--dataset", data / "manifest.csv", *FAST, "--epochs", 1, "--out", data,
                        check=False)
    one_line_error(result, "holds no run")
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
    assert (data / "results.json").read_text() == "the user's"


def test_rerunning_over_a_finished_run_is_refused_and_overwrite_replaces_only_its_files(runs_made, demo_manifest,
                                                                                          tmp_path):
    run = copy_run(runs_made["pairtune"], tmp_path)
    (run / "my-notes.md").write_text("the user's")
    probe_before = (run / "probe" / "results.json").read_text()
    result = run_script("pairtune.py", "--dataset", demo_manifest, *PAIRTUNE, "--epochs", 1, "--out", run, check=False)
    one_line_error(result, "finished pairtune run", "--overwrite")
    assert (run / "probe" / "results.json").read_text() == probe_before and (run / "features").is_dir()
    # --overwrite: said in one line, a new run; the user's file in the folder is kept
    replaced = run_script("pairtune.py", "--dataset", demo_manifest, *PAIRTUNE, "--epochs", 1, "--out", run,
                          "--overwrite")
    assert "--overwrite: replacing the pairtune run" in replaced.stdout
    assert (run / "my-notes.md").read_text() == "the user's" and not (run / "probe").exists()
    assert json.loads((run / "run.json").read_text())["finished"]


def test_probe_into_its_pairtune_run_folder_is_refused(runs_made, tmp_path):
    run = copy_run(runs_made["pairtune"], tmp_path)
    before = (run / "run.json").read_text()
    result = run_script("probe.py", "--ckpt", run, *PROBE_FAST, "--out", run, check=False)
    one_line_error(result, "pairtune run, not a probe run")
    assert (run / "run.json").read_text() == before


def test_a_finished_probe_is_kept_unless_asked(runs_made, tmp_path):
    run = copy_run(runs_made["pairtune"], tmp_path)
    before = (run / "probe" / "results.json").read_text()
    refused = one_line_error(run_script("probe.py", "--ckpt", run, *PROBE_FAST, check=False), "finished probe",
                             "--overwrite")
    assert "extends" not in refused  # a probe keeps no checkpoint
    kept = run_script("probe.py", "--ckpt", run, *PROBE_FAST, "--resume")
    assert "nothing to do" in kept.stdout and (run / "probe" / "results.json").read_text() == before
    run_script("probe.py", "--ckpt", run, *PROBE_FAST, "--overwrite")
    assert json.loads((run / "probe" / "run.json").read_text())["finished"]


def start(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_two_runs_into_one_folder_the_second_stops_naming_the_first(demo_manifest, tmp_path):
    out = tmp_path / "shared-out"
    first = start("pairtune.py", "--dataset", demo_manifest, *PAIRTUNE, "--epochs", 100, "--out", out)
    try:
        wait_for(lambda: (out / "run.json").is_file() or first.poll() is not None)
        for flags in ([], ["--resume"], ["--overwrite"]):  # --overwrite too: the lock comes before any removal
            second = run_script("pairtune.py", "--dataset", demo_manifest, *PAIRTUNE, "--epochs", 100, "--out",
                                out, *flags, check=False)
            one_line_error(second, "in use by", f"process {first.pid}", "started")
            assert (out / "run.json").is_file() and first.poll() is None  # the first still runs, its files there
    finally:
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 143, stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["stage"] == "pairtune"
    assert not (out / ".lock").exists()  # let go at the end


def test_overwrite_stops_while_the_runs_own_probe_runs(runs_made, demo_manifest, tmp_path):
    run = copy_run(runs_made["pairtune"], tmp_path)
    prober = subprocess.Popen(["sleep", "120"])  # stands for a live probe.py (not an ancestor of the run)
    try:
        (run / "probe" / ".lock").write_text(outdir.lock_line(prober.pid) + "\n")
        result = run_script("pairtune.py", "--dataset", demo_manifest, *PAIRTUNE, "--epochs", 1, "--out", run,
                            "--overwrite", check=False)
        one_line_error(result, "probe is in use by", f"process {prober.pid}")
        assert (run / "probe" / "results.json").is_file() and (run / "features").is_dir()
    finally:
        prober.kill()
        prober.wait()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_says_where_the_run_stands_and_a_rerun_needs_resume(demo_manifest, tmp_path, stop):
    out = tmp_path / "stopped"
    args = ["--dataset", demo_manifest, *FAST, "--epochs", 3, "--out", out]
    run = start("finetune.py", *args)
    wait_for(lambda: (out / "checkpoint.pt").is_file() or run.poll() is not None)
    run.send_signal(stop)  # SIGTERM: kill, scancel; SIGINT: Ctrl-C
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + stop and "Traceback" not in stderr, stderr[-3000:]  # as the shell reports it
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted: ") and "holds epoch " in line and line.endswith("--resume")
    assert not (out / ".lock").exists()
    again = run_script("finetune.py", *args, check=False)
    one_line_error(again, "unfinished finetune run", "of 3 saved", "--resume")
    run_script("finetune.py", *args, "--resume")
    assert json.loads((out / "run.json").read_text())["finished"]


def test_a_stale_lock_is_taken_over_and_a_foreign_line_is_reported(demo_manifest, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    (out / ".lock").write_text("not a lock\n")
    result = run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--epochs", 1, "--out", out, check=False)
    one_line_error(result, "not a lock this project writes")
    # a lock naming a recycled pid (pid 1, another start time) is stale
    (out / ".lock").write_text(f"{os.uname().nodename} 1 12345\n")
    result = run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--epochs", 1, "--out", out)
    assert "took over the stale lock" in result.stdout and not (out / ".lock").exists()


# ----------------------------------------------------------------------------------------------
# NaN models stop where they are met
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["pairtune.py", "finetune.py"])
def test_a_diverging_run_stops_naming_the_epoch_and_the_lever(demo_manifest, tmp_path, script):
    result = run_script(script, "--dataset", demo_manifest, *fast(script), "--lr", "1e9", "--epochs", 2,
                        "--out", tmp_path / "nan", check=False)
    one_line_error(result, "non-finite", "epoch 1", "lower --lr")
    assert not (tmp_path / "nan" / "results.json").exists()


def poison_encoder(run):
    weights = load_file(run / "encoder" / "model.safetensors")
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, run / "encoder" / "model.safetensors", metadata={"format": "pt"})


def test_no_later_stage_accepts_a_nan_encoder(runs_made, demo_manifest, tmp_path):
    run = copy_run(runs_made["pairtune"], tmp_path)
    poison_encoder(run)
    probed = run_script("probe.py", "--ckpt", run, *PROBE_FAST, "--out", tmp_path / "probe-of-nan", check=False)
    one_line_error(probed, "non-finite")
    assert not (tmp_path / "probe-of-nan" / "results.json").exists()
    clip = a_test_clip(demo_manifest)
    one_line_error(run_script("predict.py", run, clip, "--json", check=False), "non-finite")
    one_line_error(run_script("export.py", run, "--out", tmp_path / "export", check=False), "non-finite")
    assert not (tmp_path / "export").exists()


# ----------------------------------------------------------------------------------------------
# Damaged files and bad arguments: one line
# ----------------------------------------------------------------------------------------------

def test_damaged_run_files_are_named(runs_made, demo_manifest, tmp_path):
    clip = a_test_clip(demo_manifest)
    finetune = copy_run(runs_made["finetune"], tmp_path, "ft")
    truncated = (finetune / "checkpoint.pt").read_bytes()[:1000]
    (finetune / "checkpoint.pt").write_bytes(truncated)
    resumed = run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--epochs", 2, "--out", finetune,
                         "--keep-checkpoint", "--resume", check=False)
    one_line_error(resumed, "checkpoint.pt", "cannot be read", "--overwrite")
    (finetune / "head.pt").write_bytes(b"\x00garbage")
    one_line_error(run_script("predict.py", finetune, clip, check=False), "head.pt")
    (finetune / "run.json").write_text('{"stage": "finet')
    one_line_error(run_script("predict.py", finetune, clip, check=False), "run.json", "cannot be read")
    one_line_error(run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--out", finetune, "--resume",
                              check=False), "run.json")
    pairtune = copy_run(runs_made["pairtune"], tmp_path, "pt")
    weights = pairtune / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    one_line_error(run_script("probe.py", "--ckpt", pairtune, *PROBE_FAST, "--overwrite", check=False),
                   "encoder", "cannot be loaded")


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "0"], ["--temperature", "above 0"]),
    (["--temperature", "-1"], ["--temperature", "above 0"]),
    (["--batch-size", "4", "--clips-per-class", "4"], ["fewer than two classes", "at least 8"]),
    (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--max-seconds", "0"], ["--max-seconds", "above 0"]),
])
def test_bad_arguments_are_one_line(demo_manifest, tmp_path, flags, words):
    result = run_script("pairtune.py", "--dataset", demo_manifest, *PAIRTUNE, *flags, "--out", tmp_path / "o",
                        check=False)
    one_line_error(result, *words)
    assert not (tmp_path / "o").exists()  # nothing made


def test_out_an_existing_file_and_a_one_class_dataset(demo_manifest, tmp_path):
    (tmp_path / "a-file").write_text("the user's")
    result = run_script("finetune.py", "--dataset", demo_manifest, *FAST, "--out", tmp_path / "a-file", check=False)
    one_line_error(result, "is a file")
    assert (tmp_path / "a-file").read_text() == "the user's"
    header, *rows = demo_manifest.read_text().splitlines()
    label = rows[0].split(",")[1]
    one_class = tmp_path / "one" / "manifest.csv"
    one_class.parent.mkdir()
    one_class.write_text("\n".join([header, *[f"{demo_manifest.parent}/{row}" for row in rows
                                              if row.split(",")[1] == label]]) + "\n")
    result = run_script("finetune.py", "--dataset", one_class, *FAST, "--out", tmp_path / "o", check=False)
    one_line_error(result, "1 class", "at least two")


# ----------------------------------------------------------------------------------------------
# The lock's rules (outdir.FolderLock), as run_all.sh keeps them
# ----------------------------------------------------------------------------------------------

def test_a_process_goes_on_under_its_runners_lock_and_not_under_anothers(tmp_path):
    folder = tmp_path / "run"
    with outdir.FolderLock(folder):  # this process is the runner; a child is started under it
        child = subprocess.run([sys.executable, "-c", f"import outdir\nwith outdir.FolderLock({str(folder)!r}): "
                                "print('went on')"], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.returncode == 0 and "went on" in child.stdout, child.stderr[-2000:]
        assert (folder / ".lock").read_text() == outdir.lock_line() + "\n"  # the runner's, untouched
    assert not (folder / ".lock").exists()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (folder / ".lock").write_text(outdir.lock_line(other.pid) + "\n")
        with pytest.raises(outdir.Refused, match=f"in use by process {other.pid}"):
            with outdir.FolderLock(folder):
                pass
    finally:
        other.kill()
        other.wait()


def test_a_lock_being_written_is_waited_for_not_called_foreign(tmp_path):
    import threading
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("")  # created, its line not yet written (O_EXCL, then write)
    other = subprocess.Popen(["sleep", "60"])
    try:
        writer = threading.Timer(0.1, lambda: (folder / ".lock").write_text(outdir.lock_line(other.pid) + "\n"))
        writer.start()
        with pytest.raises(outdir.Refused, match=f"in use by process {other.pid}"):
            with outdir.FolderLock(folder):
                pass
        writer.join()
    finally:
        other.kill()
        other.wait()


def test_a_runner_that_is_pid_1_is_an_ancestor_too(tmp_path):
    # run_all.sh as a container's first process: a new pid namespace, where the shell is pid 1
    folder = tmp_path / "run"
    script = (f"cd {ROOT} && echo \"$(hostname) $$ $(sed 's/.*) //' /proc/$$/stat | cut -d' ' -f20)\" > {folder}/.lock"
              f" && {sys.executable} -c 'import outdir\nwith outdir.FolderLock(\"{folder}\"): print(\"went on\")'")
    folder.mkdir()
    try:
        result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except FileNotFoundError:
        pytest.skip("no unshare")
    if result.returncode and "unshare" in result.stderr:
        pytest.skip(f"no pid namespace here: {result.stderr.strip()[:100]}")
    assert result.returncode == 0 and "went on" in result.stdout, result.stderr[-2000:]
