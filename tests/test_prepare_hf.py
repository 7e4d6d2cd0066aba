"""prepare.py hf: a Hugging Face dataset (a save_to_disk folder, parquet files, a Hub id) into a manifest.

Every dataset here is built with `datasets` itself from int16 clips that soundfile writes, so labels,
splits and samples are known apart from prepare.py, and every clip must read back exactly, at its own
rate. Without the optional `datasets` package these tests skip, except those that need no `datasets`
(the install message, the command line's checks).
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data
import prepare
from conftest import ROOT

CLASSES = ["dog", "cat", "rain"]
SIZES = {"train": 6, "validation": 3, "test": 3}  # the dataset's own split names
OURS = {"train": "train", "validation": "valid", "test": "test"}


@pytest.fixture
def hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    # The library's cache (it leaves lock files even for streamed parquet) under tmp_path, not ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


@pytest.fixture
def clips(tmp_path):
    """{split: [clip]} written as 16-bit WAV files: full-range samples, three rates, one stereo clip a split."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "source"
    folder.mkdir()
    found = {}
    for split, count in SIZES.items():
        for i in range(count):
            samples = rng.integers(-32768, 32768, size=(300 + 41 * i, 2 if i == 1 else 1), dtype=np.int16)
            samples[:2, 0] = (-32768, 32767)  # the extremes survive too
            rate = (8000, 16000, 22050)[i % 3]
            path = folder / f"{split}_{i}.wav"
            sf.write(path, samples, rate, subtype="PCM_16")
            found.setdefault(split, []).append({"path": path, "samples": samples, "rate": rate,
                                                "label": (i + len(split)) % len(CLASSES), "fold": i % 3 + 1})
    return found


def build(hf, clips, embed: bool):
    """A DatasetDict with an Audio column, a ClassLabel column and an integer fold column. embed: the
    files' bytes (as the Hub's parquet copies hold them), else their paths.

    Audio is given by casting (Arrow only): passing it to from_dict as a feature would encode each value
    through torchcodec, which datasets 5 needs for that and we do not install."""
    splits = {}
    for split, items in clips.items():
        audio = [{"bytes": c["path"].read_bytes(), "path": c["path"].name} if embed else str(c["path"])
                 for c in items]
        table = hf.Dataset.from_dict({"audio": audio, "label": [c["label"] for c in items],
                                      "fold": [c["fold"] for c in items]})
        splits[split] = table.cast_column("audio", hf.Audio()).cast_column("label", hf.ClassLabel(names=CLASSES))
    return hf.DatasetDict(splits)


def manifest_rows(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_round_trip(out: Path, clips, split_map=OURS):
    """Through data.load_splits: every clip in its split, in order, with its class name, and as 16-bit
    PCM with its exact samples and rate (a float file of the same integers would read as int16 too)."""
    splits, classes = data.load_splits(str(out / "manifest.csv"))
    assert classes == sorted(CLASSES)
    for source, ours in split_map.items():
        assert len(splits[ours]) == len(clips[source])
        for got, want in zip(splits[ours], clips[source]):
            assert got.label == CLASSES[want["label"]], got.where
            samples, rate = sf.read(got.path, dtype="int16", always_2d=True)
            assert rate == want["rate"] and np.array_equal(samples, want["samples"]), got.path
            assert sf.info(got.path).subtype == "PCM_16", got.path


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------

def test_save_to_disk_round_trips_exactly(hf, clips, tmp_path, capsys):
    saved = tmp_path / "saved"
    build(hf, clips, embed=False).save_to_disk(str(saved))  # save_to_disk embeds the files' bytes
    prepare.main(["hf", "--path", str(saved), "--out", str(tmp_path / "out")])
    assert "hf: 12 clip(s) written" in capsys.readouterr().out
    for clip in (c for items in clips.values() for c in items):  # the copies stand alone
        clip["path"].unlink()
    assert_round_trip(tmp_path / "out", clips)
    rows = manifest_rows(tmp_path / "out")
    assert [r["path"] for r in rows[:2]] == ["audio/train/000000.wav", "audio/train/000001.wav"]
    assert rows[6]["path"] == "audio/valid/000000.wav" and rows[-1]["path"] == "audio/test/000002.wav"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["clips"] == {"train": 6, "valid": 3, "test": 3} and summary["classes"] == 3
    assert summary["sample_rates"] == {"8000": 4, "16000": 4, "22050": 4}


def test_parquet_copies_round_trip_exactly(hf, clips, tmp_path):
    # The Hub's layout: data/<split>-00000-of-00001.parquet, audio bytes inside.
    for split, table in build(hf, clips, embed=True).items():
        table.to_parquet(str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    prepare.main(["hf", "--path", str(tmp_path / "hub"), "--out", str(tmp_path / "out")])
    assert_round_trip(tmp_path / "out", clips)
    train = [row for row in manifest_rows(tmp_path / "out") if row["split"] == "train"]
    for row, clip in zip(train, clips["train"], strict=True):  # the stored bytes, unchanged
        assert (tmp_path / "out" / row["path"]).read_bytes() == clip["path"].read_bytes()


def test_parquet_of_paths_points_at_the_original_files(hf, clips, tmp_path, capsys):
    # One file per split, named by it; the audio column holds paths only, so nothing is copied.
    for split, table in build(hf, clips, embed=False).items():
        table.to_parquet(str(tmp_path / "pq" / f"esc_{split}.parquet"))
    prepare.main(["hf", "--path", str(tmp_path / "pq"), "--out", str(tmp_path / "out")])
    assert "hf: 0 clip(s) written under" in capsys.readouterr().out
    assert not any((tmp_path / "out" / "audio").rglob("*.wav"))
    assert_round_trip(tmp_path / "out", clips)
    splits, _ = data.load_splits(str(tmp_path / "out" / "manifest.csv"))
    assert [Path(c.path).resolve() for c in splits["test"]] == [c["path"].resolve() for c in clips["test"]]


def test_records_of_arrays_round_trip_exactly(hf, clips, tmp_path):
    # No Audio feature: {array, sampling_rate} records ([channels, samples], as datasets has them) and text labels.
    for split, items in clips.items():
        hf.Dataset.from_dict({
            "sound": [{"array": c["samples"].T, "sampling_rate": c["rate"]} for c in items],
            "kind": [CLASSES[c["label"]] for c in items]}).to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    prepare.main(["hf", "--path", str(tmp_path / "pq"), "--out", str(tmp_path / "out"),
                  "--audio-column", "sound", "--label-column", "kind"])
    assert_round_trip(tmp_path / "out", clips)


# ----------------------------------------------------------------------------------------------
# Splits, folds and labels
# ----------------------------------------------------------------------------------------------

def test_split_map_fold_column_and_integer_labels(hf, clips, tmp_path, capsys):
    saved = tmp_path / "saved"
    build(hf, clips, embed=False).save_to_disk(str(saved))
    prepare.main(["hf", "--path", str(saved), "--out", str(tmp_path / "out"), "--split-map",
                  "train=train,validation=test", "--fold-column", "fold"])
    assert "leaving out split(s) test: not in --split-map" in capsys.readouterr().err
    rows = manifest_rows(tmp_path / "out")
    want = [("train", c) for c in clips["train"]] + [("test", c) for c in clips["validation"]]
    assert [(r["split"], r["label"], r["fold"]) for r in rows] == [
        (split, CLASSES[c["label"]], str(c["fold"])) for split, c in want]
    splits, _ = data.load_splits(str(tmp_path / "out" / "manifest.csv"), fold=2)  # fold 2 is test
    assert len(splits["test"]) == sum(c["fold"] == 2 for _, c in want)

    # One parquet file naming no split is all train; integers without names are labels as text.
    build(hf, clips, embed=True)["train"].to_parquet(str(tmp_path / "all.parquet"))
    prepare.main(["hf", "--path", str(tmp_path / "all.parquet"), "--out", str(tmp_path / "out2"),
                  "--label-column", "fold"])
    assert [(r["split"], r["label"]) for r in manifest_rows(tmp_path / "out2")] == [
        ("train", str(c["fold"])) for c in clips["train"]]


def test_a_single_saved_split_and_a_map_that_keeps_nothing(hf, clips, tmp_path):
    build(hf, clips, embed=False)["test"].save_to_disk(str(tmp_path / "one"))  # a Dataset, no split name
    prepare.main(["hf", "--path", str(tmp_path / "one"), "--out", str(tmp_path / "out")])
    assert {r["split"] for r in manifest_rows(tmp_path / "out")} == {"train"}
    with pytest.raises(SystemExit, match=r"none of its splits \(train\) is in --split-map dev=valid"):
        prepare.main(["hf", "--path", str(tmp_path / "one"), "--out", str(tmp_path / "out"),
                      "--split-map", "dev=valid"])
    with pytest.raises(SystemExit, match="'train=training' is not NAME=SPLIT"):
        prepare.main(["hf", "--path", str(tmp_path / "one"), "--out", str(tmp_path / "out"),
                      "--split-map", "train=training"])


def test_an_interrupted_prepare_leaves_no_manifest(hf, clips, tmp_path, monkeypatch):
    saved, out = tmp_path / "saved", tmp_path / "out"
    build(hf, clips, embed=False).save_to_disk(str(saved))
    prepare.main(["hf", "--path", str(saved), "--out", str(out)])
    # A second run into the same folder, killed after two clips: the first run's manifest would
    # now list rewritten files, so none may be left.
    calls, write = [], prepare.write_hf_clip

    def write_then_stop(*args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return write(*args)

    monkeypatch.setattr(prepare, "write_hf_clip", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(["hf", "--path", str(saved), "--out", str(out)])
    assert not (out / "manifest.csv").exists() and not (out / "summary.json").exists()


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_a_missing_or_wrong_column_is_named_with_the_columns(hf, clips, tmp_path):
    saved = tmp_path / "saved"
    build(hf, clips, embed=False).save_to_disk(str(saved))
    command = ["hf", "--path", str(saved), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"no column 'speech' \(--audio-column\); its columns are audio, label, fold"):
        prepare.main(command + ["--audio-column", "speech"])
    with pytest.raises(SystemExit, match=r"no column 'genre' \(--label-column\); its columns are audio, label, fold"):
        prepare.main(command + ["--label-column", "genre"])
    with pytest.raises(SystemExit, match=r"column 'fold' is Value\('int64'\), not audio"):
        prepare.main(command + ["--audio-column", "fold"])
    assert not (tmp_path / "out").exists()  # checked before anything is written
    # a ClassLabel's -1 is "no label"
    unlabelled = hf.Dataset.from_dict({"audio": [str(clips["test"][0]["path"])], "label": [-1]})
    unlabelled = unlabelled.cast_column("audio", hf.Audio()).cast_column("label", hf.ClassLabel(names=CLASSES))
    unlabelled.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(SystemExit, match="unlabelled, split train, example 0: no label. Leave an unlabelled split out"):
        prepare.main(["hf", "--path", str(tmp_path / "unlabelled"), "--out", str(tmp_path / "out")])


def test_a_hub_id_offline_says_so(hf, tmp_path):
    # conftest sets HF_HUB_OFFLINE=1 before datasets is imported: the Hub is not even tried
    with pytest.raises(SystemExit) as stop:
        prepare.main(["hf", "--path", "confit/esc50", "--out", str(tmp_path / "out")])
    message = str(stop.value.code)
    assert message.startswith("error: --path confit/esc50: no such local folder or file, and the Hugging Face Hub")
    assert "Offline?" in message and "save_to_disk(DIR)" in message


def test_without_datasets_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(SystemExit) as stop:
        prepare.main(["hf", "--path", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stop.value.code == ("error: prepare.py hf needs the datasets package, which is not installed here: "
                               "pip install datasets (or pip install -r requirements-test.txt)")
    # and nothing else imports it: the other datasets and the training scripts never need it
    imported = subprocess.run([sys.executable, "-c", "import prepare, sys; print('datasets' in sys.modules)"],
                              cwd=ROOT, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"


def test_command_line_keeps_the_hf_flags_to_hf(tmp_path, capsys):
    for argv, message in [
            (["gtzan", "--root", str(tmp_path), "--fold-column", "fold"], "--fold-column: only for hf"),
            (["esc50", "--path", "x", "--split-map", "a=train"], "--path, --split-map: only for hf"),
            (["hf", "--path", str(tmp_path)], "hf needs --path"),
            (["hf", "--path", str(tmp_path), "--out", "o", "--root", str(tmp_path)], "hf reads --path, not --root")]:
        with pytest.raises(SystemExit) as stop:
            prepare.main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
