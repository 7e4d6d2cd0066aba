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
import rundir
import runs as run_bookkeeping
import tables
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
            # FineTune's classifier logs valid_acc; PairTune's selection metric, valid_metric_acc (valid_acc before)
            values = [100 * log[i].get("valid_acc", log[i].get("valid_metric_acc")) for log in logs]
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


def test_confusion_projection_and_curves_commands(runs, ds, tmp_path, capsys):
    ft, pt = runs / "demo/tiny/finetune/seed-0", runs / "demo/tiny/pairtune/seed-0"
    assert ev.main(["confusion", str(pt), "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "c/confusion.json").read_text())
    results = json.loads((pt / "probe/results.json").read_text())
    assert summary["confusion"] == results["confusion"] and summary["classes"] == results["classes"]
    assert f"accuracy {100 * results['test_acc']:.2f}%" in printed
    assert_plausible_png(tmp_path / "c/confusion.png")

    # `projection` (its old name `umap`, below, still works)
    assert ev.main(["projection", "--finetune", str(ft), "--pairtune", str(pt), "--classes", "sine,square,chord",
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


# ----------------------------------------------------------------------------------------------
# What a review of the first version found: each case reproduced, then fixed
# ----------------------------------------------------------------------------------------------

def copy_run(runs, arm, seed, to):
    import shutil
    shutil.copytree(runs / f"demo/tiny/{arm}/seed-{seed}", to)
    return to


def edit_run_json(run_dir, **changes):
    run = json.loads((run_dir / "run.json").read_text())
    for key, value in changes.items():
        if key in run["args"]:
            run["args"][key] = value
        else:
            run[key] = value
    (run_dir / "run.json").write_text(json.dumps(run))


def test_a_cache_of_another_chunk_length_or_an_unreadable_one_is_not_served(runs, ds, tmp_path):
    run_dir = copy_run(runs, "finetune", 0, tmp_path / "ft")
    expected = encode_again(run_dir)[0].double().numpy()
    cache = run_dir / f"features/{ds}/test.pt"
    saved = torch.load(cache, weights_only=False)
    saved["key"]["max_seconds"] = 0.3  # e.g. probe.py --max-seconds 0.3 on the same weights
    saved["features"] = saved["features"] * 0
    torch.save(saved, cache)
    assert np.allclose(ev.run_test_features(run_dir, "cpu")[0], expected, atol=1e-5)
    cache.write_bytes(cache.read_bytes()[:100])  # a truncated file
    assert np.allclose(ev.run_test_features(run_dir, "cpu")[0], expected, atol=1e-5)
    assert torch.load(cache, weights_only=False)["key"]["max_seconds"] == 1.0  # re-encoded and re-cached
    saved = torch.load(cache, weights_only=False)
    del saved["key"]["frontend"]  # made before the front end changed what features come out
    saved["features"] = saved["features"] * 0
    torch.save(saved, cache)
    assert np.allclose(ev.run_test_features(run_dir, "cpu")[0], expected, atol=1e-5)


def test_a_probe_with_another_chunk_length_leaves_the_runs_features_alone(runs, ds, tmp_path):
    run_dir = copy_run(runs, "pairtune", 0, tmp_path / "pt")
    before = (run_dir / f"features/{ds}/test.pt").read_bytes()
    probe.main(["--ckpt", str(run_dir), "--max-seconds", "0.5", "--out", str(tmp_path / "side"), "--lrs", "1e-2",
                "--batch-sizes", "32", "--epochs", "2", "--device", "cpu", "--num-workers", "0"])
    assert (run_dir / f"features/{ds}/test.pt").read_bytes() == before
    assert (tmp_path / f"side/features/{ds}/test.pt").is_file()
    assert not rundir.is_runs_own_probe(tmp_path / "side")
    assert rundir.is_runs_own_probe(run_dir / "probe")
    side_run, own_run = (rundir.read_run_json(folder) for folder in (tmp_path / "side", run_dir / "probe"))
    assert side_run["probe_of"] == str(run_dir.resolve())  # (own_run's: where the run was probed, before the copy)
    assert own_run["finished"] and own_run["stage"] == "probe" and own_run["method"] == "pairtune"
    with pytest.raises(SystemExit, match="not the run's own stage 2"):  # it may not pose as RUN/probe
        probe.main(["--ckpt", str(run_dir), "--max-seconds", "0.5", "--device", "cpu"])
    # Table 2 prefers the run's own probe to the side one, whichever it finds first
    (tmp_path / "side").rename(run_dir / "a-probe-0.5s")  # found before probe/
    kept = tables.collect_results(run_dir, warn=lambda message: None)
    assert len(kept) == 1 and kept[0]["path"] == str(run_dir / "probe/results.json")


def test_moved_data_is_found_through_data_root(runs, ds, demo_manifest, tmp_path):
    run_dir = copy_run(runs, "finetune", 1, tmp_path / "ft")
    expected = encode_again(run_dir)[0].double().numpy()
    edit_run_json(run_dir, manifest=str(tmp_path / "gone/manifest.csv"))
    import shutil
    shutil.rmtree(run_dir / "features")
    with pytest.raises(data.DataError):
        ev.run_test_features(run_dir, "cpu", data_root=str(tmp_path / "nowhere"))
    got = ev.run_test_features(run_dir, "cpu", data_root=str(demo_manifest.parent.parent))
    assert np.allclose(got[0], expected, atol=1e-5)


def test_a_copied_run_counts_once_and_table_3_pairs_repeats(runs, tmp_path, capsys):
    import shutil
    tree = tmp_path / "tree"
    shutil.copytree(runs, tree)
    shutil.copytree(tree / "demo/tiny/finetune/seed-0", tree / "old-sweep/finetune-seed-0")
    warnings = []
    found = rundir.find_runs(tree, warn=warnings.append)
    assert len(found) == 4 and any("duplicate run" in w for w in warnings)
    shutil.rmtree(tree / "demo/tiny/pairtune/seed-1")  # PAIRTUNE now has seed 0 only
    assert ev.main(["dimcontrib", "--runs", str(tree), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| FINETUNE | 1 |" in printed and "| PAIRTUNE | 1 |" in printed and "seed-1" in printed


def test_an_epoch_logged_twice_counts_once(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [{"epoch": 1, "valid_acc": 0.1}, {"epoch": 2, "valid_acc": 0.2}, {"epoch": 2, "valid_acc": 0.25},
             {"epoch": 3, "valid_acc": 0.3}]  # killed after epoch 2's log line, resumed: epoch 2 again
    (run_dir / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert rundir.read_log(run_dir) == {1: 0.1, 2: 0.25, 3: 0.3}
    curves = ev.curve_data({("d", "b"): {"finetune": [{"dir": run_dir, "run": {"args": {}}}], "pairtune": []}})
    assert curves[("d", "b")]["finetune"]["n"] == [1, 1, 1]


def test_a_fresh_run_in_a_reused_folder_removes_the_old_runs_results(demo_manifest, tmp_path):
    # An earlier pairtune run in the folder (a folder that is not a run is refused: tests/test_safe_files.py),
    # replaced with --overwrite: its probe and features describe other weights and must go.
    out = tmp_path / "pt"
    (out / "probe").mkdir(parents=True)
    (out / "probe/results.json").write_text('{"method": "pairtune", "test_acc": 0.99}')
    (out / "features/old").mkdir(parents=True)
    (out / "run.json").write_text('{"stage": "pairtune", "finished": true, "epochs_run": 1}')
    pairtune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "1", "--max-seconds", "1",
                   "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--out", str(out), "--overwrite"])
    assert not (out / "probe").exists() and not (out / "features").exists()


def test_large_class_counts_draw_the_confused_classes_only(tmp_path):
    rng = np.random.default_rng(0)
    k = 200
    confusion = np.diag(rng.integers(3, 8, k))
    for _ in range(300):
        confusion[rng.integers(k), rng.integers(k)] += 1
    ev.plot_confusion(confusion, [f"spk{i:03d}" for i in range(k)], tmp_path / "big.png", "200 classes")
    assert_plausible_png(tmp_path / "big.png")
    width, height = png_size(tmp_path / "big.png")
    assert width < 2000 and height < 2000  # 40 labelled classes, not 200 unreadable ones


def test_fingerprint_of_a_model_with_scalar_buffers():
    class Holder:
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))  # num_batches_tracked: 0-dim
    assert len(run_bookkeeping.weights_fingerprint(Holder())) == 40


def test_a_projection_says_why_it_is_not_umap():
    pytest.importorskip("umap")
    coords, name = ev.project_2d(np.random.default_rng(0).normal(size=(8, 16)))
    assert coords.shape == (8, 2) and name == "t-SNE (8 points are too few for UMAP)"


def test_small_edge_cases_of_the_metrics(tmp_path, capsys):
    flat = ev.dimension_contribution(np.eye(4))  # orthogonal clips: no dimension contributes anything
    assert flat["dims90"] is None and flat["top1"] is None and flat["signed_top1"] is None
    np.save(tmp_path / "eye.npy", np.eye(4))
    assert ev.main(["dimcontrib", "--features", str(tmp_path / "eye.npy")]) == 0
    assert "| – | – |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ev.main(["confusion", "x", "--top", "0"])
    capsys.readouterr()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"method": "finetune", "dataset": "d", "backbone": "x", "classes": ["p", "q"],
                             "confusion": [[1, 0], [1, 1]]}))
    b.write_text(json.dumps({"method": "pairtune", "dataset": "d", "backbone": "x", "classes": ["p", "q"],
                             "confusion": [[1, 0], [0, 2]]}))
    assert ev.main(["confusion", str(a), str(b), "--out", str(tmp_path / "c")]) == 1
    assert "one method" in capsys.readouterr().err
    assert ev.main(["confusion", str(a), str(a)]) == 1
    assert "--out" in capsys.readouterr().err
