"""Prepare the paper's datasets (and FSDD, and a synthetic demo) into manifests, with their
published splits.

    python prepare.py gtzan --root RAW/gtzan --splits DIR_WITH_THE_3_LISTS      # -> data/gtzan
    python prepare.py esc50 --root RAW/ESC-50-master                            # -> data/esc50
    python prepare.py timit --root RAW/TIMIT --rule by-type                     # -> data/timit
    python prepare.py emodb --root RAW/emodb                                    # -> data/emodb
    python prepare.py mswc --lang es --root RAW/mswc                            # -> data/mswc-s
    python prepare.py mswc --lang id --keywords paper --root RAW/mswc           # -> data/mswc-i
    python prepare.py fsdd --root ../shared/data/fsdd --task digit              # -> data/fsdd-digit
    python prepare.py fsd50k --root RAW/FSD50K                                  # -> data/fsd50k (multi-label)
    python prepare.py demo                                                      # synthetic, < 20 s
    python prepare.py hf --path DIR_OR_PARQUET_OR_HUB_ID --out data/NAME        # a Hugging Face dataset
    python prepare.py folder --root mydata                                      # your own: mydata/<class>/*.wav

Each turns a dataset as distributed into OUT/manifest.csv (paths relative to OUT, the audio left
where it is) and OUT/summary.json; docs/datasets.md says where to get each and which split it
uses. Each prepare_* function below builds the rows of one dataset with its published split; they
all end in `finish_prepare`, which reads every file's header, reports unreadable files by name (and
skips them only with --skip-bad), checks the counts the dataset is known to have, and writes.
The training scripts then find it with `--dataset NAME` (data.py reads manifests). `hf` takes any
Hugging Face dataset (the optional `datasets` package) and writes its audio under OUT/audio/. `folder`
takes the user's own audio, a folder of class subfolders or a CSV/JSON list of files with labels, keeps
the split it gives and carves the rest (test, then valid) with data.carve_valid (docs/data.md).
"""
import argparse
import csv
import glob
import hashlib
import io
import json
import os
import random
import re
import shlex
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

import outdir
from data import (LABEL_SEPARATOR, PREPARE_COMMANDS, SPLITS, UNSUPPORTED_SUFFIXES, Clip, DataError, carve_valid,
                  check_audio)


# ----------------------------------------------------------------------------------------------
# Checking and writing
# ----------------------------------------------------------------------------------------------

# OUT may be a folder of the user's (--out anywhere): every file written there replaces only one that
# prepare.py wrote and nobody changed since (outdir.write_owned), else outdir.Refused, `error: ...`.
SCRIPT = "prepare.py"
PREPARED = ("manifest.csv", "summary.json")  # what every dataset writes into OUT


def check_out(out_dir: Path):
    """Refused where OUT holds a manifest.csv or summary.json that prepare.py did not write (or that was
    changed since): checked before any audio is read or written, so a refusal costs nothing."""
    for name in PREPARED:
        outdir.check_owned(out_dir / name, SCRIPT)


def finish_prepare(name: str, out_dir: Path, rows: list[dict], expected: dict, notes: dict,
                   skip_bad: bool = False, extra_columns=()) -> dict:
    """Check the audio of `rows`, write manifest.csv and summary.json, print the summary.

    rows: dicts with an absolute "path", "label" (several labels joined by LABEL_SEPARATOR for
    multi-label data), "split", a "where" (what listed the file, for messages) and any of
    `extra_columns`. expected: {check name: expected value}; the found values come from
    `dataset_facts`, and every mismatch is printed as a loud warning and recorded.
    """
    check_out(out_dir)
    start = time.time()
    kept, skipped, silent, seconds_per_split, sample_rates = [], [], [], Counter(), Counter()
    for row in tqdm(rows, desc=f"{name}: checking audio", unit="file", disable=None):
        check = check_audio(row["path"])
        if check.problem is None:
            kept.append(row)
            seconds_per_split[row["split"]] += check.frames / check.sample_rate
            sample_rates[check.sample_rate] += 1
            if check.silent:
                silent.append({"path": row["path"], "where": row["where"]})
        else:
            skipped.append({"path": row["path"], "where": row["where"], "problem": check.problem})
    if skipped and not skip_bad:
        listing = "\n".join(f"  {s['path']} ({s['where']}): {s['problem']}" for s in skipped[:10])
        more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        raise DataError(f"{len(skipped)} of {len(rows)} {name} file(s) are missing or unreadable:\n"
                        f"{listing}{more}\nFix or restore them, or rerun with --skip-bad to leave them "
                        "out (they are then listed in summary.json).")
    for s in skipped:
        print(f"warning: skipping {s['path']} ({s['where']}): {s['problem']}", file=sys.stderr)
    if not kept:
        raise DataError(f"{name}: no readable audio files left.")

    facts = dataset_facts(kept)
    checks = [{"check": key, "expected": value, "found": facts.get(key), "ok": facts.get(key) == value}
              for key, value in expected.items()]
    manifest_rows = [{**row, "path": os.path.relpath(row["path"], out_dir.resolve())} for row in kept]
    write_manifest(out_dir, manifest_rows, extra_columns)
    summary = {
        "dataset": name,
        "clips": {split: facts[split] for split in SPLITS},
        "total_clips": facts["clips"],
        "classes": facts["classes"],
        "mean_labels_per_clip": facts["labels per clip (mean)"],  # 1.0 unless multi-label
        "hours": round(sum(seconds_per_split.values()) / 3600, 3),
        "hours_per_split": {s: round(seconds_per_split[s] / 3600, 3) for s in SPLITS},
        "sample_rates": {str(rate): count for rate, count in sorted(sample_rates.items())},
        "skipped": skipped,
        "silent": silent,
        "checks": checks,
        "notes": notes,
        "seconds_to_prepare": round(time.time() - start, 1),
    }
    outdir.write_owned(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n", SCRIPT)

    rates = ", ".join(f"{rate} Hz ({count})" for rate, count in sorted(sample_rates.items()))
    print(f"{name}: wrote {out_dir / 'manifest.csv'} and summary.json")
    print(f"  clips     train {facts['train']} / valid {facts['valid']} / test {facts['test']}"
          f" ({facts['clips']} in all), {facts['classes']} classes")
    if facts["labels"] > facts["clips"]:
        print(f"  labels    multi-label: {facts['labels per clip (mean)']['all']} per clip on average "
              f"({facts['labels']} in all)")
    print(f"  audio     {summary['hours']:.2f} h; sample rates: {rates}")
    print(f"  skipped   {len(skipped)} file(s)" + (" (listed in summary.json)" if skipped else ""))
    print(f"  silent    {len(silent)} clip(s)" + (" (every sample 0; kept, listed in summary.json: often a "
                                                   "data bug)" if silent else ""))
    for check in checks:
        print(f"  check     {check['check']}: expected {check['expected']}, found {check['found']}"
              f"{'' if check['ok'] else '   <-- MISMATCH'}")
    mismatches = [c for c in checks if not c["ok"]]
    if mismatches:
        print("\n" + "!" * 78, file=sys.stderr)
        print(f"WARNING: {name} does not match the published counts in {len(mismatches)} check(s):",
              file=sys.stderr)
        for c in mismatches:
            print(f"  {c['check']}: expected {c['expected']}, found {c['found']}", file=sys.stderr)
        print("Results on this copy are not comparable with the paper's. The manifest was written "
              "anyway; see summary.json.", file=sys.stderr)
        print("!" * 78 + "\n", file=sys.stderr)
    return summary


def dataset_facts(rows: list[dict]) -> dict:
    """Counts that the checks of finish_prepare compare against the published ones."""
    facts = {split: sum(r["split"] == split for r in rows) for split in SPLITS}
    facts["clips"] = len(rows)
    facts["train+valid"] = facts["train"] + facts["valid"]
    # A multi-label clip counts once for each of its labels: classes are labels, not label sets.
    labels = [r["label"].split(LABEL_SEPARATOR) for r in rows]
    per_class = Counter(label for clip_labels in labels for label in clip_labels)
    facts["classes"] = len(per_class)
    facts["labels"] = sum(map(len, labels))
    for part, splits in (("train+valid", ("train", "valid")), ("test", ("test",))):
        facts[f"labels ({part})"] = sum(len(ls) for r, ls in zip(rows, labels) if r["split"] in splits)
    facts["labels per clip (mean)"] = {
        split: round(sum(len(ls) for r, ls in zip(rows, labels) if r["split"] == split) / facts[split], 3)
        if facts[split] else None for split in SPLITS}
    facts["labels per clip (mean)"]["all"] = round(facts["labels"] / len(rows), 3)
    facts["clips per class (min)"] = min(per_class.values())
    facts["clips per class (max)"] = max(per_class.values())
    folds = Counter(r["fold"] for r in rows if r.get("fold") is not None)
    for fold, count in sorted(folds.items()):
        facts[f"fold {fold}"] = count
    speakers = Counter(r["speaker"] for r in rows if r.get("speaker"))
    if speakers:
        facts["speakers"] = len(speakers)
        facts["clips per speaker (min)"] = min(speakers.values())
        facts["clips per speaker (max)"] = max(speakers.values())
    return facts


def write_manifest(out_dir: Path, rows: list[dict], extra_columns=()) -> Path:
    """Write OUT/manifest.csv whole (write_owned goes through a temporary file, so an interrupted prepare
    leaves no half file), over none but prepare.py's own."""
    manifest = out_dir / "manifest.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["path", "label", "split", *extra_columns], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    outdir.write_owned(manifest, text.getvalue(), SCRIPT)
    return manifest


def absolute(path: Path) -> str:
    """An absolute path that keeps the file's own name: resolves symlinked folders, not a symlinked
    file (Hugging Face caches link each file to a content hash, which would hide its name)."""
    return str(path.parent.resolve() / path.name)


def find_folder(root: Path, candidates: list[str], what: str) -> Path:
    """The first of root/<candidate> that exists; a clear error naming what was looked for."""
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    tried = ", ".join(str(root / c) for c in candidates)
    raise DataError(f"{what} not found under --root {root} (looked for: {tried}).")


# --- GTZAN ------------------------------------------------------------------------------------
# The "fault-filtered" split (Kereliuk, Sturm & Larsen 2015): 443 / 197 / 290 of GTZAN's 1000
# excerpts, without repetitions, distortions and mislabellings, no artist in two sets. The lists
# come from github.com/coreyker/dnn-mgr (gtzan/*_filtered.txt); the MD5s are of that copy, with
# `.wav` names (a copy with `.au` names is compared after renaming, so it matches too).
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop",
                "reggae", "rock")
GTZAN_SPLIT_FILES = {"train": "train_filtered.txt", "valid": "valid_filtered.txt",
                     "test": "test_filtered.txt"}
GTZAN_SPLIT_MD5 = {"train": "d55795dd4bc006e94d1c1b092bfe9da3", "valid": "bf8b8540ab13630c984d6331b3102191",
                   "test": "6dbab6aabd0c49a20bc3b6df10986454"}
GTZAN_SPLIT_URL = ("https://raw.githubusercontent.com/coreyker/dnn-mgr/"
                   "bdad579ea6cb37b665ea6019fe1026a6ce20cbc7/gtzan/{file}")


def canonical_gtzan_list(text: str) -> str:
    """A list's lines with `.wav` names and LF endings: the form the MD5s above are of."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(f"{os.path.splitext(line)[0]}.wav\n" for line in lines)


def download_gtzan_lists(out_dir: Path, base_url: str = GTZAN_SPLIT_URL) -> Path:
    """Fetch the three list files into OUT/splits/ and verify them; a clear error when offline."""
    import urllib.request  # only needed on this path

    target = out_dir / "splits"
    for file in GTZAN_SPLIT_FILES.values():  # all three before the first download
        outdir.check_owned(target / file, SCRIPT)
    for split, file in GTZAN_SPLIT_FILES.items():
        url = base_url.format(file=file)
        print(f"gtzan: no --splits given, downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                text = response.read().decode("utf-8")
        except Exception as error:
            raise DataError(
                f"could not download the GTZAN split list {url} ({error}). Download "
                f"{', '.join(GTZAN_SPLIT_FILES.values())} from github.com/coreyker/dnn-mgr (folder gtzan/) "
                "by hand and pass their folder with --splits DIR.") from None
        if hashlib.md5(canonical_gtzan_list(text).encode()).hexdigest() != GTZAN_SPLIT_MD5[split]:
            raise DataError(f"{url}: the downloaded list is not the published fault-filtered split "
                            "(MD5 mismatch); pass a verified copy with --splits DIR.")
        outdir.write_owned(target / file, text, SCRIPT)
    return target


def prepare_gtzan(root: Path, out_dir: Path, splits_dir: Path | None, skip_bad: bool) -> dict:
    """GTZAN with the fault-filtered split, from `genres/<genre>/<genre>.000NN.au` or `.wav` copies."""
    genres_dir = find_folder(root, ["genres", "genres_original", "Data/genres_original", "gtzan/genres", "."],
                             "GTZAN's genre folders (genres/blues/, ...)")
    if not (genres_dir / "blues").is_dir():
        raise DataError(f"no blues/ folder in {genres_dir}: --root must hold GTZAN's genres/ folder "
                        "(genres/<genre>/<genre>.000NN.au, or the .wav copies' genres_original/).")
    if splits_dir is None:
        splits_dir = download_gtzan_lists(out_dir)
    rows, seen, edited_lists = [], {}, []
    for split, file in GTZAN_SPLIT_FILES.items():
        list_file = splits_dir / file
        if not list_file.is_file():
            raise DataError(f"{list_file} not found: --splits must be the folder holding "
                            f"{', '.join(GTZAN_SPLIT_FILES.values())}.")
        text = list_file.read_text()
        if hashlib.md5(canonical_gtzan_list(text).encode()).hexdigest() != GTZAN_SPLIT_MD5[split]:
            print(f"warning: {list_file} differs from the published fault-filtered list (MD5 mismatch); "
                  "using it as given.", file=sys.stderr)
            edited_lists.append(str(list_file))
        for line_no, line in enumerate(text.splitlines(), start=1):
            entry = line.strip()
            if not entry:
                continue
            where = f"{list_file} line {line_no}"
            genre, _, filename = entry.partition("/")
            if genre not in GTZAN_GENRES or not re.fullmatch(rf"{genre}\.\d{{5}}\.(wav|au)", filename):
                raise DataError(f"{where}: '{entry}' is not '<genre>/<genre>.000NN.wav' with a GTZAN genre.")
            stem = os.path.splitext(filename)[0]
            if stem in seen:
                raise DataError(f"{where}: {stem} is listed twice (also {seen[stem]}).")
            seen[stem] = where
            # The original tarball has .au files, common copies .wav; take whichever is on disk.
            candidates = [genres_dir / genre / f"{stem}{ext}" for ext in (".au", ".wav")]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                path, where = candidates[0], f"{where}; no {stem}.wav either"
            rows.append({"path": absolute(path), "label": genre, "split": split, "where": where})
    on_disk = {p.stem for g in GTZAN_GENRES for p in (genres_dir / g).glob(f"{g}.*")
               if p.suffix in (".au", ".wav")}
    notes = {"source": str(root), "split": "fault-filtered (Kereliuk, Sturm & Larsen 2015), lists from "
             "github.com/coreyker/dnn-mgr gtzan/*_filtered.txt", "lists": str(splits_dir),
             "files_on_disk_not_in_split": len(on_disk - set(seen)),
             "lists_differing_from_published": edited_lists}
    expected = {"train": 443, "valid": 197, "test": 290, "classes": 10}
    return finish_prepare("gtzan", out_dir, rows, expected, notes, skip_bad)


# --- ESC-50 -----------------------------------------------------------------------------------
ESC50_NAME = re.compile(r"^(\d)-(\d+)-([A-Z])-(\d+)\.wav$")  # {fold}-{freesound id}-{take}-{target}.wav


def prepare_esc50(root: Path, out_dir: Path, skip_bad: bool) -> dict:
    """ESC-50: `audio/*.wav` and `meta/esc50.csv` (either header version); the 5 official folds.

    Every row's `split` is train: the fold column decides, `--fold k` makes fold k test (load_splits).
    """
    csv_path = find_folder(root, ["meta/esc50.csv", "ESC-50-master/meta/esc50.csv", "esc50.csv"],
                           "ESC-50's meta/esc50.csv")
    audio_dir = find_folder(csv_path.parent.parent if csv_path.parent.name == "meta" else csv_path.parent,
                            ["audio"], "ESC-50's audio/ folder")
    rows = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if not {"filename", "fold"} <= set(header):
            raise DataError(f"{csv_path}: header '{','.join(header)}' lacks filename or fold; expected "
                            "filename,fold,target,category,... (or the 2017 filename,fold,category,category_name,...).")
        # Current header: filename,fold,target,category,...; the 2017 one: filename,fold,category,
        # category_name,... (same rows; the integer column was `category`, the name `category_name`).
        if "category_name" in header:
            target_column, name_column = "category", "category_name"
        elif "target" in header and "category" in header:
            target_column, name_column = "target", "category"
        else:
            raise DataError(f"{csv_path}: header '{','.join(header)}' is neither ESC-50 version "
                            "(filename,fold,target,category,... or filename,fold,category,category_name,...).")
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            match = ESC50_NAME.match(row["filename"] or "")
            if not match:
                raise DataError(f"{where}: '{row['filename']}' is not an ESC-50 name "
                                "({fold}-{source}-{take}-{target}.wav).")
            try:
                fold, target = int(row["fold"]), int(row[target_column])
            except (TypeError, ValueError):
                raise DataError(f"{where}: fold or target is not an integer.") from None
            if (fold, target) != (int(match.group(1)), int(match.group(4))) or not 1 <= fold <= 5:
                raise DataError(f"{where}: fold {fold} / target {target} disagree with the file name "
                                f"{row['filename']} or are out of range.")
            # `group`: clips cut from one Freesound recording stay on one side of the valid cut
            if not (row.get(name_column) or "").strip():
                raise DataError(f"{where}: no class name in column '{name_column}'.")
            rows.append({"path": absolute(audio_dir / row["filename"]), "label": row[name_column].strip(),
                         "split": "train", "fold": fold, "group": match.group(2), "target": target,
                         "where": where})
    expected = {"clips": 2000, "classes": 50, **{f"fold {k}": 400 for k in range(1, 6)},
                "clips per class (min)": 40, "clips per class (max)": 40}
    notes = {"source": str(root), "split": "the 5 official folds; run with --fold 1..5 (fold k = test)",
             "header": f"{target_column},{name_column}"}
    return finish_prepare("esc50", out_dir, rows, expected, notes, skip_bad, ("fold", "group", "target"))


# --- TIMIT ------------------------------------------------------------------------------------
# Closed-set speaker identification over all 630 speakers (TRAIN and TEST folders together). Each
# speaker read 10 sentences: SA1-2 (the same two texts for every speaker), 5 SX (each text read by 7
# speakers) and 3 SI (texts unique to the speaker). The paper's own copy (confit/timit, config `si`)
# has about 6 / 2 / 2 utterances per speaker; which ones is not published, so the rule is a flag.
TIMIT_RULES = {
    "by-type": "train SA1, SA2, the 3 SI and the lowest-numbered SX; valid the next 2 SX; test the "
               "2 highest-numbered SX (6/2/2 per speaker, the default)",
    "random": "6/2/2 per speaker, a fixed shuffle seeded by the speaker id",
    "reynolds": "train SA1, SA2, the 3 SI and the 3 lowest-numbered SX; test the 2 highest SX; no "
                "valid rows, so valid is carved from train when loading (8/2, as in Reynolds 1995)",
}
TIMIT_SPEAKER = re.compile(r"^[FM][A-Z]{3}\d$")
TIMIT_UTTERANCE = re.compile(r"^(SA|SI|SX)(\d+)$")


def timit_split(utterances: list[str], rule: str, speaker: str) -> dict[str, str]:
    """{utterance id: split} for one speaker's utterance ids (e.g. SA1, SI943, SX53)."""
    type_order = {"SA": 0, "SI": 1, "SX": 2}
    ordered = sorted(utterances, key=lambda u: (type_order[u[:2]], int(u[2:])))
    if rule == "random":
        random.Random(f"timit-{speaker}").shuffle(ordered)
    n_test, n_valid = (2, 0) if rule == "reynolds" else (2, 2)
    if len(ordered) < n_test + n_valid + 1:  # too few to split: keep the speaker in train only
        return {u: "train" for u in ordered}
    n_train = len(ordered) - n_test - n_valid
    return {u: "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
            for i, u in enumerate(ordered)}


def prepare_timit(root: Path, out_dir: Path, rule: str, skip_bad: bool) -> dict:
    """TIMIT: `{TRAIN,TEST}/DR*/<speaker>/*.WAV` (NIST SPHERE), any letter case, any parent folders."""
    found: dict[tuple[str, str], Path] = {}
    riff_copies: dict[tuple[str, str], Path] = {}  # the *.WAV.wav re-encodings some copies add
    second_copies = []
    # os.walk follows symlinked folders (pathlib's rglob no longer does from Python 3.13)
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders.sort()
        parts = [p.upper() for p in Path(folder).parts[-3:]]
        if len(parts) < 3 or parts[0] not in ("TRAIN", "TEST") or not re.match(r"^DR[1-8]$", parts[1]) \
                or not TIMIT_SPEAKER.match(parts[2]):
            continue
        speaker = parts[2]
        for name in sorted(files):
            upper = name.upper()
            copy = upper.endswith(".WAV.WAV")
            utterance = upper[:-8] if copy else upper[:-4] if upper.endswith(".WAV") else ""
            if not TIMIT_UTTERANCE.match(utterance):
                continue  # .PHN/.WRD/.TXT transcriptions, or other files
            key = (speaker, utterance)
            if copy:
                riff_copies.setdefault(key, Path(folder) / name)
            elif key in found:
                second_copies.append(str(Path(folder) / name))
            else:
                found[key] = Path(folder) / name
    if second_copies:
        print(f"warning: {len(second_copies)} utterance(s) exist twice under --root {root} (e.g. "
              f"{second_copies[0]}); the first copy found is used. Point --root at one copy of TIMIT.",
              file=sys.stderr)
    # A RIFF copy is used only where its SPHERE original is missing (same samples either way).
    fallbacks = [key for key in riff_copies if key not in found]
    for key in fallbacks:
        found[key] = riff_copies[key]
    if not found:
        raise DataError(f"no TIMIT utterances under --root {root}: expected "
                        "TIMIT/{TRAIN,TEST}/DR<n>/<speaker>/<utterance>.WAV (upper or lower case).")
    by_speaker: dict[str, list[str]] = {}
    for speaker, utterance in found:
        by_speaker.setdefault(speaker, []).append(utterance)
    rows = []
    for speaker in sorted(by_speaker):
        for utterance, split in sorted(timit_split(by_speaker[speaker], rule, speaker).items()):
            path = found[(speaker, utterance)]
            rows.append({"path": absolute(path), "label": speaker, "split": split,
                         "speaker": speaker, "where": str(path)})
    expected = {"clips": 6300, "speakers": 630, "classes": 630, "clips per speaker (min)": 10,
                "clips per speaker (max)": 10}
    notes = {"source": str(root), "task": "closed-set speaker identification, 630 speakers",
             "rule": rule, "rule_text": TIMIT_RULES[rule], "riff_copies_used": len(fallbacks),
             "second_copies_ignored": len(second_copies),
             "uncertainty": "the paper's exact per-speaker split (confit/timit `si`: 3.52k/1.17k/1.17k "
                            "rows) is not published; this rule matches its ~6/2/2 proportions"}
    return finish_prepare("timit", out_dir, rows, expected, notes, skip_bad, ("speaker",))


# --- EmoDB ------------------------------------------------------------------------------------
EMODB_EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness",
                  "T": "sadness", "N": "neutral"}  # German initials: Wut, Langeweile, Ekel, Angst, ...
# The speaker-independent split of audeering/emodb >= 1.2.0, which is also the AudioConFit authors'
# (confit/emodb: 304 train / 231 test clips).
EMODB_SPEAKERS = {"train": ("03", "08", "09", "10", "11", "13"), "test": ("12", "14", "15", "16")}
EMODB_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z])\.wav$", re.IGNORECASE)  # 03a01Fa.wav


def prepare_emodb(root: Path, out_dir: Path, split_file: Path | None, skip_bad: bool) -> dict:
    """EmoDB: `wav/*.wav`, emotion from the 6th character, speaker-independent train/test.

    Valid is carved with `carve_valid` as whole train speakers (`group` = speaker; fixed seed), so
    valid is as speaker-independent of train as test is, and every run and both arms see the same
    valid set; test speakers are never touched.
    """
    wav_dir = find_folder(root, ["wav", "."], "EmoDB's wav/ folder")
    files = sorted(p for p in wav_dir.iterdir() if p.suffix.lower() == ".wav")
    if not files:
        raise DataError(f"no .wav files in {wav_dir}: --root must hold EmoDB's wav/ folder.")
    speakers, expected_counts = EMODB_SPEAKERS, {"train": 304, "test": 231}
    if split_file is not None:
        try:
            spec = json.loads(split_file.read_text())
            speakers = {"train": tuple(spec["train_speakers"]), "test": tuple(spec["test_speakers"])}
            expected_counts = spec.get("expected_counts", {})
        except (OSError, ValueError, KeyError) as error:
            raise DataError(f"{split_file}: not a speaker split JSON with train_speakers and "
                            f"test_speakers ({error}).") from None
    both = set(speakers["train"]) & set(speakers["test"])
    if both:
        raise DataError(f"{split_file}: speaker(s) {', '.join(sorted(both))} are in both train and test.")
    split_of = {s: split for split, group in speakers.items() for s in group}
    rows = []
    for path in files:
        match = EMODB_NAME.match(path.name)
        if not match:
            raise DataError(f"{path}: not an EmoDB file name (speaker, text, emotion, version: 03a01Fa.wav).")
        speaker, emotion = match.group(1), match.group(3).upper()
        if emotion not in EMODB_EMOTIONS:
            raise DataError(f"{path}: emotion letter '{emotion}' is not one of {', '.join(EMODB_EMOTIONS)}.")
        if speaker not in split_of:
            raise DataError(f"{path}: speaker {speaker} is in neither the train nor the test speakers "
                            f"({speakers}).")
        rows.append({"path": absolute(path), "label": EMODB_EMOTIONS[emotion], "split": split_of[speaker],
                     "speaker": speaker, "group": speaker, "where": str(path)})
    train = [Clip(r["path"], r["label"], "train", group=r["group"]) for r in rows if r["split"] == "train"]
    _, valid = carve_valid(train)
    if not valid:
        raise DataError(f"train speakers {' '.join(speakers['train'])}: no whole train speaker can be carved "
                        "into valid without leaving an emotion with no train clip. Give more train speakers.")
    valid_speakers = sorted({c.group for c in valid})
    valid_paths = {c.path for c in valid}
    for row in rows:
        if row["path"] in valid_paths:
            row["split"] = "valid"
    expected = {"clips": 535, "classes": 7, "speakers": 10}
    if "train" in expected_counts:
        expected["train+valid"] = expected_counts["train"]
    if "test" in expected_counts:
        expected["test"] = expected_counts["test"]
    notes = {"source": str(root), "split": f"speaker-independent: train speakers {' '.join(speakers['train'])}, "
             f"test speakers {' '.join(speakers['test'])} (audeering/emodb >= 1.2.0, = confit/emodb)",
             "valid": f"whole train speaker(s) {' '.join(valid_speakers)} ({len(valid)} clips), carved with "
                      "seed 0: no valid speaker is in train"}
    return finish_prepare("emodb", out_dir, rows, expected, notes, skip_bad, ("speaker", "group"))


# --- MSWC -------------------------------------------------------------------------------------
# Multilingual Spoken Words Corpus subsets. The paper's footnote points at sil-ai/audio-keyword-
# spotting (MSWC clips of Bible names and places in English, Spanish and Indonesian: the paper's
# "Indian" subset is Indonesian). Its 14 Indonesian keywords are known (from the authors' HF copy
# confit/mswc-demo, config `indian`); its 146 Spanish keywords are not.
MSWC_PAPER_KEYWORDS = {"id": ("asia", "dan", "teman", "selamat", "anak", "tuhan", "kuat", "rumahnya",
                              "tahan", "pulau", "selama", "selatan", "raja", "agustus")}
MSWC_PAPER_COUNTS = {"es": {"clips": 11759, "classes": 146}, "id": {"clips": 739, "classes": 14}}
MSWC_SPLITS = {"train": "train", "dev": "valid", "validation": "valid", "valid": "valid", "test": "test"}
ISO3 = {"en": "eng", "es": "spa", "id": "ind"}


def read_keyword_records(metadata: Path):
    """Yield {split, file, keyword, speaker, language, where} from MSWC or sil-ai style metadata.

    Accepted: MSWC's `<lang>_splits.csv` (SET,LINK,WORD,VALID,SPEAKER,GENDER); a CSV with the sil-ai
    fields (file,keyword,split[,speaker_id,language,...]); JSON lines or a JSON list of such records;
    a JSON object {split name: [records]}. CSV and JSON lines are streamed: MSWC's csv for one
    language can have millions of rows.
    """
    def record(raw: dict, split: str | None, where: str) -> dict:
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a record (an object with file, keyword, split), found {raw!r:.80}.")
        raw = {k.strip().lower(): v for k, v in raw.items() if isinstance(k, str)}
        split = split or raw.get("set") or raw.get("split")
        file = raw.get("link") or raw.get("file")
        keyword = raw.get("word") or raw.get("keyword")
        if not (split and file and keyword):
            raise DataError(f"{where}: a record needs a split (SET or split), a file (LINK or file) and a "
                            f"keyword (WORD or keyword); found fields {', '.join(sorted(raw)) or 'none'}.")
        if str(split).strip().lower() not in MSWC_SPLITS:
            raise DataError(f"{where}: split '{split}' is not one of TRAIN, DEV, TEST (or train, validation, test).")
        speaker = raw.get("speaker") or raw.get("speaker_id")
        return {"split": MSWC_SPLITS[str(split).strip().lower()], "file": str(file).strip(),
                "keyword": unicodedata.normalize("NFC", str(keyword).strip()),
                "speaker": None if speaker in (None, "", "NA") else str(speaker),
                "language": raw.get("language"), "where": where}

    suffix = metadata.suffix.lower()
    if suffix == ".csv":
        with open(metadata, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield record(row, None, f"{metadata} line {reader.line_num}")
        return
    if suffix == ".jsonl":
        with open(metadata, encoding="utf-8-sig") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        raw = json.loads(line)
                    except ValueError as error:
                        raise DataError(f"{metadata} line {i}: not valid JSON ({error}).") from None
                    yield record(raw, None, f"{metadata} line {i}")
        return
    try:
        content = json.loads(metadata.read_text(encoding="utf-8-sig"))
    except ValueError as error:
        raise DataError(f"{metadata}: not valid JSON ({error}).") from None
    if isinstance(content, dict):
        for split, items in content.items():
            for i, raw in enumerate(items):
                yield record(raw, split, f"{metadata} [{split}][{i}]")
    elif isinstance(content, list):
        for i, raw in enumerate(content):
            yield record(raw, None, f"{metadata} [{i}]")
    else:
        raise DataError(f"{metadata}: expected a JSON list of records or an object of splits.")


def find_mswc_metadata(root: Path, lang: str) -> Path:
    """The splits/metadata file of one language, in the MSWC or the sil-ai layout."""
    names = [f"{lang}_splits.csv", f"{lang}/{lang}_splits.csv", f"{ISO3.get(lang, lang)}.csv",
             f"{ISO3.get(lang, lang)}.jsonl", f"{ISO3.get(lang, lang)}.json", "bible-keyword.json",
             "metadata.csv", "metadata.jsonl"]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataError(f"no MSWC metadata for '{lang}' under --root {root}: expected {lang}_splits.csv "
                    f"(MSWC, next to clips/) or sil-ai style metadata ({', '.join(names[2:])}).")


def parse_keywords(keywords: str | None, lang: str) -> list[str] | None:
    """--keywords: 'paper', a comma-separated list, or a file with one keyword per line."""
    if keywords is None:
        return None
    if keywords == "paper":
        if lang not in MSWC_PAPER_KEYWORDS:
            raise DataError(f"the paper's keyword list for '{lang}' is not known (only for: "
                            f"{', '.join(MSWC_PAPER_KEYWORDS)}). Use --min-count, or give your own list.")
        return list(MSWC_PAPER_KEYWORDS[lang])
    if Path(keywords).is_file():
        words = Path(keywords).read_text(encoding="utf-8-sig").splitlines()
    else:
        words = keywords.split(",")
    # NFC: an accented keyword typed or saved in decomposed form still matches MSWC's spelling
    return [unicodedata.normalize("NFC", w.strip()) for w in words if w.strip()]


def prepare_mswc(root: Path, out_dir: Path, lang: str, keywords: str | None, min_count: int,
                 skip_bad: bool) -> dict:
    """MSWC (or its sil-ai subset) for one language; SET TRAIN/DEV/TEST are train/valid/test.

    Keywords are kept when they are in --keywords (if given) and have at least --min-count train
    clips; a keyword without train clips is always dropped (no classifier can learn it).
    """
    metadata = find_mswc_metadata(root, lang)
    wanted = parse_keywords(keywords, lang)
    wanted_set = None if wanted is None else set(wanted)
    languages, languages_seen = {lang, ISO3.get(lang)}, Counter()
    records, n_read, n_language = [], 0, 0
    for r in tqdm(read_keyword_records(metadata), desc=f"reading {metadata.name}", unit="row", disable=None):
        n_read += 1
        languages_seen[r["language"]] += 1
        if r["language"] and r["language"] not in languages:
            continue
        n_language += 1
        if wanted_set is None or r["keyword"] in wanted_set:
            records.append(r)
    if n_language == 0:
        raise DataError(f"{metadata}: none of its {n_read} records is in language '{lang}' "
                        f"(languages seen: {dict(languages_seen)}); check --lang.")
    if wanted is not None:
        missing = sorted(wanted_set - {r["keyword"] for r in records})
        if missing:
            print(f"warning: {len(missing)} requested keyword(s) have no clips in {metadata}: "
                  f"{', '.join(missing)}", file=sys.stderr)
    train_counts = Counter(r["keyword"] for r in records if r["split"] == "train")
    kept_words = {w for w, n in train_counts.items() if n >= max(1, min_count)}
    dropped = sorted({r["keyword"] for r in records} - kept_words)
    if dropped:
        print(f"warning: dropping {len(dropped)} keyword(s) with fewer than {max(1, min_count)} train "
              f"clip(s): {', '.join(dropped[:50])}{' ...' if len(dropped) > 50 else ''}", file=sys.stderr)
    records = [r for r in records if r["keyword"] in kept_words]
    print(f"{metadata.name}: {n_read} records, {n_language} in '{lang}', {len(records)} kept "
          f"({len(kept_words)} keywords)")
    if not records:
        raise DataError(f"{metadata}: no keyword left after the filters (--keywords, --min-count {min_count}).")
    # MSWC: LINK is relative to <lang>/clips/; sil-ai: `file` is relative to the extracted archive.
    bases = [metadata.parent / "clips", metadata.parent, metadata.parent / ISO3.get(lang, lang),
             metadata.parent / lang / "clips", metadata.parent / lang]
    base = next((b for b in bases if any((b / r["file"]).is_file() for r in records[:50])), bases[0])
    rows = [{"path": absolute(base / r["file"]), "label": r["keyword"], "split": r["split"],
             "speaker": r["speaker"] or "", "where": r["where"]} for r in records]
    expected = dict(MSWC_PAPER_COUNTS.get(lang, {}))
    notes = {"source": str(root), "metadata": str(metadata), "lang": lang, "audio_base": str(base),
             "keywords": "paper" if keywords == "paper" else (sorted(wanted) if wanted else "all"),
             "min_count": min_count, "dropped_keywords": len(dropped), "dropped": dropped[:1000],
             "known": "MSWC-I (id): the 14 keywords of the authors' copy are known, so `--keywords paper` "
                      "reproduces its classes; MSWC-S (es): 146 classes / 11,759 clips are known, the "
                      "keyword list is not"}
    name = {"es": "mswc-s", "id": "mswc-i"}.get(lang, f"mswc-{lang}")
    return finish_prepare(name, out_dir, rows, expected, notes, skip_bad, ("speaker",))


# --- FSD50K -----------------------------------------------------------------------------------
# Multi-label sound event tagging (Fonseca et al., TASLP 2022; zenodo.org/record/4060432), as unzipped:
# FSD50K.dev_audio/<fname>.wav, FSD50K.eval_audio/<fname>.wav and FSD50K.ground_truth/ with dev.csv
# (fname,labels,mids,split: train or val), eval.csv (fname,labels,mids) and vocabulary.csv (index,label,mid,
# no header). `labels` is one quoted field of comma-separated class names ("Electric_guitar,Guitar,Music");
# the labels are smeared (every ancestor in the AudioSet ontology is a label too). Counts from the official
# README, train/val from the split column's published sizes.
FSD50K_CLASSES = 200
FSD50K_COUNTS = {"train": 36796, "valid": 4170, "test": 10231, "train+valid": 40966, "clips": 51197,
                 "classes": FSD50K_CLASSES, "labels (train+valid)": 114271, "labels (test)": 38596}
FSD50K_SPLITS = {"train": "train", "val": "valid"}  # dev.csv's split column; every eval.csv clip is test
FSD50K_AUDIO = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}


def read_fsd50k_vocabulary(path: Path) -> set[str]:
    """The class names of vocabulary.csv (rows index,label,mid, no header), which must be FSD50K's 200."""
    if not path.is_file():
        raise DataError(f"{path} not found: --root must hold FSD50K.ground_truth/ (unzip FSD50K.ground_truth.zip).")
    names, where_of = set(), {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            for fields in reader:
                where = f"{path} line {reader.line_num}"
                if not fields:
                    continue
                if len(fields) != 3 or not fields[0].strip().isdigit():
                    raise DataError(f"{where}: '{','.join(fields)}' is not index,label,mid (vocabulary.csv has no "
                                    "header; its first row is 0,Accelerating_and_revving_and_vroom,/m/07q2z82).")
                label = fields[1].strip()
                if not label or LABEL_SEPARATOR in label:
                    raise DataError(f"{where}: class name '{label}' is empty or holds '{LABEL_SEPARATOR}', which "
                                    "joins a clip's labels in the manifest.")
                if label in names:
                    raise DataError(f"{where}: class '{label}' is listed again (first at {where_of[label]}).")
                names.add(label)
                where_of[label] = where
        except csv.Error as error:
            raise DataError(f"{path} line {reader.line_num}: not valid CSV ({error}).") from None
    if len(names) != FSD50K_CLASSES:
        raise DataError(f"{path}: {len(names)} classes, but FSD50K's vocabulary has {FSD50K_CLASSES} "
                        "(rows index,label,mid, no header): is this FSD50K's FSD50K.ground_truth/?")
    return names


def read_fsd50k_ground_truth(path: Path, vocabulary: set[str], audio_dir: Path, split_column: bool) -> list[dict]:
    """Rows of dev.csv (split_column: train or val, as train/valid) or eval.csv (all test); every label must
    be in the vocabulary, and every problem is named by file and line."""
    if not path.is_file():
        raise DataError(f"{path} not found: --root must hold FSD50K.ground_truth/ (unzip FSD50K.ground_truth.zip).")
    header = "fname,labels,mids" + (",split" if split_column else "")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, strict=True)
        if not set(header.split(",")) <= set(reader.fieldnames or []):
            raise DataError(f"{path}: header '{','.join(reader.fieldnames or [])}' is not FSD50K's {header}.")
        try:
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if None in row:  # more fields than the header: a labels field without its quotes
                    raise DataError(f"{where}: more fields than the header names; labels and mids are each one "
                                    "double-quoted field (\"Bark,Dog,Animal\").")
                fname = (row["fname"] or "").strip()
                if not fname.isdigit():
                    raise DataError(f"{where}: fname '{fname}' is not a Freesound id (an integer).")
                if not (row["labels"] or "").strip():
                    raise DataError(f"{where}: no labels.")
                labels = [label.strip() for label in row["labels"].split(",")]
                for label in labels:
                    if LABEL_SEPARATOR in label:
                        raise DataError(f"{where}: label '{label}' holds '{LABEL_SEPARATOR}', which joins a clip's "
                                        "labels in the manifest.")
                    if label not in vocabulary:
                        raise DataError(f"{where}: label '{label}' is not in vocabulary.csv"
                                        + (" (an empty label: a stray comma?)." if not label else "."))
                repeated = next((label for label in labels if labels.count(label) > 1), None)
                if repeated:
                    raise DataError(f"{where}: label '{repeated}' is given twice.")
                if split_column:
                    split = (row["split"] or "").strip()
                    if split not in FSD50K_SPLITS:
                        raise DataError(f"{where}: split '{split}' is not train or val.")
                    split = FSD50K_SPLITS[split]
                else:
                    split = "test"
                rows.append({"path": absolute(audio_dir / f"{fname}.wav"), "label": LABEL_SEPARATOR.join(labels),
                             "split": split, "fname": fname, "where": where})
        except csv.Error as error:
            raise DataError(f"{path} line {reader.line_num}: not valid CSV ({error}).") from None
    if not rows:
        raise DataError(f"{path}: no rows after the header.")
    return rows


def prepare_fsd50k(root: Path, out_dir: Path, skip_bad: bool = False) -> dict:
    """FSD50K, multi-label: dev.csv's train and val rows are train and valid, eval.csv's rows test; a clip's
    labels (as listed, smeared) joined by LABEL_SEPARATOR. Ground truth is read and checked whole before
    any audio, and missing files are counted before the (long: ~108 h of audio) decoding check."""
    truth = find_folder(root, ["FSD50K.ground_truth"], "FSD50K's FSD50K.ground_truth/ folder (unzip "
                        "FSD50K.ground_truth.zip into --root)")
    audio = {}
    for part, folder in FSD50K_AUDIO.items():
        audio[part] = root / folder
        if not audio[part].is_dir():
            # Zenodo serves the audio as split zips, which unzip alone cannot open.
            raise DataError(f"{audio[part]} not found: FSD50K's audio comes as a split zip ({folder}.zip with "
                            f"its .z01, .z02, ... parts); in {root} run `zip -s 0 {folder}.zip --out unsplit.zip "
                            "&& unzip unsplit.zip` to rebuild and unpack it.")
    vocabulary = read_fsd50k_vocabulary(truth / "vocabulary.csv")
    rows = (read_fsd50k_ground_truth(truth / "dev.csv", vocabulary, audio["dev"], split_column=True)
            + read_fsd50k_ground_truth(truth / "eval.csv", vocabulary, audio["eval"], split_column=False))
    first = {}
    for row in rows:  # a Freesound id is one clip; dev and eval share none (no uploader is in both)
        if row["fname"] in first:
            raise DataError(f"{row['where']}: fname {row['fname']} is listed again (first at "
                            f"{first[row['fname']]}).")
        first[row["fname"]] = row["where"]
    missing = [row for row in rows if not os.path.isfile(row["path"])]
    if missing and not skip_bad:
        raise DataError(f"{len(missing)} of {len(rows)} clips have no audio file, the first {missing[0]['path']} "
                        f"({missing[0]['where']}): unzip the whole archive, or rerun with --skip-bad to leave them "
                        "out (listed in summary.json).")
    listed, unlisted = {row["path"] for row in rows}, 0
    for folder in audio.values():
        base = folder.resolve()  # as `absolute` wrote the rows' paths
        unlisted += sum(1 for entry in os.scandir(folder)
                        if entry.name.endswith(".wav") and str(base / entry.name) not in listed)
    counts = Counter(row["split"] for row in rows)
    print(f"fsd50k: {counts['train']} train / {counts['valid']} valid clips in dev.csv, {counts['test']} test in "
          f"eval.csv, {len(vocabulary)} classes; every file is decoded once to check it")
    notes = {"source": str(root), "split": "official: dev.csv split train / val -> train / valid, eval.csv -> test",
             "labels": f"several per clip, joined by '{LABEL_SEPARATOR}', as listed (smeared: AudioSet ancestors "
                       "included); multi-label, scored by macro mAP",
             "vocabulary": str(truth / "vocabulary.csv"), "missing_audio": len(missing),
             "files_on_disk_not_listed": unlisted,
             "licence": "CC-BY 4.0 as a whole; each clip has its own Freesound licence (CC0, CC-BY, CC-BY-NC or "
                        "Sampling+), listed in FSD50K.metadata/"}
    return finish_prepare("fsd50k", out_dir, rows, FSD50K_COUNTS, notes, skip_bad)


# --- FSDD and the demo ------------------------------------------------------------------------

def prepare_fsdd(root: Path, out_dir: Path, task: str, skip_bad: bool = False) -> dict:
    """Free Spoken Digit Dataset, official split: take 0-4 test, 5-49 train.

    Valid is carved deterministically from train: takes 5-9 (300 clips, every digit and speaker
    equally), leaving takes 10-49 (2,400 clips) for training.
    """
    recordings = root / "recordings" if (root / "recordings").is_dir() else root
    files = sorted(recordings.glob("*.wav"))
    if not files:
        raise DataError(f"no .wav files under {recordings}: --root must be the FSDD folder or its recordings/.")
    rows = []
    for file in files:
        try:
            digit, speaker, take = file.stem.split("_")
            take = int(take)
        except ValueError:
            raise DataError(f"{file}: not an FSDD name ({{digit}}_{{speaker}}_{{take}}.wav).") from None
        split = "test" if take <= 4 else "valid" if take <= 9 else "train"
        label = digit if task == "digit" else speaker
        rows.append({"path": absolute(file), "label": label, "split": split, "speaker": speaker,
                     "where": str(file)})
    expected = {"clips": 3000, "train": 2400, "valid": 300, "test": 300,
                "classes": 10 if task == "digit" else 6}
    notes = {"source": str(root), "task": task,
             "split": "official: takes 0-4 test; valid takes 5-9, train takes 10-49"}
    return finish_prepare(f"fsdd-{task}", out_dir, rows, expected, notes, skip_bad, ("speaker",))


# The demo sounds: every class draws pitch, duration, level and noise from the same ranges, so no
# class can be told apart by loudness, length or register alone; only the sound's shape differs.
DEMO_CLASSES = ("sine", "square", "sawtooth", "chirp_up", "chirp_down", "tremolo", "vibrato",
                "pulse_train", "band_noise", "chord")
DEMO_RATE = 16_000


def synthesize_demo_clip(kind: str, rng: np.random.Generator) -> np.ndarray:
    duration = rng.uniform(0.6, 2.0)
    t = np.arange(int(duration * DEMO_RATE)) / DEMO_RATE
    f0 = 150 * 2 ** rng.uniform(0, 3)  # 150-1200 Hz, same range for all classes
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "sine":
        wave = np.sin(2 * np.pi * f0 * t + phase)
    elif kind == "square":
        wave = np.sign(np.sin(2 * np.pi * f0 * t + phase))
    elif kind == "sawtooth":
        wave = 2 * ((f0 * t + phase / (2 * np.pi)) % 1.0) - 1
    elif kind in ("chirp_up", "chirp_down"):
        f_high = f0 * 2 ** rng.uniform(1, 2)  # a sweep of one to two octaves
        start, end = (f0, f_high) if kind == "chirp_up" else (f_high, f0)
        freq = np.geomspace(start, end, len(t))  # instantaneous frequency
        wave = np.sin(2 * np.pi * np.cumsum(freq) / DEMO_RATE + phase)
    elif kind == "tremolo":
        rate = rng.uniform(4, 12)
        wave = (0.55 + 0.45 * np.sin(2 * np.pi * rate * t)) * np.sin(2 * np.pi * f0 * t + phase)
    elif kind == "vibrato":
        rate, depth = rng.uniform(4, 8), rng.uniform(0.03, 0.08)
        freq = f0 * (1 + depth * np.sin(2 * np.pi * rate * t))
        wave = np.sin(2 * np.pi * np.cumsum(freq) / DEMO_RATE + phase)
    elif kind == "pulse_train":
        rate = rng.uniform(5, 20)
        envelope = np.exp(-((t * rate) % 1.0) / rate * 60)  # a fast decay after each pulse
        wave = envelope * np.sin(2 * np.pi * f0 * t + phase)
    elif kind == "band_noise":
        noise = rng.standard_normal(len(t))
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(len(t), 1 / DEMO_RATE)
        spectrum[np.abs(np.log2(np.maximum(freqs, 1) / f0)) > 0.5] = 0  # one octave around f0
        wave = np.fft.irfft(spectrum, len(t))
    elif kind == "chord":
        wave = sum(np.sin(2 * np.pi * f0 * r * t + phase * k) for k, r in enumerate((1, 1.26, 1.5)))
    else:
        raise ValueError(kind)
    fade = np.minimum(1, np.minimum(t, t[-1] - t) / rng.uniform(0.01, 0.1))
    wave = wave * fade
    wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(0.05, 0.9)  # level, independent of class
    snr_db = rng.uniform(10, 30)
    noise_rms = np.sqrt(np.mean(wave**2)) / 10 ** (snr_db / 20)
    wave = wave + noise_rms * rng.standard_normal(len(t))
    return np.clip(wave, -1, 1).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str) -> bytes:
    """A WAV file in memory, for write_owned (which writes whole files over prepare.py's own only)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def prepare_demo(out_dir: Path, per_split=(("train", 24), ("valid", 8), ("test", 8)), seed: int = 0):
    """10 classes of procedural sounds, 16 kHz mono WAV, deterministic given the seed."""
    check_out(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in per_split:
        for kind in DEMO_CLASSES:
            for n in range(count):
                relative = f"audio/{split}/{kind}_{n:03d}.wav"
                clip = wav_bytes(synthesize_demo_clip(kind, rng), DEMO_RATE, "PCM_16")
                outdir.write_owned(out_dir / relative, clip, SCRIPT)
                rows.append({"path": absolute(out_dir / relative), "label": kind, "split": split,
                             "where": relative})
    expected = {"clips": 40 * len(DEMO_CLASSES), "classes": len(DEMO_CLASSES)}
    return finish_prepare("demo", out_dir, rows, expected, {"source": f"synthesized, seed {seed}"})


# --- Hugging Face datasets --------------------------------------------------------------------
# A dataset in the formats of the `datasets` library: a save_to_disk folder, parquet files (the
# Hub's own copies, such as the paper authors' confit/* datasets) or a Hub id. `datasets` is optional
# and imported only here. Its Audio feature decodes through torchcodec (FFmpeg's libraries and a build
# matched to torch; datasets 5.2 decodes nothing without it) and resamples where the feature names a
# rate, so we read the stored bytes instead (Audio(decode=False)) and write them unchanged: every clip
# keeps its own samples and rate, and soundfile decodes it like any other file.
HF_SPLIT_MAP = "train=train,validation=valid,valid=valid,test=test"
HF_SUFFIXES = {"WAVEX": ".wav", "NIST": ".sph"}  # libsndfile's format name -> suffix, where they differ


def import_datasets():
    """The optional `datasets` package, or a DataError that says how to install it."""
    try:
        import datasets
    except ImportError:
        raise DataError("prepare.py hf needs the datasets package, which is not installed here: pip install "
                        "datasets (or pip install -r requirements-test.txt)") from None
    return datasets


def parse_split_map(text: str) -> dict[str, str]:
    """--split-map 'train=train,validation=valid' as {the dataset's split name: ours}."""
    mapping = {}
    for item in text.split(","):
        name, _, ours = (part.strip() for part in item.partition("="))
        if not name or ours not in SPLITS:
            raise DataError(f"--split-map {text}: '{item}' is not NAME=SPLIT with SPLIT one of {', '.join(SPLITS)}.")
        mapping[name] = ours
    return mapping


def parquet_splits(files: list[Path], folder: Path | None, names) -> tuple[dict[str, list[Path]], list[Path]]:
    """Group parquet files by the split that their name, or a folder between `folder` and them, names
    (train-00000-of-00002.parquet, default/test/0000.parquet, esc50_valid.parquet), among `names`;
    files that name none come back apart. Where no file names one, all are one split, train (as
    `datasets` has it)."""
    by_lower = {name.lower(): name for name in names}
    by_split, unnamed = {}, []
    for file in files:
        relative = file.relative_to(folder) if folder else Path(file.name)
        words = [word for part in (relative.stem, *reversed(relative.parent.parts))  # the file's name first
                 for word in re.split(r"[^0-9a-z]+", part.lower())]
        split = next((by_lower[word] for word in words if word in by_lower), None)
        if split is None:
            unnamed.append(file)
        else:
            by_split.setdefault(split, []).append(file)
    return (by_split, unnamed) if by_split else ({"train": files}, [])


def open_hf_dataset(hf, path: str, names) -> tuple[dict, Path | None]:
    """{split name: (dataset, number of examples)} and the folder that relative audio paths start
    from (None for a Hub id). `path`: a save_to_disk folder, a folder of parquet files, a parquet file
    or a quoted glob of them, or a Hub id; parquet splits as `parquet_splits` finds them."""
    local = Path(path)
    if local.is_dir() and any((local / name).is_file() for name in ("dataset_dict.json", "state.json")):
        loaded = hf.load_from_disk(str(local))
        if isinstance(loaded, hf.Dataset):  # one split saved alone
            loaded = {str(loaded.split or "train"): loaded}
        return {name: (dataset, len(dataset)) for name, dataset in loaded.items()}, local
    files = sorted(local.rglob("*.parquet")) if local.is_dir() else sorted(map(Path, glob.glob(path)))
    if local.is_dir() and not files:
        raise DataError(f"--path {path}: this folder holds neither a saved dataset (dataset_dict.json or "
                        "state.json, from save_to_disk) nor parquet files.")
    if files:
        others = [str(file) for file in files if file.suffix != ".parquet"]
        if others:
            raise DataError(f"--path {path}: not parquet files: {', '.join(others[:5])}. Give a save_to_disk "
                            "folder, parquet files, or a Hub id.")
        by_split, unnamed = parquet_splits(files, local if local.is_dir() else None, names)
        if unnamed:
            print(f"note: leaving out {len(unnamed)} parquet file(s) whose names name no split of --split-map: "
                  f"{', '.join(str(f) for f in unnamed[:5])}{' ...' if len(unnamed) > 5 else ''}", file=sys.stderr)
        import pyarrow.parquet as pq  # installed with datasets

        # Streamed: read where they are, not through a converted copy in the datasets cache.
        loaded = hf.load_dataset("parquet", streaming=True,
                                 data_files={split: [str(f) for f in group] for split, group in by_split.items()})
        opened = {split: (loaded[split], sum(pq.ParquetFile(f).metadata.num_rows for f in group))
                  for split, group in by_split.items()}
        return opened, local if local.is_dir() else files[0].parent
    try:
        loaded = hf.load_dataset(path)
    except Exception as error:  # offline, unknown id, gated: the Hub's own message says which
        raise DataError(f"--path {path}: no such local folder or file, and the Hugging Face Hub did not give it "
                        f"either ({type(error).__name__}: {error}). Offline? Where the Hub can be reached, save "
                        f"a copy with datasets.load_dataset('{path}').save_to_disk(DIR), then pass --path DIR."
                        ) from None
    return {name: (dataset, len(dataset)) for name, dataset in loaded.items()}, None


def hf_audio_kind(hf, feature, where: str):
    """How a column holds its audio: "file" (an Audio feature, or {bytes, path} records), or the
    sample dtype of {array, sampling_rate} records (from the feature: the values come as lists)."""
    keys = set(feature) if isinstance(feature, dict) else set()
    if isinstance(feature, hf.Audio) or {"bytes", "path"} <= keys:
        return "file"
    if {"array", "sampling_rate"} <= keys:
        value = feature["array"]
        while hasattr(value, "feature"):  # List(Value("int16")), or List(List(...)) for [channels, samples]
            value = value.feature
        return np.dtype(value.dtype)
    raise DataError(f"{where} is {feature}, not audio: an Audio feature, or records of bytes and path, or of "
                    "array and sampling_rate. Name the audio column with --audio-column.")


def write_hf_clip(audio: dict, kind, stem: Path, folder: Path | None, where: str) -> tuple[str, bool]:
    """One example's audio as a file: (its absolute path, whether it was written here).

    Stored bytes are written unchanged as `stem` plus their format's suffix (whatever libsndfile
    cannot read is written too, and finish_prepare's check names it). A local dataset that lists a
    file without bytes keeps it where it is; a Hub dataset's file (in its cache, which may be cleared)
    is copied. Arrays are written as WAV in their own sample type, so the samples stay exact."""
    if kind != "file":
        if not audio.get("sampling_rate"):
            raise DataError(f"{where}: no sampling_rate beside the array.")
        samples = np.asarray(audio["array"], dtype=kind)
        samples = samples.T if samples.ndim == 2 else samples  # datasets' arrays are [channels, samples]
        subtype = {"int16": "PCM_16", "int32": "PCM_32", "float32": "FLOAT"}.get(samples.dtype.name)
        if subtype is None:  # any other type as 64-bit float, which holds the narrower ones exactly
            samples, subtype = samples.astype(np.float64), "DOUBLE"
        target = stem.with_suffix(".wav")
        outdir.write_owned(target, wav_bytes(samples, int(audio["sampling_rate"]), subtype), SCRIPT)
        return absolute(target), True
    data, name = audio.get("bytes"), audio.get("path")
    if data is None and name and folder is not None:
        return absolute(Path(name) if os.path.isabs(name) else folder / name), False
    if data is None and name and os.path.isfile(name):
        data = Path(name).read_bytes()
    if data is None:
        raise DataError(f"{where}: the audio has neither bytes nor a local file (path {name!r}).")
    try:
        form = sf.info(io.BytesIO(data)).format
        suffix = HF_SUFFIXES.get(form, f".{form.lower()}")
    except Exception:  # not audio libsndfile knows
        suffix = Path(name or "").suffix or ".bin"
    target = stem.with_suffix(suffix)
    outdir.write_owned(target, data, SCRIPT)
    return absolute(target), True


def hf_label(value, names, where: str) -> str:
    """A label as text: a ClassLabel's name (`names` is its int2str; -1 means no label), else the value. A
    list (a multi-label column: a List of ClassLabel, of text or of integers) gives its labels joined by
    LABEL_SEPARATOR, in the list's order."""
    if isinstance(value, (list, tuple)):
        labels = [hf_label(item, names, where) for item in value]
        if not labels:
            raise DataError(f"{where}: no label (an empty list). Leave an unlabelled split out with --split-map.")
        repeated = next((label for label in labels if labels.count(label) > 1), None)
        if repeated:
            raise DataError(f"{where}: label '{repeated}' is given twice in {value!r}.")
        return LABEL_SEPARATOR.join(labels)
    if names is not None:
        value = names(value) if value is not None and value >= 0 else None
    label = "" if value is None else str(value).strip()
    if not label:
        raise DataError(f"{where}: no label. Leave an unlabelled split out with --split-map, or name the label "
                        "column with --label-column.")
    if LABEL_SEPARATOR in label:  # the manifest would read it as several labels
        raise DataError(f"{where}: label '{label}' holds '{LABEL_SEPARATOR}', which joins a clip's labels in the "
                        "manifest; rename the class, or give a clip's labels as a list (a List column).")
    return label


def prepare_hf(path: str, out_dir: Path, audio_column: str = "audio", label_column: str = "label",
               split_map: str = HF_SPLIT_MAP, fold_column: str | None = None, skip_bad: bool = False) -> dict:
    """A Hugging Face dataset (see `open_hf_dataset` for what `path` may be): its audio written under
    OUT/audio/<split>/NNNNNN.<format> by `write_hf_clip`, its labels by `hf_label`.

    `split_map` renames the dataset's splits to train, valid and test; a split it does not name is left
    out, with a note. With `fold_column`, that integer column becomes the manifest's fold (`--fold k`).
    A label column that holds a list of labels a clip makes a multi-label manifest (labels joined by ';').
    """
    hf = import_datasets()
    mapping = parse_split_map(split_map)
    splits, folder = open_hf_dataset(hf, path, mapping)
    left_out = [name for name in splits if name not in mapping]
    if left_out:
        print(f"note: leaving out split(s) {', '.join(left_out)}: not in --split-map {split_map} (add e.g. "
              f"{left_out[0]}=train to keep it)", file=sys.stderr)
    # train first in the manifest, then valid and test, whatever order the dataset keeps them in
    kept = {name: splits[name] for name in sorted((n for n in splits if n in mapping),
                                                  key=lambda n: SPLITS.index(mapping[n]))}
    if not kept:
        raise DataError(f"--path {path}: none of its splits ({', '.join(splits) or 'none'}) is in --split-map "
                        f"{split_map}; map them, e.g. --split-map {next(iter(splits), 'train')}=train.")
    # Every split is checked before anything is written, so a wrong column name costs nothing.
    readers = {}
    for name, (dataset, count) in kept.items():
        features, where = dataset.features or {}, f"--path {path}, split {name}"
        for flag, column in (("--audio-column", audio_column), ("--label-column", label_column),
                             ("--fold-column", fold_column)):
            if column is not None and column not in features:
                raise DataError(f"{where}: no column '{column}' ({flag}); its columns are "
                                f"{', '.join(features) or 'unknown'}.")
        kind = hf_audio_kind(hf, features[audio_column], f"{where}: column '{audio_column}'")
        if isinstance(features[audio_column], hf.Audio):
            dataset = dataset.cast_column(audio_column, hf.Audio(decode=False))  # the stored bytes, undecoded
        # A List (or Sequence) column holds several labels a clip; its items are ClassLabel, text or integers.
        label_item = getattr(features[label_column], "feature", features[label_column])
        readers[name] = (dataset, count, kind, getattr(label_item, "int2str", None))
    # An earlier manifest must not outlive the audio files this run rewrites: until the new one is
    # written (last, as a whole), OUT has none. Only prepare.py's own are removed; a user's stops us here.
    check_out(out_dir)
    for old in PREPARED:
        outdir.remove_owned(out_dir / old)
    rows, written, numbers = [], 0, Counter()
    for name, (dataset, count, kind, label_names) in readers.items():
        split = mapping[name]
        for i, example in enumerate(tqdm(dataset, total=count, desc=f"hf: {name} -> {split}", unit="clip",
                                         disable=None)):
            where = f"{path}, split {name}, example {i}"
            stem = out_dir / "audio" / split / f"{numbers[split]:06d}"
            numbers[split] += 1
            clip, new = write_hf_clip(example[audio_column], kind, stem, folder, where)
            written += new
            row = {"path": clip, "label": hf_label(example[label_column], label_names, where), "split": split,
                   "where": where}
            if fold_column is not None:
                try:
                    row["fold"] = int(str(example[fold_column]).strip())
                except ValueError:
                    raise DataError(f"{where}: fold {example[fold_column]!r} (column '{fold_column}') is not an "
                                    "integer.") from None
            rows.append(row)
    print(f"hf: {written} clip(s) written under {out_dir / 'audio'}, {len(rows) - written} used where they are")
    notes = {"source": path, "splits": {name: mapping[name] for name in kept}, "left_out_splits": left_out,
             "columns": {"audio": audio_column, "label": label_column, "fold": fold_column},
             "clips_written": written, "clips_used_in_place": len(rows) - written,
             "audio": "the stored bytes, unchanged (never decoded or resampled by datasets)"}
    return finish_prepare("hf", out_dir, rows, {}, notes, skip_bad, ("fold",) if fold_column is not None else ())


# --- Your own data: a folder of class subfolders, or a list of files with labels --------------
# As torchvision's ImageFolder and datasets' audiofolder: DIR/<class>/**/<clip>, the class being the
# folder right under DIR (or under DIR/train/ and DIR/test/, where the user split them already). Files
# are taken by suffix: those libsndfile reads, and also the containers it cannot (.m4a, ...), so that
# the audio check names them instead of their being left out unseen.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
                  ".sph", ".nist", ".caf", ".w64", ".rf64")
SPLIT_FOLDERS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
LIST_COLUMNS = "path,label[,speaker][,group][,split]"


def visible_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def audio_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(audio files, other files) anywhere under `folder`, sorted. Hidden files and folders (.DS_Store,
    the ._x.wav that macOS copies leave) are neither."""
    audio, other = [], []
    for parent, subfolders, files in os.walk(folder, followlinks=True):  # symlinked folders too
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(parent) / name
                (audio if path.suffix.lower() in AUDIO_SUFFIXES + UNSUPPORTED_SUFFIXES else other).append(path)
    return audio, other


def folder_rows(root: Path) -> tuple[list[dict], str]:
    """Rows of DIR/<class>/**/<clip> (all train: test and valid are carved later), or of
    DIR/{train,test}/<class>/... (and DIR/valid/ or DIR/validation/), whose splits are kept; and the layout."""
    tops = visible_subfolders(root)
    split_tops = [p for p in tops if p.name.lower() in SPLIT_FOLDERS]
    if split_tops:
        others = [p.name for p in tops if p not in split_tops]
        if others:
            raise DataError(f"--root {root} holds split folders ({', '.join(p.name for p in split_tops)}) beside "
                            f"other folders ({', '.join(others[:5])}): give either DIR/<class>/... or "
                            "DIR/train/<class>/... and DIR/test/<class>/..., not both.")
        splits = Counter(SPLIT_FOLDERS[p.name.lower()] for p in split_tops)
        if splits["valid"] > 1:
            raise DataError(f"--root {root} has both valid/ and validation/: keep one.")
        if not splits["train"]:
            raise DataError(f"--root {root} has {', '.join(p.name + '/' for p in split_tops)} but no train/.")
        parts = [(p, SPLIT_FOLDERS[p.name.lower()]) for p in split_tops]
        layout = f"split folders {', '.join(p.name + '/' for p in split_tops)}, each of class subfolders"
    else:
        parts, layout = [(root, "train")], "class subfolders"
    rows, loose, other, empty = [], [], [], []
    for top, split in parts:
        loose += [p for p in top.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
        for class_dir in visible_subfolders(top):
            audio, not_audio = audio_files(class_dir)
            other += not_audio
            if not audio:
                empty.append(str(class_dir))
            if LABEL_SEPARATOR in class_dir.name:  # the manifest would read the folder's name as several labels
                raise DataError(f"{class_dir}: a class folder's name holds '{LABEL_SEPARATOR}', which joins a "
                                "clip's labels in a manifest; rename the folder (multi-label data: write the "
                                "manifest directly, see docs/data.md#multi-label-data).")
            rows += [{"path": absolute(path), "label": class_dir.name, "split": split, "where": str(path)}
                     for path in audio]
    if not rows:
        raise DataError(f"--root {root}: no audio files in class subfolders (expected DIR/<class>/*.wav, or "
                        f"DIR/train/<class>/ and DIR/test/<class>/; audio is {' '.join(AUDIO_SUFFIXES)}).")
    if loose:
        print(f"note: left out {len(loose)} audio file(s) that are in no class folder, e.g. {loose[0]}",
              file=sys.stderr)
    if empty:
        print(f"note: left out {len(empty)} folder(s) without audio: {', '.join(empty[:5])}", file=sys.stderr)
    if other:
        print(f"note: left out {len(other)} file(s) that are not audio by their suffix, e.g. {other[0]}",
              file=sys.stderr)
    return rows, layout


def list_rows(list_file: Path) -> list[dict]:
    """Rows of a CSV list (header path,label[,speaker][,group][,split]) or a JSON list of such objects;
    a relative path starts from the list's folder. Every bad row is named by file and line (or index)."""
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{list_file}: cannot be read as UTF-8 text ({error}).") from None
    if list_file.suffix.lower() == ".json":
        try:
            content = json.loads(text)
        except ValueError as error:
            raise DataError(f"{list_file}: not valid JSON ({error}).") from None
        if not isinstance(content, list) or not all(isinstance(item, dict) for item in content):
            raise DataError(f"{list_file}: expected a JSON list of objects with {LIST_COLUMNS}.")
        records = [(f"{list_file} [{i}]", item) for i, item in enumerate(content)]
        columns = {str(key).strip().lower() for item in content for key in item}
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        records = []
        try:
            for row in reader:
                if None in row:  # more fields than the header names
                    raise DataError(f"{list_file} line {reader.line_num}: more fields than the header names; a "
                                    "comma inside a path or label needs the field in double quotes.")
                records.append((f"{list_file} line {reader.line_num}", row))
        except csv.Error as error:
            raise DataError(f"{list_file} line {reader.line_num}: not valid CSV ({error}).") from None
        columns = {(name or "").strip().lower() for name in reader.fieldnames or []}
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        found = ", ".join(sorted(columns)) or "none"
        raise DataError(f"{list_file}: no {' or '.join(missing)} column (found: {found}); a list names {LIST_COLUMNS}.")
    rows, first = [], {}  # first: path -> where it was first listed
    for where, record in records:
        values = {str(k).strip().lower(): "" if v is None else str(v).strip() for k, v in record.items()}
        path, label = values.get("path", ""), values.get("label", "")
        if not path or not label:
            raise DataError(f"{where}: empty path or label.")
        if LABEL_SEPARATOR in label:  # folder carves by class: one label a file
            raise DataError(f"{where}: label '{label}' holds '{LABEL_SEPARATOR}': a list gives one label a file. "
                            "For multi-label data write the manifest directly (docs/data.md#multi-label-data).")
        split = values.get("split", "") if "split" in columns else "train"
        if split not in SPLITS:
            raise DataError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)} (a split column, where "
                            "there is one, names the split of every row).")
        full = absolute(Path(path) if os.path.isabs(path) else list_file.parent / path)
        if full in first:
            raise DataError(f"{where}: {path} is listed again (first at {first[full]}).")
        first[full] = where
        rows.append({"path": full, "label": label, "split": split, "speaker": values.get("speaker") or None,
                     "group": values.get("group") or None, "where": where})
    if not rows:
        raise DataError(f"{list_file}: no rows.")
    return rows


def carve_own_split(rows: list[dict], test_fraction: float, valid_fraction: float, by: str | None,
                    seed: int, source: Path) -> dict:
    """Carve test (unless the rows give test) from train, then valid (unless given) from what is left,
    in place, with data.carve_valid: per class, round(fraction x clips) (at least 1, one kept for train),
    or whole groups with `by` (speaker or group). Returns what the summary's notes record."""
    given = sorted({r["split"] for r in rows}, key=SPLITS.index)
    carved = [split for split in ("test", "valid") if split not in given]
    train_labels = Counter(r["label"] for r in rows if r["split"] == "train")
    for split in given:  # a class that train lacks cannot be learnt (load_splits would stop later)
        unknown = Counter(r["label"] for r in rows if r["split"] == split and r["label"] not in train_labels)
        if unknown:
            label, count = unknown.most_common(1)[0]
            raise DataError(f"{source}: class '{label}' has {count} {split} clip(s) but no train clip (e.g. "
                            f"{next(r['where'] for r in rows if r['label'] == label)}): give it train clips or "
                            "leave it out.")
    minimum = 1 + len(carved)  # one clip for train and one for each split carved
    small = sorted((n, label) for label, n in train_labels.items() if n < minimum)
    if carved and small:
        listing = ", ".join(f"'{label}' ({n} clip{'s' * (n != 1)})" for n, label in small[:10])
        listing += " ..." if len(small) > 10 else ""
        raise DataError(f"{source}: class(es) too small to split: {listing}; each needs at least {minimum} "
                        f"train clips (one for train, one each for {' and '.join(carved)}). Add clips, or leave "
                        "the class out.")
    if by is not None:
        missing = next((r for r in rows if not r.get(by)), None)
        if missing is not None:
            hint = ("give --speaker-pattern, or a list with a speaker column" if by == "speaker"
                    else "a list with a group column")
            raise DataError(f"--group-by {by}: {missing['where']} has no {by} ({hint}, filled on every row).")
        for row in rows:
            row["group"] = row[by]  # the manifest's group column: load_splits keeps these together too
    fractions = {"test": test_fraction, "valid": valid_fraction}
    for split in carved:
        train = [Clip(r["path"], r["label"], "train", group=r["group"] if by else None)
                 for r in rows if r["split"] == "train"]
        _, taken = carve_valid(train, fractions[split], "group", seed)
        if not taken:
            raise DataError(f"{source}: --group-by {by}: no whole {by} can go to {split} without leaving a class "
                            f"with no train clip ({len({c.group for c in train})} {by}s in train). Add clips of "
                            f"more {by}s, or carve clip by clip (without --group-by).")
        taken_paths = {clip.path for clip in taken}
        for row in rows:
            if row["split"] == "train" and row["path"] in taken_paths:
                row["split"] = split
        absent = sorted(set(train_labels) - {clip.label for clip in taken})
        if absent:  # whole groups that hold no clip of a class, or a share that rounds to a class's every clip
            print(f"warning: {len(absent)} class(es) get no {split} clip: {', '.join(absent[:10])}"
                  f"{' ...' if len(absent) > 10 else ''}", file=sys.stderr)
    share = "of each class's" if by is None else "of the"
    rule = [f"{split}: given" for split in given if split != "train"]
    if "test" in carved:
        rule.append(f"test: {test_fraction:g} {share} clips")
    if "valid" in carved:
        rule.append(f"valid: {valid_fraction:g} {share} train clips left")
    if carved and by:
        rule.append(f"whole {by}s (--group-by {by}): as near that share as whole {by}s allow, never a class's "
                    f"last train clip (data.carve_valid); seed {seed}")
    elif carved:
        rule.append(f"clip by clip: round(share x clips) a class, at least 1, one left in train; seed {seed}")
    rule = "; ".join(rule)
    return {"given_splits": given if len(given) > 1 else [], "carved_splits": carved,
            "test_fraction": test_fraction if "test" in carved else None,
            "valid_fraction": valid_fraction if "valid" in carved else None,
            "seed": seed, "group_by": by, "rule": rule}


def prepare_folder(root: Path, out_dir: Path, name: str, test_fraction: float = 0.2, valid_fraction: float = 0.1,
                   group_by: str | None = None, speaker_pattern: str | None = None, seed: int = 0,
                   skip_bad: bool = False) -> dict:
    """The user's own data: a folder of class subfolders (see `folder_rows`) or a CSV or JSON list of
    files with labels (`list_rows`); the splits it gives are kept, the others carved (`carve_own_split`).

    speaker_pattern: a regular expression searched in each file's name, whose first group is the
    speaker (FSDD's 3_theo_12.wav: '^\\d+_([a-z]+)_'); for a list, only where it has no speaker column."""
    if root.is_dir():
        rows, layout = folder_rows(root)
    else:
        rows, layout = list_rows(root), f"a {root.suffix.lower().lstrip('.').upper()} list"
    if speaker_pattern is not None:
        try:
            pattern = re.compile(speaker_pattern)
        except re.error as error:
            raise DataError(f"--speaker-pattern '{speaker_pattern}': not a regular expression ({error}).") from None
        if pattern.groups < 1:
            raise DataError(f"--speaker-pattern '{speaker_pattern}': no group in parentheses to take the speaker "
                            "from, e.g. '^\\d+_([a-z]+)_' for FSDD's 3_theo_12.wav.")
        if any(r.get("speaker") for r in rows):
            raise DataError(f"--speaker-pattern: {root} has a speaker column already; give one or the other.")
        for row in rows:
            match = pattern.search(Path(row["path"]).name)
            if not match or not match.group(1):
                raise DataError(f"{row['where']}: --speaker-pattern '{speaker_pattern}' finds no speaker in the "
                                f"file name {Path(row['path']).name}.")
            row["speaker"] = match.group(1)
    notes = {"source": str(root), "layout": layout, "speaker_pattern": speaker_pattern,
             **carve_own_split(rows, test_fraction, valid_fraction, group_by, seed, root)}
    if group_by is None and notes["carved_splits"] and any(r.get("speaker") for r in rows):
        print("note: speakers are known, but the split is carved clip by clip, so a speaker may be on two "
              "sides; --group-by speaker keeps each on one", file=sys.stderr)
    print(f"{name}: {len(rows)} clips of {len({r['label'] for r in rows})} classes ({layout})\n"
          f"  split     {notes['rule']}")
    columns = (("speaker",) if any(r.get("speaker") for r in rows) else ()) + (("group",) if group_by else ())
    return finish_prepare(name, out_dir, rows, {}, notes, skip_bad, columns)


def fraction(text: str) -> float:
    """An argparse type: a share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (a share of the clips)")
    return value


def default_dataset_name(args) -> str:
    """The name `--dataset` looks the prepared dataset up by: the PREPARE_COMMANDS entry whose
    command these arguments run (mswc and fsdd have one per language or task)."""
    given = {"mswc": f"mswc --lang {args.lang}", "fsdd": f"fsdd --task {args.task}"}.get(args.name, args.name)
    for name, command in PREPARE_COMMANDS.items():
        if command == given or command.startswith(given + " "):  # mswc-i adds --keywords paper
            return name
    return {"mswc": f"mswc-{args.lang}", "fsdd": f"fsdd-{args.task}"}.get(args.name, args.name)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    prepare = argparse.ArgumentParser(
        description="Prepare a dataset into OUT/manifest.csv and OUT/summary.json (audio stays where it is; "
                    "hf writes it under OUT/audio/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    names = {command.split()[0] for command in PREPARE_COMMANDS.values()} | {"hf", "folder"}
    prepare.add_argument("name", choices=sorted(names),
                         help="which dataset (see docs/datasets.md for where to get each); hf: any Hugging "
                              "Face dataset; folder: your own audio (docs/data.md)")
    prepare.add_argument("--root", help="the raw dataset as distributed (not needed for demo); folder: DIR of "
                         f"class subfolders DIR/<class>/**/<audio> ({' '.join(AUDIO_SUFFIXES)}), or "
                         "DIR/train/<class>/... and DIR/test/<class>/... (also valid/ or validation/), kept as "
                         f"given; or a list LIST.csv ({LIST_COLUMNS}; paths relative to its folder) or LIST.json "
                         "(a list of such objects)")
    prepare.add_argument("--out", help="output folder (default: $CONFIT_DATA or data/, then the name that "
                         "--dataset looks up: " + ", ".join(PREPARE_COMMANDS) + "; folder: the name of DIR, or "
                         "of the list without its suffix)")
    prepare.add_argument("--skip-bad", action="store_true",
                         help="leave out missing or unreadable audio files (listed in summary.json) "
                              "instead of stopping")
    prepare.add_argument("--splits", help="gtzan: folder with the three *_filtered.txt lists (default: "
                         "download them); emodb: a speaker split JSON (default: the paper's speakers)")
    prepare.add_argument("--rule", choices=sorted(TIMIT_RULES), default="by-type",
                         help="timit: which utterances of each speaker go to train/valid/test: "
                         + "; ".join(f"{k}: {v}" for k, v in TIMIT_RULES.items()))
    prepare.add_argument("--lang", default="es", help="mswc: language code, es (MSWC-S) or id (MSWC-I, "
                         "Indonesian: the paper's 'Indian')")
    prepare.add_argument("--keywords", help="mswc: keep only these keywords: 'paper' (known for id only), "
                         "a comma-separated list, or a file with one per line")
    prepare.add_argument("--min-count", type=int, default=1,
                         help="mswc: keep keywords with at least this many train clips")
    prepare.add_argument("--task", choices=["digit", "speaker"], default="digit",
                         help="fsdd: classify the spoken digit (10-way) or the speaker (6-way)")
    prepare.add_argument("--seed", type=int, default=0, help="demo: random seed of the synthesis; folder: seed "
                         "of the carving of test and valid")
    prepare.add_argument("--test-fraction", type=fraction, default=0.2, help="folder: share of each class's clips "
                         "carved into test, where DIR/test/ or a split column does not give test")
    prepare.add_argument("--valid-fraction", type=fraction, default=0.1, help="folder: share of each class's "
                         "train clips left after test that is carved into valid, where valid is not given")
    prepare.add_argument("--group-by", choices=["speaker", "group"], help="folder: carve whole speakers (or "
                         "groups), none on two sides: the list's speaker or group column, or the speaker that "
                         "--speaker-pattern finds; None: clip by clip")
    prepare.add_argument("--speaker-pattern", metavar="REGEX", help="folder: the speaker of each clip, as the "
                         "first (group) of REGEX searched in its file name, e.g. '^\\d+_([a-z]+)_' for FSDD's "
                         "3_theo_12.wav; written to the manifest's speaker column")
    prepare.add_argument("--path", help="hf: a save_to_disk folder, parquet files (a folder, a file or a quoted "
                         "glob), or a Hub id")
    prepare.add_argument("--audio-column", default="audio", help="hf: the column holding the audio (an Audio "
                         "feature, or records of bytes and path, or of array and sampling_rate)")
    prepare.add_argument("--label-column", default="label",
                         help="hf: the column holding the class (ClassLabel names, text, or integers), or a "
                              "clip's classes as a list (a List of those: multi-label, joined by ';')")
    prepare.add_argument("--split-map", default=HF_SPLIT_MAP, help="hf: the dataset's split names, each as "
                         "NAME=train|valid|test; splits not named are left out")
    prepare.add_argument("--fold-column", help="hf: an integer column to write as the manifest's fold (then "
                         "run with --fold k)")
    args = prepare.parse_args(argv)

    hf_only = ("path", "audio_column", "label_column", "split_map", "fold_column")
    given = [f"--{dest.replace('_', '-')}" for dest in hf_only if getattr(args, dest) != prepare.get_default(dest)]
    if args.name != "hf" and given:
        prepare.error(f"{', '.join(given)}: only for hf (a Hugging Face dataset), not for {args.name}")
    if args.name == "hf" and not (args.path and args.out):
        prepare.error("hf needs --path (a save_to_disk folder, parquet files or a Hub id) and --out (no name "
                      "that --dataset knows fits an arbitrary dataset)")
    if args.name == "hf" and args.root:
        prepare.error("hf reads --path, not --root")
    folder_only = ("test_fraction", "valid_fraction", "group_by", "speaker_pattern")
    given = [f"--{dest.replace('_', '-')}" for dest in folder_only
             if getattr(args, dest) != prepare.get_default(dest)]
    if args.name != "folder" and given:
        prepare.error(f"{', '.join(given)}: only for folder (your own audio), not for {args.name}")

    if args.name not in ("demo", "hf") and not args.root:
        prepare.error(f"{args.name} needs --root, the folder of the dataset as distributed")
    root = Path(args.root) if args.root else None
    if args.name == "folder" and root is not None and root.is_file() and root.suffix.lower() in (".csv", ".json"):
        default_name = root.stem  # a list of files with labels
    elif root is not None and not root.is_dir():
        prepare.error(f"--root {root} is not a folder" + (" (nor a .csv or .json list)" if args.name == "folder"
                                                          else ""))
    else:
        default_name = root.resolve().name if args.name == "folder" else default_dataset_name(args)
    if args.name == "folder" and not args.out and default_name in PREPARE_COMMANDS:
        prepare.error(f"--root {root}: its name '{default_name}' is that of a dataset prepare.py prepares; give "
                      "--out, so that its manifest is not taken for that one")
    data_root = Path(os.environ.get("CONFIT_DATA") or "data")
    out_dir = Path(args.out or data_root / default_name)
    splits = Path(args.splits) if args.splits else None
    try:
        check_out(out_dir)  # the user's own manifest.csv or summary.json: refused before any work
        if args.name == "demo":
            prepare_demo(out_dir, seed=args.seed)
        elif args.name == "gtzan":
            prepare_gtzan(root, out_dir, splits, args.skip_bad)
        elif args.name == "esc50":
            prepare_esc50(root, out_dir, args.skip_bad)
        elif args.name == "timit":
            prepare_timit(root, out_dir, args.rule, args.skip_bad)
        elif args.name == "emodb":
            prepare_emodb(root, out_dir, splits, args.skip_bad)
        elif args.name == "mswc":
            prepare_mswc(root, out_dir, args.lang, args.keywords, args.min_count, args.skip_bad)
        elif args.name == "fsdd":
            prepare_fsdd(root, out_dir, args.task, args.skip_bad)
        elif args.name == "fsd50k":
            prepare_fsd50k(root, out_dir, args.skip_bad)
        elif args.name == "hf":
            prepare_hf(args.path, out_dir, args.audio_column, args.label_column, args.split_map, args.fold_column,
                       args.skip_bad)
        elif args.name == "folder":
            prepare_folder(root, out_dir, out_dir.name, args.test_fraction, args.valid_fraction, args.group_by,
                           args.speaker_pattern, args.seed, args.skip_bad)
            # the name where OUT is where --dataset NAME looks (data/NAME), else OUT itself
            dataset = (out_dir.name if out_dir.parent.resolve() == data_root.resolve()
                       else shlex.quote(str(out_dir)))
            print(f"use it with --dataset {dataset}, e.g. python pairtune.py --dataset {dataset}")
    except (DataError, outdir.Refused) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
