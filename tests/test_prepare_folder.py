"""prepare.py folder: the user's own audio (a folder of class subfolders, or a CSV or JSON list of files
with labels) into a manifest with train / valid / test.

The audio is real: FSDD recordings from ../shared ({digit}_{speaker}_{take}.wav, 6 speakers), linked into
a class-subfolder tree in tmp_path (skipped where ../shared is absent). Expected counts are worked by hand
from the documented rule (test: round(test fraction x a class's clips); valid: round(valid fraction x the
class's train clips left); whole speakers with --group-by), never taken from prepare.py.
"""
import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

import data
import prepare
from conftest import run_script

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FSDD_SPEAKER = r"^\d+_([a-z]+)_"  # 3_theo_12.wav -> theo


def recording(fsdd_root: Path, digit: int, speaker: str, take: int) -> Path:
    return fsdd_root / "recordings" / f"{digit}_{speaker}_{take}.wav"


def link_tree(fsdd_root: Path, folder: Path, takes, digits=range(10)) -> Path:
    """folder/<digit name>/<fsdd file>: a symlink to each real recording of these takes, every speaker."""
    for digit in digits:
        (folder / DIGITS[digit]).mkdir(parents=True, exist_ok=True)
        for speaker in SPEAKERS:
            for take in takes:
                source = recording(fsdd_root, digit, speaker, take)
                (folder / DIGITS[digit] / source.name).symlink_to(source)
    return folder


@pytest.fixture
def tree(fsdd_root, tmp_path) -> Path:
    """10 digits x 12 clips (6 speakers x takes 0-1), plus what a real folder also holds: a notes file,
    a hidden macOS ._ file and a hidden folder, none of them audio."""
    root = link_tree(fsdd_root, tmp_path / "mydata", takes=(0, 1))
    (root / "README.txt").write_text("my recordings\n")
    (root / "three" / "._3_theo_0.wav").write_bytes(b"\0\5\26\7 not audio")
    (root / ".cache").mkdir()
    return root


def manifest_of(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def per_class(rows) -> dict:
    """{split: Counter of labels}"""
    counts = {}
    for row in rows:
        counts.setdefault(row["split"], Counter())[row["label"]] += 1
    return counts


def test_folder_is_carved_per_class_with_the_fractions(tree, fsdd_root, tmp_path, capsys):
    out = tmp_path / "out"
    prepare.main(["folder", "--root", str(tree), "--out", str(out)])
    printed = capsys.readouterr().out
    rows = manifest_of(out)
    # 12 clips a class: test round(0.2 x 12) = round(2.4) = 2; valid round(0.1 x 10) = 1; train 9
    assert per_class(rows) == {"train": Counter({d: 9 for d in DIGITS}), "valid": Counter({d: 1 for d in DIGITS}),
                               "test": Counter({d: 2 for d in DIGITS})}
    for row in rows:  # the label is the folder, and every path leads to the recording of that digit
        path = out / row["path"]
        digit, speaker, take = path.name[:-4].split("_")
        assert path.parent.name == row["label"] == DIGITS[int(digit)]
        assert path.resolve() == recording(fsdd_root, int(digit), speaker, int(take)).resolve()
    assert len(rows) == 120 and not any(Path(r["path"]).name.startswith(".") for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    notes = summary["notes"]
    assert (notes["seed"], notes["test_fraction"], notes["valid_fraction"], notes["group_by"]) == (0, 0.2, 0.1, None)
    assert notes["carved_splits"] == ["test", "valid"] and "clip by clip" in notes["rule"]
    assert summary["clips"] == {"train": 90, "valid": 10, "test": 20}
    assert "train 90 / valid 10 / test 20" in printed and f"--dataset {out}" in printed
    # the manifest is what every script reads: valid rows are given, so nothing is carved again
    splits, classes = data.load_splits(str(out))
    assert classes == sorted(DIGITS) and {k: len(v) for k, v in splits.items()} == {"train": 90, "valid": 10,
                                                                                    "test": 20}
    # other fractions: test round(0.25 x 12) = 3; valid round(0.3 x 9) = round(2.7) = 3; train 6
    prepare.main(["folder", "--root", str(tree), "--out", str(tmp_path / "other"), "--test-fraction", "0.25",
                  "--valid-fraction", "0.3"])
    counts = per_class(manifest_of(tmp_path / "other"))
    assert {split: set(c.values()) for split, c in counts.items()} == {"train": {6}, "valid": {3}, "test": {3}}


def test_default_out_is_found_by_dataset_name(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONFIT_DATA", str(tmp_path / "data"))
    with pytest.raises(data.DataError, match=r"dataset 'mydata' not found: .* `python prepare\.py folder --root DIR "
                                             r"--out \S+/data/mydata`"):  # the command for a folder, not NAME
        data.resolve_dataset("mydata")
    prepare.main(["folder", "--root", str(tree)])
    printed = capsys.readouterr().out
    assert "use it with --dataset mydata" in printed
    assert data.resolve_dataset("mydata") == tmp_path / "data" / "mydata" / "manifest.csv"
    assert len(data.load_splits("mydata", check_files=False)[0]["test"]) == 20


def test_carving_is_fixed_by_the_seed(tree, tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        prepare.main(["folder", "--root", str(tree), "--out", str(tmp_path / name), "--seed", seed])
    a, b, c = (manifest_of(tmp_path / name) for name in "abc")
    assert a == b
    assert [r["split"] for r in a] != [r["split"] for r in c]  # another seed, other clips
    assert per_class(a) == per_class(c)  # but the same counts
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["notes"]["seed"] == 1


def test_group_by_speaker_keeps_each_speaker_on_one_side(tree, tmp_path, capsys):
    out = tmp_path / "out"
    prepare.main(["folder", "--root", str(tree), "--out", str(out), "--group-by", "speaker",
                  "--speaker-pattern", FSDD_SPEAKER])
    rows = manifest_of(out)
    for row in rows:  # the speaker of each clip, as FSDD's file name says, in the manifest
        assert row["speaker"] == Path(row["path"]).name.split("_")[1] == row["group"]
    speakers = {split: {r["speaker"] for r in rows if r["split"] == split} for split in data.SPLITS}
    assert not speakers["train"] & speakers["valid"] and not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    # Each speaker has 20 clips (10 digits x 2 takes) over every class, so whole speakers go: test's
    # target round(0.2 x 120) = 24 takes one speaker (two would be 40); valid's round(0.1 x 100) = 10 fits
    # no speaker, so the smallest (any, 20) goes. 4 speakers stay in train.
    assert Counter(r["split"] for r in rows) == {"train": 80, "valid": 20, "test": 20}
    assert [len(speakers[s]) for s in data.SPLITS] == [4, 1, 1]
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert notes["group_by"] == "speaker" and notes["speaker_pattern"] == FSDD_SPEAKER
    assert "whole speakers" in capsys.readouterr().out
    # without speakers, --group-by speaker cannot work: one line naming a file
    with pytest.raises(SystemExit, match=r"^error: --group-by speaker: .*\.wav has no speaker"):
        prepare.main(["folder", "--root", str(tree), "--out", str(tmp_path / "x"), "--group-by", "speaker"])
    # classes in name order: eight is the first
    with pytest.raises(SystemExit, match=r"^error: .*/eight/8_george_0\.wav: --speaker-pattern 'theo_\(\\d\+\)'"):
        prepare.main(["folder", "--root", str(tree), "--out", str(tmp_path / "x"), "--speaker-pattern",
                      r"theo_(\d+)"])


def test_the_users_own_train_and_test_are_kept(fsdd_root, tmp_path):
    root = tmp_path / "split"
    link_tree(fsdd_root, root / "train", takes=(1, 2))  # 12 a class
    link_tree(fsdd_root, root / "test", takes=(0,))  # 6 a class
    out = tmp_path / "out"
    prepare.main(["folder", "--root", str(root), "--out", str(out)])
    rows = manifest_of(out)
    test = {Path(r["path"]).name for r in rows if r["split"] == "test"}
    assert test == {p.name for p in (root / "test").rglob("*.wav")}  # exactly the user's test files
    assert all(Path(r["path"]).parts[-3] == "train" for r in rows if r["split"] != "test")
    # valid from the user's train only: round(0.1 x 12) = 1 a class
    assert per_class(rows)["valid"] == Counter({d: 1 for d in DIGITS})
    assert per_class(rows)["train"] == Counter({d: 11 for d in DIGITS})
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert notes["given_splits"] == ["train", "test"] and notes["carved_splits"] == ["valid"]
    # a valid/ folder as well: nothing is carved
    link_tree(fsdd_root, root / "valid", takes=(3,))
    prepare.main(["folder", "--root", str(root), "--out", str(tmp_path / "all")])
    assert Counter(r["split"] for r in manifest_of(tmp_path / "all")) == {"train": 120, "valid": 60, "test": 60}
    # split folders beside a class folder: ambiguous, refused
    link_tree(fsdd_root, root, takes=(4,), digits=[0])
    with pytest.raises(SystemExit, match=r"^error: --root .* holds split folders .* beside other folders \(zero\)"):
        prepare.main(["folder", "--root", str(root), "--out", str(tmp_path / "x")])


def test_a_class_too_small_to_split_is_named_with_its_count(fsdd_root, tmp_path):
    root = link_tree(fsdd_root, tmp_path / "small", takes=(0,), digits=range(3))  # 6 clips a class
    for extra in list((root / "two").iterdir())[2:]:
        extra.unlink()  # two: 2 clips, one short of train + valid + test
    with pytest.raises(SystemExit) as error:
        prepare.main(["folder", "--root", str(root), "--out", str(tmp_path / "out")])
    message = str(error.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "class(es) too small to split: 'two' (2 clips); each needs at least 3 train clips" in message
    assert not (tmp_path / "out" / "manifest.csv").exists()
    # with test given, train needs 2 clips (train and valid): 1 is too few
    link_tree(fsdd_root, tmp_path / "given" / "train", takes=(0,), digits=range(2))
    link_tree(fsdd_root, tmp_path / "given" / "test", takes=(1,), digits=range(2))
    for extra in list((tmp_path / "given" / "train" / "one").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(SystemExit, match=r"'one' \(1 clip\); each needs at least 2 train clips"):
        prepare.main(["folder", "--root", str(tmp_path / "given"), "--out", str(tmp_path / "out")])


def list_records(fsdd_root: Path, list_dir: Path) -> list[dict]:
    """Digits 0-4, takes 0-1 of every speaker (12 a class), as paths relative to the list's folder."""
    return [{"path": os.path.relpath(recording(fsdd_root, digit, speaker, take), list_dir), "label": str(digit),
             "speaker": speaker} for digit in range(5) for speaker in SPEAKERS for take in (0, 1)]


def check_list_manifest(out: Path, fsdd_root: Path):
    rows = manifest_of(out)
    for row in rows:  # relative paths were resolved against the list's folder, not the working folder
        path = (out / row["path"]).resolve()
        assert path == recording(fsdd_root, int(row["label"]), row["speaker"], int(path.stem.split("_")[2])).resolve()
    # whole speakers of 10 clips (5 digits x 2 takes): test round(0.2 x 60) = 12 fits one, not two (20);
    # valid round(0.1 x 50) = 5 fits none, so one goes
    assert Counter(r["split"] for r in rows) == {"train": 40, "valid": 10, "test": 10}
    speakers = {split: {r["speaker"] for r in rows if r["split"] == split} for split in data.SPLITS}
    assert sum(map(len, speakers.values())) == 6  # no speaker on two sides
    splits, _ = data.load_splits(str(out / "manifest.csv"))
    assert len(splits["test"]) == 10


def test_a_csv_list_with_speakers(fsdd_root, tmp_path, monkeypatch):
    list_dir = tmp_path / "lists"
    list_dir.mkdir()
    records = list_records(fsdd_root, list_dir)
    with open(list_dir / "mylist.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(records)
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on where the command runs
    prepare.main(["folder", "--root", "lists/mylist.csv", "--out", str(tmp_path / "out"), "--group-by", "speaker"])
    check_list_manifest(tmp_path / "out", fsdd_root)
    # a split column is kept as given; valid is carved from its train rows (round(0.1 x 10) = 1 a class)
    with open(list_dir / "split.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows({"path": r["path"], "label": r["label"], "split": "test" if r["speaker"] == "theo"
                          else "train"} for r in records)
    prepare.main(["folder", "--root", str(list_dir / "split.csv"), "--out", str(tmp_path / "split")])
    rows = manifest_of(tmp_path / "split")
    assert {Path(r["path"]).name.split("_")[1] for r in rows if r["split"] == "test"} == {"theo"}
    assert Counter(r["split"] for r in rows) == {"train": 45, "valid": 5, "test": 10}
    # a bad row: one line naming the list and the line
    (list_dir / "bad.csv").write_text(f"path,label\n{records[0]['path']},0\n{records[1]['path']},\n")
    with pytest.raises(SystemExit, match=r"^error: \S*bad\.csv line 3: empty path or label\.$"):
        prepare.main(["folder", "--root", str(list_dir / "bad.csv"), "--out", str(tmp_path / "x")])
    (list_dir / "bad.csv").write_text(f"path,label,split\n{records[0]['path']},0,training\n")
    with pytest.raises(SystemExit, match=r"^error: \S*bad\.csv line 2: split 'training' is not one of train"):
        prepare.main(["folder", "--root", str(list_dir / "bad.csv"), "--out", str(tmp_path / "x")])
    (list_dir / "bad.csv").write_text(f"path,label\n{records[0]['path']},0\n{records[0]['path']},1\n")
    with pytest.raises(SystemExit, match=r"bad\.csv line 3: .* is listed again \(first at \S*bad\.csv line 2\)"):
        prepare.main(["folder", "--root", str(list_dir / "bad.csv"), "--out", str(tmp_path / "x")])
    (list_dir / "bad.csv").write_text("file,class\nx.wav,0\n")
    with pytest.raises(SystemExit, match=r"bad\.csv: no path or label column \(found: class, file\)"):
        prepare.main(["folder", "--root", str(list_dir / "bad.csv"), "--out", str(tmp_path / "x")])


def test_a_json_list_with_speakers(fsdd_root, tmp_path):
    list_dir = tmp_path / "lists"
    list_dir.mkdir()
    (list_dir / "mylist.json").write_text(json.dumps(list_records(fsdd_root, list_dir)))
    prepare.main(["folder", "--root", str(list_dir / "mylist.json"), "--out", str(tmp_path / "out"),
                  "--group-by", "speaker"])
    check_list_manifest(tmp_path / "out", fsdd_root)
    (list_dir / "bad.json").write_text(json.dumps([{"path": "a.wav", "label": "x"}, {"path": "b.wav"}]))
    with pytest.raises(SystemExit, match=r"^error: \S*bad\.json \[1\]: empty path or label\.$"):
        prepare.main(["folder", "--root", str(list_dir / "bad.json"), "--out", str(tmp_path / "x")])


def test_folder_arguments_are_checked_first(tmp_path, capsys):
    for argv, message in (
            (["--root", str(tmp_path / "nowhere")], "is not a folder (nor a .csv or .json list)"),
            (["--root", str(tmp_path), "--test-fraction", "1.5"], "1.5 is not between 0 and 1"),
            (["--root", str(tmp_path), "--valid-fraction", "x"], "'x' is not a number")):
        with pytest.raises(SystemExit) as exit_info:
            prepare.main(["folder", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["demo", "--test-fraction", "0.3"])
    assert exit_info.value.code == 2 and "--test-fraction: only for folder" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^error: --root \S+: no audio files in class subfolders"):
        prepare.main(["folder", "--root", str(tmp_path), "--out", str(tmp_path / "out")])


def test_a_semicolon_in_a_class_name_is_refused(tmp_path, fsdd_root):
    # ';' joins a clip's labels in a manifest: a folder or list label holding one would turn into several labels
    recordings = sorted((fsdd_root / "recordings").glob("*.wav"))[:4]
    for index, path in enumerate(recordings):
        target = tmp_path / "mydata" / ("car;dog" if index % 2 else "cat") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    result = run_script("prepare.py", "folder", "--root", tmp_path / "mydata", "--out", tmp_path / "out",
                        check=False)
    assert result.returncode == 1 and "car;dog" in result.stderr and "holds ';'" in result.stderr
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{'car;dog' if i % 2 else 'cat'}\n"
                                                for i, p in enumerate(recordings)))
    result = run_script("prepare.py", "folder", "--root", listing, "--out", tmp_path / "out2", check=False)
    assert result.returncode == 1 and "list.csv" in result.stderr and "label 'car;dog' holds ';'" in result.stderr
