"""run_all.sh's orchestration, with a stand-in for python that records each call instead of training.

The stand-in writes the results files the real scripts would, so the skip-if-done logic is exercised
too. The real scripts are covered end to end in test_pipeline.py.
"""
import os
import shlex
import subprocess
import sys
import textwrap

from conftest import ROOT

RECORDER = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Records "script args..." and fakes the files each script leaves behind; `eval.py done` (the
    # skip test) is the real one, on those files, and is not recorded.
    if [[ $1 == eval.py && $2 == done ]]; then exec "$REAL_PYTHON" "$@"; fi
    echo "$*" >> "$CALL_LOG"
    script=$1; shift
    out=""; ckpt=""
    while [[ $# -gt 0 ]]; do
      case $1 in --out) out=$2; shift;; --ckpt) ckpt=$2; shift;; esac; shift
    done
    finished() { mkdir -p "$1" && printf '{"stage": "%s", "finished": true}' "$2" > "$1/run.json"; }
    case $script in
      finetune.py) finished "$out" finetune && echo '{}' > "$out/results.json";;
      pairtune.py) finished "$out" pairtune;;
      probe.py) mkdir -p "$ckpt/probe" && echo '{}' > "$ckpt/probe/results.json" && finished "$ckpt/probe" probe;;
    esac
    """)


def run_all(tmp_path, **env):
    recorder = tmp_path / "recorder.sh"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)  # each call returns only its own calls
    environment = {**os.environ, "PYTHON": str(recorder), "CALL_LOG": str(log),
                   "RUNS": str(tmp_path / "runs"), "REAL_PYTHON": sys.executable, **env}
    result = subprocess.run(["bash", str(ROOT / "run_all.sh")], env=environment, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in log.read_text().splitlines()], result.stdout


def flag(call, name):
    return call[call.index(name) + 1] if name in call else None


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
    assert stdout.count("== skip") == 4  # folds 1 and 2, both arms
    assert sorted((c[0], flag(c, "--fold")) for c in calls) == [
        ("eval.py", None), ("finetune.py", "3"), ("pairtune.py", "3"), ("probe.py", None)]


def test_a_run_cut_short_is_run_again(tmp_path):
    run_all(tmp_path, DATASETS="esc50", BACKBONES="tiny", FOLDS="1", EPOCHS="1")
    runs = tmp_path / "runs/esc50/tiny"
    (runs / "finetune/fold-1/run.json").write_text('{"stage": "finetune", "finished": false}')  # killed mid-run
    (runs / "pairtune/fold-1/probe/run.json").write_text('{"stage": "probe", "fini')  # killed while writing
    calls, stdout = run_all(tmp_path, DATASETS="esc50", BACKBONES="tiny", FOLDS="1", EPOCHS="1")
    assert "== skip" not in stdout
    assert [c[0] for c in calls] == ["finetune.py", "pairtune.py", "probe.py", "eval.py"]
