"""run_all.sh's orchestration, with a stand-in for python that records each call instead of training.

The stand-in writes the results files the real scripts would, so the skip-if-done logic is exercised
too. The real scripts are covered end to end in test_pipeline.py.
"""
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT

RECORDER = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Records "script args..." and fakes the files each script leaves behind; grid.py's done, best-batch
    # and plan (the skip test, the search's choice, the estimate) are the real ones, on those files, and
    # are not recorded. FAKE_FAIL: a job whose folder contains it exits 3. FAKE_VALID: "finetune/batch-16=0.6
    # ...": the valid accuracy of runs whose folder contains "/finetune/batch-16/" (else 0.5). FAKE_SLEEP:
    # seconds a training script takes. STARTS: a file that gets "start OUT" and "end OUT" lines. FAKE_LINGER:
    # seconds a process the script starts outlives it (as a stray worker can). FAKE_SLOW_STOP: seconds the
    # script takes to stop on SIGINT (a checkpoint written). FAKE_HOLD_SLOT: the script leaves a process
    # holding GPU slot 0 of --parallel (something outside the grid's control). Each word is logged quoted
    # (shlex.split gives it back whole).
    if [[ $1 == grid.py ]]; then exec "$REAL_PYTHON" "$@"; fi
    echo "$(printf '%q ' "$@")@gpu=${CUDA_VISIBLE_DEVICES:-none} @threads=${OMP_NUM_THREADS:-none}" >> "$CALL_LOG"
    script=$1; shift
    out=""; ckpt=""
    while [[ $# -gt 0 ]]; do
      case $1 in --out) out=$2; shift;; --ckpt) ckpt=$2; shift;; esac; shift
    done
    note() {  # start or end of a training script, when, on which GPU
      [[ -n ${STARTS:-} && -n $out$ckpt ]] || return 0
      echo "$1 $script ${out:-$ckpt} $(date +%s.%N) ${CUDA_VISIBLE_DEVICES:-none}" >> "$STARTS"
    }
    note start
    [[ -n ${FAKE_LINGER:-} ]] && (sleep "$FAKE_LINGER" < /dev/null > /dev/null 2>&1 &)
    [[ -n ${FAKE_SLOW_STOP:-} ]] && trap 'sleep "$FAKE_SLOW_STOP"; exit 130' INT
    [[ -n ${FAKE_HOLD_SLOT:-} ]] && (flock "$GRID_STATE/slot-0" sleep 20 < /dev/null > /dev/null 2>&1 &) && sleep 0.5
    sleep "${FAKE_SLEEP:-0}"
    if [[ -n ${FAKE_FAIL:-} && "${out:-$ckpt}/" == *"$FAKE_FAIL"* ]]; then echo "boom in ${out:-$ckpt}" >&2; exit 3; fi
    valid() {
      local pair; for pair in ${FAKE_VALID:-}; do
        [[ "${out:-$ckpt}/" == *"/${pair%=*}/"* ]] && { echo "${pair#*=}"; return; }
      done
      echo 0.5
    }
    finished() { mkdir -p "$1" && printf '{"stage": "%s", "finished": true}' "$2" > "$1/run.json"; }
    case $script in
      finetune.py) finished "$out" finetune && echo "{\\"valid_acc\\": $(valid)}" > "$out/results.json";;
      pairtune.py) finished "$out" pairtune;;
      probe.py) where=${out:-$ckpt/probe}  # a frozen encoder's probe has its own --out
                mkdir -p "$where" && echo "{\\"valid_acc\\": $(valid)}" > "$where/results.json" &&
                finished "$where" probe;;
    esac
    note end
    exit 0
    """)


def no_gpu_here(folder):
    """A stand-in nvidia-smi that finds no GPU, in folder (put it first on PATH): the tests of the CPU
    path must not find the host's GPUs where they run on one."""
    stand_in = folder / "nvidia-smi"
    stand_in.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed (a stand-in of the tests)' >&2\nexit 9\n")
    stand_in.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def environment(tmp_path, **env):
    recorder = tmp_path / "recorder.sh"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    return {**base, "PYTHON": str(recorder), "CALL_LOG": str(tmp_path / "calls.log"), "RUNS": str(tmp_path / "runs"),
            "REAL_PYTHON": sys.executable, "PATH": no_gpu_here(tmp_path), **env}


def run_all(tmp_path, *flags, expect=0, **env):
    """run_all.sh's calls of the (stand-in) scripts, as argument lists, and its stdout."""
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)  # each call returns only its own calls
    result = subprocess.run(["bash", str(ROOT / "run_all.sh"), *flags], env=environment(tmp_path, **env),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == expect, result.stdout + result.stderr
    calls = [shlex.split(line.split(" @gpu=")[0]) for line in log.read_text().splitlines()] if log.exists() else []
    return calls, result.stdout


def flag(call, name):
    return call[call.index(name) + 1] if name in call else None


def process_start(pid):
    """Field 22 of /proc/PID/stat (start time, clock ticks after boot), read after the last ')'."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[19]


def test_esc50_runs_its_five_folds_and_other_datasets_their_seeds(tmp_path):
    calls, _ = run_all(tmp_path, DATASETS="esc50 gtzan", BACKBONES="tiny", SEEDS="0 1 2", EPOCHS="1")
    training = [c for c in calls if c[0] in ("finetune.py", "pairtune.py")]
    esc50 = [c for c in training if flag(c, "--dataset") == "esc50"]
    gtzan = [c for c in training if flag(c, "--dataset") == "gtzan"]
    for script in ("finetune.py", "pairtune.py"):
        assert sorted(flag(c, "--fold") for c in esc50 if c[0] == script) == ["1", "2", "3", "4", "5"]
        assert {flag(c, "--seed") for c in esc50 if c[0] == script} == {"0"}
        assert sorted(flag(c, "--seed") for c in gtzan if c[0] == script) == ["0", "1", "2"]
        assert all(flag(c, "--fold") is None for c in gtzan)
    outs = {flag(c, "--out") for c in esc50 if c[0] == "finetune.py"}
    assert outs == {str(tmp_path / f"runs/esc50/tiny/finetune/fold-{k}") for k in range(1, 6)}
    probes = [flag(c, "--ckpt") for c in calls if c[0] == "probe.py"]
    assert len(probes) == 5 + 3 and all("/pairtune/" in p for p in probes)
    assert calls[-1][:2] == ["eval.py", "report"]


def test_finished_runs_are_skipped(tmp_path):
    run_all(tmp_path, DATASETS="esc50", BACKBONES="tiny", FOLDS="1 2", EPOCHS="1")
    calls, stdout = run_all(tmp_path, DATASETS="esc50", BACKBONES="tiny", FOLDS="1 2 3", EPOCHS="1")
    assert stdout.count(": skip") == 4  # folds 1 and 2, both arms
    assert sorted((c[0], flag(c, "--fold")) for c in calls) == [
        ("eval.py", None), ("finetune.py", "3"), ("pairtune.py", "3"), ("probe.py", None)]


def test_a_run_cut_short_is_run_again(tmp_path):
    run_all(tmp_path, DATASETS="esc50", BACKBONES="tiny", FOLDS="1", EPOCHS="1")
    runs = tmp_path / "runs/esc50/tiny"
    (runs / "finetune/fold-1/run.json").write_text('{"stage": "finetune", "finished": false}')  # killed mid-run
    (runs / "pairtune/fold-1/probe/run.json").write_text('{"stage": "probe", "fini')  # killed while writing
    calls, stdout = run_all(tmp_path, DATASETS="esc50", BACKBONES="tiny", FOLDS="1", EPOCHS="1")
    assert ": skip" not in stdout
    assert [c[0] for c in calls] == ["finetune.py", "pairtune.py", "probe.py", "eval.py"]


# ----------------------------------------------------------------------------------------------
# The job list: --list, --count, --job N, SLURM_ARRAY_TASK_ID
# ----------------------------------------------------------------------------------------------

GRID = dict(DATASETS="esc50 gtzan", BACKBONES="tiny", FOLDS="1 2", SEEDS="0 1", EPOCHS="1")  # 8 jobs


def listed(stdout):
    """--list's lines as (job number, command)."""
    return [(int(line.rsplit("  # job ", 1)[1].split(":")[0]), line.rsplit("  # job ", 1)[0])
            for line in stdout.splitlines()]


def test_the_list_numbers_jobs_stably_and_leaves_out_what_is_done(tmp_path):
    assert run_all(tmp_path, "--count", **GRID)[1] == "8\n"
    _, stdout = run_all(tmp_path, "--list", **GRID)
    jobs = listed(stdout)
    assert [number for number, _ in jobs] == list(range(8))
    assert "finetune.py --dataset esc50 --backbone tiny --epochs 1 --seed 0 --fold 1" in jobs[0][1]
    assert "pairtune.py" in jobs[1][1] and "&& " in jobs[1][1] and "probe.py --ckpt" in jobs[1][1]
    # A listed line is a complete command: run as it is, it makes the same calls as --job.
    subprocess.run(["bash", "-c", jobs[5][1]], env=environment(tmp_path, **GRID), check=True, cwd=ROOT)
    by_hand = (tmp_path / "calls.log").read_text().splitlines()
    calls, _ = run_all(tmp_path, "--job", "7", **GRID)
    assert [c[0] for c in calls] == ["pairtune.py", "probe.py"] and flag(calls[0], "--seed") == "1"
    jobs_left = listed(run_all(tmp_path, "--list", **GRID)[1])
    assert [number for number, _ in jobs_left] == [0, 1, 2, 3, 4, 6]  # the numbers of the rest do not move
    calls, _ = run_all(tmp_path, "--job", "010", **dict(GRID, DATASETS="gtzan", SEEDS="0 1 2 3 4 5"))
    assert [(c[0], flag(c, "--seed")) for c in calls] == [("finetune.py", "5")]  # zero-padded: job 10, not octal 8
    assert [shlex.split(line.split(" @gpu=")[0])[0] for line in by_hand] == ["pairtune.py", "probe.py"]


def test_an_array_task_runs_the_job_of_its_index_and_nothing_else(tmp_path):
    calls, stdout = run_all(tmp_path, SLURM_ARRAY_TASK_ID="2", **GRID)
    assert [(c[0], flag(c, "--fold")) for c in calls] == [("finetune.py", "2")]  # no report from one task
    assert "== job 2/8:" in stdout
    _, stdout = run_all(tmp_path, "--job", "8", expect=2, **GRID)


def test_a_batch_script_submits_the_grid_as_an_array(tmp_path):
    # A stand-in sbatch that runs each task of --array=A-B in turn, as Slurm would on many nodes: it
    # sets SLURM_ARRAY_TASK_ID and SLURM_SUBMIT_DIR and passes the submitter's environment (Slurm's default).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        array=; args=()
        for arg in "$@"; do
          case $arg in --array=*) array=${arg#--array=};; --parsable|--dependency=*) ;; *) args+=("$arg");; esac
        done
        for (( task = ${array%-*}; task <= ${array#*-}; task++ )); do
          (cd /; SLURM_ARRAY_TASK_ID=$task SLURM_SUBMIT_DIR=$SUBMIT_DIR bash "$ROOT/${args[0]}" "${args[@]:1}") \\
            >> "$SLURM_OUT" 2>&1
        done
        echo 4242
        """))
    (bin_dir / "sbatch").chmod(0o755)
    env = environment(tmp_path, **GRID, BATCH_SIZES="16 32", FAKE_VALID="pairtune/batch-32=0.9",
                      PATH=f"{bin_dir}:{os.environ['PATH']}", ROOT=str(ROOT), SUBMIT_DIR=str(ROOT),
                      SLURM_OUT=str(tmp_path / "slurm.out"))
    # docs/cluster.md's commands: the search's jobs, then the grid's once they are done.
    script = textwrap.dedent("""\
        S=$(bash run_all.sh --count search); N=$(bash run_all.sh --count)
        search=$(sbatch --parsable --array=0-$((S - 1)) slurm/run_all.sbatch)
        sbatch --dependency=afterany:$search --array=$S-$((N - 1)) slurm/run_all.sbatch
        """)
    subprocess.run(["bash", "-c", script], env=env, cwd=ROOT, check=True, timeout=120)
    calls = [shlex.split(line.split(" @gpu=")[0]) for line in (tmp_path / "calls.log").read_text().splitlines()]
    training = [c for c in calls if c[0] in ("finetune.py", "pairtune.py")]
    search = [c for c in training if "-search/" in flag(c, "--out")]
    grid = [c for c in training if "-search/" not in flag(c, "--out")]
    assert len(search) == 2 * 2 * 2  # 2 datasets x 2 arms x 2 batch sizes, first fold or seed only
    assert len(grid) == 8 and len({flag(c, "--out") for c in grid}) == 8  # every job once
    assert {flag(c, "--batch-size") for c in grid if c[0] == "pairtune.py"} == {"32"}
    assert {flag(c, "--batch-size") for c in grid if c[0] == "finetune.py"} == {"16"}  # a tie: the smaller


# ----------------------------------------------------------------------------------------------
# Failures, locks, kills
# ----------------------------------------------------------------------------------------------

def test_a_failed_job_does_not_stop_the_grid_and_is_run_again(tmp_path):
    calls, stdout = run_all(tmp_path, expect=1, FAKE_FAIL="gtzan/tiny/finetune/seed-0/", **GRID)
    failed = tmp_path / "runs/gtzan/tiny/finetune/seed-0"
    assert len([c for c in calls if c[0] in ("finetune.py", "pairtune.py")]) == 8  # all tried
    assert (failed / "job.rc").read_text().strip() == "3" and "boom" in (failed / "job.log").read_text()
    assert f"job 4, exit status 3, log {failed}/job.log" in stdout
    assert f"finetune.py --dataset gtzan --backbone tiny --epochs 1 --seed 0 --out {failed} --resume" in stdout
    assert calls[-1][:2] == ["eval.py", "report"]  # the report is still made, and told what is missing
    assert (tmp_path / "runs/report/missing.txt").read_text() == f"{failed}\n"
    calls, _ = run_all(tmp_path, **GRID)
    assert [(c[0], flag(c, "--out")) for c in calls] == [("finetune.py", str(failed)), ("eval.py", None)]
    assert not (tmp_path / "runs/report/missing.txt").exists()


def test_a_locked_job_is_left_to_its_runner_and_a_stale_lock_is_taken_over(tmp_path):
    grid = dict(GRID, DATASETS="gtzan", SEEDS="0")  # jobs 0 (finetune) and 1 (pairtune)
    finetune, pairtune = (tmp_path / f"runs/gtzan/tiny/{arm}/seed-0" for arm in ("finetune", "pairtune"))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    for folder, pid in ((finetune, os.getpid()), (pairtune, gone.pid)):
        folder.mkdir(parents=True)
        (folder / ".lock").write_text(f"{socket.gethostname()} {pid} {process_start(os.getpid())}\n")
    # The job locked by a live runner is left to it, and the grid fails: it was not run, and is not done.
    calls, stdout = run_all(tmp_path, expect=1, **grid)
    assert f"{finetune} is locked by process {os.getpid()}" in stdout
    assert f"took over the stale lock of {pairtune} (process {gone.pid}" in stdout
    assert [c[0] for c in calls] == ["pairtune.py", "probe.py", "eval.py"]
    assert (finetune / ".lock").exists() and not (pairtune / ".lock").exists()  # released when done
    (finetune / ".lock").write_text("another-host 1 100\n")
    _, stdout = run_all(tmp_path, "--job", "0", expect=1, **grid)
    assert "another machine" in stdout and not (finetune / "run.json").exists()


@pytest.mark.parametrize("mode", [[], ["--parallel", "2"]])
def test_killing_a_runner_mid_grid_and_starting_again_repeats_no_finished_job(tmp_path, mode):
    starts = tmp_path / "starts.log"
    env = environment(tmp_path, **GRID, FAKE_SLEEP="0.4", STARTS=str(starts))
    runner = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), *mode], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and sum(line.startswith("end") for line in lines_of(starts)) < 3:
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGKILL)  # the runner, its jobs and their scripts, as scancel does
    runner.wait()
    while time.time() < deadline:  # until every process of the group is gone, as before a real restart
        try:
            os.killpg(runner.pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    before = lines_of(starts)
    assert 3 <= sum(line.startswith("end") for line in before) < 12  # mid-grid: 8 training + 4 probe calls
    # a job is finished when its last script is: finetune.py, or pairtune.py's probe.py
    finished = {line.split()[2] for line in before if line.split()[:2] in (["end", "finetune.py"], ["end", "probe.py"])}
    assert finished
    _, stdout = run_all(tmp_path, *mode, **GRID, FAKE_SLEEP="0.1", STARTS=str(starts))
    after = lines_of(starts)[len(before):]
    assert not {line.split()[2] for line in after if line.startswith("start")} & finished  # none run again
    every_run = [str(tmp_path / "runs" / d / "tiny" / arm / r)
                 for d, repeats in (("esc50", ("fold-1", "fold-2")), ("gtzan", ("seed-0", "seed-1")))
                 for arm in ("finetune", "pairtune") for r in repeats]
    assert subprocess.run([sys.executable, str(ROOT / "grid.py"), "done", *every_run]).returncode == 0
    cut = {line.split()[2] for line in before if line.startswith("start")} - finished
    if cut and not mode:  # a job was running at the kill: its lock names the dead runner
        assert "took over the stale lock" in stdout


def lines_of(path):
    return path.read_text().splitlines() if path.exists() else []


# ----------------------------------------------------------------------------------------------
# --parallel K: one GPU a job, or the CPU's threads shared out
# ----------------------------------------------------------------------------------------------

def test_parallel_jobs_get_one_gpu_each_never_the_same_at_once(tmp_path):
    starts = tmp_path / "starts.log"
    _, stdout = run_all(tmp_path, "--parallel", "2", **GRID, FAKE_SLEEP="0.3", STARTS=str(starts),
                        CUDA_VISIBLE_DEVICES="3,5")
    spans = {}
    for line in lines_of(starts):
        kind, script, out, moment, gpu = line.split()
        spans.setdefault((script, out), {})[kind] = (float(moment), gpu)
    assert len(spans) == 12 and {span["start"][1] for span in spans.values()} == {"3", "5"}
    overlapping = [(a, b) for a in spans.values() for b in spans.values()
                   if a is not b and a["start"][0] < b["end"][0] and b["start"][0] < a["end"][0]]
    assert overlapping, "no two jobs ran at once"
    assert all(a["start"][1] != b["start"][1] for a, b in overlapping)
    assert "done 8 / running 0 / failed 0 / left 0" in stdout
    _, stdout = run_all(tmp_path, "--parallel", "3", expect=2, **GRID, CUDA_VISIBLE_DEVICES="3,5")


def test_parallel_jobs_on_cpu_share_the_threads(tmp_path):
    # No GPU found; and GPUs there but hidden by CUDA_VISIBLE_DEVICES set to nothing, as CUDA reads it.
    for case, env in (("none-found", {}), ("hidden", {"CUDA_VISIBLE_DEVICES": ""})):
        where = tmp_path / case
        where.mkdir()
        path = f"{fake_gpus(where)}:{os.environ['PATH']}" if env else no_gpu_here(where)
        run_all(where, "--parallel", "2", **GRID, **env, PATH=path)
        lines = [line for line in (where / "calls.log").read_text().splitlines() if not line.startswith("eval.py")]
        assert {line.split("@threads=")[1] for line in lines} == {str(max(1, os.cpu_count() // 2))}, case
        assert {line.split("@gpu=")[1].split()[0] for line in lines} == {"none"}, case


def fake_gpus(tmp_path):
    """A folder with a stand-in nvidia-smi that finds two GPUs, 0 and 1."""
    folder = tmp_path / "gpus"
    folder.mkdir(exist_ok=True)
    (folder / "nvidia-smi").write_text("#!/bin/sh\n[ \"$1\" = -L ] && echo 'GPU 0: H200' && echo 'GPU 1: H200' "
                                       "&& exit 0\necho 0; echo 1\n")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def test_the_plan_counts_the_jobs(tmp_path):
    run_all(tmp_path, "--job", "0", **GRID)
    _, stdout = run_all(tmp_path, "--plan", **GRID, BATCH_SIZES="16 32")
    assert stdout.startswith("jobs: 16 total, 1 done, 15 left (batch-size search: 8 total, 0 done, 8 left; "
                             "grid: 8 total, 1 done, 7 left)")


# ----------------------------------------------------------------------------------------------
# The real scripts: --parallel gives the sequential run's table
# ----------------------------------------------------------------------------------------------

def test_the_quick_run_in_parallel_gives_the_sequential_table(tmp_path):
    # Both with one thread a process, so each run computes in the same order: the same bits.
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHON=sys.executable, CONFIT_DATA=str(tmp_path / "data"), SEEDS="0 1", EPOCHS="1",
               EXTRA_ARGS="--lr 1e-3 --max-seconds 1 --batch-size 32",
               OMP_NUM_THREADS="1", PATH=no_gpu_here(tmp_path))  # CPU slots, on a GPU host too
    tables = []
    for name, flags in (("sequential", []), ("parallel", ["--parallel", "2"])):
        env["RUNS"] = str(tmp_path / name)
        result = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--quick", *flags], env=env, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        tables.append((tmp_path / name / "report" / "table.md").read_text())
    assert "done 4 / running 0 / failed 0 / left 0" in result.stdout
    assert tables[0] == tables[1] and "(n=2)" in tables[0]


def test_a_job_stopped_by_sigterm_lets_go_of_its_lock(tmp_path):
    # scancel and Slurm's time limit send SIGTERM to the task's processes before SIGKILL.
    starts = tmp_path / "starts.log"
    env = environment(tmp_path, **GRID, FAKE_SLEEP="30", STARTS=str(starts))
    task = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--job", "0"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "runs/esc50/tiny/finetune/fold-1/.lock"
    deadline = time.time() + 30
    while time.time() < deadline and not lines_of(starts):
        time.sleep(0.05)
    assert lock.exists()
    os.killpg(task.pid, signal.SIGTERM)
    assert task.wait(timeout=30) == 143 and not lock.exists()


# ----------------------------------------------------------------------------------------------
# Review findings: Ctrl-C, GPU slots held by strays, Slurm locks, racing takers, failures said once
# ----------------------------------------------------------------------------------------------

def group_is_gone(pgid, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            return True
    return False


def test_ctrl_c_stops_a_parallel_grid_its_jobs_and_its_display(tmp_path):
    starts, output = tmp_path / "starts.log", tmp_path / "runner.out"
    # Each job takes 1.5 s to stop (a checkpoint written): the runner must wait for them to let go
    # of their locks before it returns, so that a rerun right after finds the jobs free.
    env = environment(tmp_path, **GRID, FAKE_SLEEP="30", FAKE_SLOW_STOP="1.5", STARTS=str(starts))
    with open(output, "w") as out:
        runner = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--parallel", "2"], env=env,
                                  start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and len(lines_of(starts)) < 2:
        time.sleep(0.05)
    assert len(lines_of(starts)) == 2
    os.killpg(runner.pid, signal.SIGINT)  # what the terminal sends the foreground group on Ctrl-C
    assert runner.wait(timeout=30) == 130
    assert not list((tmp_path / "runs").rglob(".lock")), "the runner returned before its jobs let go of their locks"
    assert "interrupted" in output.read_text()
    assert group_is_gone(runner.pid, 10), "a job or the display still runs after Ctrl-C"


def test_a_process_left_behind_by_a_job_does_not_keep_its_gpu_slot(tmp_path):
    # One job at a time on two visible GPUs: each job must get GPU 3 (the first slot) and only it, though
    # every job leaves a process behind that runs on past the job.
    run_all(tmp_path, "--parallel", "1", **GRID, FAKE_LINGER="20", CUDA_VISIBLE_DEVICES="3,5")
    gpus = [line.split("@gpu=")[1].split()[0] for line in (tmp_path / "calls.log").read_text().splitlines()
            if not line.startswith("eval.py")]
    assert len(gpus) == 12 and set(gpus) == {"3"}  # the strays end on their own, holding nothing of the test


def test_no_free_gpu_slot_fails_the_job_loudly(tmp_path):
    # A worker of --parallel 1 (as xargs starts it) whose one slot something outside the grid holds:
    # before, it ran its job with every GPU visible.
    state = tmp_path / "state"
    state.mkdir()
    holder = subprocess.Popen(["flock", str(state / "slot-0"), "sleep", "30"])
    while subprocess.run(["flock", "-n", str(state / "slot-0"), "true"]).returncode == 0:
        time.sleep(0.02)  # until the holder has it
    try:
        env = environment(tmp_path, **GRID, CUDA_VISIBLE_DEVICES="3,5", GRID_GPUS="3 5", GRID_SLOTS="1",
                          GRID_STATE=str(state))
        result = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--parallel-worker", "0"], env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
    assert result.returncode == 1 and "error: job 0 not run: no free GPU slot" in result.stderr
    assert (state / "0.failed").exists() and not (tmp_path / "calls.log").exists()


def squeue_stand_in(bin_dir, body):
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "squeue").write_text("#!/usr/bin/env bash\n" + body)
    (bin_dir / "squeue").chmod(0o755)


@pytest.mark.parametrize("squeue", ["missing", "controller down", "listed"])
def test_a_slurm_lock_is_kept_when_slurm_cannot_say_its_job_is_gone(tmp_path, squeue):
    bin_dir = tmp_path / "bin"
    if squeue == "controller down":
        squeue_stand_in(bin_dir, "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\n")
    elif squeue == "listed":  # 778 runs (among others)
        squeue_stand_in(bin_dir, "printf '777\\n778\\n779\\n'\n")
    else:
        bin_dir.mkdir()
    folder = tmp_path / "runs/gtzan/tiny/finetune/seed-0"
    folder.mkdir(parents=True)
    (folder / ".lock").write_text("node-778 4321 5555 778\n")
    # PATH without the host's own squeue, if it has one
    path = ":".join([str(bin_dir), *(d for d in no_gpu_here(tmp_path).split(":") if not (Path(d) / "squeue").exists())])
    calls, stdout = run_all(tmp_path, "--job", "0", expect=1, **dict(GRID, DATASETS="gtzan", SEEDS="0"), PATH=path)
    assert calls == [] and "is locked by process 4321 on node-778 (Slurm job 778), start 5555" in stdout
    assert (folder / ".lock").read_text() == "node-778 4321 5555 778\n"


def test_a_live_process_on_this_host_keeps_its_lock_whatever_squeue_says(tmp_path):
    squeue_stand_in(tmp_path / "bin", "exit 0\n")  # lists nothing: every job gone
    folder = tmp_path / "runs/gtzan/tiny/finetune/seed-0"
    folder.mkdir(parents=True)
    (folder / ".lock").write_text(f"{socket.gethostname()} {os.getpid()} {process_start(os.getpid())} 778\n")
    calls, stdout = run_all(tmp_path, "--job", "0", expect=1, **dict(GRID, DATASETS="gtzan", SEEDS="0"),
                            PATH=f"{tmp_path / 'bin'}:{no_gpu_here(tmp_path)}")
    assert calls == [] and f"is locked by process {os.getpid()}" in stdout


@pytest.mark.parametrize("squeue_says", ["", "slurm_load_jobs error: Invalid job id specified", "other tasks"])
def test_the_lock_of_a_slurm_job_that_is_gone_is_taken_over(tmp_path, squeue_says):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # "other tasks": 778 is its array's first task, whose id lists the array's running tasks, not itself
    gone = {"": "exit 0", "other tasks": "printf '779\\n780\\n'"}.get(squeue_says, f"echo '{squeue_says}' >&2; exit 1")
    (bin_dir / "squeue").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        # A stand-in squeue: job 777 runs; any other job is gone ({squeue_says or "listed as nothing"}).
        [[ $* == *"--jobs=777"* ]] && echo 777 && exit 0
        {gone}
        """))
    (bin_dir / "squeue").chmod(0o755)
    grid = dict(GRID, DATASETS="gtzan", SEEDS="0", PATH=f"{bin_dir}:{no_gpu_here(tmp_path)}")
    finetune, pairtune = (tmp_path / f"runs/gtzan/tiny/{arm}/seed-0" for arm in ("finetune", "pairtune"))
    for folder, job in ((finetune, 777), (pairtune, 778)):
        folder.mkdir(parents=True)
        (folder / ".lock").write_text(f"node-{job} 4321 100 {job}\n")  # array tasks on other nodes
    calls, stdout = run_all(tmp_path, expect=1, **grid)  # 777's job is not run here, nor done: a failure
    assert f"took over the stale lock of {pairtune} (Slurm job 778 of process 4321 on node-778 is gone)" in stdout
    assert f"{finetune} is locked by process 4321 on node-777 (Slurm job 777)" in stdout
    assert [c[0] for c in calls] == ["pairtune.py", "probe.py", "eval.py"]
    assert f"{finetune} (locked: node-777 4321 100 777, host, process, start, Slurm job)" in stdout  # named at the end


def test_many_runners_on_one_stale_lock_run_its_job_once(tmp_path):
    grid = dict(GRID, DATASETS="gtzan", SEEDS="0")
    folder = tmp_path / "runs/gtzan/tiny/finetune/seed-0"
    folder.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (folder / ".lock").write_text(f"{socket.gethostname()} {gone.pid} 1\n")
    env = environment(tmp_path, **grid, FAKE_SLEEP="3")
    runners = [subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--job", "0"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(6)]
    outputs = [r.communicate(timeout=120)[0] for r in runners]
    # The taker runs the job; the others did not run it, and it was not done when they ended: they fail.
    assert sorted(r.returncode for r in runners) == [0, 1, 1, 1, 1, 1], outputs
    assert sum("== job 0 NOT RUN" in out for out in outputs) == 5, outputs
    calls = [line for line in (tmp_path / "calls.log").read_text().splitlines() if line.startswith("finetune.py")]
    assert len(calls) == 1, outputs
    assert sum("took over the stale lock" in out for out in outputs) == 1
    assert not (folder / ".lock").exists()


def test_a_failure_is_said_once_by_the_display_or_at_the_end(tmp_path):
    _, stdout = run_all(tmp_path, "--parallel", "2", expect=1, **GRID, BATCH_SIZES="16 32",
                        FAKE_FAIL="finetune/batch-16/", FAKE_SLEEP="0.2")
    failed = [line for line in stdout.splitlines() if " FAILED (exit status 3)" in line]
    assert len(failed) == 2, stdout  # the two datasets' batch-16 finetune search jobs
    assert len({line.split()[2] for line in failed}) == 2


# ----------------------------------------------------------------------------------------------
# SHOTS: the few-shot grid
# ----------------------------------------------------------------------------------------------

def test_shots_run_every_arm_and_the_frozen_probe_once_per_k_in_their_own_folders(tmp_path):
    grid = dict(GRID, DATASETS="gtzan esc50", SEEDS="0 1", FOLDS="1", SHOTS="1 4", EXTRA_ARGS="--lr 1e-3",
                PROBE_ARGS="--epochs 5")
    assert run_all(tmp_path, "--count", **grid)[1] == "18\n"  # (2 seeds + 1 fold) x 2 K x 3 arms
    calls, _ = run_all(tmp_path, **grid)
    runs = tmp_path / "runs"
    finetune = [c for c in calls if c[0] == "finetune.py"]
    assert sorted(flag(c, "--out") for c in finetune) == sorted(
        str(runs / d / "tiny/finetune" / f"shots-{k}" / r)
        for d, repeats in (("gtzan", ("seed-0", "seed-1")), ("esc50", ("fold-1",))) for k in (1, 4) for r in repeats)
    assert all(flag(c, "--shots") == flag(c, "--out").split("shots-")[1].split("/")[0] for c in finetune)
    frozen = [c for c in calls if c[0] == "probe.py" and "/frozen/" in (flag(c, "--out") or "")]
    assert len(frozen) == 6 and {flag(c, "--ckpt") for c in frozen} == {"tiny"}
    for call in frozen:  # the probe gets PROBE_ARGS, not the training scripts' EXTRA_ARGS (and --resume)
        assert flag(call, "--epochs") == "5" and "--lr" not in call and call[-1] == "--resume"
        assert flag(call, "--shots") in ("1", "4") and flag(call, "--dataset") in ("gtzan", "esc50")
    assert {flag(c, "--fold") for c in frozen if flag(c, "--dataset") == "esc50"} == {"1"}
    pairtune_probes = [c for c in calls if c[0] == "probe.py" and flag(c, "--ckpt") != "tiny"]
    assert len(pairtune_probes) == 6 and all("/shots-" in flag(c, "--ckpt") for c in pairtune_probes)
    calls, stdout = run_all(tmp_path, **grid)  # all done: nothing runs again
    assert [c[0] for c in calls] == ["eval.py"] and stdout.count(": skip") == 18


def test_jobs_that_find_no_free_gpu_slot_fail_the_grid(tmp_path):
    # The first job leaves a process holding GPU slot 0 of --parallel 1: every later job finds no slot.
    calls, stdout = run_all(tmp_path, "--parallel", "1", expect=1, **dict(GRID, DATASETS="gtzan", SEEDS="0 1"),
                            CUDA_VISIBLE_DEVICES="3", FAKE_HOLD_SLOT="1")
    assert [c[0] for c in calls if c[0] != "eval.py"] == ["finetune.py"]  # job 0 only
    assert "== job 1 NOT RUN (no free GPU slot)" in stdout and "== 3 job(s) not run: no free GPU slot" in stdout


# ----------------------------------------------------------------------------------------------
# Nothing lost, nothing executed: values from the environment, lock identity, jobs never run,
# the probes' --resume, the user's missing.txt
# ----------------------------------------------------------------------------------------------

# Each form of shell injection, as one word (no blanks: a name list would split it). If any part of it
# ran, $SENTINEL (set in the environment) would exist.
INJECTED = ("x;touch${IFS}$SENTINEL|touch${IFS}$SENTINEL&touch${IFS}$SENTINEL>$SENTINEL*"
            "$(touch${IFS}$SENTINEL)`touch${IFS}$SENTINEL`")
METACHARACTERS = ["16;touch${IFS}$SENTINEL", "16 $(touch $SENTINEL)", "16 `touch $SENTINEL`", "16|touch $SENTINEL",
                  "16&touch $SENTINEL", "16>$SENTINEL", "16 *", "16\ntouch $SENTINEL", "16${IFS}32"]


def test_a_number_from_the_environment_that_is_not_one_stops_the_runner_at_once(tmp_path):
    sentinel = tmp_path / "sentinel"
    no_control = "a folder name without control characters (newline, tab, ...)"
    cases = [("BATCH_SIZES", value, "a list of positive integers") for value in METACHARACTERS]
    cases += [("SEEDS", "0 " + INJECTED, "a list of integers (0, 1, ...)"),
              ("FOLDS", "1 " + INJECTED, "a list of integers (0, 1, ...)"),
              ("SHOTS", "1 4;touch $SENTINEL", "a list of positive integers"),
              ("SHOTS", "0", "a list of positive integers"),
              ("EPOCHS", "1;touch $SENTINEL", "a positive integer"), ("EPOCHS", "1 2", "a positive integer"),
              ("BATCH_SIZES", "-16", "a list of positive integers"),
              ("RUNS", f"{tmp_path}/runs\n;touch $SENTINEL", no_control),
              ("SEARCH_RUNS", f"{tmp_path}/s\tx", no_control)]
    for name, value, what in cases:
        for mode in (["--list"], ["--quick"], ["--job", "0"]):
            result = subprocess.run(["bash", str(ROOT / "run_all.sh"), *mode], capture_output=True, text=True,
                                    timeout=60, env=environment(tmp_path, **{**GRID, name: value},
                                                                SENTINEL=str(sentinel)))
            shown = value.replace("\n", "\\n").replace("\t", "?")
            assert (result.returncode, result.stdout) == (2, ""), (name, value, mode, result.stdout + result.stderr)
            assert result.stderr == f"error: {name}: '{shown}' is not {what}\n", (name, value, mode)
    assert not sentinel.exists() and not (tmp_path / "calls.log").exists()  # no prepare.py of --quick either


def test_listed_commands_pass_the_environments_words_as_they_are_and_run_none(tmp_path):
    sentinel = tmp_path / "sentinel"
    words = f"--lr 1e-3 {INJECTED} $(touch $SENTINEL) `touch $SENTINEL` * ;touch${{IFS}}$SENTINEL\n>$SENTINEL"
    runs, search = f"{tmp_path}/runs {INJECTED}", f"{tmp_path}/search {INJECTED}"
    grid = dict(DATASETS=INJECTED, BACKBONES=INJECTED, FOLD_DATASETS=INJECTED, FOLDS="1", EPOCHS="1",
                EXTRA_ARGS=words, PROBE_ARGS=words, SHOTS="2", BATCH_SIZES="16 32", RUNS=runs, SEARCH_RUNS=search,
                SENTINEL=str(sentinel))
    _, stdout = run_all(tmp_path, "--list", **grid)
    jobs = listed(stdout)
    assert len(jobs) == 2 * 2 + 3  # the search (2 arms x 2 batch sizes), then the grid's 3 arms at K=2
    for _, line in jobs:  # each line run as it is, as a user or a scheduler would
        subprocess.run(["bash", "-c", line], env=environment(tmp_path, **grid), cwd=ROOT, capture_output=True)
    assert not sentinel.exists()
    calls = [shlex.split(line.split(" @gpu=")[0]) for line in (tmp_path / "calls.log").read_text().splitlines()]
    extra = words.split()
    for call in calls:
        if call[0] in ("finetune.py", "pairtune.py") or "/frozen/" in (flag(call, "--out") or ""):
            assert flag(call, "--dataset") == INJECTED and call[-2:] == [flag(call, "--out"), "--resume"]
            assert flag(call, "--out").startswith((f"{runs}/{INJECTED}/{INJECTED.replace('/', '_')}/",
                                                   f"{search}/{INJECTED}/"))
            at = call.index("--lr")
            assert call[at:at + len(extra)] == extra  # every word, quoted, globbed by nothing
    assert {c[0] for c in calls} >= {"finetune.py", "pairtune.py", "probe.py"}
    # PYTHON is one word, quoted as such: a python whose path holds metacharacters runs as itself (it must run:
    # run_all.sh asks it for the run folders' names).
    odd_python = tmp_path / "python3;touch${IFS}$SENTINEL"
    odd_python.write_text(RECORDER)
    odd_python.chmod(0o755)
    # (New RUNS: the runs above are done, and left out of the list.)
    grid.update(RUNS=f"{runs}-2", SEARCH_RUNS=f"{search}-2")
    _, stdout = run_all(tmp_path, "--list", **dict(grid, PYTHON=str(odd_python)))
    for _, line in listed(stdout)[:2]:
        subprocess.run(["bash", "-c", line], env=environment(tmp_path, **grid), cwd=ROOT, capture_output=True)
    assert not sentinel.exists()
    assert [line.split()[0] for line in (tmp_path / "calls.log").read_text().splitlines()] == ["finetune.py"] * 2


def test_a_run_passes_the_environments_words_as_they_are_and_runs_none(tmp_path):
    sentinel = tmp_path / "sentinel"
    words = f"--lr 1e-3 {INJECTED} $(touch $SENTINEL) `touch $SENTINEL` * ;touch${{IFS}}$SENTINEL\n>$SENTINEL"
    runs = f"{tmp_path}/runs {INJECTED}"
    grid = dict(DATASETS=INJECTED, BACKBONES=INJECTED, SEEDS="0", EPOCHS="1", EXTRA_ARGS=words, PROBE_ARGS=words,
                SHOTS="2", BATCH_SIZES="16", RUNS=runs, SEARCH_RUNS=f"{tmp_path}/search {INJECTED}",
                SENTINEL=str(sentinel), CONFIT_DATA=f"{tmp_path}/data {INJECTED}")
    calls, stdout = run_all(tmp_path, **grid)
    assert not sentinel.exists()
    training = [c for c in calls if c[0] in ("finetune.py", "pairtune.py")]
    frozen = [c for c in calls if c[0] == "probe.py" and flag(c, "--ckpt") == INJECTED]
    assert len(training) == 2 + 2 and len(frozen) == 1  # the search's 2 jobs, the grid's 2 arms and the frozen probe
    extra = words.split()
    for call in training + frozen:
        at = call.index("--lr")
        assert call[at:at + len(extra)] == extra
        assert flag(call, "--backbone" if call in training else "--ckpt") == INJECTED
    assert {flag(c, "--batch-size") for c in training if "/shots-2/" in flag(c, "--out")} == {"16"}  # the search's
    assert calls[-1] == ["eval.py", "report", runs]
    _, stdout = run_all(tmp_path, **grid)  # all done, found done through those names
    assert stdout.count(": skip") == 5 and not sentinel.exists()


def test_this_runners_own_state_is_never_read_from_the_environment(tmp_path):
    # Bash's arithmetic runs the command substitution in a subscript of a value it is given.
    sentinel = tmp_path / "sentinel"
    injected = "PWD[$(touch $SENTINEL)]"
    env = dict(GRID, DATASETS="gtzan", SEEDS="0", SENTINEL=str(sentinel), GRID_NOT_RUN=injected,
               SEARCH_JOBS=injected, LOCKED_ELSEWHERE=injected, SLOT_FD=injected, ALIVE_FD=injected)
    assert run_all(tmp_path, "--count", "search", **env)[1] == "0\n"
    run_all(tmp_path, "--report", **env)
    run_all(tmp_path, "--parallel", "1", **env)
    calls, _ = run_all(tmp_path, **dict(env, SEEDS="1"))
    assert [c[0] for c in calls] == ["finetune.py", "pairtune.py", "probe.py", "eval.py"]
    assert not sentinel.exists()


def test_the_lock_names_its_runners_start_and_a_recycled_process_id_is_not_its_runner(tmp_path):
    grid = dict(GRID, DATASETS="gtzan", SEEDS="0")
    finetune, pairtune = (tmp_path / f"runs/gtzan/tiny/{arm}/seed-0" for arm in ("finetune", "pairtune"))
    host = socket.gethostname()
    # While a job runs, its lock is "HOST PID START SLURM_JOB_ID", naming the runner's own process.
    starts = tmp_path / "starts.log"
    env = environment(tmp_path, **grid, FAKE_SLEEP="30", STARTS=str(starts), SLURM_JOB_ID="4242")
    task = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--job", "0"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline and not lines_of(starts):
        time.sleep(0.05)
    try:
        assert (finetune / ".lock").read_text() == f"{host} {task.pid} {process_start(task.pid)} 4242\n"
    finally:
        os.killpg(task.pid, signal.SIGTERM)
        task.wait(timeout=30)
    assert not (finetune / ".lock").exists()
    # A live process id with another start time: the id was recycled, the runner is gone.
    (finetune / ".lock").write_text(f"{host} {os.getpid()} 1\n")
    # A live process whose command name holds ") (" and spaces, named with its true start: it holds the lock.
    sleeper = tmp_path / "x) 1 2 (y"
    sleeper.write_bytes(Path(shutil.which("sleep")).read_bytes())
    sleeper.chmod(0o755)
    holder = subprocess.Popen([str(sleeper), "60"])
    try:
        while "(y)" not in Path(f"/proc/{holder.pid}/stat").read_text():
            time.sleep(0.01)  # until it runs as itself
        pairtune.mkdir(parents=True)
        (pairtune / ".lock").write_text(f"{host} {holder.pid} {process_start(holder.pid)}\n")
        calls, stdout = run_all(tmp_path, expect=1, **grid)
        assert f"took over the stale lock of {finetune} (process {os.getpid()} on {host} is gone: its id now names " \
               f"a process started at {process_start(os.getpid())}, not 1)" in stdout
        assert [c[0] for c in calls] == ["finetune.py", "eval.py"]
        assert f"{pairtune} is locked by process {holder.pid} on {host}, start {process_start(holder.pid)}" in stdout
        assert (pairtune / ".lock").read_text() == f"{host} {holder.pid} {process_start(holder.pid)}\n"
    finally:
        holder.kill()
        holder.wait()
    # A zombie (dead, not yet reaped by its parent) holds nothing.
    zombie = subprocess.Popen(["true"])
    try:
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        (pairtune / ".lock").write_text(f"{host} {zombie.pid} {process_start(zombie.pid)}\n")
        calls, stdout = run_all(tmp_path, **grid)
        assert f"took over the stale lock of {pairtune} (process {zombie.pid} on {host} is gone)" in stdout
    finally:
        zombie.wait()


@pytest.mark.parametrize("text", ["{host} {dead}\n", "{host} {dead} 1 2 3\n", "{host} x 1\n", "\n", "garbage\n"])
def test_a_lock_line_that_does_not_parse_is_reported_not_taken_over(tmp_path, text):
    gone = subprocess.Popen(["true"])
    gone.wait()
    text = text.format(host=socket.gethostname(), dead=gone.pid)  # the first: the format before the start time
    folder = tmp_path / "runs/gtzan/tiny/finetune/seed-0"
    folder.mkdir(parents=True)
    (folder / ".lock").write_text(text)
    calls, stdout = run_all(tmp_path, "--job", "0", expect=1, **dict(GRID, DATASETS="gtzan", SEEDS="0"))
    assert calls == [] and (folder / ".lock").read_text() == text
    assert f"{folder} is locked by an unknown runner (its lock reads '" in stdout
    assert f"delete {folder}/.lock if no runner uses this folder" in stdout and "took over" not in stdout


@pytest.mark.parametrize("mode", [[], ["--job", "0"], ["--parallel", "2"]])
def test_a_job_left_undone_because_another_runner_holds_it_fails_the_run(tmp_path, mode):
    grid = dict(GRID, DATASETS="gtzan", SEEDS="0")
    finetune = tmp_path / "runs/gtzan/tiny/finetune/seed-0"
    finetune.mkdir(parents=True)
    holder = f"process {os.getpid()} on {socket.gethostname()}, start {process_start(os.getpid())}"
    (finetune / ".lock").write_text(f"{socket.gethostname()} {os.getpid()} {process_start(os.getpid())}\n")
    calls, stdout = run_all(tmp_path, *mode, expect=1, **grid)
    assert "finetune.py" not in [c[0] for c in calls]
    if mode[:1] == ["--job"]:
        assert f"== job 0 NOT RUN: {finetune} is locked by {holder}" in stdout
    else:
        assert "pairtune.py" in [c[0] for c in calls]  # the rest of the grid runs
        assert "== jobs not run: locked by another runner, and not done" in stdout
        assert f"   job 0, {finetune}, locked by {holder}" in stdout
    # Done by its runner meanwhile (here: before this runner looks): a job skipped as done is a success.
    (finetune / "run.json").write_text('{"stage": "finetune", "finished": true}')
    (finetune / "results.json").write_text('{"valid_acc": 0.5}')
    run_all(tmp_path, *mode, **grid)


def test_both_probes_are_started_with_resume(tmp_path):
    grid = dict(GRID, DATASETS="gtzan", SEEDS="0", SHOTS="2")
    jobs = [shlex.split(line) for _, line in listed(run_all(tmp_path, "--list", **grid)[1])]
    pairtune = tmp_path / "runs/gtzan/tiny/pairtune/shots-2/seed-0"
    frozen = tmp_path / "runs/gtzan/tiny/frozen/shots-2/seed-0"
    assert jobs[1][-4:] == ["probe.py", "--ckpt", str(pairtune), "--resume"]
    assert jobs[2][1] == "probe.py" and jobs[2][-3:] == ["--out", str(frozen), "--resume"]


def test_a_missing_txt_that_run_all_did_not_write_is_left_alone(tmp_path):
    report = tmp_path / "runs/report"
    report.mkdir(parents=True)
    mine = report / "missing.txt"
    mine.write_text("my own notes\n")
    failing = tmp_path / "runs/gtzan/tiny/finetune/seed-0"
    grid = dict(GRID, DATASETS="gtzan", SEEDS="0")
    _, stdout = run_all(tmp_path, expect=1, FAKE_FAIL="finetune/seed-0/", **grid)
    assert mine.read_text() == "my own notes\n"  # not replaced by the list...
    assert f"   {failing}\n" in stdout and f"{mine} is not the one run_all.sh wrote" in stdout  # ...which is printed
    run_all(tmp_path, **grid)
    assert mine.read_text() == "my own notes\n"  # nothing missing: still not removed
    # One it wrote is its own to replace and remove; once changed by someone, it is theirs.
    mine.unlink()
    run_all(tmp_path, expect=1, FAKE_FAIL="pairtune/seed-1/", **dict(grid, SEEDS="0 1"))
    assert mine.read_text() == f"{tmp_path / 'runs/gtzan/tiny/pairtune/seed-1'}\n"
    with mine.open("a") as f:
        f.write("and a note\n")
    run_all(tmp_path, **dict(grid, SEEDS="0 1"))
    assert mine.read_text().endswith("and a note\n")


# ----------------------------------------------------------------------------------------------
# Run folder names (a manifest path, a backbone folder) and the job lines' total
# ----------------------------------------------------------------------------------------------

def test_a_manifest_path_and_a_backbone_folder_name_their_runs_as_a_run_without_out_does(tmp_path):
    import rundir
    mine = tmp_path / "my-data" / "mine" / "manifest.csv"  # a manifest by path: named by its folder
    other = tmp_path / "lists" / "speakers.csv"  # any other .csv: by its file name
    encoder = tmp_path / "models" / "my-encoder"  # a local backbone folder: by its own name
    for path in (mine, other):
        path.parent.mkdir(parents=True)
        path.write_text("path,label,split\n")
    encoder.mkdir(parents=True)
    grid = dict(DATASETS=f"{mine} {other} gtzan", BACKBONES=f"{encoder} facebook/wav2vec2-base", SEEDS="0 1",
                FOLDS="2", FOLD_DATASETS="gtzan", EPOCHS="1", BATCH_SIZES="16 32", SHOTS="4",
                FAKE_VALID="finetune/batch-32=0.9")
    calls, stdout = run_all(tmp_path, **grid)
    runs, search = tmp_path / "runs", tmp_path / "runs-search"
    expected = {str(runs / d / b / arm / "shots-4" / r)
                for d, repeats in (("mine", ("seed-0", "seed-1")), ("speakers", ("seed-0", "seed-1")),
                                   ("gtzan", ("fold-2",)))
                for b in ("my-encoder", "facebook_wav2vec2-base") for arm in ("finetune", "pairtune", "frozen")
                for r in repeats}
    outs = {flag(c, "--out") for c in calls} - {None}
    searched = {str(search / d / b / arm / f"batch-{k}" / r)
                for d, r in (("mine", "seed-0"), ("speakers", "seed-0"), ("gtzan", "fold-2"))
                for b in ("my-encoder", "facebook_wav2vec2-base") for arm in ("finetune", "pairtune") for k in (16, 32)}
    assert outs == expected | searched
    for call in calls:  # each grid job where a run of the same cell without --out goes (rundir.py's rule)
        out = flag(call, "--out")
        if call[0] == "eval.py" or out is None or out.startswith(str(search)):
            continue
        method = "frozen" if call[0] == "probe.py" else call[0].removesuffix(".py")
        fold = flag(call, "--fold")
        assert Path(out) == rundir.default_run_dir(
            method, flag(call, "--dataset"), flag(call, "--backbone") or flag(call, "--ckpt"),
            int(flag(call, "--seed")), fold=None if fold is None else int(fold), shots=int(flag(call, "--shots")),
            root=str(runs))
    pairtune = {flag(c, "--out") for c in calls if c[0] == "pairtune.py"}
    assert {flag(c, "--ckpt") for c in calls if c[0] == "probe.py" and not flag(c, "--out")} == pairtune
    # The search's choice is read from the same folders: finetune's best batch there was 32.
    chosen = {(c[0], flag(c, "--batch-size")) for c in calls
              if c[0] in ("finetune.py", "pairtune.py") and flag(c, "--out").startswith(f"{runs}/")}
    assert chosen == {("finetune.py", "32"), ("pairtune.py", "16")}
    assert "runs//" not in stdout and "my-data" not in "".join(outs)
    # Found done through those names: nothing runs again.
    calls, stdout = run_all(tmp_path, **grid)
    assert [c[0] for c in calls] == ["eval.py"] and stdout.count(": skip") == len(expected) + len(searched)


def test_plain_names_keep_their_run_folders(tmp_path):
    data = tmp_path / "data" / "gtzan"
    data.mkdir(parents=True)
    grid = dict(DATASETS=f"esc50 {data}", BACKBONES="wav2vec2 facebook/hubert-base-ls960", FOLDS="1", SEEDS="3",
                EPOCHS="1")
    jobs = [shlex.split(line) for _, line in listed(run_all(tmp_path, "--list", **grid)[1])]
    runs = tmp_path / "runs"
    assert [flag(job, "--out") for job in jobs if "finetune.py" in job] == [
        str(runs / "esc50/wav2vec2/finetune/fold-1"), str(runs / "esc50/facebook_hubert-base-ls960/finetune/fold-1"),
        str(runs / "gtzan/wav2vec2/finetune/seed-3"), str(runs / "gtzan/facebook_hubert-base-ls960/finetune/seed-3")]


@pytest.mark.parametrize("variable, values, named", [
    ("DATASETS", ("{tmp}/a/mine/manifest.csv", "{tmp}/b/mine/manifest.csv"), "mine"),
    ("DATASETS", ("gtzan", "data/gtzan"), "gtzan"),
    ("DATASETS", ("{tmp}/lists/mine.csv", "{tmp}/c/mine/manifest.csv"), "mine"),
    ("BACKBONES", ("facebook/wav2vec2-base", "facebook_wav2vec2-base"), "facebook_wav2vec2-base"),
    ("BACKBONES", ("{tmp}/one/encoder", "{tmp}/two/encoder"), "encoder"),
])
def test_two_datasets_or_backbones_of_one_folder_name_are_refused_before_anything_runs(tmp_path, variable, values,
                                                                                        named):
    values = [value.format(tmp=tmp_path) for value in values]
    for value in values:
        if variable == "BACKBONES" and value.startswith(str(tmp_path)):
            Path(value).mkdir(parents=True)
    kind = variable.lower().removesuffix("s")
    grid = {**GRID, variable: " ".join(values)}
    for mode in ([], ["--list"], ["--count"], ["--job", "0"], ["--quick"]):
        result = subprocess.run(["bash", str(ROOT / "run_all.sh"), *mode], capture_output=True, text=True,
                                timeout=60, env=environment(tmp_path, **grid))
        assert (result.returncode, result.stdout) == (2, ""), (mode, result.stdout + result.stderr)
        assert result.stderr == (f"error: {kind}s {values[0]!r} and {values[1]!r} would share run folders (both "
                                 f"named {named!r}): list one of them (rename a manifest or folder), or run the other "
                                 "under another RUNS\n"), mode
    assert not (tmp_path / "calls.log").exists() and not (tmp_path / "runs").exists()


def test_the_folder_names_come_from_rundir_without_numpy_or_torch(tmp_path):
    code = ("import sys, grid; status = grid.main(['names', 'backbone', '--', 'wav2vec2', sys.argv[1], 'a/b']); "
            "assert not {'numpy', 'torch'} & set(sys.modules), sorted(sys.modules); sys.exit(status)")
    (tmp_path / "enc").mkdir()
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "enc")], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "wav2vec2\nenc\na_b\n", "")
    result = subprocess.run([sys.executable, "grid.py", "names", "dataset", "--", "/"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert (result.returncode, result.stderr) == (2, "error: dataset '/': no name for its run folders in it\n")


def test_each_job_line_of_a_sequential_run_says_the_total(tmp_path):
    _, stdout = run_all(tmp_path, expect=1, FAKE_FAIL="gtzan/tiny/pairtune/seed-1/", **GRID)
    runs = tmp_path / "runs"
    lines = [line for line in stdout.splitlines() if line.startswith("== job")]
    assert lines[0] == f"== job 0/8: finetune esc50 tiny fold-1 -> {runs}/esc50/tiny/finetune/fold-1"
    assert [line.split()[2].rstrip(":") for line in lines] == [f"{i}/8" for i in range(8)] + ["7/8"]
    assert lines[-1] == f"== job 7/8 FAILED (exit status 3): its log is {runs}/gtzan/tiny/pairtune/seed-1/job.log"
    _, stdout = run_all(tmp_path, **GRID)
    assert [line for line in stdout.splitlines() if ": skip " in line][:2] == [
        f"== job 0/8: skip {runs}/esc50/tiny/finetune/fold-1 (results exist)",
        f"== job 1/8: skip {runs}/esc50/tiny/pairtune/fold-1 (results exist)"]
    _, stdout = run_all(tmp_path, "--job", "3", **GRID)
    assert f"== job 3/8: skip {runs}/esc50/tiny/pairtune/fold-2 (results exist)" in stdout
