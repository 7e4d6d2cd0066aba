"""prepare.py fsd50k: FSD50K's official layout into a multi-label manifest.

The replica is built in tmp_path as the release unzips (FSD50K.dev_audio/<fname>.wav,
FSD50K.eval_audio/<fname>.wav, FSD50K.ground_truth/{dev,eval,vocabulary}.csv), with the official
headers and quoting: dev.csv `fname,labels,mids,split` with the labels in one double-quoted field,
eval.csv `fname,labels,mids`, and vocabulary.csv `index,label,mid` without a header (layout from
the official README, FSD50K.doc/README.md; the first dev row is that of soundata's fixture). The audio
is real speech, FSDD recordings from ../shared (skipped where absent), copied under FSD50K's names.
Every expectation below is written by hand from the table, not computed by prepare.py's code.
"""
import csv
import json
import shutil
from pathlib import Path

import pytest

import data
import outdir
import prepare
from conftest import run_script

# The replica's ground truth: (fname, labels as in the csv, split column). Class names and the first
# row's mids are FSD50K's own; prepare.py reads no mid, so the others are placeholders.
DEV = [
    ("64760", "Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music", "train"),
    ("16399", "Bark,Dog,Domestic_animals_and_pets,Animal", "train"),
    ("21914", "Speech,Human_voice", "train"),
    ("377020", "Accordion,Musical_instrument,Music", "train"),
    ("39000", "Crushing", "train"),
    ("95000", "Speech,Human_voice", "val"),
    ("95001", "Bark,Dog,Domestic_animals_and_pets,Animal", "val"),
]
EVAL = [
    ("100", "Music,Accordion,Musical_instrument", None),  # the listed order is kept
    ("101", "Crushing", None),
    ("102", "Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music", None),
]
USED = sorted({label for _, labels, _ in DEV + EVAL for label in labels.split(",")})  # 13 classes
FIRST_MIDS = "/m/02sgy,/m/0342h,/m/0fx80y,/m/04szw,/m/04rlf"


def vocabulary_rows(size: int = 200) -> list[tuple]:
    """`size` rows of index,label,mid: the classes the replica uses, then fillers up to FSD50K's 200."""
    names = USED + [f"Filler_class_{i:03d}" for i in range(size - len(USED))]
    return [(i, name, f"/m/placeholder{i}") for i, name in enumerate(names[:size])]


def write_csv(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)  # quotes a field only where it holds a comma, as the release does
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def mids_of(fname: str, labels: str) -> str:
    return FIRST_MIDS if fname == "64760" else ",".join(f"/m/x{i}" for i, _ in enumerate(labels.split(",")))


def build(root: Path, recordings: Path, dev=DEV, evaluation=EVAL, vocabulary=None) -> Path:
    """The unzipped release under root, each clip a distinct FSDD recording."""
    sources = sorted(recordings.glob("*.wav"))[::97]  # spread over digits and speakers
    for (fname, _, split), source in zip(dev + evaluation, sources, strict=False):
        folder = root / ("FSD50K.dev_audio" if split else "FSD50K.eval_audio")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / f"{fname}.wav")
    (root / "FSD50K.eval_audio").mkdir(parents=True, exist_ok=True)
    truth = root / "FSD50K.ground_truth"
    write_csv(truth / "dev.csv", ["fname", "labels", "mids", "split"],
              [(f, labels, mids_of(f, labels), split) for f, labels, split in dev])
    write_csv(truth / "eval.csv", ["fname", "labels", "mids"],
              [(f, labels, mids_of(f, labels)) for f, labels, _ in evaluation])
    write_csv(truth / "vocabulary.csv", None, vocabulary or vocabulary_rows())
    return root


@pytest.fixture
def release(tmp_path, fsdd_root) -> Path:
    return build(tmp_path / "FSD50K", fsdd_root / "recordings")


def one_line_error(root: Path, out: Path, match: str, skip_bad=False) -> str:
    with pytest.raises(data.DataError) as error:
        prepare.prepare_fsd50k(root, out, skip_bad)
    message = str(error.value)
    assert "\n" not in message and match in message, message
    assert not (out / "manifest.csv").exists()
    return message


# ----------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------

def test_manifest_rows_labels_and_splits(release, tmp_path, capsys):
    out = tmp_path / "out"
    summary = prepare.prepare_fsd50k(release, out)
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # By hand: paths relative to OUT as for every dataset, labels joined by ';' in the listed order,
    # split train -> train, val -> valid, every eval.csv clip test.
    want = [(f"../FSD50K/FSD50K.dev_audio/{f}.wav", labels.replace(",", ";"), {"train": "train", "val": "valid"}[s])
            for f, labels, s in DEV]
    want += [(f"../FSD50K/FSD50K.eval_audio/{f}.wav", labels.replace(",", ";"), "test") for f, labels, _ in EVAL]
    assert [(r["path"], r["label"], r["split"]) for r in rows] == want
    assert list(rows[0]) == ["path", "label", "split"]
    assert rows[0]["label"] == "Electric_guitar;Guitar;Plucked_string_instrument;Musical_instrument;Music"

    assert summary["clips"] == {"train": 5, "valid": 2, "test": 3} and summary["total_clips"] == 10
    assert summary["classes"] == 13 == len(USED)  # labels, not label sets
    # labels per clip: train 5+4+2+3+1 = 15 over 5; valid 2+4 = 6 over 2; test 3+1+5 = 9 over 3; all 30 / 10
    assert summary["mean_labels_per_clip"] == {"train": 3.0, "valid": 3.0, "test": 3.0, "all": 3.0}
    assert summary["sample_rates"] == {"8000": 10} and summary["skipped"] == []
    assert summary["notes"]["files_on_disk_not_listed"] == 0 and summary["notes"]["missing_audio"] == 0
    assert json.loads((out / "summary.json").read_text())["checks"] == summary["checks"]
    # The official counts are checked, and a copy that differs is written with a loud warning.
    checks = {c["check"]: (c["expected"], c["found"], c["ok"]) for c in summary["checks"]}
    assert checks == {"train": (36796, 5, False), "valid": (4170, 2, False), "test": (10231, 3, False),
                      "train+valid": (40966, 7, False), "clips": (51197, 10, False), "classes": (200, 13, False),
                      "labels (train+valid)": (114271, 21, False), "labels (test)": (38596, 9, False)}
    captured = capsys.readouterr()
    assert "fsd50k: 5 train / 2 valid clips in dev.csv, 3 test in eval.csv, 200 classes" in captured.out
    assert "labels    multi-label: 3.0 per clip on average (30 in all)" in captured.out
    assert "WARNING: fsd50k does not match the published counts in 8 check(s)" in captured.err


def test_data_reads_it_back_as_multi_label(release, tmp_path):
    prepare.prepare_fsd50k(release, tmp_path / "out")
    splits, classes = data.load_splits(str(tmp_path / "out" / "manifest.csv"))
    assert classes == sorted({label for _, labels, s in DEV if s == "train" for label in labels.split(",")})
    assert data.is_multilabel(splits)
    assert [c.labels for c in splits["test"]] == [tuple(labels.split(",")) for _, labels, _ in EVAL]
    assert [Path(c.path).name for c in splits["valid"]] == ["95000.wav", "95001.wav"]
    targets = data.label_targets(splits["train"], classes, multilabel=True)
    assert targets.sum(1).tolist() == [5, 4, 2, 3, 1]
    assert targets[4].nonzero().flatten().tolist() == [classes.index("Crushing")]


def test_command_line_writes_data_fsd50k_and_refuses_a_users_manifest(release, tmp_path):
    run_script("prepare.py", "fsd50k", "--root", release, cwd=tmp_path)  # default --out: data/fsd50k
    assert (tmp_path / "data" / "fsd50k" / "manifest.csv").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.csv").write_text("path,label,split\n")
    result = run_script("prepare.py", "fsd50k", "--root", release, "--out", mine, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert (mine / "manifest.csv").read_text() == "path,label,split\n"
    with pytest.raises(outdir.Refused):
        prepare.prepare_fsd50k(release, mine)


def test_skip_bad_leaves_missing_clips_out(release, tmp_path, capsys):
    (release / "FSD50K.dev_audio" / "21914.wav").unlink()
    (release / "FSD50K.eval_audio" / "101.wav").unlink()
    message = one_line_error(release, tmp_path / "strict", "2 of 10 clips have no audio file, the first ")
    first = (release / "FSD50K.dev_audio" / "21914.wav").resolve()
    assert f"the first {first} ({release / 'FSD50K.ground_truth' / 'dev.csv'} line 4)" in message
    assert "--skip-bad" in message
    summary = prepare.prepare_fsd50k(release, tmp_path / "out", skip_bad=True)
    assert summary["clips"] == {"train": 4, "valid": 2, "test": 2}
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == ["101.wav", "21914.wav"]
    assert summary["notes"]["missing_audio"] == 2


def test_unlisted_audio_files_are_counted(release, tmp_path):
    shutil.copyfile(release / "FSD50K.dev_audio" / "64760.wav", release / "FSD50K.dev_audio" / "5.wav")
    summary = prepare.prepare_fsd50k(release, tmp_path / "out")
    assert summary["notes"]["files_on_disk_not_listed"] == 1 and summary["total_clips"] == 10


# ----------------------------------------------------------------------------------------------
# Refusals, each one line naming the file (and line)
# ----------------------------------------------------------------------------------------------

def test_a_label_not_in_the_vocabulary(tmp_path, fsdd_root):
    dev = [*DEV[:2], ("21914", "Speech,Meow", "train"), *DEV[3:]]
    root = build(tmp_path / "FSD50K", fsdd_root / "recordings", dev=dev)
    one_line_error(root, tmp_path / "out", f"{root / 'FSD50K.ground_truth' / 'dev.csv'} line 4: label 'Meow' is "
                   "not in vocabulary.csv.")


def test_a_vocabulary_that_is_not_200_rows(tmp_path, fsdd_root):
    root = build(tmp_path / "FSD50K", fsdd_root / "recordings", vocabulary=vocabulary_rows(199))
    one_line_error(root, tmp_path / "out", f"{root / 'FSD50K.ground_truth' / 'vocabulary.csv'}: 199 classes, but "
                   "FSD50K's vocabulary has 200")


def test_a_vocabulary_with_a_header(tmp_path, fsdd_root):
    rows = [("index", "label", "mid"), *vocabulary_rows()]
    root = build(tmp_path / "FSD50K", fsdd_root / "recordings", vocabulary=rows)
    one_line_error(root, tmp_path / "out", f"{root / 'FSD50K.ground_truth' / 'vocabulary.csv'} line 1: "
                   "'index,label,mid' is not index,label,mid (vocabulary.csv has no header")


def test_a_split_other_than_train_or_val(tmp_path, fsdd_root):
    dev = [*DEV[:5], ("95000", "Speech,Human_voice", "test"), DEV[6]]
    root = build(tmp_path / "FSD50K", fsdd_root / "recordings", dev=dev)
    one_line_error(root, tmp_path / "out", f"{root / 'FSD50K.ground_truth' / 'dev.csv'} line 7: split 'test' is "
                   "not train or val.")


def test_a_semicolon_in_a_label_is_refused(tmp_path, fsdd_root):
    vocabulary = vocabulary_rows()
    vocabulary[-1] = (199, "Bark;Dog", "/m/placeholder199")
    root = build(tmp_path / "a", fsdd_root / "recordings", vocabulary=vocabulary)
    one_line_error(root, tmp_path / "out", f"{root / 'FSD50K.ground_truth' / 'vocabulary.csv'} line 200: class "
                   "name 'Bark;Dog' is empty or holds ';'")
    evaluation = [*EVAL[:2], ("102", "Music;Guitar", None)]
    root = build(tmp_path / "b", fsdd_root / "recordings", evaluation=evaluation)
    one_line_error(root, tmp_path / "out", f"{root / 'FSD50K.ground_truth' / 'eval.csv'} line 4: label "
                   "'Music;Guitar' holds ';'")


def test_malformed_ground_truth_rows(tmp_path, fsdd_root):
    recordings = fsdd_root / "recordings"
    for name, dev, match in [
            ("repeat", [*DEV[:4], ("39000", "Crushing,Crushing", "train"), *DEV[5:]], "line 6: label 'Crushing' is "
             "given twice."),
            ("empty", [*DEV[:4], ("39000", "", "train"), *DEV[5:]], "line 6: no labels."),
            ("fname", [("64760.wav", *DEV[0][1:]), *DEV[1:]], "line 2: fname '64760.wav' is not a Freesound id"),
            ("twice", [*DEV, ("101", "Crushing", "train")], "eval.csv line 3: fname 101 is listed again (first "
             "at ")]:
        root = build(tmp_path / name, recordings, dev=dev)
        one_line_error(root, tmp_path / "out", match)
    # the labels field without its quotes: more fields than the header
    root = build(tmp_path / "unquoted", recordings)
    dev_csv = root / "FSD50K.ground_truth" / "dev.csv"
    lines = dev_csv.read_text().splitlines()
    dev_csv.write_text("\n".join([lines[0], lines[1].replace('"', ""), *lines[2:]]) + "\n")
    one_line_error(root, tmp_path / "out", f"{dev_csv} line 2: more fields than the header names")
    write_csv(dev_csv, ["fname", "labels", "split"], [])  # no mids column: not the release's header
    one_line_error(root, tmp_path / "out", f"{dev_csv}: header 'fname,labels,split' is not FSD50K's "
                   "fname,labels,mids,split.")


def test_missing_folders_say_how_to_rebuild_the_split_zip(release, tmp_path):
    shutil.rmtree(release / "FSD50K.eval_audio")
    one_line_error(release, tmp_path / "out", f"{release / 'FSD50K.eval_audio'} not found: FSD50K's audio comes as a "
                   f"split zip (FSD50K.eval_audio.zip with its .z01, .z02, ... parts); in {release} run `zip -s 0 "
                   "FSD50K.eval_audio.zip --out unsplit.zip && unzip unsplit.zip`")
    shutil.rmtree(release / "FSD50K.ground_truth")
    one_line_error(release, tmp_path / "out", "FSD50K.ground_truth/ folder (unzip FSD50K.ground_truth.zip into "
                   "--root) not found under --root")
    result = run_script("prepare.py", "fsd50k", "--root", release, "--out", tmp_path / "out", check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: FSD50K's") and result.stderr.count("\n") == 1
