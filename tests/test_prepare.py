"""prepare.py for the paper's datasets: GTZAN, ESC-50, TIMIT, EmoDB, MSWC (and FSDD).

Every dataset is rebuilt in tmp_path as a small but faithful replica of its on-disk layout (real
file names, folder names and audio formats, a few hundred samples per file), and the manifest that
`prepare` writes is checked against facts taken from ../shared (notes/datasets.md and the split
files in splits/), never against prepare.py's own constants.
"""
import csv
import functools
import hashlib
import io
import json
import os
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data
import prepare
from conftest import SHARED

# ----------------------------------------------------------------------------------------------
# Facts, copied from ../shared/notes/datasets.md (the independent source)
# ----------------------------------------------------------------------------------------------

SPLITS_DIR = SHARED / "splits"
GTZAN_LISTS = SPLITS_DIR / "gtzan"
GTZAN_FILES = {"train": "train_filtered.txt", "valid": "valid_filtered.txt", "test": "test_filtered.txt"}
GTZAN_COUNTS = {"train": 443, "valid": 197, "test": 290}
GTZAN_PER_GENRE = {  # train / valid / test, from splits/gtzan/README.md
    "blues": (46, 23, 31), "classical": (48, 20, 31), "country": (45, 23, 30), "disco": (42, 22, 29),
    "hiphop": (47, 18, 27), "jazz": (43, 17, 27), "metal": (44, 20, 27), "pop": (41, 13, 30),
    "reggae": (43, 17, 26), "rock": (44, 24, 32)}
ESC50_HEADERS = {"current": ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
                 "2017": ["filename", "fold", "category", "category_name", "esc10", "src_file", "take"]}
EMODB_SPLIT = SPLITS_DIR / "emodb" / "speaker_split.json"
EMODB_FILES_PER_SPEAKER = {"03": 49, "08": 58, "09": 43, "10": 38, "11": 55, "12": 35, "13": 61,
                           "14": 69, "15": 56, "16": 71}
EMODB_EMOTION_COUNTS = {"W": 127, "L": 81, "E": 46, "A": 69, "F": 71, "T": 62, "N": 79}
EMODB_EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness",
                  "T": "sadness", "N": "neutral"}
EMODB_TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")
MSWC_ID_PAPER_KEYWORDS = {"asia", "dan", "teman", "selamat", "anak", "tuhan", "kuat", "rumahnya", "tahan",
                          "pulau", "selama", "selatan", "raja", "agustus"}
MSWC_HEADER = ["SET", "LINK", "WORD", "VALID", "SPEAKER", "GENDER"]
# One real TIMIT speaker (TRAIN/DR1/FCJF0, female) and her ten utterances, in directory order.
FCJF0 = ["SA1", "SA2", "SI1027", "SI1657", "SI648", "SX127", "SX217", "SX307", "SX37", "SX397"]
# Worked by hand from the by-type rule (train SA1, SA2, 3 SI, lowest SX; valid next 2 SX; test the
# 2 highest SX). SX numbers sort as numbers: SX37 < SX127, not as text.
FCJF0_BY_TYPE = {"SA1": "train", "SA2": "train", "SI648": "train", "SI1027": "train", "SI1657": "train",
                 "SX37": "train", "SX127": "valid", "SX217": "valid", "SX307": "test", "SX397": "test"}
FCJF0_REYNOLDS = {**FCJF0_BY_TYPE, "SX127": "train", "SX217": "train"}  # 8 train / 2 test, no valid


# ----------------------------------------------------------------------------------------------
# Replica builders
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def audio_bytes(rate: int, fmt: str = "WAV", subtype: str = "PCM_16", n: int = 240) -> bytes:
    """One tiny encoded file (n samples), built once and written many times."""
    buffer = io.BytesIO()
    sf.write(buffer, np.random.default_rng(0).uniform(-0.3, 0.3, n), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def opus_bytes() -> bytes:
    return audio_bytes(16_000, "OGG", "OPUS", 320)


def put(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def nist_sphere(samples, rate: int = 16_000, utterance_id: str = "cjf0_sa1") -> bytes:
    """A TIMIT `.WAV`: a 1024-byte NIST_1A header, then little-endian int16 samples."""
    fields = ["database_id -s5 TIMIT", "database_version -s3 1.0", f"utterance_id -s{len(utterance_id)} "
              f"{utterance_id}", "channel_count -i 1", f"sample_count -i {len(samples)}",
              f"sample_rate -i {rate}", "sample_min -i -2000", "sample_max -i 2000", "sample_n_bytes -i 2",
              "sample_byte_format -s2 01", "sample_sig_bits -i 16", "sample_coding -s3 pcm", "end_head"]
    header = ("NIST_1A\n   1024\n" + "\n".join(fields) + "\n").encode("ascii")
    assert len(header) < 1024
    return header.ljust(1024, b" ") + np.asarray(samples, dtype="<i2").tobytes()


SPHERE_SAMPLES = np.arange(-150, 150) * 7
SPHERE = nist_sphere(SPHERE_SAMPLES)
GARBAGE = b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(100)  # a damaged file, as jazz.00054.wav in the .wav copy


def build_gtzan(root: Path, folder: str = "genres", ext: str = ".au", corrupt=()) -> Path:
    """GTZAN's 1000 excerpts: <folder>/<genre>/<genre>.000NN<ext> at 22050 Hz."""
    content = audio_bytes(22_050, "AU" if ext == ".au" else "WAV")
    for genre in GTZAN_PER_GENRE:
        (root / folder / genre).mkdir(parents=True)
        for n in range(100):
            name = f"{genre}.{n:05d}"
            (root / folder / genre / f"{name}{ext}").write_bytes(GARBAGE if name in corrupt else content)
    return root


def gtzan_list(split: str) -> list[str]:
    return (GTZAN_LISTS / GTZAN_FILES[split]).read_text().splitlines()


def copy_gtzan_lists(target: Path, edit=lambda split, lines: lines, newline: str = "\n") -> Path:
    """The three shared lists, optionally edited, in a folder of their own."""
    target.mkdir(parents=True, exist_ok=True)
    for split, file in GTZAN_FILES.items():
        (target / file).write_bytes("".join(f"{line}{newline}" for line in edit(split, gtzan_list(split))).encode())
    return target


def esc50_classes() -> list[tuple[int, str, str]]:
    with open(SPLITS_DIR / "esc50" / "esc50_classes.csv", newline="") as f:
        return [(int(r["target"]), r["category"], r["esc10"]) for r in csv.DictReader(f)]


def esc50_rows(classes) -> list[tuple]:
    """Official-style rows: per class and fold 2 Freesound sources x 4 takes = 8 clips (40 per class)."""
    rows = []
    for target, category, esc10 in classes:
        for fold in range(1, 6):
            for source in range(2):
                src_file = 100_000 + 1000 * target + 10 * fold + source
                for take in "ABCD":
                    rows.append((f"{fold}-{src_file}-{take}-{target}.wav", fold, target, category, esc10,
                                 src_file, take))
    return sorted(rows)


def build_esc50(root: Path, rows, header: str = "current", missing=()) -> Path:
    """ESC-50 as distributed: audio/*.wav (44.1 kHz) and meta/esc50.csv."""
    (root / "audio").mkdir(parents=True)
    content = audio_bytes(44_100)
    for row in rows:
        if row[0] not in missing:
            (root / "audio" / row[0]).write_bytes(content)
    write_csv(root / "meta" / "esc50.csv", ESC50_HEADERS[header], rows)
    return root


def timit_speakers(n_train: int = 462, n_test: int = 168) -> list[tuple[str, str, str]]:
    """(corpus set, dialect region, speaker id) with unique ids: sex letter, 3 initials, digit."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    speakers = []
    for i in range(n_train + n_test):
        initials = letters[i // 676 % 26] + letters[i // 26 % 26] + letters[i % 26]
        speaker = f"{'FM'[i % 2]}{initials}{i % 3}"
        speakers.append(("TRAIN" if i < n_train else "TEST", f"DR{i % 8 + 1}", speaker))
    return speakers


def timit_utterances(i: int) -> list[str]:
    """SA1, SA2, 3 SI and 5 SX ids numbered as in TIMIT (a speaker's SX are 90 apart)."""
    first_sx = 5 + i % 85  # from SX5 (one digit) to SX449, so numeric and text order differ
    return ["SA1", "SA2", *(f"SI{453 + i + 630 * k}" for k in range(3)),
            *(f"SX{first_sx + 90 * k}" for k in range(5))]


def build_timit(root: Path, speakers, utterances=timit_utterances, lower=False, riff_copies=False,
                transcripts=False) -> Path:
    """TIMIT/{TRAIN,TEST}/DR<n>/<speaker>/<utterance>.WAV (NIST SPHERE), optionally all lower case,
    with the Kaggle copy's `<utterance>.WAV.wav` RIFF duplicates and the .PHN/.WRD/.TXT files."""
    case = str.lower if lower else str
    for i, (corpus_set, region, speaker) in enumerate(speakers):
        folder = root / case(f"TIMIT/{corpus_set}/{region}/{speaker}")
        folder.mkdir(parents=True)
        for utterance in utterances(i):
            (folder / case(f"{utterance}.WAV")).write_bytes(SPHERE)
            if riff_copies:
                (folder / (case(f"{utterance}.WAV") + ".wav")).write_bytes(audio_bytes(16_000))
            if transcripts:
                for ext in (".PHN", ".WRD", ".TXT"):
                    (folder / case(f"{utterance}{ext}")).write_text("0 46797 She had your dark suit\n")
    put(root / case("TIMIT/DOC/SPKRINFO.TXT"), b"; speaker table\n")
    return root


def emodb_names() -> list[str]:
    """535 names with EmoDB's real files per speaker and clips per emotion (e.g. 03a01Fa.wav)."""
    emotions = [letter for letter, count in EMODB_EMOTION_COUNTS.items() for _ in range(count)]
    random.Random(0).shuffle(emotions)
    names, start = [], 0
    for speaker, count in EMODB_FILES_PER_SPEAKER.items():
        per_emotion = Counter()
        for emotion in emotions[start:start + count]:
            k = per_emotion[emotion]
            per_emotion[emotion] += 1
            names.append(f"{speaker}{EMODB_TEXTS[k % 10]}{emotion}{'abcdefgh'[k // 10]}.wav")
        start += count
    return names


def build_emodb(root: Path, names, corrupt=()) -> Path:
    (root / "wav").mkdir(parents=True)
    for name in names:
        (root / "wav" / name).write_bytes(GARBAGE if name in corrupt else audio_bytes(16_000))
    return root


def build_mswc(root: Path, lang: str, clips, content: bytes | None = None) -> Path:
    """MSWC: <lang>/<lang>_splits.csv and opus clips <lang>/clips/<word>/common_voice_<lang>_<id>.opus.

    clips: (SET, WORD) pairs, e.g. ("TRAIN", "hola")."""
    rows = []
    for i, (split, word) in enumerate(clips):
        link = f"{word}/common_voice_{lang}_{19_000_000 + i}.opus"
        put(root / lang / "clips" / link, content or opus_bytes())
        rows.append([split, link, word, "True", f"speaker{i % 4}", "FEMALE" if i % 2 else "MALE"])
    write_csv(root / lang / f"{lang}_splits.csv", MSWC_HEADER, rows)
    return root


# ----------------------------------------------------------------------------------------------
# Reading back what prepare wrote
# ----------------------------------------------------------------------------------------------

def manifest_rows(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def by_file(out: Path, *columns) -> dict[str, tuple]:
    """{resolved audio file: (label, split, *columns)}; every manifest path must be relative to out."""
    result = {}
    for row in manifest_rows(out):
        assert not os.path.isabs(row["path"]), row["path"]
        result[str((out / row["path"]).resolve())] = (row["label"], row["split"], *(row[c] for c in columns))
    return result


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def checks_of(summary: dict) -> dict[str, tuple]:
    return {c["check"]: (c["expected"], c["found"], c["ok"]) for c in summary["checks"]}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (a fresh clone has no ../shared)")
    return path


# ----------------------------------------------------------------------------------------------
# GTZAN
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gtzan_root(tmp_path_factory) -> Path:
    """The original tarball's layout: genres/<genre>/<genre>.000NN.au."""
    need(GTZAN_LISTS / "train_filtered.txt")
    return build_gtzan(tmp_path_factory.mktemp("gtzan"))


def test_gtzan_split_md5_is_that_of_the_shared_lists():
    need(GTZAN_LISTS / "train_filtered.txt")
    for split, file in GTZAN_FILES.items():
        raw = (GTZAN_LISTS / file).read_bytes()
        assert prepare.GTZAN_SPLIT_MD5[split] == hashlib.md5(raw).hexdigest()
        text = raw.decode()
        assert prepare.canonical_gtzan_list(text) == text  # the shared copy is already canonical
        au_crlf = text.replace(".wav\n", ".au\r\n")
        assert au_crlf != text and prepare.canonical_gtzan_list(au_crlf) == text


def test_gtzan_au_copy_gives_the_fault_filtered_split(gtzan_root, tmp_path, capsys):
    out = tmp_path / "gtzan"
    prepare.prepare_gtzan(gtzan_root, out, GTZAN_LISTS, skip_bad=False)

    expected = {}
    for split in GTZAN_FILES:
        for line in gtzan_list(split):
            genre, name = line.split("/")
            file = gtzan_root / "genres" / genre / name.replace(".wav", ".au")
            expected[str(file.resolve())] = (genre, split)
    assert len(expected) == 930
    assert by_file(out) == expected
    per_genre = Counter((label, split) for label, split in expected.values())
    assert {g: tuple(per_genre[g, s] for s in GTZAN_FILES) for g in GTZAN_PER_GENRE} == GTZAN_PER_GENRE

    summary = summary_of(out)
    assert summary["clips"] == GTZAN_COUNTS and summary["classes"] == 10
    assert summary["sample_rates"] == {"22050": 930} and summary["skipped"] == []
    assert all(ok for _, _, ok in checks_of(summary).values())
    assert summary["notes"]["files_on_disk_not_in_split"] == 70
    err = capsys.readouterr().err
    assert "WARNING" not in err and "MD5" not in err


def test_gtzan_lists_with_au_names_and_crlf_match_the_published_md5(gtzan_root, tmp_path, capsys):
    lists = copy_gtzan_lists(tmp_path / "lists", lambda s, lines: [x.replace(".wav", ".au") for x in lines],
                             newline="\r\n")
    prepare.prepare_gtzan(gtzan_root, tmp_path / "out", lists, skip_bad=False)
    assert "MD5" not in capsys.readouterr().err
    assert Counter(split for _, split in by_file(tmp_path / "out").values()) == GTZAN_COUNTS


def test_gtzan_edited_list_is_used_but_warned_about(gtzan_root, tmp_path, capsys):
    lists = copy_gtzan_lists(tmp_path / "lists", lambda s, lines: lines[:-1] if s == "test" else lines)
    summary = prepare.prepare_gtzan(gtzan_root, tmp_path / "out", lists, skip_bad=False)
    err = capsys.readouterr().err
    assert "test_filtered.txt differs from the published fault-filtered list (MD5 mismatch)" in err
    assert "train_filtered.txt differs" not in err
    assert summary["clips"]["test"] == 289 and checks_of(summary)["test"] == (290, 289, False)
    assert "WARNING" in err and "test: expected 290, found 289" in err


def test_gtzan_wav_copy_with_corrupt_jazz_00054(tmp_path, capsys):
    """The Kaggle copy (Data/genres_original/*.wav) has an unreadable jazz.00054.wav, listed in train."""
    need(GTZAN_LISTS / "train_filtered.txt")
    assert gtzan_list("train")[252] == "jazz/jazz.00054.wav"  # line 253
    root = build_gtzan(tmp_path / "kaggle", folder="Data/genres_original", ext=".wav", corrupt={"jazz.00054"})
    bad = root / "Data" / "genres_original" / "jazz" / "jazz.00054.wav"
    with pytest.raises(data.DataError, match=r"(?s)1 of 930 gtzan file\(s\).*jazz\.00054\.wav \(.*train_filtered"
                                             r"\.txt line 253\): cannot be read as audio.*--skip-bad"):
        prepare.prepare_gtzan(root, tmp_path / "strict", GTZAN_LISTS, skip_bad=False)
    assert not (tmp_path / "strict" / "manifest.csv").exists()

    out = tmp_path / "out"
    summary = prepare.prepare_gtzan(root, out, GTZAN_LISTS, skip_bad=True)
    files = by_file(out)
    assert len(files) == 929 and str(bad.resolve()) not in files
    assert all(f.endswith(".wav") and "genres_original" in f for f in files)
    assert summary["clips"] == {"train": 442, "valid": 197, "test": 290}
    assert [(Path(s["path"]).name, s["where"].endswith("train_filtered.txt line 253")) for s in summary["skipped"]] \
        == [("jazz.00054.wav", True)]
    assert summary_of(out)["skipped"] == summary["skipped"]  # listed in summary.json too
    assert checks_of(summary)["train"] == (443, 442, False)
    err = capsys.readouterr().err
    assert f"warning: skipping {bad.resolve()}" in err
    assert "WARNING: gtzan does not match the published counts" in err and "train: expected 443, found 442" in err


@pytest.mark.parametrize("split, line_no, line, message", [
    ("valid", 5, "blues.00004.wav", r"valid_filtered\.txt line 5: 'blues\.00004\.wav' is not '<genre>/<genre>"),
    ("test", 3, "rock/blues.00014.wav", r"test_filtered\.txt line 3: 'rock/blues\.00014\.wav' is not"),
    ("train", 1, "polka/polka.00029.wav", r"train_filtered\.txt line 1: 'polka/polka\.00029\.wav'"),
    ("test", 1, "blues/blues.00029.wav", r"test_filtered\.txt line 1: blues\.00029 is listed twice "
                                         r"\(also .*train_filtered\.txt line 1\)"),
])
def test_gtzan_malformed_list_line_names_file_and_line(gtzan_root, tmp_path, split, line_no, line, message):
    def edit(s, lines):
        return lines[:line_no - 1] + [line] + lines[line_no:] if s == split else lines
    lists = copy_gtzan_lists(tmp_path / "lists", edit)
    with pytest.raises(data.DataError, match=message):
        prepare.prepare_gtzan(gtzan_root, tmp_path / "out", lists, skip_bad=False)


def test_gtzan_missing_root_pieces(gtzan_root, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match=r"no blues/ folder.*--root must hold GTZAN's genres/ folder"):
        prepare.prepare_gtzan(tmp_path / "empty", tmp_path / "out", GTZAN_LISTS, skip_bad=False)
    lists = copy_gtzan_lists(tmp_path / "lists")
    (lists / "valid_filtered.txt").unlink()
    with pytest.raises(data.DataError, match=r"valid_filtered\.txt not found: --splits must be the folder"):
        prepare.prepare_gtzan(gtzan_root, tmp_path / "out", lists, skip_bad=False)


def test_gtzan_missing_audio_file_is_named(tmp_path):
    need(GTZAN_LISTS / "train_filtered.txt")
    root = build_gtzan(tmp_path / "gtzan")
    (root / "genres" / "rock" / "rock.00050.au").unlink()
    line = gtzan_list("valid").index("rock/rock.00050.wav") + 1
    with pytest.raises(data.DataError, match=rf"rock\.00050\.au \(.*valid_filtered\.txt line {line}; "
                                             r"no rock\.00050\.wav either\): file not found"):
        prepare.prepare_gtzan(root, tmp_path / "out", GTZAN_LISTS, skip_bad=False)


def test_gtzan_download_failure_asks_for_splits(tmp_path, monkeypatch):
    with pytest.raises(data.DataError, match=r"could not download the GTZAN split list "
                                             r"http://127\.0\.0\.1:9/train_filtered\.txt.*--splits DIR"):
        prepare.download_gtzan_lists(tmp_path, base_url="http://127.0.0.1:9/{file}")
    assert not list((tmp_path / "splits").glob("*.txt"))
    # prepare without --splits goes through the download (pointed at the same dead port)
    build_gtzan(tmp_path / "raw")
    offline = functools.partial(prepare.download_gtzan_lists, base_url="http://127.0.0.1:9/{file}")
    monkeypatch.setattr(prepare, "download_gtzan_lists", offline)
    with pytest.raises(data.DataError, match="--splits"):
        prepare.prepare_gtzan(tmp_path / "raw", tmp_path / "out", None, skip_bad=False)
    assert not (tmp_path / "out" / "manifest.csv").exists()


# ----------------------------------------------------------------------------------------------
# ESC-50
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def esc50(tmp_path_factory):
    """(root, rows): the full 2000-clip replica with the current header."""
    need(SPLITS_DIR / "esc50" / "esc50_classes.csv")
    rows = esc50_rows(esc50_classes())
    return build_esc50(tmp_path_factory.mktemp("esc50") / "ESC-50-master", rows), rows


@pytest.mark.parametrize("header", ["current", "2017"])
def test_esc50_manifest_keeps_the_official_folds(esc50, tmp_path, capsys, header):
    root, rows = esc50
    assert len(rows) == 2000 and Counter(r[1] for r in rows) == {k: 400 for k in range(1, 6)}
    if header != "current":  # the same audio, the late-2017 csv header
        root = tmp_path / "old"
        (root / "meta").mkdir(parents=True)
        (root / "audio").symlink_to(esc50[0] / "audio")
        write_csv(root / "meta" / "esc50.csv", ESC50_HEADERS[header], rows)
    out = tmp_path / "out"
    prepare.prepare_esc50(root, out, skip_bad=False)

    expected = {str((root / "audio" / name).resolve()): (category, "train", str(fold), str(target))
                for name, fold, target, category, *_ in rows}
    assert by_file(out, "fold", "target") == expected
    summary = summary_of(out)
    assert summary["total_clips"] == 2000 and summary["classes"] == 50
    assert summary["sample_rates"] == {"44100": 2000}
    assert all(ok for _, _, ok in checks_of(summary).values())
    assert checks_of(summary)["fold 3"] == (400, 400, True)
    assert "WARNING" not in capsys.readouterr().err


def test_esc50_fold_k_is_the_test_set(esc50, tmp_path):
    root, rows = esc50
    out = tmp_path / "out"
    prepare.prepare_esc50(root, out, skip_bad=False)
    manifest = str(out / "manifest.csv")
    with pytest.raises(data.DataError, match="--fold"):
        data.load_splits(manifest)
    splits, classes = data.load_splits(manifest, fold=4)
    assert classes == sorted(category for _, category, _ in esc50_classes())
    names = {split: {os.path.basename(c.path) for c in splits[split]} for split in splits}
    assert names["test"] == {r[0] for r in rows if r[1] == 4}
    assert names["train"] | names["valid"] == {r[0] for r in rows if r[1] != 4}
    assert not names["train"] & names["valid"] and len(names["valid"]) > 0
    # clips cut from one Freesound recording never sit on both sides of the valid cut
    source = {r[0]: r[5] for r in rows}
    assert not {source[n] for n in names["train"]} & {source[n] for n in names["valid"]}


@pytest.mark.parametrize("row, message", [
    (("dog-bark.wav", "1", "0", "dog", "True", "100032", "A"), r"line 3: 'dog-bark\.wav' is not an ESC-50 name"),
    (("1-100032-A-0.wav", "one", "0", "dog", "True", "100032", "A"), r"line 3: fold or target is not an integer"),
    (("1-100032-A-0.wav", "2", "0", "dog", "True", "100032", "A"), r"line 3: fold 2 / target 0 disagree with the "
                                                                   r"file name 1-100032-A-0\.wav"),
    (("1-100032-A-0.wav", "1", "7", "dog", "True", "100032", "A"), r"line 3: fold 1 / target 7 disagree"),
    (("6-100032-A-0.wav", "6", "0", "dog", "True", "100032", "A"), r"line 3: fold 6 / target 0 .*out of range"),
    (("1-100032-A-0.wav", "1", "0"), r"line 3"),  # truncated row: no category, so no label
], ids=["bad-name", "fold-not-int", "fold-vs-name", "target-vs-name", "fold-6", "truncated-row"])
def test_esc50_malformed_csv_row_names_file_and_line(tmp_path, row, message):
    good = ("1-100038-A-14.wav", "1", "14", "chirping_birds", "False", "100038", "A")
    root = build_esc50(tmp_path / "esc50", [good, row])
    with pytest.raises(data.DataError, match=rf"esc50\.csv {message}"):
        prepare.prepare_esc50(root, tmp_path / "out", skip_bad=False)


def test_esc50_unknown_header_and_missing_pieces(tmp_path):
    root = tmp_path / "esc50"
    with pytest.raises(data.DataError, match=r"ESC-50's meta/esc50\.csv not found under --root"):
        prepare.prepare_esc50(tmp_path, tmp_path / "out", skip_bad=False)
    write_csv(root / "meta" / "esc50.csv", ESC50_HEADERS["current"], [])
    with pytest.raises(data.DataError, match=r"ESC-50's audio/ folder not found"):
        prepare.prepare_esc50(root, tmp_path / "out", skip_bad=False)
    (root / "audio").mkdir()
    write_csv(root / "meta" / "esc50.csv", ["filename", "fold", "label"], [("1-100032-A-0.wav", 1, "dog")])
    with pytest.raises(data.DataError, match=r"esc50\.csv: header 'filename,fold,label' is neither ESC-50 version"):
        prepare.prepare_esc50(root, tmp_path / "out", skip_bad=False)


def test_esc50_missing_clip_fails_or_is_skipped_with_a_count_warning(tmp_path, capsys):
    need(SPLITS_DIR / "esc50" / "esc50_classes.csv")
    rows = esc50_rows(esc50_classes())
    gone = next(r for r in rows if r[1] == 2 and r[2] == 7)
    root = build_esc50(tmp_path / "esc50", rows, missing={gone[0]})
    line = rows.index(gone) + 2
    with pytest.raises(data.DataError, match=rf"(?s)1 of 2000 esc50 .*{gone[0]} \(.*esc50\.csv line {line}\): "
                                             r"file not found"):
        prepare.prepare_esc50(root, tmp_path / "strict", skip_bad=False)
    summary = prepare.prepare_esc50(root, tmp_path / "out", skip_bad=True)
    assert len(manifest_rows(tmp_path / "out")) == 1999
    assert [Path(s["path"]).name for s in summary_of(tmp_path / "out")["skipped"]] == [gone[0]]
    checks = checks_of(summary)
    assert checks["fold 2"] == (400, 399, False) and checks["clips per class (min)"] == (40, 39, False)
    assert checks["fold 1"] == (400, 400, True)
    err = capsys.readouterr().err
    assert "WARNING: esc50 does not match" in err and "fold 2: expected 400, found 399" in err


# ----------------------------------------------------------------------------------------------
# TIMIT
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, expected", [("by-type", FCJF0_BY_TYPE), ("reynolds", FCJF0_REYNOLDS)])
def test_timit_rule_for_one_speaker(rule, expected):
    assert prepare.timit_split(list(FCJF0), rule, "FCJF0") == expected
    assert prepare.timit_split(list(reversed(FCJF0)), rule, "FCJF0") == expected


def test_timit_random_rule_is_622_and_fixed_per_speaker():
    speakers = [s for _, _, s in timit_speakers(20, 0)]
    splits = {s: prepare.timit_split(list(FCJF0), "random", s) for s in speakers}
    for speaker, split in splits.items():
        assert set(split) == set(FCJF0)
        assert Counter(split.values()) == {"train": 6, "valid": 2, "test": 2}
        shuffled = random.Random(1).sample(FCJF0, len(FCJF0))
        assert prepare.timit_split(shuffled, "random", speaker) == split  # order given does not matter
    assert len({tuple(sorted(s.items())) for s in splits.values()}) > 5  # seeded per speaker, not one shuffle


def test_timit_speaker_with_too_few_utterances_stays_in_train():
    assert (prepare.timit_split(["SA1", "SA2", "SX37"], "by-type", "FCJF0")
            == {u: "train" for u in ("SA1", "SA2", "SX37")})


def test_timit_full_corpus_replica(tmp_path, capsys):
    """630 speakers x 10 utterances, TRAIN and TEST together: 3780 / 1260 / 1260 with by-type."""
    speakers = timit_speakers()
    root = build_timit(tmp_path / "raw", speakers)
    out = tmp_path / "out"
    summary = prepare.prepare_timit(root, out, "by-type", skip_bad=False)
    files = by_file(out, "speaker")
    assert len(files) == 6300
    assert summary["clips"] == {"train": 3780, "valid": 1260, "test": 1260} and summary["classes"] == 630
    assert all(ok for _, _, ok in checks_of(summary).values()) and summary["sample_rates"] == {"16000": 6300}
    for index in range(0, 630, 97):
        corpus_set, region, speaker = speakers[index]
        sx = sorted((u for u in timit_utterances(index) if u.startswith("SX")), key=lambda u: int(u[2:]))
        want = {u: "test" if u in sx[3:] else "valid" if u in sx[1:3] else "train" for u in timit_utterances(index)}
        folder = root / "TIMIT" / corpus_set / region / speaker
        assert {u: files[str((folder / f"{u}.WAV").resolve())] for u in want} \
            == {u: (speaker, split, speaker) for u, split in want.items()}
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize("lower", [False, True], ids=["upper-case", "lower-case"])
def test_timit_copy_with_riff_duplicates_and_transcripts(tmp_path, lower):
    speakers = [("TRAIN", "DR1", "FCJF0"), ("TRAIN", "DR8", "MBCG0"), ("TEST", "DR3", "MADC0")]
    root = build_timit(tmp_path / "raw", speakers, lambda i: FCJF0, lower=lower, riff_copies=True, transcripts=True)
    put(root / ("timit/train/dr1/notaspeaker/sa1.wav" if lower else "TIMIT/TRAIN/DR1/NOTASPEAKER/SA1.WAV"), SPHERE)
    out = tmp_path / "out"
    prepare.prepare_timit(root, out, "by-type", skip_bad=False)
    files = by_file(out, "speaker")
    expected = {}
    for corpus_set, region, speaker in speakers:
        for utterance in FCJF0:
            relative = f"TIMIT/{corpus_set}/{region}/{speaker}/{utterance}.WAV"
            expected[str((root / (relative.lower() if lower else relative)).resolve())] = \
                (speaker, FCJF0_BY_TYPE[utterance], speaker)
    assert files == expected  # the .WAV.wav copies, transcripts and the odd folder are not rows
    for clip in data.read_manifest(out / "manifest.csv")[::7]:  # the SPHERE originals, read bit-exact
        assert sf.info(clip.path).format == "NIST"
        np.testing.assert_array_equal(data.load_audio(clip.path, 16_000) * 32768, SPHERE_SAMPLES)


def test_timit_unreadable_utterance_is_named_then_skipped(tmp_path, capsys):
    speakers = [("TRAIN", "DR1", "FCJF0"), ("TEST", "DR2", "MABC0")]
    root = build_timit(tmp_path / "raw", speakers, lambda i: FCJF0)
    bad = put(root / "TIMIT" / "TEST" / "DR2" / "MABC0" / "SX37.WAV", b"NIST_1A\n   1024\nbroken")
    with pytest.raises(data.DataError, match=rf"{re.escape(str(bad))} \(.*\): cannot be read as audio"):
        prepare.prepare_timit(root, tmp_path / "strict", "by-type", skip_bad=False)
    summary = prepare.prepare_timit(root, tmp_path / "out", "by-type", skip_bad=True)
    assert [s["path"] for s in summary["skipped"]] == [str(bad.resolve())]
    assert str(bad.resolve()) not in by_file(tmp_path / "out")
    assert checks_of(summary)["clips per speaker (min)"] == (10, 9, False)
    assert "clips per speaker (min): expected 10, found 9" in capsys.readouterr().err


def test_timit_without_utterances_is_a_clear_error(tmp_path):
    put(tmp_path / "TIMIT" / "DOC" / "SPKRINFO.TXT", b"; speakers\n")
    put(tmp_path / "TIMIT" / "TRAIN" / "DR1" / "FCJF0" / "SA1.PHN", b"0 3050 h#\n")
    with pytest.raises(data.DataError, match=r"no TIMIT utterances under --root .*TIMIT/\{TRAIN,TEST\}/DR<n>"):
        prepare.prepare_timit(tmp_path, tmp_path / "out", "by-type", skip_bad=False)


# ----------------------------------------------------------------------------------------------
# EmoDB
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emodb_split() -> dict:
    return json.loads(need(EMODB_SPLIT).read_text())


def test_emodb_default_speakers_are_the_shared_split(emodb_split):
    assert {s: set(v) for s, v in prepare.EMODB_SPEAKERS.items()} == \
        {"train": set(emodb_split["train_speakers"]), "test": set(emodb_split["test_speakers"])}


def test_emodb_speaker_split_and_carved_valid(emodb_split, tmp_path, capsys):
    names = emodb_names()
    assert len(names) == len(set(names)) == 535
    root = build_emodb(tmp_path / "emodb", names)
    out = tmp_path / "out"
    summary = prepare.prepare_emodb(root, out, EMODB_SPLIT, skip_bad=False)
    files = by_file(out, "speaker", "group")
    assert set(files) == {str((root / "wav" / n).resolve()) for n in names}
    train_speakers, test_speakers = set(emodb_split["train_speakers"]), set(emodb_split["test_speakers"])
    speakers_of = {split: set() for split in ("train", "valid", "test")}
    for file, (label, split, speaker, group) in files.items():
        name = os.path.basename(file)
        assert speaker == group == name[:2] and label == EMODB_EMOTIONS[name[5]]
        assert split in (("test",) if speaker in test_speakers else ("train", "valid"))
        speakers_of[split].add(speaker)
    # Valid is whole train speakers, as test is whole speakers: no valid speaker is in train. The
    # target is round(0.1 * 304) = 30 clips; no train speaker is that small, so the smallest, 10
    # (38 clips), goes.
    assert speakers_of["valid"] == {"10"} and not speakers_of["valid"] & speakers_of["train"]
    assert speakers_of["train"] | speakers_of["valid"] == train_speakers
    assert summary["clips"] == {"train": 304 - 38, "valid": 38, "test": 231}
    assert summary["clips"]["train"] + summary["clips"]["valid"] == emodb_split["expected_counts"]["train"] == 304
    assert summary["clips"]["test"] == emodb_split["expected_counts"]["test"] == 231
    assert summary["total_clips"] == sum(summary["clips"].values()) == 535
    assert summary["notes"]["valid"].startswith("whole train speaker(s) 10 (38 clips)")
    assert {label for label, split, _, _ in files.values() if split == "train"} == set(EMODB_EMOTIONS.values())
    assert Counter(label for label, _, _, _ in files.values()) == \
        {EMODB_EMOTIONS[e]: n for e, n in EMODB_EMOTION_COUNTS.items()}
    assert all(ok for _, _, ok in checks_of(summary).values())
    assert "WARNING" not in capsys.readouterr().err

    prepare.prepare_emodb(root, tmp_path / "default", None, skip_bad=False)  # default = the paper's speakers
    assert by_file(tmp_path / "default", "speaker", "group") == files  # same split, same valid clips
    splits, classes = data.load_splits(str(out / "manifest.csv"))
    assert len(classes) == 7 and len(splits["valid"]) == 38
    assert not {c.group for c in splits["valid"]} & {c.group for c in splits["train"]}


@pytest.mark.parametrize("name, message", [
    ("03a01Xa.wav", r"03a01Xa\.wav: emotion letter 'X' is not one of"),
    ("17a01Fa.wav", r"17a01Fa\.wav: speaker 17 is in neither the train nor the test speakers"),
    ("3a01Fa.wav", r"3a01Fa\.wav: not an EmoDB file name"),
    ("03a01Fa copy.wav", r"03a01Fa copy\.wav: not an EmoDB file name"),
])
def test_emodb_bad_file_name_is_named(tmp_path, name, message):
    root = build_emodb(tmp_path / "emodb", ["03a01Fa.wav", "12a01Fa.wav", name])
    with pytest.raises(data.DataError, match=message):
        prepare.prepare_emodb(root, tmp_path / "out", None, skip_bad=False)


def test_emodb_missing_pieces_and_bad_split_file(tmp_path):
    (tmp_path / "empty" / "wav").mkdir(parents=True)
    with pytest.raises(data.DataError, match=r"no \.wav files in .*wav: --root must hold EmoDB's wav/ folder"):
        prepare.prepare_emodb(tmp_path / "empty", tmp_path / "out", None, skip_bad=False)
    root = build_emodb(tmp_path / "emodb", ["03a01Fa.wav", "12a01Fa.wav"])
    split_file = put(tmp_path / "split.json", b'{"train": ["03"], "test": ["12"]}')
    with pytest.raises(data.DataError, match=r"split\.json: not a speaker split JSON with train_speakers"):
        prepare.prepare_emodb(root, tmp_path / "out", split_file, skip_bad=False)
    with pytest.raises(data.DataError, match=r"nope\.json: not a speaker split JSON"):
        prepare.prepare_emodb(root, tmp_path / "out", tmp_path / "nope.json", skip_bad=False)


def test_emodb_unreadable_clip_is_named_then_skipped(tmp_path, capsys):
    names = emodb_names()
    bad_name = next(n for n in names if n.startswith("14"))
    root = build_emodb(tmp_path / "emodb", names, corrupt={bad_name})
    with pytest.raises(data.DataError, match=rf"{bad_name} \(.*\): cannot be read as audio"):
        prepare.prepare_emodb(root, tmp_path / "strict", None, skip_bad=False)
    summary = prepare.prepare_emodb(root, tmp_path / "out", None, skip_bad=True)
    assert [Path(s["path"]).name for s in summary["skipped"]] == [bad_name]
    assert checks_of(summary)["test"] == (231, 230, False) and checks_of(summary)["train+valid"][2]
    assert "test: expected 231, found 230" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# MSWC
# ----------------------------------------------------------------------------------------------

def test_mswc_spanish_splits_csv(tmp_path, capsys):
    clips = [("TRAIN", "hola")] * 3 + [("DEV", "hola"), ("TEST", "hola")] + [("TRAIN", "madrid")] * 2 + \
            [("TEST", "madrid"), ("DEV", "fiesta")]  # fiesta has no train clip: no classifier can learn it
    root = build_mswc(tmp_path / "mswc", "es", clips)
    out = tmp_path / "out"
    summary = prepare.prepare_mswc(root, out, "es", None, 1, skip_bad=False)
    with open(root / "es" / "es_splits.csv", newline="") as f:
        table = list(csv.DictReader(f))
    split_of = {"TRAIN": "train", "DEV": "valid", "TEST": "test"}
    expected = {str((root / "es" / "clips" / r["LINK"]).resolve()): (r["WORD"], split_of[r["SET"]], r["SPEAKER"])
                for r in table if r["WORD"] != "fiesta"}
    assert by_file(out, "speaker") == expected
    assert summary["sample_rates"] == {"16000": 8} and summary["notes"]["dropped_keywords"] == 1
    assert checks_of(summary)["classes"] == (146, 2, False)  # a replica: the published count is flagged
    assert "WARNING: mswc-s does not match" in capsys.readouterr().err
    splits, classes = data.load_splits(str(out / "manifest.csv"))
    assert classes == ["hola", "madrid"] and len(splits["valid"]) == 1 and len(splits["test"]) == 2


def test_mswc_indonesian_paper_keywords(tmp_path, capsys):
    words = sorted(MSWC_ID_PAPER_KEYWORDS) + ["yesus", "jakarta"]
    clips = [(split, word) for word in words for split in ("TRAIN", "TRAIN", "DEV", "TEST")]
    root = build_mswc(tmp_path / "mswc", "id", clips)
    out = tmp_path / "out"
    summary = prepare.prepare_mswc(root, out, "id", "paper", 1, skip_bad=False)
    assert {label for label, _ in by_file(out).values()} == MSWC_ID_PAPER_KEYWORDS
    assert Counter(split for _, split in by_file(out).values()) == {"train": 28, "valid": 14, "test": 14}
    assert checks_of(summary)["classes"] == (14, 14, True)
    assert "requested keyword" not in capsys.readouterr().err

    # a paper keyword with no clips at all is reported by name
    root2 = build_mswc(tmp_path / "mswc2", "id", [c for c in clips if c[1] != "agustus"])
    summary = prepare.prepare_mswc(root2, tmp_path / "out2", "id", "paper", 1, skip_bad=False)
    assert summary["classes"] == 13
    assert "1 requested keyword(s) have no clips" in capsys.readouterr().err


def test_mswc_keywords_list_file_and_min_count(tmp_path):
    clips = [("TRAIN", "hola")] * 3 + [("TRAIN", "madrid")] * 2 + [("TRAIN", "roma"), ("TEST", "hola"),
                                                                      ("TEST", "madrid"), ("TEST", "roma")]
    root = build_mswc(tmp_path / "mswc", "es", clips)
    prepare.prepare_mswc(root, tmp_path / "a", "es", None, 2, skip_bad=False)
    assert {label for label, _ in by_file(tmp_path / "a").values()} == {"hola", "madrid"}
    prepare.prepare_mswc(root, tmp_path / "b", "es", "roma, madrid", 1, skip_bad=False)
    assert {label for label, _ in by_file(tmp_path / "b").values()} == {"roma", "madrid"}
    keyword_file = put(tmp_path / "words.txt", b"hola\n\nroma\n")
    assert prepare.parse_keywords(str(keyword_file), "es") == ["hola", "roma"]
    paper = prepare.parse_keywords("paper", "id")
    assert len(paper) == 14 and set(paper) == MSWC_ID_PAPER_KEYWORDS
    with pytest.raises(data.DataError, match=r"paper's keyword list for 'es' is not known"):
        prepare.parse_keywords("paper", "es")
    with pytest.raises(data.DataError, match=r"no keyword left after the filters .*--min-count 5"):
        prepare.prepare_mswc(root, tmp_path / "c", "es", None, 5, skip_bad=False)


def test_sil_ai_metadata_formats(tmp_path):
    """sil-ai/audio-keyword-spotting records: file, is_valid, language, speaker_id, gender, keyword."""
    def record(i, keyword, speaker="NA"):
        return {"file": f"{keyword}/common_voice_id_{i}.opus", "is_valid": speaker != "NA", "language": "ind",
                "speaker_id": speaker, "gender": "NAN" if speaker == "NA" else "MALE", "keyword": keyword}
    by_split = {"train": [record(1, "asia", "a1b2"), record(2, "dan", "c3d4")], "validation": [record(3, "asia")],
                "test": [record(4, "dan", "e5f6")]}
    put(tmp_path / "ind.json", json.dumps(by_split).encode())
    records = list(prepare.read_keyword_records(tmp_path / "ind.json"))
    assert [(r["split"], r["file"], r["keyword"], r["speaker"]) for r in records] == [
        ("train", "asia/common_voice_id_1.opus", "asia", "a1b2"),
        ("train", "dan/common_voice_id_2.opus", "dan", "c3d4"),
        ("valid", "asia/common_voice_id_3.opus", "asia", None),
        ("test", "dan/common_voice_id_4.opus", "dan", "e5f6")]
    flat = [{**r, "split": s} for s, items in by_split.items() for r in items]
    put(tmp_path / "ind.jsonl", "".join(json.dumps(r) + "\n" for r in flat).encode())
    from_lines = list(prepare.read_keyword_records(tmp_path / "ind.jsonl"))
    assert [{k: v for k, v in r.items() if k != "where"} for r in from_lines] == \
        [{k: v for k, v in r.items() if k != "where"} for r in records]
    assert from_lines[2]["where"].endswith("ind.jsonl line 3")

    # prepare with the extracted archive next to the metadata
    for r in flat:
        put(tmp_path / "ind" / r["file"], opus_bytes())
    out = tmp_path / "out"
    prepare.prepare_mswc(tmp_path, out, "id", None, 1, skip_bad=False)
    assert by_file(out, "speaker") == {str((tmp_path / "ind" / r["file"]).resolve()):
                                       (r["keyword"], {"validation": "valid"}.get(r["split"], r["split"]),
                                        "" if r["speaker_id"] == "NA" else r["speaker_id"]) for r in flat}


@pytest.mark.parametrize("file, content, message", [
    ("es_splits.csv", "SET,LINK,WORD,VALID,SPEAKER,GENDER\nTRAIN,hola/common_voice_es_1.opus,hola,True,s,MALE\n"
                      "TRAIN,hola/common_voice_es_2.opus,,True,s,MALE\n",
     r"es_splits\.csv line 3: a record needs a split .* and a keyword"),
    ("es_splits.csv", "SET,LINK,WORD,VALID,SPEAKER,GENDER\nHOLDOUT,hola/common_voice_es_1.opus,hola,True,s,MALE\n",
     r"es_splits\.csv line 2: split 'HOLDOUT' is not one of TRAIN, DEV, TEST"),
    ("spa.json", '{"train": [{"file": "hola/x.opus", "keyword": "hola"}', r"spa\.json: not valid JSON"),
    ("spa.jsonl", '{"file": "hola/x.opus", "keyword": "hola", "split": "train"}\n{"file": "hola/y.opus", keyword\n',
     r"spa\.jsonl line 2"),
    ("es_splits.csv", "SET,LINK,WORD,VALID,SPEAKER,GENDER\nTRAIN,hola/common_voice_es_1.opus,hola,True,s,MALE\n\n"
                      "TRAIN,hola/common_voice_es_2.opus,,True,s,MALE\n",
     r"es_splits\.csv line 4: a record needs"),  # the blank line 3 still counts
], ids=["csv-no-word", "csv-bad-set", "json-broken", "jsonl-broken-line", "csv-after-blank-line"])
def test_mswc_malformed_metadata_names_file_and_line(tmp_path, file, content, message):
    put(tmp_path / file, content.encode())
    with pytest.raises(data.DataError, match=message):
        prepare.prepare_mswc(tmp_path, tmp_path / "out", "es", None, 1, skip_bad=False)


def test_mswc_missing_metadata_and_missing_clip(tmp_path):
    with pytest.raises(data.DataError, match=r"no MSWC metadata for 'es' under --root .*expected es_splits\.csv"):
        prepare.prepare_mswc(tmp_path, tmp_path / "out", "es", None, 1, skip_bad=False)
    root = build_mswc(tmp_path / "mswc", "es", [("TRAIN", "hola")] * 2 + [("TEST", "hola")])
    gone = root / "es" / "clips" / "hola" / "common_voice_es_19000001.opus"  # the second row
    gone.unlink()
    with pytest.raises(data.DataError, match=rf"{re.escape(str(gone))} \(.*es_splits\.csv line 3\): file not found"):
        prepare.prepare_mswc(root, tmp_path / "out", "es", None, 1, skip_bad=False)


def test_unsupported_m4a_clip_gets_a_clear_message(tmp_path, capsys):
    root = build_mswc(tmp_path / "mswc", "es", [("TRAIN", "hola")] * 2 + [("TEST", "hola")])
    m4a = put(root / "es" / "clips" / "hola" / "common_voice_es_7.m4a",
              b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42" + bytes(200))
    with open(root / "es" / "es_splits.csv", "a", newline="") as f:
        csv.writer(f).writerow(["TRAIN", "hola/common_voice_es_7.m4a", "hola", "True", "s9", "MALE"])
    with pytest.raises(data.DataError, match=r"(?s)common_voice_es_7\.m4a \(.*line 5\): cannot be read as audio .*"
                                             r"a format libsndfile does not decode.*ffmpeg"):
        prepare.prepare_mswc(root, tmp_path / "out", "es", None, 1, skip_bad=False)
    summary = prepare.prepare_mswc(root, tmp_path / "out", "es", None, 1, skip_bad=True)
    assert [s["path"] for s in summary["skipped"]] == [str(m4a.resolve())] and summary["total_clips"] == 3


# ----------------------------------------------------------------------------------------------
# FSDD (replica; the real recordings are tested in test_data.py)
# ----------------------------------------------------------------------------------------------

def test_fsdd_replica_split_by_take_and_bad_name(tmp_path):
    for digit in "07":
        for speaker in ("jackson", "theo"):
            for take in (0, 4, 5, 9, 10, 49):
                put(tmp_path / "fsdd" / "recordings" / f"{digit}_{speaker}_{take}.wav", audio_bytes(8_000))
    prepare.prepare_fsdd(tmp_path / "fsdd", tmp_path / "speaker", "speaker")
    for file, (label, split, speaker) in by_file(tmp_path / "speaker", "speaker").items():
        digit, name, take = Path(file).stem.split("_")
        assert label == speaker == name
        assert split == {0: "test", 4: "test", 5: "valid", 9: "valid", 10: "train", 49: "train"}[int(take)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match=r"no \.wav files under .*empty: --root must be the FSDD folder"):
        prepare.prepare_fsdd(tmp_path / "empty", tmp_path / "x", "digit")
    put(tmp_path / "fsdd" / "recordings" / "7_theo.wav", audio_bytes(8_000))
    with pytest.raises(data.DataError, match=r"7_theo\.wav: not an FSDD name"):
        prepare.prepare_fsdd(tmp_path / "fsdd", tmp_path / "digit", "digit")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

def test_cli_prepares_esc50_for_load_splits(esc50, tmp_path, monkeypatch, capsys):
    root, rows = esc50
    monkeypatch.chdir(tmp_path)
    prepare.main(["esc50", "--root", str(root), "--out", "prepared/esc50"])  # a relative --out
    out = capsys.readouterr().out
    assert "esc50: wrote prepared/esc50/manifest.csv" in out and "fold 5: expected 400, found 400" in out
    for k in (1, 5):
        splits, _ = data.load_splits("prepared/esc50/manifest.csv", fold=k)
        assert {os.path.basename(c.path) for c in splits["test"]} == {r[0] for r in rows if r[1] == k}
        assert all(c.fold != k for c in splits["train"] + splits["valid"])
        assert all(os.path.isfile(c.path) for c in splits["test"])


def test_cli_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["timit", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "timit needs --root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["timit", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^error: no TIMIT utterances under --root"):
        prepare.main(["timit", "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    # without --out, the output goes under $CONFIT_DATA with the dataset's name
    root = build_mswc(tmp_path / "mswc", "id", [("TRAIN", "asia"), ("TRAIN", "asia"), ("TEST", "asia")])
    monkeypatch.setenv("CONFIT_DATA", str(tmp_path / "data"))
    prepare.main(["mswc", "--root", str(root), "--lang", "id", "--keywords", "paper"])
    assert len(manifest_rows(tmp_path / "data" / "mswc-i")) == 3


# ----------------------------------------------------------------------------------------------
# Edge cases found in review
# ----------------------------------------------------------------------------------------------

def test_symlinked_files_keep_their_names(tmp_path):
    # Hugging Face caches link every file to a content-addressed blob: the manifest must keep the
    # EmoDB name (it carries speaker and emotion), not the blob's hash.
    names = emodb_names()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (tmp_path / "emodb" / "wav").mkdir(parents=True)
    for i, name in enumerate(names):
        (blobs / f"{i:040x}").write_bytes(audio_bytes(16_000))
        (tmp_path / "emodb" / "wav" / name).symlink_to(blobs / f"{i:040x}")
    out = tmp_path / "out"
    prepare.prepare_emodb(tmp_path / "emodb", out, None, skip_bad=False)
    paths = [row["path"] for row in manifest_rows(out)]
    assert sorted(Path(p).name for p in paths) == sorted(names)
    assert all((out / p).is_file() for p in paths)


def test_timit_riff_copy_fills_in_only_for_a_missing_original(tmp_path):
    speakers = timit_speakers(2, 1)
    build_timit(tmp_path, speakers, riff_copies=True)
    folder = tmp_path / "TIMIT" / "TRAIN" / speakers[0][1] / speakers[0][2]
    (folder / "SA1.WAV").unlink()
    out = tmp_path / "out"
    summary = prepare.prepare_timit(tmp_path, out, "by-type", skip_bad=False)
    used = {Path(p).name for p in by_file(out)}
    assert len(by_file(out)) == 30 and summary["notes"]["riff_copies_used"] == 1
    assert "SA1.WAV.wav" in used and sum(name.endswith(".WAV.wav") for name in used) == 1


def test_timit_second_copy_of_the_corpus_is_reported_and_ignored(tmp_path, capsys):
    speakers = timit_speakers(2, 1)
    build_timit(tmp_path / "a", speakers)
    build_timit(tmp_path / "a" / "zz-backup", speakers)  # walked after TIMIT/
    out = tmp_path / "out"
    summary = prepare.prepare_timit(tmp_path / "a", out, "by-type", skip_bad=False)
    assert "30 utterance(s) exist twice under --root" in capsys.readouterr().err
    assert summary["notes"]["second_copies_ignored"] == 30
    assert all(Path(p).relative_to(tmp_path / "a").parts[0] == "TIMIT" for p in by_file(out))


def test_esc50_header_without_filename_is_a_clear_error(tmp_path):
    write_csv(tmp_path / "meta" / "esc50.csv", ["fname", "fold", "target", "category"], [["1-1-A-0.wav", 1, 0, "dog"]])
    (tmp_path / "audio").mkdir()
    with pytest.raises(data.DataError, match=r"esc50\.csv: header 'fname,fold,target,category' lacks filename"):
        prepare.prepare_esc50(tmp_path, tmp_path / "out", skip_bad=False)


def test_emodb_split_file_sets_the_expected_counts(tmp_path):
    root = build_emodb(tmp_path / "emodb", emodb_names())
    split_file = put(tmp_path / "loso.json", json.dumps(
        {"train_speakers": ["03", "08", "09", "10", "11", "12", "13", "14", "15"], "test_speakers": ["16"],
         "expected_counts": {"train": 464, "test": 71}}).encode())
    summary = prepare.prepare_emodb(root, tmp_path / "out", split_file, skip_bad=False)
    checks = checks_of(summary)
    assert checks["train+valid"] == (464, 464, True) and checks["test"] == (71, 71, True)
    speakers_of = {split: {speaker for _, s, speaker in by_file(tmp_path / "out", "speaker").values() if s == split}
                   for split in ("train", "valid")}
    assert speakers_of["valid"] and not speakers_of["valid"] & speakers_of["train"]
    one_speaker = {"train_speakers": ["03"], "test_speakers": sorted(set(EMODB_FILES_PER_SPEAKER) - {"03"})}
    one = put(tmp_path / "one.json", json.dumps(one_speaker).encode())
    with pytest.raises(data.DataError, match=r"train speakers 03: no whole train speaker can be carved into valid"):
        prepare.prepare_emodb(root, tmp_path / "out3", one, skip_bad=False)
    both = put(tmp_path / "both.json", json.dumps({"train_speakers": ["03", "12"], "test_speakers": ["12"]}).encode())
    with pytest.raises(data.DataError, match=r"speaker\(s\) 12 are in both train and test"):
        prepare.prepare_emodb(root, tmp_path / "out2", both, skip_bad=False)


def test_mswc_wrong_language_bom_and_decomposed_keywords(tmp_path, capsys):
    put(tmp_path / "metadata.jsonl", "".join(json.dumps(
        {"file": f"spa/{w}_{i}.opus", "keyword": w, "split": s, "language": "spa", "speaker_id": "NA"}) + "\n"
        for i, (w, s) in enumerate([("está", "train"), ("está", "test"), ("roma", "train"), ("roma", "test"),
                                    ("pan", "test")])).encode())
    for line in (tmp_path / "metadata.jsonl").read_text().splitlines():
        put(tmp_path / json.loads(line)["file"], opus_bytes())
    with pytest.raises(data.DataError, match=r"none of its 5 records is in language 'id' .*'spa': 5"):
        prepare.prepare_mswc(tmp_path, tmp_path / "x", "id", None, 1, skip_bad=False)
    # a keyword file with a byte-order mark, and "está" typed in decomposed form (e + combining accent)
    words = put(tmp_path / "words.txt", "\ufeffroma\nesta\u0301\n".encode())
    prepare.prepare_mswc(tmp_path, tmp_path / "out", "es", str(words), 1, skip_bad=False)
    assert {label for label, _ in by_file(tmp_path / "out").values()} == {"roma", "está"}
    # a keyword with no train clip is dropped by name
    prepare.prepare_mswc(tmp_path, tmp_path / "out2", "es", None, 1, skip_bad=False)
    assert "dropping 1 keyword(s) with fewer than 1 train clip(s): pan" in capsys.readouterr().err
