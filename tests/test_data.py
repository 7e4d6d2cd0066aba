"""data.py: manifests and their errors, audio loading, crops and chunks, the balanced sampler,
and dataset preparation (demo, FSDD)."""
import csv
import math
import os
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import prepare


def write_wav(path, samples, rate=16_000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def small_dataset(tmp_path):
    """Two classes, train/valid/test, with a relative and an absolute path."""
    rng = np.random.default_rng(0)
    for name in ["a1", "a2", "a3", "b1", "b2", "b3", "a4", "b4"]:
        write_wav(tmp_path / "audio" / f"{name}.wav", 0.1 * rng.standard_normal(8000))
    rows = [["audio/a1.wav", "a", "train", "s1", "ignored"], ["audio/a2.wav", "a", "train", "s2", "x"],
            ["audio/b1.wav", "b", "train", "s1", ""], ["audio/b2.wav", "b", "train", "", ""],
            ["audio/a3.wav", "a", "valid", "", ""], ["audio/b3.wav", "b", "valid", "", ""],
            [str(tmp_path / "audio/a4.wav"), "a", "test", "", ""], ["audio/b4.wav", "b", "test", "", ""]]
    return write_csv(tmp_path / "manifest.csv", ["path", "label", "split", "speaker", "notes"], rows)


# ----------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------

def test_manifest_parses_paths_optional_columns_and_lines(small_dataset, tmp_path):
    clips = data.read_manifest(small_dataset)
    assert len(clips) == 8
    assert clips[0].path == str(tmp_path / "audio/a1.wav")  # relative to the manifest's folder
    assert clips[6].path == str(tmp_path / "audio/a4.wav")  # absolute kept
    assert clips[0].speaker == "s1" and clips[3].speaker is None and clips[0].fold is None
    assert clips[2].where.endswith("manifest.csv line 4")
    splits, classes = data.load_splits(str(small_dataset))
    assert classes == ["a", "b"]
    assert [len(splits[s]) for s in data.SPLITS] == [4, 2, 2]


def test_missing_column_names_file_and_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["path", "label"], [["x.wav", "a"]])
    with pytest.raises(data.DataError, match=r"m\.csv: missing required column\(s\) split"):
        data.read_manifest(manifest)


@pytest.mark.parametrize("row, message", [
    (["x.wav", "a", "training"], r"line 2: split 'training' is not one of train, valid, test"),
    (["", "a", "train"], r"line 2: empty path or label"),
    (["x.wav", "a", "train", "one"], r"line 2: fold 'one' is not an integer"),
])
def test_bad_rows_name_the_line(tmp_path, row, message):
    manifest = write_csv(tmp_path / "m.csv", ["path", "label", "split", "fold"][:len(row)], [row])
    with pytest.raises(data.DataError, match=message):
        data.read_manifest(manifest)


def test_missing_unreadable_and_empty_files_are_named(tmp_path):
    write_wav(tmp_path / "good.wav", np.zeros(800))
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16_000)
    for name, message in [("nothere.wav", "file not found"), ("garbage.wav", "cannot be read as audio"),
                          ("empty.wav", r"file is empty \(0 samples\)")]:
        manifest = write_csv(tmp_path / "m.csv", ["path", "label", "split"],
                             [["good.wav", "a", "train"], [name, "a", "train"]])
        with pytest.raises(data.DataError, match=rf"m\.csv line 3: .*{name}: {message}.*--skip-bad"):
            data.load_splits(str(manifest))


def test_skip_bad_skips_with_warning_and_count(tmp_path, capsys):
    write_wav(tmp_path / "good.wav", np.zeros(800))
    write_wav(tmp_path / "good2.wav", np.zeros(800))
    write_wav(tmp_path / "good3.wav", np.zeros(800))
    (tmp_path / "garbage.wav").write_bytes(b"not audio" * 10)
    manifest = write_csv(tmp_path / "m.csv", ["path", "label", "split"],
                         [["good.wav", "a", "train"], ["garbage.wav", "a", "train"], ["good2.wav", "a", "valid"],
                          ["good3.wav", "a", "test"]])
    with pytest.warns(UserWarning, match="skipping .*garbage.wav"):
        splits, _ = data.load_splits(str(manifest), skip_bad=True)
    assert [c.path.endswith("good.wav") for c in splits["train"]] == [True]
    assert "skipped 1 unusable file(s) of 4" in capsys.readouterr().err


def test_a_manifest_without_test_rows_is_an_error(tmp_path):
    for name in ("x.wav", "y.wav"):
        write_wav(tmp_path / name, np.zeros(800))
    manifest = write_csv(tmp_path / "m.csv", ["path", "label", "split"],
                         [["x.wav", "a", "train"], ["y.wav", "a", "valid"]])
    with pytest.raises(data.DataError, match="no test rows. Add test rows"):
        data.load_splits(str(manifest))


def test_label_unseen_in_train_is_an_error(tmp_path):
    for name in ("x.wav", "y.wav", "z.wav"):
        write_wav(tmp_path / name, np.zeros(800))
    manifest = write_csv(tmp_path / "m.csv", ["path", "label", "split"],
                         [["x.wav", "a", "train"], ["y.wav", "a", "train"], ["z.wav", "zebra", "test"]])
    with pytest.raises(data.DataError, match=r"line 4: label 'zebra' appears in test but never in train"):
        data.load_splits(str(manifest))


def test_resolve_dataset_by_name_root_env_and_path(tmp_path, monkeypatch, small_dataset):
    (tmp_path / "root" / "mine").mkdir(parents=True)
    target = tmp_path / "root" / "mine" / "manifest.csv"
    target.write_text(small_dataset.read_text())
    assert data.resolve_dataset("mine", str(tmp_path / "root")) == target
    monkeypatch.setenv("CONFIT_DATA", str(tmp_path / "root"))
    assert data.resolve_dataset("mine") == target
    assert data.resolve_dataset(str(small_dataset)) == small_dataset
    assert data.resolve_dataset(str(tmp_path / "root" / "mine")) == target
    with pytest.raises(data.DataError, match=r"dataset 'gtzan' not found.*python prepare\.py gtzan"):
        data.resolve_dataset("gtzan")
    assert data.dataset_name(str(target)) == "mine" and data.dataset_name("gtzan") == "gtzan"


def test_folds_make_fold_k_the_test_set(tmp_path):
    rows = []
    for fold in (1, 2, 3):
        for label in ("a", "b"):
            for take in range(5):
                name = f"{fold}-{label}-{take}.wav"
                write_wav(tmp_path / name, np.zeros(400))
                rows.append([name, label, "train", fold])
    manifest = write_csv(tmp_path / "m.csv", ["path", "label", "split", "fold"], rows)
    splits, classes = data.load_splits(str(manifest), fold=2)
    assert {c.fold for c in splits["test"]} == {2} and len(splits["test"]) == 10
    assert {c.fold for c in splits["train"] + splits["valid"]} == {1, 3}
    assert len(splits["valid"]) == 2 and len(splits["train"]) == 18  # 10% of each class carved
    assert not {c.path for c in splits["train"]} & {c.path for c in splits["valid"]}
    with pytest.raises(data.DataError, match="--fold 7 not among the folds"):
        data.load_splits(str(manifest), fold=7)


def test_carve_valid_is_stratified_deterministic_and_keeps_singletons():
    train = [data.Clip(f"/x/{label}{i}.wav", label, "train") for label, n in (("a", 20), ("b", 10), ("c", 1))
             for i in range(n)]
    keep, valid = data.carve_valid(list(reversed(train)), 0.1)
    assert Counter(c.label for c in valid) == {"a": 2, "b": 1}  # c (one clip) stays in train
    assert len(keep) + len(valid) == len(train) and not set(keep) & set(valid)
    keep2, valid2 = data.carve_valid(train, 0.1)  # the order given does not matter
    assert set(valid2) == set(valid)


def test_carve_valid_moves_whole_groups():
    # 40 clips of one class cut from 10 recordings (4 takes each), as in ESC-50: a 10% valid set is
    # one whole recording, never takes of a recording that train also holds.
    train = [data.Clip(f"/x/{source}-{take}.wav", "dog", "train", group=str(source))
             for source in range(10) for take in "ABCD"]
    keep, valid = data.carve_valid(train, 0.1)
    assert len(valid) == 4 and len({c.group for c in valid}) == 1
    assert not {c.group for c in keep} & {c.group for c in valid}
    # one recording only: nothing can go to valid without emptying train
    keep, valid = data.carve_valid(train[:4], 0.5)
    assert valid == [] and len(keep) == 4


def test_carve_valid_with_groups_never_overshoots_the_target():
    # per class: one recording of 8 takes and 24 single clips; target round(0.1 * 32) = 3 clips
    train = [data.Clip(f"/x/{label}-big-{t}.wav", label, "train", group=f"{label}-big") for label in "abcdefghij"
             for t in range(8)]
    train += [data.Clip(f"/x/{label}-{i}.wav", label, "train", group=f"{label}-{i}") for label in "abcdefghij"
              for i in range(24)]
    keep, valid = data.carve_valid(train, 0.1)
    assert Counter(c.label for c in valid) == {label: 3 for label in "abcdefghij"}
    # two recordings of 31 and 1 takes: only the small one fits, so it goes, whatever the shuffle
    train = [data.Clip(f"/x/big-{t}.wav", "a", "train", group="big") for t in range(31)]
    train.append(data.Clip("/x/small.wav", "a", "train", group="small"))
    keep, valid = data.carve_valid(train, 0.1)
    assert [c.group for c in valid] == ["small"] and len(keep) == 31
    # nothing fits the target (three recordings of 5, target 2): the smallest goes, never two
    train = [data.Clip(f"/x/{g}-{t}.wav", "a", "train", group=g) for g in "xyz" for t in range(5 if g != "z" else 4)]
    keep, valid = data.carve_valid(train, 0.1)
    assert [c.group for c in valid] == ["z"] * 4


def clips_of(layout: dict[str, dict[str, int]]) -> list:
    """{group: {label: clips}} -> train clips, e.g. {"p": {"a": 1, "b": 2}}: speaker p, 1 a and 2 b."""
    return [data.Clip(f"/x/{group}-{label}{i}.wav", label, "train", group=group)
            for group, mix in layout.items() for label, n in mix.items() for i in range(n)]


def test_carve_valid_takes_whole_groups_across_classes():
    # Groups spanning classes (speakers): whole groups, target round(0.2 * 24) = 5 clips over all of
    # train. p (3) and r (1) fit in either order (4); q (7) and s (13) never fit. Carving per class
    # would split speakers: a's target is 2, met by p's and q's single a clips.
    layout = {"p": {"a": 1, "b": 2}, "q": {"a": 1, "b": 6}, "r": {"b": 1}, "s": {"a": 10, "b": 3}}
    train = clips_of(layout)
    keep, valid = data.carve_valid(list(reversed(train)), 0.2)
    assert sorted(c.path for c in valid) == sorted(c.path for c in train if c.group in ("p", "r"))
    assert sorted(keep + valid, key=lambda c: c.path) == sorted(train, key=lambda c: c.path)
    # Target round(0.1 * 20) = 2: only c-only fits, but it holds every c clip, so it may not go.
    # None fits, so the smallest group that may go goes: x (8 clips), not y (10) nor c-only (2).
    keep, valid = data.carve_valid(clips_of({"c-only": {"c": 2}, "x": {"a": 4, "b": 4}, "y": {"a": 5, "b": 5}}))
    assert {c.group for c in valid} == {"x"} and len(valid) == 8
    assert {c.group for c in keep} == {"c-only", "y"}
    # x holds every a clip and y every c clip: neither may go, so valid is empty; so with one group.
    keep, valid = data.carve_valid(clips_of({"x": {"a": 3, "b": 1}, "y": {"b": 3, "c": 1}}), 0.5)
    assert valid == [] and len(keep) == 8
    keep, valid = data.carve_valid(clips_of({"x": {"a": 3, "b": 3}}), 0.5)
    assert valid == [] and len(keep) == 6


def test_carve_valid_stays_per_class_for_single_class_groups():
    # ESC-50's case, each group (recording) within one class: 5 recordings of 2 takes per class;
    # per class the target is round(0.1 * 10) = 1, none fits, so one recording (2 clips) of each
    # class goes. Carving over all of train would take one recording (target 2) of one class.
    train = clips_of({f"{label}{k}": {label: 2} for label in "ab" for k in range(5)})
    keep, valid = data.carve_valid(train, 0.1)
    assert Counter(c.label for c in valid) == {"a": 2, "b": 2} and len({c.group for c in valid}) == 2
    # no groups at all: per class max(1, round(0.05 * 10)) = 1 clip, not 1 clip over all of train
    train = [data.Clip(f"/x/{label}{i}.wav", label, "train") for label in "ab" for i in range(10)]
    keep, valid = data.carve_valid(train, 0.05)
    assert Counter(c.label for c in valid) == {"a": 1, "b": 1}


def speaker_manifest(tmp_path, test_speakers) -> tuple:
    """240 train clips over 10 classes from 4 speakers of 2, 6, 7 and 9 clips a class (20, 60, 70, 90
    clips), and 2 test clips a class from `test_speakers`; written as tiny real WAV files."""
    rows = []
    for speaker, per_class in (("s20", 2), ("s60", 6), ("s70", 7), ("s90", 9)):
        rows += [[f"{speaker}/{label}{i}.wav", label, "train", speaker] for label in "abcdefghij"
                 for i in range(per_class)]
    rows += [[f"test/{label}{k}.wav", label, "test", speaker] for label in "abcdefghij"
             for k, speaker in enumerate(test_speakers)]
    for row in rows:
        write_wav(tmp_path / row[0], np.full(160, 0.1))
    return write_csv(tmp_path / "manifest.csv", ["path", "label", "split", "speaker"], rows), rows


def test_carved_valid_is_whole_speakers_where_test_speakers_are_unseen(tmp_path, capsys):
    manifest, _ = speaker_manifest(tmp_path, ["t1", "t2"])
    splits, _ = data.load_splits(str(manifest))
    # Whole speakers over all of train: the target round(0.1 x 240) = 24 fits s20 (20 clips) and no
    # other speaker, whatever the shuffle, so valid is s20's 20 clips and no valid speaker is in train.
    assert {c.speaker for c in splits["valid"]} == {"s20"} and len(splits["valid"]) == 20
    assert {c.speaker for c in splits["train"]} == {"s60", "s70", "s90"} and len(splits["train"]) == 220
    err = capsys.readouterr().err
    assert "valid is 20 clips of whole train speaker(s) s20" in err and "test's speakers are all unseen" in err
    # valid_fraction is the share: round(0.35 x 240) = 84 fits s20 + s60 (80) taken in either order, or
    # s70 (70) where it comes first (then nothing else fits); never a part of a speaker
    splits, _ = data.load_splits(str(manifest), valid_fraction=0.35)
    valid_speakers = {c.speaker for c in splits["valid"]}
    assert (valid_speakers, len(splits["valid"])) in (({"s20", "s60"}, 80), ({"s70"}, 70))
    assert not valid_speakers & {c.speaker for c in splits["train"]}


def test_carved_valid_stays_per_clip_where_test_shares_speakers(tmp_path, capsys):
    manifest, _ = speaker_manifest(tmp_path, ["s20", "t1"])  # test shares s20 with train
    splits, _ = data.load_splits(str(manifest))
    # clip by clip, as before: round(0.1 x 24) = 2 clips of each class
    assert Counter(c.label for c in splits["valid"]) == {label: 2 for label in "abcdefghij"}
    assert len(splits["train"]) == 220
    before, _ = data.carve_valid([c for c in data.read_manifest(manifest) if c.split == "train"], 0.1)
    assert sorted(c.path for c in splits["train"]) == sorted(c.path for c in before)  # the same clips as before
    assert "carved one by one" in capsys.readouterr().err
    # a group column is followed as always, speakers or not
    rows = list(csv.reader(manifest.read_text().splitlines()))[1:]
    grouped = write_csv(tmp_path / "grouped.csv", ["path", "label", "split", "speaker", "group"],
                        [[*row[:3], "t9" if row[2] == "test" else row[3], row[0].split("/")[0] + row[1]]
                         for row in rows])
    splits, _ = data.load_splits(str(grouped))
    assert Counter(c.label for c in splits["valid"]) == {label: 2 for label in "abcdefghij"}
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------

def test_stereo_becomes_the_mean_of_its_channels(tmp_path):
    left, right = np.full(1600, 0.5), np.full(1600, -0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    audio = data.load_audio(str(path), 16_000)
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == 1600
    np.testing.assert_allclose(audio, 0.125, atol=1e-6)


def test_resampling_keeps_duration_and_pitch(tmp_path):
    rate = 8_000
    t = np.arange(rate) / rate  # one second of 440 Hz
    path = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate)
    audio = data.load_audio(str(path), 16_000)
    assert len(audio) == 16_000
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = np.fft.rfftfreq(len(audio), 1 / 16_000)[spectrum.argmax()]
    assert abs(peak_hz - 440) <= 1.0
    assert abs(np.sqrt(np.mean(audio[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01  # level kept


def test_random_crop_is_a_contiguous_window_and_pads_nothing():
    wave = np.arange(1000, dtype=np.float32)
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(20):
        crop = data.random_crop(wave, 300, generator)
        assert len(crop) == 300 and np.all(np.diff(crop) == 1)
        starts.add(int(crop[0]))
    assert len(starts) > 5  # really random
    assert len(data.random_crop(wave[:100], 300)) == 100  # short clips are padded per batch, not here


@pytest.mark.parametrize("n, max_samples, expected", [(100, 100, 1), (200, 100, 2), (201, 100, 3), (50, 100, 1)])
def test_chunks_cover_the_whole_clip(n, max_samples, expected):
    wave = np.arange(n, dtype=np.float32)
    chunks = data.split_into_chunks(wave, max_samples)
    assert len(chunks) == expected == max(1, math.ceil(n / max_samples))
    assert all(len(c) <= max_samples for c in chunks)
    assert max(len(c) for c in chunks) - min(len(c) for c in chunks) <= 1  # near-equal
    np.testing.assert_array_equal(np.concatenate(chunks), wave)


# ----------------------------------------------------------------------------------------------
# The class-balanced sampler
# ----------------------------------------------------------------------------------------------

def test_balanced_batches_have_positives_for_every_anchor():
    labels = [c for c in range(10) for _ in range(12)]
    sampler = data.ClassBalancedBatchSampler(labels, classes_per_batch=4, clips_per_class=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10  # ceil(120 / 12)
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 4 and set(counts.values()) == {3}
        assert len(set(batch)) == 12  # classes of 12 clips never repeat a clip within a batch
    used = Counter(i for b in batches for i in b)
    assert len(used) == 120  # one epoch is one pass: every clip once


def test_sampler_with_far_more_classes_than_p_and_tiny_classes():
    labels = [c for c in range(630) for _ in range(3)] + [630]  # 630 speakers and one singleton
    sampler = data.ClassBalancedBatchSampler(labels, classes_per_batch=8, clips_per_class=4, seed=0)
    batches = list(sampler)
    seen = {labels[i] for b in batches for i in b}
    assert seen == set(range(631))  # every class visited in one epoch
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 8 and set(counts.values()) == {4}


def test_sampler_is_deterministic_per_seed_and_epoch():
    labels = [c for c in range(5) for _ in range(8)]
    a = data.ClassBalancedBatchSampler(labels, 2, 4, seed=3)
    b = data.ClassBalancedBatchSampler(labels, 2, 4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    with pytest.raises(ValueError, match="clips_per_class"):
        data.ClassBalancedBatchSampler(labels, 2, 1)


def test_sampler_with_fewer_classes_than_p():
    labels = [0] * 10 + [1] * 10
    batches = list(data.ClassBalancedBatchSampler(labels, classes_per_batch=8, clips_per_class=4))
    assert all(Counter(labels[i] for i in b) == {0: 4, 1: 4} for b in batches)


# ----------------------------------------------------------------------------------------------
# Preparing datasets
# ----------------------------------------------------------------------------------------------

def test_demo_dataset_is_deterministic_and_well_formed(demo_manifest, tmp_path):
    clips = data.read_manifest(demo_manifest)
    assert Counter(c.split for c in clips) == {"train": 240, "valid": 80, "test": 80}
    assert len({c.label for c in clips}) == 10
    info = sf.info(clips[0].path)
    assert info.samplerate == 16_000 and info.channels == 1
    prepare.prepare_demo(tmp_path)  # a second build, same seed: byte-identical audio
    for clip in clips[::37]:
        relative = os.path.relpath(clip.path, demo_manifest.parent)
        assert (tmp_path / relative).read_bytes() == open(clip.path, "rb").read()


def test_demo_classes_are_not_separable_by_loudness_or_duration(demo_manifest):
    """Nearest class mean on (duration, RMS, peak) must stay near chance (10%)."""
    clips = data.read_manifest(demo_manifest)
    classes = sorted({c.label for c in clips})

    def stats(split):
        rows = [(c, sf.read(c.path)[0]) for c in clips if c.split == split]
        x = np.array([[len(a) / 16_000, np.sqrt(np.mean(a ** 2)), np.abs(a).max()] for _, a in rows])
        return x, np.array([classes.index(c.label) for c, _ in rows])

    train_x, train_y = stats("train")
    test_x, test_y = stats("test")
    mean, std = train_x.mean(0), train_x.std(0)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    centroids = np.stack([train_x[train_y == k].mean(0) for k in range(len(classes))])
    predicted = ((test_x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test_y).mean() < 0.3


def test_fsdd_official_split(fsdd_root, tmp_path):
    prepare.prepare_fsdd(fsdd_root, tmp_path / "digit", "digit")
    clips = data.read_manifest(tmp_path / "digit" / "manifest.csv")
    assert Counter(c.split for c in clips) == {"train": 2400, "valid": 300, "test": 300}
    for clip in clips:
        digit, speaker, take = os.path.basename(clip.path)[:-4].split("_")
        assert clip.label == digit and clip.speaker == speaker
        assert clip.split == ("test" if int(take) <= 4 else "valid" if int(take) <= 9 else "train")
        assert os.path.isfile(clip.path)
    prepare.prepare_fsdd(fsdd_root, tmp_path / "speaker", "speaker")
    speakers = data.read_manifest(tmp_path / "speaker" / "manifest.csv")
    assert len({c.label for c in speakers}) == 6 and Counter(c.split for c in speakers)["test"] == 300


# ----------------------------------------------------------------------------------------------
# Few-shot: keep_shots
# ----------------------------------------------------------------------------------------------

def few_shot_splits():
    clip = lambda label, i, split: data.Clip(f"/x/{label}{i}.wav", label, split)
    train = [clip(label, i, "train") for label, n in (("a", 10), ("b", 6), ("c", 2)) for i in range(n)]
    return {"train": train, "valid": [clip("a", 99, "valid")], "test": [clip("b", 98, "test")]}


def test_keep_shots_keeps_k_train_clips_per_class_the_same_for_the_same_seed(capsys):
    splits = few_shot_splits()
    kept, info = data.keep_shots(splits, 4, seed=0)
    assert Counter(c.label for c in kept["train"]) == {"a": 4, "b": 4, "c": 2}  # c has only 2: keeps them
    assert info == {"shots": 4, "shot_seed": 0, "short_classes": {"c": 2}}
    assert "1 class(es) have fewer train clips" in capsys.readouterr().err
    assert kept["valid"] is splits["valid"] and kept["test"] is splits["test"]  # untouched
    assert [c.path for c in kept["train"]] == [c.path for c in splits["train"] if c in kept["train"]]  # in order
    assert data.keep_shots(splits, 4, seed=0)[0]["train"] == kept["train"]  # every method: the same clips
    assert data.keep_shots(splits, 4, seed=1)[0]["train"] != kept["train"]
    # nested: the K = 2 clips are among the K = 4 ones, so a curve adds clips rather than redrawing them
    assert set(data.keep_shots(splits, 2, seed=0)[0]["train"]) <= set(kept["train"])
    # the draw is uniform over a class's clips: every "a" clip is drawn about 4 in 10 seeds
    counts = Counter(c.path for seed in range(2000) for c in data.keep_shots(splits, 4, seed)[0]["train"]
                     if c.label == "a")
    assert len(counts) == 10 and all(abs(n / 2000 - 0.4) < 0.05 for n in counts.values())


def test_keep_shots_refuses_zero():
    with pytest.raises(data.DataError, match="--shots must be at least 1"):
        data.keep_shots(few_shot_splits(), 0, seed=0)
