"""The install: exact pins, and a clear message (not a traceback) when torch and torchaudio do not
load together."""
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

from conftest import ROOT

PINNED = ("torch", "torchaudio", "transformers", "soundfile", "numpy", "tqdm")


def pins(path):
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", line)
        if match:
            found[match[1].lower()] = match[2]
    return found


def test_runtime_requirements_pin_one_exact_set():
    runtime = pins(ROOT / "requirements.txt")
    assert set(PINNED) <= set(runtime), f"not pinned with ==: {set(PINNED) - set(runtime)}"
    # every requirement line is an exact pin, so a fresh install cannot drift
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    assert all("==" in l for l in lines if l), lines
    assert "-r requirements.txt" in (ROOT / "requirements-test.txt").read_text()


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI installs the pins into a fresh venv; a "
                    "developer's environment may differ on purpose")
def test_ci_runs_on_exactly_the_pinned_versions():
    wanted = {**pins(ROOT / "requirements.txt"), **pins(ROOT / "requirements-test.txt")}
    got = {name: metadata.version(name) for name in wanted}
    assert got == wanted


def test_a_torchaudio_that_does_not_load_gives_a_message_naming_both_versions(tmp_path):
    # A stand-in torchaudio, ahead of the real one on the path, that fails to import the way
    # torchaudio 2.11.1 does on torch 2.11.0 (measured): the loader's undefined symbol, wrapped.
    fake = tmp_path / "torchaudio"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "try:\n"
        "    raise OSError('/venv/torchaudio/lib/libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n"
        "except OSError as error:\n"
        "    raise OSError('Could not load this library: /venv/torchaudio/lib/libtorchaudio.so') from error\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    for command in (["-c", "import data"], [str(ROOT / "pairtune.py"), "--help"]):
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env,
                                cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert f"torch {metadata.version('torch')}" in result.stderr
        assert f"torchaudio {metadata.version('torchaudio')}" in result.stderr
        assert "undefined symbol: torch_exception_get_what_without_backtrace" in result.stderr
        runtime = pins(ROOT / "requirements.txt")
        assert f"pip install torch=={runtime['torch']} torchaudio=={runtime['torchaudio']}" in result.stderr


def test_a_missing_torchaudio_says_so(tmp_path):
    # a path entry that hides torchaudio: `import torchaudio` raises ModuleNotFoundError
    (tmp_path / "torchaudio.py").write_text("raise ModuleNotFoundError(\"No module named 'torchaudio'\")\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run([sys.executable, "-c", "import data"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "No module named 'torchaudio'" in result.stderr and "pip install torch==" in result.stderr
