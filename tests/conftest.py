"""Shared test fixtures: the repository on sys.path, the demo dataset, and the real material in
../shared (FSDD recordings, the Whisper tiny.en encoder), skipped cleanly where it is absent."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FSDD = SHARED / "data" / "fsdd"
WHISPER = SHARED / "models" / "whisper-tiny.en-encoder"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network in tests
# data.check_audio_files keeps its record of checked files in a cache folder: the tests' own, not the user's
os.environ["CONFIT_CACHE"] = tempfile.mkdtemp(prefix="confit-test-cache-")


def run_script(script: str, *args, cwd=None, check=True) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would, in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd or ROOT,
                            capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory) -> Path:
    import prepare
    out = tmp_path_factory.mktemp("demo")
    prepare.prepare_demo(out)
    return out / "manifest.csv"


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    if not (FSDD / "recordings").is_dir():
        pytest.skip("../shared/data/fsdd is absent (a fresh clone has no ../shared)")
    return FSDD


@pytest.fixture(scope="session")
def whisper_dir() -> Path:
    if not (WHISPER / "model.safetensors").is_file():
        pytest.skip("../shared/models/whisper-tiny.en-encoder is absent")
    return WHISPER


@pytest.fixture(scope="session")
def mixture_manifest(tmp_path_factory, fsdd_root) -> Path:
    """A small multi-label dataset of real speech: 1-3 FSDD digits mixed a clip (tests/mixtures.py), labels
    joined by ';'; train, valid and test from disjoint speakers."""
    from mixtures import make_mixtures
    return make_mixtures(tmp_path_factory.mktemp("mixture"), {"train": 60, "valid": 20, "test": 30}, seed=0,
                         recordings=fsdd_root / "recordings")


@pytest.fixture(scope="session")
def multilabel_export(tmp_path_factory, fsdd_root):
    """(manifest, run, export) of a 1-epoch FineTune on small FSDD mixtures (the `tiny` backbone: random
    weights) and its export: shared by the export and predict tests of multi-label runs."""
    from mixtures import make_mixtures
    root = tmp_path_factory.mktemp("multilabel-export")
    manifest = make_mixtures(root / "mix", {"train": 40, "valid": 15, "test": 15}, seed=1, seconds=1.0,
                             recordings=fsdd_root / "recordings")
    run_script("finetune.py", "--dataset", manifest, "--backbone", "tiny", "--epochs", 1, "--max-seconds", 1,
               "--batch-size", 16, "--lr", "1e-3", "--device", "cpu", "--out", root / "run")
    run_script("export.py", root / "run", "--out", root / "export")
    return manifest, root / "run", root / "export"
