"""eval.py's analyses on real (tiny, random-init) runs: the test features behind them, the figures
(rendered headless to PNG), the report page run_all.sh ends with, and what happens without the
optional plotting packages."""
import importlib.util
import json
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import backbone
import data
import finetune
import pairtune
import probe
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("audioconfit_eval_report", ROOT / "eval.py")
ev = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ev)

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def runs(demo_manifest, tmp_path_factory):
    """runs/demo/tiny/{finetune,pairtune}/seed-{0,1}, made by the real scripts (2 epochs, CPU)."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "2", "--max-seconds", "1",
              "--lr", "1e-3", "--device", "cpu", "--num-workers", "0"]
    for seed in SEEDS:
        finetune.main(common + ["--seed", str(seed), "--out", str(root / f"demo/tiny/finetune/seed-{seed}")])
        out = root / f"demo/tiny/pairtune/seed-{seed}"
        pairtune.main(common + ["--seed", str(seed), "--loss", "eager", "--out", str(out)])
        probe.main(["--ckpt", str(out), "--lrs", "1e-2", "--batch-sizes", "32", "--epochs", "20", "--device", "cpu",
                    "--num-workers", "0"])
    return root


@pytest.fixture(scope="module")
def ds(demo_manifest):
    """The dataset's name in runs and reports: its manifest folder's name (a fresh temporary one)."""
    return demo_manifest.parent.name


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", raw[16:24])


def assert_plausible_png(path, min_side=300):
    width, height = png_size(path)
    assert width >= min_side and height >= min_side and path.stat().st_size > 5_000, (path, width, height)


def encode_again(run_dir):
    """The run's test features straight from its saved encoder/, bypassing every cache."""
    run = json.loads((run_dir / "run.json").read_text())
    splits, classes = data.load_splits(run["manifest"])
    encoder = backbone.load_encoder(str(run_dir / "encoder"))
    return backbone.extract_features(encoder, splits["test"], classes, run["args"]["max_seconds"], torch.device("cpu"))


def test_finetune_keeps_its_test_features_and_eval_reads_them(runs, ds, monkeypatch):
    run_dir = runs / "demo/tiny/finetune/seed-0"
    cached = torch.load(run_dir / f"features/{ds}/test.pt", weights_only=False)
    features, labels = encode_again(run_dir)
    assert torch.allclose(cached["features"], features, atol=1e-5) and torch.equal(cached["labels"], labels)
    # eval.py must serve them from the cache: any audio read would mean re-encoding
    monkeypatch.setattr(data, "load_audio", lambda *a: pytest.fail("test audio decoded despite the cache"))
    got, got_labels, classes = ev.run_test_features(run_dir, "cpu")
    assert np.allclose(got, features.double().numpy(), atol=1e-5) and np.array_equal(got_labels, labels.numpy())
    assert classes == json.loads((run_dir / "run.json").read_text())["classes"]


def test_features_are_encoded_when_the_cache_is_missing_or_stale(runs, ds, tmp_path):
    import shutil
    run_dir = tmp_path / "copy"
    shutil.copytree(runs / "demo/tiny/pairtune/seed-1", run_dir)
    expected = encode_again(run_dir)[0].double().numpy()
    cache = run_dir / f"features/{ds}/test.pt"
    saved = torch.load(cache, weights_only=False)
    saved["key"]["encoder"] = "0" * 40  # features of some other weights
    saved["features"] = saved["features"] + 1.0
    torch.save(saved, cache)
    assert np.allclose(ev.run_test_features(run_dir, "cpu")[0], expected, atol=1e-5)
    cache.unlink()
    assert np.allclose(ev.run_test_features(run_dir, "cpu")[0], expected, atol=1e-5)
    assert cache.exists()  # and cached for next time


def test_report_links_every_file_and_its_numbers_match_direct_computations(runs, ds, tmp_path, capsys):
    out = tmp_path / "report"
    assert ev.main(["report", str(runs), "--out", str(out), "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert ev.main(["table", str(runs), "--out", str(tmp_path / "table")]) == 0
    table = (tmp_path / "table" / "table.md").read_text()
    assert table in report and table in stdout
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {"table.csv", "table.json", "curves.json"} <= set(links)
    pngs = [link for link in links if link.endswith(".png")]
    stem = f"{ds}-tiny_random_init"
    assert sorted(pngs) == sorted([f"confusion-{stem}-finetune.png", f"confusion-{stem}-pairtune.png",
                                   f"curves-{stem}.png", f"umap-{stem}.png"])
    for link in links:
        assert (out / link).is_file(), link
    for png in pngs:
        assert_plausible_png(out / png)
    assert "Table 3" in report and "No figures" not in report and "No projection" not in report

    # Table 3's inputs: dimension_contribution of each run's own test features
    geometry = json.loads((out / "geometry.json").read_text())[f"{ds} · tiny (random init)"]
    for arm in ("finetune", "pairtune"):
        for seed in SEEDS:
            features = encode_again(runs / f"demo/tiny/{arm}/seed-{seed}")[0].double().numpy()
            direct = ev.dimension_contribution(features)
            logged = geometry[arm][f"seed-{seed}"]
            assert logged["anisotropy"] == pytest.approx(direct["anisotropy"], abs=1e-5)
            assert (logged["dims50"], logged["dims90"]) == (direct["dims50"], direct["dims90"])

    # Figure 2's numbers: mean and sample std over the two seeds' log.jsonl, per epoch
    curves = json.loads((out / "curves.json").read_text())[f"{ds} · tiny (random init)"]
    for arm in ("finetune", "pairtune"):
        logs = [[json.loads(line) for line in (runs / f"demo/tiny/{arm}/seed-{s}/log.jsonl").read_text().splitlines()]
                for s in SEEDS]
        for i, epoch in enumerate((1, 2)):
            values = [100 * log[i]["valid_acc"] for log in logs]
            assert curves[arm]["epochs"][i] == epoch
            assert curves[arm]["mean"][i] == pytest.approx(np.mean(values))
            assert curves[arm]["std"][i] == pytest.approx(np.std(values, ddof=1))

    # Figure 3: the classes come from FINETUNE's summed confusion, and every test clip of them is drawn
    umap = json.loads((out / f"umap-{stem}.json").read_text())
    confusion = sum(np.array(json.loads((runs / f"demo/tiny/finetune/seed-{s}/results.json").read_text())["confusion"])
                    for s in SEEDS)
    classes = json.loads((runs / "demo/tiny/finetune/seed-0/results.json").read_text())["classes"]
    assert umap["classes"] == [classes[i] for i in ev.hardest_classes(confusion, 3)]
    test_labels = [c.label for c in data.read_manifest(str(json.loads(
        (runs / "demo/tiny/finetune/seed-0/run.json").read_text())["manifest"])) if c.split == "test"]
    expected_points = sum(label in umap["classes"] for label in test_labels)
    assert len(umap["finetune"]["points"]) == len(umap["pairtune"]["points"]) == expected_points


def test_confusion_umap_and_curves_commands(runs, ds, tmp_path, capsys):
    ft, pt = runs / "demo/tiny/finetune/seed-0", runs / "demo/tiny/pairtune/seed-0"
    assert ev.main(["confusion", str(pt), "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "c/confusion.json").read_text())
    results = json.loads((pt / "probe/results.json").read_text())
    assert summary["confusion"] == results["confusion"] and summary["classes"] == results["classes"]
    assert f"accuracy {100 * results['test_acc']:.2f}%" in printed
    assert_plausible_png(tmp_path / "c/confusion.png")

    assert ev.main(["umap", "--finetune", str(ft), "--pairtune", str(pt), "--classes", "sine,square,chord",
                    "--method", "pca", "--out", str(tmp_path / "u/fig.png"), "--device", "cpu"]) == 0
    info = json.loads((tmp_path / "u/fig.json").read_text())
    assert info["classes"] == ["sine", "square", "chord"] and info["finetune"]["method"] == "PCA"
    assert {p[2] for p in info["pairtune"]["points"]} == {"sine", "square", "chord"}
    assert_plausible_png(tmp_path / "u/fig.png")
    assert ev.main(["umap", "--finetune", str(ft), "--pairtune", str(pt), "--classes", "sine,kazoo",
                    "--out", str(tmp_path / "u/bad.png")]) == 1
    assert "kazoo" in capsys.readouterr().err

    assert ev.main(["curves", str(runs), "--out", str(tmp_path / "curves")]) == 0
    assert_plausible_png(tmp_path / f"curves/curves-{ds}-tiny_random_init.png")
    assert f"{ds} · tiny (random init)" in json.loads((tmp_path / "curves/curves.json").read_text())


def test_isotropy_of_a_finetune_run_and_table_3_of_a_runs_tree(runs, capsys):
    ft = runs / "demo/tiny/finetune/seed-0"
    assert ev.main(["isotropy", "--ckpt", str(ft), "--device", "cpu"]) == 0
    expected = ev.anisotropy(encode_again(ft)[0].double().numpy())
    assert f"{expected:.4f}" in capsys.readouterr().out
    assert ev.main(["dimcontrib", "--runs", str(runs), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| FINETUNE | 2 |" in printed and "| PAIRTUNE | 2 |" in printed


def test_without_matplotlib_the_report_keeps_its_tables_and_says_how_to_install(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "report"
    assert ev.main(["report", str(runs), "--out", str(out), "--device", "cpu"]) == 0
    report = (out / "report.md").read_text()
    assert "pip install matplotlib" in report and "Table 3" in report and not list(out.glob("*.png"))
    assert "pip install matplotlib" in capsys.readouterr().err
    assert ev.main(["curves", str(runs), "--out", str(tmp_path / "curves")]) == 1
    assert "pip install matplotlib" in capsys.readouterr().err
    assert ev.main(["umap", "--finetune", str(runs / "demo/tiny/finetune/seed-0"),
                    "--pairtune", str(runs / "demo/tiny/pairtune/seed-0"), "--out", str(tmp_path / "u.png")]) == 1
    assert "pip install matplotlib" in capsys.readouterr().err


def test_training_scripts_never_import_the_plotting_packages():
    code = ("import sys\n"
            "for name in ('matplotlib', 'umap', 'sklearn'): sys.modules[name] = None  # unimportable\n"
            "import pairtune, probe, finetune, data, losses, backbone\n"
            "import importlib.util\n"
            "spec = importlib.util.spec_from_file_location('ev', 'eval.py')\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
