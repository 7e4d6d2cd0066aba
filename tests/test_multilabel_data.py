"""Multi-label manifests (labels joined by ';'), their targets, valid carving, the label-balanced sampler,
and the record of checked audio files."""
import csv
import os
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

import data


def write_manifest(folder, rows, header=("path", "label", "split")):
    """rows of (name, label, split); each name gets a short real-looking tone (its own frequency)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for index, (name, label, split) in enumerate(rows):
            t = np.arange(1600) / 8000
            sf.write(folder / name, (0.3 * np.sin(2 * np.pi * (200 + 20 * index) * t)).astype(np.float32), 8000)
            writer.writerow([name, label, split])
    return folder / "manifest.csv"


def test_a_semicolon_joins_labels_and_makes_the_dataset_multilabel(tmp_path):
    manifest = write_manifest(tmp_path, [("a.wav", "dog; car", "train"), ("b.wav", "car", "train"),
                                         ("c.wav", "dog", "train"), ("d.wav", "car;dog", "test"),
                                         ("e.wav", "dog", "valid")])
    clips = data.read_manifest(manifest)
    assert clips[0].labels == ("dog", "car") and clips[0].label == "dog;car"  # spaces around a label dropped
    assert clips[1].labels == ("car",)
    splits, classes = data.load_splits(str(manifest))
    assert classes == ["car", "dog"]
    assert data.is_multilabel(splits) and data.is_multilabel(splits["train"])
    assert not data.is_multilabel(splits["valid"])  # a split alone can look single-label; the dataset is not


def test_single_label_manifests_are_not_multilabel(demo_manifest):
    splits, _ = data.load_splits(str(demo_manifest))
    assert not data.is_multilabel(splits)


@pytest.mark.parametrize("label, message", [("dog;", "an empty label"), (";dog", "an empty label"),
                                            ("dog;;car", "an empty label"), ("dog;car;dog", "'dog' is given twice")])
def test_bad_label_lists_name_the_file_and_line(tmp_path, label, message):
    manifest = write_manifest(tmp_path, [("a.wav", "cat", "train"), ("b.wav", label, "train")])
    with pytest.raises(data.DataError, match=rf"manifest.csv line 3: .*{message}"):
        data.read_manifest(manifest)


def test_an_unknown_label_in_test_is_named(tmp_path):
    manifest = write_manifest(tmp_path, [("a.wav", "dog;car", "train"), ("b.wav", "car", "train"),
                                         ("c.wav", "dog", "valid"), ("d.wav", "car;bird", "test")])
    with pytest.raises(data.DataError, match=r"line 5: label 'bird' appears in test but never in train"):
        data.load_splits(str(manifest))


def test_label_targets_are_multi_hot_rows_in_class_order():
    clips = [data.Clip("a", "b;a", "train"), data.Clip("b", "c", "train"), data.Clip("c", "a;c;b", "train")]
    classes = ["a", "b", "c"]
    expected = torch.tensor([[1.0, 1, 0], [0, 0, 1], [1, 1, 1]])
    assert torch.equal(data.label_targets(clips, classes, True), expected)
    single = [data.Clip("a", "b", "train"), data.Clip("b", "c", "train")]
    assert data.label_targets(single, classes, False).tolist() == [1, 2]


def test_train_and_eval_clips_give_multi_hot_targets(tmp_path):
    manifest = write_manifest(tmp_path, [("a.wav", "dog;car", "train"), ("b.wav", "car", "train")])
    clips = data.read_manifest(manifest)
    train = data.TrainClips(clips, ["car", "dog"], 8000, 1.0, multilabel=True)
    _, target = train[0]
    assert target.tolist() == [1.0, 1.0] and target.dtype == torch.float32
    batch = data.CollateTrain(lambda waves: {"n": len(waves)})([train[0], train[1]])
    assert batch[1].tolist() == [[1.0, 1.0], [1.0, 0.0]]
    evaluation = data.EvalClips(clips, ["car", "dog"], 8000, 1.0, multilabel=True)
    _, _, labels, indices = data.CollateEval(lambda chunks: {"n": len(chunks)})([evaluation[1], evaluation[0]])
    assert labels.tolist() == [[1.0, 0.0], [1.0, 1.0]] and indices.tolist() == [1, 0]


def test_carved_valid_keeps_every_label_in_train_and_is_deterministic():
    generator = np.random.default_rng(0)
    names = "abcdef"
    clips = []
    for index in range(60):
        labels = sorted(generator.choice(6, size=generator.integers(1, 4), replace=False))
        clips.append(data.Clip(f"/x/{index:02d}.wav", ";".join(names[i] for i in labels), "train"))
    clips.append(data.Clip("/x/rare.wav", "f;z", "train"))  # z: one clip only, so it must stay in train
    keep, valid = data.carve_valid(clips, 0.2)
    again = data.carve_valid(clips, 0.2)
    assert [c.path for c in valid] == [c.path for c in again[1]]
    assert len(valid) == round(0.2 * len(clips)) and len(keep) + len(valid) == len(clips)
    assert {label for c in keep for label in c.labels} == {label for c in clips for label in c.labels}
    assert "/x/rare.wav" not in {c.path for c in valid}


def test_few_shot_refuses_multilabel_data():
    splits = {"train": [data.Clip("a", "x;y", "train")], "valid": [], "test": []}
    with pytest.raises(data.DataError, match="multi-label"):
        data.keep_shots(splits, 2, 0)


def test_the_sampler_fills_each_batch_with_clips_carrying_its_labels():
    generator = np.random.default_rng(1)
    labels = [sorted(generator.choice(8, size=generator.integers(1, 4), replace=False).tolist()) for _ in range(200)]
    labels += [[8], [8, 1], [9, 2]]  # rare labels: 8 on two clips, 9 on one
    sampler = data.ClassBalancedBatchSampler(labels, classes_per_batch=4, clips_per_class=3, seed=0)
    covered = Counter()  # label -> groups whose K clips all carry it
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 12
            # The batch is P groups of K: each group's K clips all carry one label (the one it was drawn for).
            for start in range(0, 12, 3):
                shared = set.intersection(*(set(labels[i]) for i in batch[start:start + 3]))
                assert shared, "a group of K clips shares no label"
                covered.update(shared)
    # Labels are visited equally often, however rare: label 9 (one clip) has a group of its own each pass
    # through the labels, about len(batches) * P / 10 = 3 * 17 * 4 / 10 of them.
    assert set(covered) == set(range(10))
    assert covered[9] >= 3 * len(sampler) * 4 // 10 - 1


def test_checked_files_are_recorded_and_a_changed_file_is_checked_again(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path / "d", [("a.wav", "x", "train"), ("b.wav", "y", "train"),
                                               ("c.wav", "x", "test")])
    monkeypatch.setenv("CONFIT_CACHE", str(tmp_path / "cache"))
    for name in ("a.wav", "b.wav", "c.wav"):  # written a while ago: a file changed in the last 2 s is not recorded
        os.utime(tmp_path / "d" / name, (1e9, 1e9))
    decoded = []
    real_check = data.check_audio
    monkeypatch.setattr(data, "check_audio", lambda path: decoded.append(os.path.basename(path)) or real_check(path))
    clips = data.read_manifest(manifest)
    record = data.check_record_path(manifest)
    assert str(record).startswith(str(tmp_path / "cache"))
    assert len(data.check_audio_files(clips, record=record)) == 3
    assert sorted(decoded) == ["a.wav", "b.wav", "c.wav"] and record.is_file()
    decoded.clear()
    assert len(data.check_audio_files(clips, record=record)) == 3
    assert decoded == []  # unchanged: nothing decoded again
    # b.wav replaced by a damaged file (other size and mtime): checked again, and refused
    (tmp_path / "d" / "b.wav").write_bytes(b"RIFF not audio")
    os.utime(tmp_path / "d" / "b.wav", (1.5e9, 1.5e9))
    with pytest.raises(data.DataError, match="b.wav"):
        data.check_audio_files(clips, record=record)
    assert decoded == ["b.wav"]
    decoded.clear()
    with pytest.raises(data.DataError, match="b.wav"):  # still bad: recorded as bad, refused without decoding
        data.check_audio_files(clips, record=record)
    assert decoded == []
    # the same size but a new modification time is a change too
    t = np.arange(1600) / 8000
    sf.write(tmp_path / "d" / "a.wav", (0.1 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 8000)
    os.utime(tmp_path / "d" / "a.wav", ns=(1, 1))
    sf.write(tmp_path / "d" / "b.wav", (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 8000)
    assert len(data.check_audio_files(clips, record=record)) == 3
    assert sorted(decoded) == ["a.wav", "b.wav"]


def test_a_damaged_record_is_ignored_not_trusted(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path / "d", [("a.wav", "x", "train")])
    record = tmp_path / "record.json"
    path = str(tmp_path / "d" / "a.wav")
    stat = os.stat(path)
    for text in ("not json", '{"version": 1, "files": {"%s": [%d, %d, null, 1, 8000, "yes"]}}'
                 % (path, stat.st_size, stat.st_mtime_ns)):
        record.write_text(text)
        decoded = []
        real_check = data.check_audio
        monkeypatch.setattr(data, "check_audio", lambda p: decoded.append(p) or real_check(p))
        data.check_audio_files(data.read_manifest(manifest), record=record)
        assert decoded == [path]
        monkeypatch.setattr(data, "check_audio", real_check)


def test_a_file_changed_in_the_last_seconds_is_checked_again(tmp_path, monkeypatch):
    # Its modification time could stay the same through another write within the clock's resolution.
    manifest = write_manifest(tmp_path / "d", [("a.wav", "x", "train")])
    decoded = []
    real_check = data.check_audio
    monkeypatch.setattr(data, "check_audio", lambda p: decoded.append(p) or real_check(p))
    clips, record = data.read_manifest(manifest), tmp_path / "record.json"
    data.check_audio_files(clips, record=record)
    data.check_audio_files(clips, record=record)
    assert len(decoded) == 2
    os.utime(tmp_path / "d" / "a.wav", (1e9, 1e9))
    data.check_audio_files(clips, record=record)
    data.check_audio_files(clips, record=record)
    assert len(decoded) == 3
