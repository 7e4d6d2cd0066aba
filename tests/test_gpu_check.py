"""tests/gpu_check.sh, the check a maintainer runs on a GPU: without CUDA it skips at once and says so;
--smoke-on-cpu runs every check's commands on CPU and parses their output; and the parts of the
harness a GPU run depends on (the table and exit status, timeouts, one task failing alone)."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import gpu_check
from conftest import ROOT
from gpu_check import Row, Task

ALL_TITLES = [title for task in gpu_check.TASKS for title in task.titles]


def run_gpu_check(*args, timeout):
    env = {**os.environ, "PYTHON": sys.executable}
    started = time.time()
    result = subprocess.run(["bash", str(ROOT / "tests" / "gpu_check.sh"), *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.time() - started


def table(text: str) -> list[dict]:
    """The report's markdown table as {column: cell} per row (an escaped pipe stays in its cell)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == "| " + " | ".join(gpu_check.COLUMNS) + " |" and set(lines[1]) <= set("|-:")
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == len(gpu_check.COLUMNS), line
        rows.append(dict(zip(gpu_check.COLUMNS, cells)))
    return rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the check would run")
def test_without_cuda_it_skips_at_once_and_reports_every_row_skipped(tmp_path):
    result, seconds = run_gpu_check("--out", tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert seconds < 30, f"took {seconds:.0f} s"
    assert result.stdout.count("\n") == 1 and "skipped: no CUDA" in result.stdout
    rows = table((tmp_path / "gpu_check.md").read_text())
    assert [row["check"] for row in rows] == ALL_TITLES and len(rows) == 22
    assert {row["status"] for row in rows} == {"skipped: no CUDA"}
    assert not (tmp_path / "logs").exists()  # nothing ran


def test_smoke_on_cpu_runs_every_check_and_every_row_is_ok(tmp_path):
    result, seconds = run_gpu_check("--smoke-on-cpu", "--out", tmp_path, timeout=600)
    print(f"smoke run: {seconds:.0f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    text = (tmp_path / "gpu_check.md").read_text()
    assert text in result.stdout  # printed as written
    rows = {row["check"]: row for row in table(text)}
    assert list(rows) == ALL_TITLES
    assert {title: row["status"] for title, row in rows.items() if row["status"] != "ok"} == {}
    runs = [t for t in ALL_TITLES if t.startswith(("pairtune", "finetune", "torchrun", "memory"))]
    assert len(runs) == 10
    for title in runs:  # clips/s read from each run's log.jsonl; peak memory is CUDA's only
        assert float(rows[title]["clips/s"]) > 0 and rows[title]["peak MiB"] == "-", title
    for title in ("probe.py of that run", "finetune.py, 1 epoch", "torchrun finetune.py"):
        assert 0 <= float(rows[title]["test acc"]) <= 1, title
    # predict.py over the finetune run's test files gives its test accuracy (the row fails otherwise)
    predicted = rows["predict.py of that run, its test files"]["test acc"]
    assert predicted == rows["finetune.py, 1 epoch"]["test acc"]
    assert "gloo: both arms over 2 processes" in rows["DDP: one process group (NCCL; gloo on CPU)"]["details"]
    assert "0 more at B = 37, 96, 20" in rows["fused loss: one graph for all batch sizes"]["details"]
    assert "x plain's clips/s" in rows["memory: finetune.py --micro-batch"]["details"]
    bench = text[text.index("## bench.py's table"):]
    assert all(re.search(rf"^\s+{b}\s+{m}\s", bench, re.M) for b in (256, 512) for m in ("eager", "fused", "floor"))
    logs = {path.name for path in (tmp_path / "logs").iterdir()}
    assert {"fused-loss.txt", "bench.txt", "pipeline-probe.txt", "ddp-pairtune.txt", "memory-finetune-micro-batch.txt"
            } <= logs
    assert not (tmp_path / "work").exists()  # the runs went to a temporary folder, removed


# ----------------------------------------------------------------------------------------------
# The harness itself
# ----------------------------------------------------------------------------------------------

def test_table_and_exit_status():
    rows = [Row("a"), Row("b", status="skipped: one GPU (NCCL needs two)"),
            Row("c | d", clips_per_s=12.345, peak_mb=1023.6, test_acc=0.5, seconds=3.2, details="x | y"),
            Row("e").fail([])]
    assert gpu_check.exit_status(rows) == 0
    cells = table(gpu_check.markdown_table(rows))
    assert [c["status"] for c in cells] == ["ok", "skipped: one GPU (NCCL needs two)", "ok", "ok"]
    assert cells[0]["clips/s"] == cells[0]["peak MiB"] == cells[0]["test acc"] == "-"
    assert (cells[2]["check"], cells[2]["clips/s"], cells[2]["peak MiB"], cells[2]["test acc"], cells[2]["s"],
            cells[2]["details"]) == (r"c \| d", "12.3", "1024", "0.5000", "3", r"x \| y")
    rows.append(Row("f").fail(["rc 1: boom", "no encoder/"]))
    assert gpu_check.exit_status(rows) == 1
    assert table(gpu_check.markdown_table(rows))[-1]["status"] == "FAILED: rc 1: boom; no encoder/"


def test_a_hung_command_is_killed_with_its_children(tmp_path):
    # the grandchild holds the output pipes: killing bash alone would leave communicate() waiting 60 s
    result = gpu_check.run_command(["bash", "-c", "sleep 60 & echo started; sleep 60"], tmp_path / "hung.txt",
                                   dict(os.environ), timeout=1)
    assert result.rc is None and result.seconds < 10 and "started" in result.stdout
    assert result.problem().startswith("timed out after 1 s")
    failed = gpu_check.run_command([sys.executable, "-c", "import sys; sys.exit('error: no GPU here')"],
                                   tmp_path / "failed.txt", dict(os.environ))
    assert failed.problem() == "rc 1: error: no GPU here (see failed.txt)"
    assert "error: no GPU here" in (tmp_path / "failed.txt").read_text()


def test_a_failing_task_fails_only_its_own_rows(tmp_path):
    def boom(setup):
        raise RuntimeError("boom")

    setup = gpu_check.Setup(smoke=True, device="cpu", gpus=0, work=tmp_path, logs=tmp_path, env={},
                            sizes=gpu_check.SMOKE_SIZES)  # no manifest: the setup "failed"
    tasks = [Task(["x1", "x2"], boom), Task(["y"], lambda setup: [Row("y", details="ran")]),
             Task(["z"], lambda setup: [Row("not z")]), Task(["w"], lambda setup: [Row("w")], needs_setup=True)]
    rows = gpu_check.run_tasks(tasks, setup, jobs=2)
    assert [(row.check, row.status) for row in rows] == [
        ("x1", "FAILED: RuntimeError: boom"), ("x2", "FAILED: RuntimeError: boom"), ("y", "ok"),
        ("z", "FAILED: RuntimeError: rows ['not z'] instead of ['z']"), ("w", "skipped: setup failed (see its row)")]
    assert gpu_check.exit_status(rows) == 1


def test_bench_table_is_parsed():
    stdout = """device: NVIDIA H200; torch 2.14.1; d = 256; mining = ms; median of 3 x 10
fused: first call (compile) 9.2 s
     B method  fwd+bwd ms  x floor  x fused  peak MiB  B x B
------------------------------------------------------------
  4096  eager        6.00     5.72     4.67     544.0   8.50
  4096  fused        1.29     1.23     1.00      68.1   1.06
  4096  floor        1.05     1.00     0.82         -      -
"""
    parsed = gpu_check.parse_bench(stdout)
    assert set(parsed) == {(4096, "eager"), (4096, "fused"), (4096, "floor")}
    assert parsed[4096, "fused"] == {"ms": 1.29, "x_floor": 1.23, "x_fused": 1.0, "peak_mib": 68.1, "peak_bxb": 1.06}
    assert parsed[4096, "floor"]["peak_mib"] is None


def test_a_memory_variant_that_does_not_lower_the_peak_fails():
    def rows(peaks):
        return [Row(gpu_check.memory_title(script, variant), clips_per_s=100.0, peak_mb=peak)
                for script in ("pairtune.py", "finetune.py") for variant, peak in zip(gpu_check.MEMORY_VARIANTS, peaks)]

    measured = rows([1000.0, 600.0, 1000.0])
    gpu_check.compare_memory(measured)
    assert [row.status for row in measured[:3]] == ["ok", "ok", "FAILED: peak 1000 MiB, not below plain's 1000"]
    assert measured[1].details.startswith("0.60x plain's peak, 1.00x plain's clips/s")
    on_cpu = rows([None, None, None])  # no peak on CPU: nothing to compare, nothing fails
    gpu_check.compare_memory(on_cpu)
    assert gpu_check.exit_status(on_cpu) == 0 and on_cpu[2].details.startswith("1.00x plain's clips/s")


def cuda_setup(tmp_path, gpus=1):
    return gpu_check.Setup(smoke=False, device="cuda", gpus=gpus, work=tmp_path, logs=tmp_path, env={},
                           sizes=gpu_check.CUDA_SIZES, manifest=tmp_path / "manifest.csv", backbone=tmp_path / "enc")


def test_a_cuda_run_must_log_its_peak_memory_and_run_in_bf16(tmp_path):
    out = tmp_path / "run"
    (out / "encoder").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"finished": True, "args": {"precision": "bf16"}}))
    (out / "log.jsonl").write_text(json.dumps({"epoch": 1, "clips_per_s": 50.0}) + "\n")
    smoke = gpu_check.Setup(smoke=True, device="cpu", gpus=0, work=tmp_path, logs=tmp_path, env={},
                            sizes=gpu_check.SMOKE_SIZES)
    assert gpu_check.read_run(out, smoke).status == "ok"
    assert gpu_check.read_run(out, cuda_setup(tmp_path)).status == "FAILED: no peak_memory_mb in log.jsonl"
    (out / "log.jsonl").write_text(json.dumps({"epoch": 1, "clips_per_s": 50.0, "peak_memory_mb": 4096.5}) + "\n")
    row = gpu_check.read_run(out, cuda_setup(tmp_path), results=out / "results.json")
    assert (row.status, row.clips_per_s, row.peak_mb) == ("FAILED: no test_acc in results.json", 50.0, 4096.5)
    (out / "run.json").write_text(json.dumps({"finished": True, "args": {"precision": "fp32"}}))
    assert gpu_check.read_run(out, cuda_setup(tmp_path)).status == "FAILED: ran in fp32, not bf16"


@pytest.mark.parametrize("gpus, printed, statuses", [
    (1, "", ["ok", "ok", "skipped: one GPU (NCCL needs two)"]),
    (4, ", 4 processes", ["ok", "ok", "ok"]),
    (3, "", ["FAILED: the run does not say it ran on 3 processes"] * 2
     + ["FAILED: torchrun pairtune.py, torchrun finetune.py failed"]),
])
def test_ddp_runs_over_every_gpu_in_whole_classes(tmp_path, monkeypatch, gpus, printed, statuses):
    commands = []

    def fake_run_row(setup, title, name, command, out, results=None, shown=""):
        commands.append(command)
        (setup.logs / f"{name}.txt").write_text(f"backbone: enc, 94.37M parameters, device cuda:0, bf16{printed}\n")
        return Row(title, details=shown)

    monkeypatch.setattr(gpu_check, "run_row", fake_run_row)
    rows = gpu_check.task_ddp(cuda_setup(tmp_path, gpus))
    assert [row.status for row in rows] == statuses
    assert [c[c.index("--nproc-per-node") + 1] for c in commands] == [str(gpus)] * 2
    assert [c[c.index("--device") + 1] for c in commands] == ["cuda"] * 2
    pairtune_batch = int(commands[0][commands[0].index("--batch-size") + 1])
    classes = pairtune_batch // 4  # P of the P x K batch (K = 4): whole classes per process, at most the demo's
    assert classes % gpus == 0 and gpus <= classes <= gpu_check.DEMO_CLASSES
