"""run_all.sh on a multi-label dataset named fsd50k (here: real FSDD digits mixed, 1-3 a clip, in FSD50K's place;
the `tiny` backbone has random weights): both arms run end to end from the dataset's own valid split, and the
table scores the dataset by mAP, each cell the mean of the runs' test_map."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_runs_a_multilabel_dataset_and_tables_it_in_map(mixture_manifest, tmp_path):
    data_root = tmp_path / "data"
    shutil.copytree(mixture_manifest.parent, data_root / "fsd50k")  # as prepare.py fsd50k would name it
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHON=sys.executable, CONFIT_DATA=str(data_root), RUNS=str(runs), DATASETS="fsd50k",
               BACKBONES="tiny", SEEDS="0", EPOCHS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
               EXTRA_ARGS="--lr 1e-3 --max-seconds 1 --batch-size 16")
    result = subprocess.run(["bash", str(ROOT / "run_all.sh")], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    finetune = json.loads((runs / "fsd50k/tiny/finetune/seed-0/results.json").read_text())
    pairtune = json.loads((runs / "fsd50k/tiny/pairtune/seed-0/probe/results.json").read_text())
    for results in (finetune, pairtune):
        assert results["multilabel"] and results["metric"] == "map" and "test_acc" not in results
        assert 0 <= results["test_map"] <= 1 and 0 <= results["knn_test_map"] <= 1
    # the manifest's valid rows are the valid split (nothing carved from train)
    run = json.loads((runs / "fsd50k/tiny/pairtune/seed-0/run.json").read_text())
    assert run["clips"]["valid"] == 20 and run["clips"]["train"] == 60
    table = (runs / "report" / "table.md").read_text()
    assert "fsd50k (mAP)" in table and "macro mAP" in table
    row = {line.split("|")[2].strip(): line.split("|")[3].strip() for line in table.splitlines()
           if line.startswith("|") and line.count("|") >= 4}
    assert row["FINETUNE"].replace("*", "").startswith(f"{100 * finetune['test_map']:.2f}")
    assert row["PAIRTUNE"].replace("*", "").startswith(f"{100 * pairtune['test_map']:.2f}")
