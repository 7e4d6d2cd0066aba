"""prepare.py hf with a multi-label column: a List of ClassLabel (or of text) becomes labels joined by ';'.

The datasets are built locally with `datasets` itself (no network), from real multi-label audio: FSDD
recordings from ../shared (skipped where absent), two or three spoken digits mixed at random offsets and
gains, labelled with the union of their digits. Expected labels are written by hand from the table below.
Without the optional `datasets` package these tests skip.
"""
import csv

import numpy as np
import pytest
import soundfile as sf

import data
import prepare

DIGITS = ["zero", "one", "two", "three", "four"]  # the ClassLabel names of digits 0-4
MIXES = {"train": [(0, 1), (2,), (3, 4, 0), (1, 2), (4,), (3,)],  # every digit in train
         "validation": [(0, 2), (1, 3)],
         "test": [(4, 1, 0), (2, 3)]}
OURS = {"train": "train", "validation": "valid", "test": "test"}


@pytest.fixture
def hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not ~/.cache
    return datasets


@pytest.fixture
def mixtures(tmp_path, fsdd_root):
    """{split: [(path, int16 samples, digits)]}: each clip the digits' recordings (speaker jackson, take 0)
    summed at random offsets and gains, written as 16-bit WAV at FSDD's 8 kHz."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mixtures"
    folder.mkdir()
    found = {}
    for split, mixes in MIXES.items():
        for i, digits in enumerate(mixes):
            parts = [sf.read(fsdd_root / "recordings" / f"{d}_jackson_0.wav", dtype="float64")[0] for d in digits]
            offsets = [int(rng.integers(0, 2000)) for _ in parts]
            mixed = np.zeros(max(o + len(p) for o, p in zip(offsets, parts)))
            for offset, part in zip(offsets, parts):
                mixed[offset:offset + len(part)] += rng.uniform(0.3, 0.6) * part
            samples = np.round(np.clip(mixed, -1, 1) * 32767).astype(np.int16)
            path = folder / f"{split}_{i}.wav"
            sf.write(path, samples, 8000, subtype="PCM_16")
            found.setdefault(split, []).append((path, samples, digits))
    return found


def manifest_rows(out):
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def want_rows():
    """By hand: the digits' names in the listed order, joined by ';'; the dataset's splits renamed."""
    return [(OURS[split], ";".join(DIGITS[d] for d in digits)) for split, mixes in MIXES.items() for digits in mixes]


def test_a_list_of_classlabel_becomes_a_multilabel_manifest(hf, mixtures, tmp_path, capsys):
    splits = {}
    for split, items in mixtures.items():
        table = hf.Dataset.from_dict({"audio": [str(path) for path, _, _ in items],
                                      "labels": [list(digits) for _, _, digits in items]})
        splits[split] = table.cast_column("audio", hf.Audio()).cast_column(
            "labels", hf.List(hf.ClassLabel(names=DIGITS)))
    hf.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    prepare.main(["hf", "--path", str(tmp_path / "saved"), "--out", str(tmp_path / "out"), "--label-column", "labels"])
    rows = manifest_rows(tmp_path / "out")
    assert [(r["split"], r["label"]) for r in rows] == want_rows()
    assert rows[2]["label"] == "three;four;zero"
    assert "labels    multi-label: 1.9 per clip on average (19 in all)" in capsys.readouterr().out  # 19 / 10

    loaded, classes = data.load_splits(str(tmp_path / "out" / "manifest.csv"))
    assert classes == sorted(DIGITS) and data.is_multilabel(loaded)
    for split, items in mixtures.items():  # every clip with its digits and its exact samples
        for clip, (_, samples, digits) in zip(loaded[OURS[split]], items, strict=True):
            assert clip.labels == tuple(DIGITS[d] for d in digits)
            got, rate = sf.read(clip.path, dtype="int16")
            assert rate == 8000 and np.array_equal(got, samples)


def test_a_list_of_text_from_parquet(hf, mixtures, tmp_path):
    for split, items in mixtures.items():
        audio = [{"bytes": path.read_bytes(), "path": path.name} for path, _, _ in items]  # as the Hub's copies
        table = hf.Dataset.from_dict({"audio": audio, "tags": [[DIGITS[d] for d in digits] for _, _, digits in items]})
        assert table.features["tags"] == hf.List(hf.Value("string"))
        table.to_parquet(str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    prepare.main(["hf", "--path", str(tmp_path / "hub"), "--out", str(tmp_path / "out"), "--label-column", "tags"])
    assert [(r["split"], r["label"]) for r in manifest_rows(tmp_path / "out")] == want_rows()


@pytest.mark.parametrize("labels, feature, message", [
    ([["one;two"]], "text", "example 0: label 'one;two' holds ';', which joins a clip's labels in the manifest"),
    ([[0, 1]], ["a;b", "c"], "example 0: label 'a;b' holds ';'"),
    (["one;two"], None, "example 0: label 'one;two' holds ';'"),  # one text label a clip: refused too
    ([[]], "text", "example 0: no label (an empty list)"),
    ([["one", "two", "one"]], "text", "example 0: label 'one' is given twice in ['one', 'two', 'one']"),
])
def test_refusals_name_the_example(hf, mixtures, tmp_path, labels, feature, message):
    table = hf.Dataset.from_dict({"audio": [str(mixtures["train"][0][0])], "labels": labels})
    table = table.cast_column("audio", hf.Audio())
    if isinstance(feature, list):
        table = table.cast_column("labels", hf.List(hf.ClassLabel(names=feature)))
    table.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(SystemExit) as stop:
        prepare.main(["hf", "--path", str(tmp_path / "bad"), "--out", str(tmp_path / "out"), "--label-column",
                      "labels"])
    assert str(stop.value.code).startswith("error: ") and message in str(stop.value.code)
    assert "\n" not in str(stop.value.code) and not (tmp_path / "out" / "manifest.csv").exists()
