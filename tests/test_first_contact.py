"""A new user's first runs (issue 26): each run in a folder of its own by default, errors before any
work or folder, every default in --help, and --valid-fraction carried from training to its probe.

The scripts run as a user runs them, from a fresh working folder (tmp_path), so that whatever they
leave behind is there to see. The backbone is `tiny` (random weights): these tests check where files
go and what is said, not what is learnt.
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import finetune
import pairtune
import probe
import runs
from conftest import run_script

FAST = ["--backbone", "tiny", "--epochs", "1", "--max-seconds", "1", "--batch-size", "8", "--clips-per-class", "2",
        "--lr", "1e-3", "--device", "cpu"]
PROBE_FAST = ["--lrs", "1e-2", "--batch-sizes", "32", "--epochs", "5", "--device", "cpu"]
TRAIN_PER_CLASS, TEST_PER_CLASS, CLASSES = 12, 2, ("a", "b", "c")


def fast(script):
    """Quick settings: the reference loss for PairTune (the fused one compiles for tens of seconds);
    FineTune has no P x K batches."""
    if script == "pairtune.py":
        return [*FAST, "--loss", "eager"]
    return [a for a in FAST if a not in ("--clips-per-class", "2")]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A manifest of train and test rows only (valid is carved from train): 3 classes of 12 train and
    2 test clips, 0.5 s of noise each, in a folder named `mine` (the run folders' dataset name)."""
    root = tmp_path_factory.mktemp("data") / "mine"
    rng = np.random.default_rng(0)
    lines = ["path,label,split"]
    for label in CLASSES:
        for k in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            path = root / "audio" / f"{label}{k:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16_000)
            lines.append(f"audio/{path.name},{label},{'train' if k < TRAIN_PER_CLASS else 'test'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_error_line(result) -> str:
    """The stderr of a refused run: exactly one line, `error: ...`, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------------
# A default --out per run: run_all.sh's layout, never shared
# ----------------------------------------------------------------------------------------------

def test_runs_without_out_each_get_their_own_folder_and_a_second_run_is_refused(small, tmp_path):
    dataset = ["--dataset", small]
    pairtune_run = run_script("pairtune.py", *dataset, *fast("pairtune.py"), cwd=tmp_path)
    finetune_run = run_script("finetune.py", *dataset, *fast("finetune.py"), cwd=tmp_path)
    # runs/<dataset>/<backbone>/<method>/seed-<N>: the manifest's folder names the dataset
    expected = {"pairtune": Path("runs", "mine", "tiny", "pairtune", "seed-0"),
                "finetune": Path("runs", "mine", "tiny", "finetune", "seed-0")}
    for method, result in (("pairtune", pairtune_run), ("finetune", finetune_run)):
        assert result.stdout.splitlines()[0] == f"out: {expected[method]}"
        run = json.loads((tmp_path / expected[method] / "run.json").read_text())
        assert run["stage"] == method and run["finished"] and run["args"]["out"] == str(expected[method])
        assert run["args"]["valid_fraction"] == 0.1 and run["clips"]["valid"] == 3  # round(0.1 x 12) per class
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # no out/ or out-finetune/ beside it
    # probe.py's default for a run is the run's own probe/
    probed = run_script("probe.py", "--ckpt", expected["pairtune"], *PROBE_FAST, cwd=tmp_path)
    assert probed.stdout.splitlines()[0] == f"out: {expected['pairtune'] / 'probe'}"
    assert (tmp_path / expected["pairtune"] / "probe" / "results.json").is_file()

    # The same run again lands on the finished one: refused, saying what to do, and nothing changed.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / expected["pairtune"]).rglob("*")}
    again = run_script("pairtune.py", *dataset, *fast("pairtune.py"), cwd=tmp_path, check=False)
    message = one_error_line(again)
    assert f"{expected['pairtune']} holds a finished pairtune run" in message
    assert "--overwrite" in message and "another --out" in message
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / expected["pairtune"]).rglob("*")} == before
    # another seed is another folder
    run_script("finetune.py", *dataset, *fast("finetune.py"), "--seed", "1", cwd=tmp_path)
    assert (tmp_path / "runs" / "mine" / "tiny" / "finetune" / "seed-1" / "results.json").is_file()


def test_a_frozen_backbone_probe_goes_where_run_all_puts_the_frozen_arm(small, tmp_path):
    result = run_script("probe.py", "--backbone", "tiny", "--dataset", small, "--max-seconds", "1", *PROBE_FAST,
                        cwd=tmp_path)
    folder = Path("runs", "mine", "tiny", "frozen", "seed-0")
    assert result.stdout.splitlines()[0] == f"out: {folder}"
    assert json.loads((tmp_path / folder / "results.json").read_text())["method"] == "frozen"


# ----------------------------------------------------------------------------------------------
# Errors first: refused before any folder is made and before the loss compiles
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["pairtune.py", "finetune.py"])
def test_a_missing_dataset_is_refused_before_any_folder_or_compilation(script, tmp_path, monkeypatch):
    compiled = tmp_path.parent / f"{tmp_path.name}-inductor"  # torch.compile's cache: filled by a compilation
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(compiled))
    result = run_script(script, "--dataset", "nosuch", "--backbone", "tiny", cwd=tmp_path, check=False)
    assert "dataset 'nosuch' not found" in one_error_line(result)
    assert files_under(tmp_path) == []
    assert not compiled.exists() or files_under(compiled) == []  # (torch makes it empty on import)


@pytest.mark.parametrize("script, backbone", [("pairtune.py", "audioconfit-test/no-such-model"),
                                              ("finetune.py", "./no/such/folder"),
                                              ("probe.py", "audioconfit-test/no-such-model")])
def test_an_unloadable_backbone_is_one_line_and_leaves_nothing_on_disk(script, backbone, small, tmp_path,
                                                                       monkeypatch):
    # HF_HUB_OFFLINE=1 (as every test runs): the hub id is in no cache, as a model is on a machine offline
    compiled = tmp_path.parent / f"{tmp_path.name}-inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(compiled))
    result = run_script(script, "--dataset", small, "--backbone", backbone, "--max-seconds", "1", cwd=tmp_path,
                        check=False)
    message = one_error_line(result)
    assert backbone in message
    if backbone.startswith("./"):
        assert "no such folder" in message
    else:  # what was tried, and how to get it for offline use
        assert f"huggingface-cli download {backbone}" in message and "HF_HUB_OFFLINE=1" in message
    assert files_under(tmp_path) == []
    assert not compiled.exists() or files_under(compiled) == []  # (torch makes it empty on import)


def test_an_out_that_is_not_the_runs_to_write_is_refused_before_the_data_is_read(small, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    # the dataset is missing too: the folder's verdict comes first, and it is said without loading anything
    result = run_script("finetune.py", "--dataset", "nosuch", "--backbone", "tiny", "--out", tmp_path / "taken",
                        cwd=tmp_path, check=False)
    assert "is not empty and holds no run" in one_error_line(result)
    assert files_under(tmp_path) == ["taken", "taken/notes.txt"]


# ----------------------------------------------------------------------------------------------
# --help: every default shown, nothing done
# ----------------------------------------------------------------------------------------------

def parser_of(module) -> argparse.ArgumentParser:
    """The parser a script's parse_args builds (caught as it parses)."""
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise SystemExit(0)
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        with pytest.raises(SystemExit):
            module.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return caught[0]


def help_of_each_option(text: str) -> dict:
    """{--option: its help text, on one line} from argparse's formatted help."""
    found, current = {}, None
    for line in text.split("\noptions:\n", 1)[1].splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = next(word for word in stripped.split(", ") if word.startswith("--")).split()[0]
            found[current] = stripped[len(stripped.split("  ")[0]):].strip()
        elif current and stripped:
            found[current] += " " + stripped
    return found


@pytest.mark.parametrize("module", [pairtune, finetune, probe], ids=lambda m: m.__name__)
def test_help_shows_every_default_and_does_nothing_else(module, tmp_path):
    result = run_script(f"{module.__name__}.py", "--help", cwd=tmp_path)
    shown = help_of_each_option(result.stdout)
    checked = 0
    for action in parser_of(module)._actions:
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.default is False:
            continue
        option = next(o for o in action.option_strings if o.startswith("--"))
        # argparse's own formatting of the value (5e-05 for 5e-5)
        assert f"default: {action.default}" in " ".join(shown[option].split()), (option, shown[option])
        checked += 1
    assert checked >= 7
    assert files_under(tmp_path) == []  # no folder, no model, no cache
    if module is not probe:
        assert "(default: 40; paper: 40)" in shown["--epochs"]
        assert "network" in shown["--backbone"] and "Hugging Face cache" in shown["--backbone"]
        assert "default: 0.1" in shown["--valid-fraction"]


# ----------------------------------------------------------------------------------------------
# --valid-fraction: recorded, and the probe reads the run's splits with it
# ----------------------------------------------------------------------------------------------

def test_valid_fraction_carves_valid_is_recorded_and_the_probe_uses_the_runs(small, tmp_path):
    # no valid rows: each class gives round(fraction x its 12 train clips) to valid
    expected = {fraction: len(CLASSES) * max(1, round(fraction * TRAIN_PER_CLASS)) for fraction in (0.1, 0.25)}
    assert expected == {0.1: 3, 0.25: 9}
    for script in ("pairtune.py", "finetune.py"):
        out = tmp_path / script
        run_script(script, "--dataset", small, *fast(script), "--valid-fraction", "0.25", "--out", out)
        run = json.loads((out / "run.json").read_text())
        assert run["args"]["valid_fraction"] == 0.25
        assert run["clips"] == {"train": 36 - 9, "valid": 9, "test": 6}
    run_script("probe.py", "--ckpt", tmp_path / "pairtune.py", *PROBE_FAST)
    probe_run = json.loads((tmp_path / "pairtune.py" / "probe" / "run.json").read_text())
    assert probe_run["args"]["valid_fraction"] == 0.25 and probe_run["clips"]["valid"] == 9
    refused = run_script("finetune.py", "--dataset", small, "--valid-fraction", "1.5", check=False)
    assert refused.returncode == 2 and "--valid-fraction: must be a number between 0 and 1" in refused.stderr


def test_a_resumed_run_keeps_its_valid_fraction(tmp_path):
    args = argparse.Namespace(valid_fraction=None, resume=True)
    (tmp_path / "run.json").write_text(json.dumps({"stage": "finetune", "args": {"valid_fraction": 0.3}}))
    assert runs.resumed_setting(tmp_path, args, "valid_fraction", 0.1) == 0.3
    assert runs.resumed_setting(tmp_path, argparse.Namespace(valid_fraction=None, resume=False),
                                "valid_fraction", 0.1) == 0.1
    # a run from before --valid-fraction carved 0.1, and resumes with it: no setting differs
    (tmp_path / "run.json").write_text(json.dumps({"stage": "finetune", "args": {"epochs": 2}}))
    assert runs.resumed_setting(tmp_path, args, "valid_fraction", 0.1) == 0.1
    assert runs.settings_differences({"epochs": 2}, {"epochs": 4, "valid_fraction": 0.1}) == []
    assert runs.settings_differences({"epochs": 2}, {"epochs": 2, "valid_fraction": 0.3}) == [
        "--valid-fraction 0.1 (now 0.3)"]
