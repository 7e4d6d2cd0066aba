"""--shots K through the three scripts (demo data, tiny random backbone): the same K clips per class
for every method, valid and test whole, the probe of a few-shot run on its run's clips, PairTune
saying what its positives are when K is below --clips-per-class; and eval.py curves --shots."""
import csv
import json

import pytest

import data
from conftest import run_script
from test_eval import ev, write_run

FAST = ["--epochs", 1, "--max-seconds", 1, "--batch-size", 16, "--lr", "1e-3", "--device", "cpu"]
PROBE_FAST = ["--lrs", "1e-2", "--batch-sizes", "32", "--epochs", 5, "--device", "cpu"]


def test_every_stage_trains_on_the_same_k_clips_per_class(demo_manifest, tmp_path):
    common = ["--dataset", demo_manifest, "--backbone", "tiny", "--seed", 2, *FAST]
    run_script("finetune.py", *common, "--shots", 3, "--out", tmp_path / "ft")
    pairtune = run_script("pairtune.py", *common, "--shots", 1, "--out", tmp_path / "pt")
    assert "--shots 1 < --clips-per-class 4" in pairtune.stderr and "identical audio" in pairtune.stderr
    run_script("probe.py", "--ckpt", tmp_path / "pt", *PROBE_FAST)  # inherits the run's K and seed
    run_script("probe.py", "--ckpt", "tiny", "--dataset", demo_manifest, "--seed", 2, "--shots", 1, *PROBE_FAST,
               "--out", tmp_path / "frozen")
    splits, _ = data.load_splits(str(demo_manifest))
    expected = {k: {c.path for c in data.keep_shots(splits, k, seed=2)[0]["train"]} for k in (1, 3)}
    for folder, k in (("ft", 3), ("pt", 1), ("pt/probe", 1), ("frozen", 1)):
        run = json.loads((tmp_path / folder / "run.json").read_text())
        assert run["clips"] == {"train": 10 * k, "valid": len(splits["valid"]), "test": len(splits["test"])}
        assert run["shots"] == {"shots": k, "shot_seed": 2, "short_classes": {}}
        if folder != "pt":  # a pairtune run's results are its probe's
            assert json.loads((tmp_path / folder / "results.json").read_text())["shots"] == k
    # the cached train features of the probes are those of the very clips keep_shots draws
    import torch
    for cache in (tmp_path / "pt" / "features", tmp_path / "frozen" / "features"):
        saved = torch.load(next(cache.rglob("train.pt")), weights_only=False)
        assert set(saved["key"]["paths"]) == expected[1]
    assert len(json.loads((tmp_path / "pt/probe/results.json").read_text())["confusion"]) == 10


def test_a_probe_with_other_shots_than_its_run_is_a_side_experiment(demo_manifest, tmp_path):
    run_script("pairtune.py", "--dataset", demo_manifest, "--backbone", "tiny", *FAST, "--shots", 2,
               "--out", tmp_path / "pt")
    refused = run_script("probe.py", "--ckpt", tmp_path / "pt", "--shots", 4, *PROBE_FAST, check=False)
    assert refused.returncode != 0 and "--shots than the run's" in refused.stderr


def test_curves_shots_averages_over_seeds_per_k_for_each_method_and_probe(tmp_path, capsys):
    for k, accuracies in ((1, (0.2, 0.4)), (4, (0.6, 0.8))):
        for seed, acc in enumerate(accuracies):
            write_run(tmp_path, f"ft/shots-{k}/s{seed}", seed=seed, test_acc=acc, knn_test_acc=acc / 2)
            write_run(tmp_path, f"pt/shots-{k}/s{seed}", method="pairtune", seed=seed, test_acc=acc + 0.1,
                      knn_test_acc=acc)
            for folder in (f"ft/shots-{k}/s{seed}", f"pt/shots-{k}/s{seed}"):  # as the scripts record it
                run_json = tmp_path / folder / "run.json"
                run = json.loads(run_json.read_text())
                run["args"]["shots"] = k
                run_json.write_text(json.dumps(run))
    write_run(tmp_path, "full/s0", test_acc=0.9)  # a full-data run: Table 2's, not the curve's
    assert ev.main(["curves", "--shots", str(tmp_path), "--out", str(tmp_path / "fig")]) == 0
    with open(tmp_path / "fig" / "shots.csv") as f:
        rows = {(r["series"], int(r["shots"])): r for r in csv.DictReader(f)}
    assert float(rows[("FINETUNE", 1)]["mean_pct"]) == pytest.approx(30.0)
    assert float(rows[("FINETUNE", 1)]["std_pct"]) == pytest.approx(14.142, abs=1e-3)
    assert float(rows[("PAIRTUNE + linear probe", 4)]["mean_pct"]) == pytest.approx(80.0)
    assert float(rows[("PAIRTUNE + k-NN probe", 4)]["mean_pct"]) == pytest.approx(70.0)
    assert float(rows[("FINETUNE + k-NN probe", 4)]["mean_pct"]) == pytest.approx(35.0)
    assert {r["n"] for r in rows.values()} == {"2"} and len(rows) == 8
    assert (tmp_path / "fig" / "shots-gtzan-wav2vec2.png").stat().st_size > 1000
    # Table 2 reads the full-data run only, and says the few-shot ones were left out
    assert ev.main(["table", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "90.00 (n=1)" in out and "left out 8 few-shot run folder(s)" in err
