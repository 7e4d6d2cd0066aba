"""Datasets for AudioConFit at run time: manifests, audio loading, crops and chunks, samplers.

Every script reads its data through a *manifest*: a CSV file with a header and one row per clip.

    path,label,split[,fold][,speaker][,group]      (other columns are ignored)
    audio/dog_001.wav,dog,train
    audio/cat_017.wav,cat,test
    audio/street_3.wav,dog;car;speech,train          (multi-label: labels joined by ';')

`path` is relative to the manifest's folder (absolute paths work too); `split` is one of train, valid,
test. Fold datasets (ESC-50) also fill `fold`; `--fold k` then makes fold k the test set and the other
folds train. A label column holding several labels joined by ';' (LABEL_SEPARATOR) in any row makes the
dataset multi-label (`is_multilabel`): every stage then trains and scores per label (sigmoid, BCE, mAP)
instead of picking one class. Whenever a manifest has no valid rows, valid is carved from train (see `carve_valid`;
whole speakers where test's speakers are unseen in train, see `valid_grouping`).

Datasets are prepared into manifests by prepare.py (`python prepare.py esc50 --root ESC-50-master`,
docs/datasets.md lists every dataset; `python prepare.py folder --root DIR` for a folder of class
subfolders or a list of files with labels); point any script at one with `--dataset esc50` (looked up
as data/esc50/manifest.csv, root overridable with --data-root or $CONFIT_DATA) or
`--dataset path/to/manifest.csv`.
"""
import csv
import hashlib
import io
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm


SPLITS = ("train", "valid", "test")
# Every dataset `--dataset NAME` knows, and the prepare.py arguments that write data/NAME.
PREPARE_COMMANDS = {
    "gtzan": "gtzan", "esc50": "esc50", "timit": "timit", "emodb": "emodb",
    "mswc-s": "mswc --lang es", "mswc-i": "mswc --lang id --keywords paper",
    "fsdd-digit": "fsdd --task digit", "fsdd-speaker": "fsdd --task speaker", "demo": "demo", "fsd50k": "fsd50k",
}
UNSUPPORTED_SUFFIXES = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".amr")  # containers libsndfile lacks
REQUIRED_COLUMNS = ("path", "label", "split")
# Several labels of one clip (multi-label data: FSD50K, audio tagging) share the label column, joined by
# this; a label never contains it. A semicolon, not a comma: a comma inside a CSV field needs quotes.
LABEL_SEPARATOR = ";"


class DataError(ValueError):
    """Bad input data: the message names the file (and manifest line) and says what to do."""


@dataclass(frozen=True)
class Clip:
    path: str  # absolute path of the audio file
    label: str
    split: str
    fold: int | None = None
    speaker: str | None = None
    where: str = ""  # "manifest.csv line 12", for error messages
    group: str | None = None  # clips that must stay together when valid is carved (same recording)

    @property
    def labels(self) -> tuple[str, ...]:
        """The clip's labels: one, or several where the label column joins them with LABEL_SEPARATOR."""
        return tuple(self.label.split(LABEL_SEPARATOR))


# ----------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------

def resolve_dataset(dataset: str, data_root: str | None = None) -> Path:
    """`--dataset` is a manifest CSV path, a folder holding manifest.csv, or a name under the data root."""
    candidate = Path(dataset)
    if candidate.suffix == ".csv" or candidate.is_file():
        if not candidate.is_file():
            raise DataError(f"manifest {candidate} does not exist.")
        return candidate
    if candidate.is_dir() and (candidate / "manifest.csv").is_file():
        return candidate / "manifest.csv"
    root = Path(data_root or os.environ.get("CONFIT_DATA") or "data")
    manifest = root / dataset / "manifest.csv"
    if not manifest.is_file():
        if dataset in PREPARE_COMMANDS:
            how = f"`python prepare.py {PREPARE_COMMANDS[dataset]} --root RAW --out {root / dataset}`, see " \
                  "docs/datasets.md"
        else:  # the user's own data: a folder of class subfolders (or a list of files) is one command away
            how = (f"from a folder of class subfolders DIR/<class>/*.wav, `python prepare.py folder --root DIR "
                   f"--out {root / dataset}`, see docs/data.md")
        raise DataError(f"dataset '{dataset}' not found: expected a manifest at {manifest}. Prepare it first "
                        f"({how}), pass --data-root, or give the path of a manifest CSV.")
    return manifest


def dataset_name(dataset: str) -> str:
    """A short display name: 'gtzan' for 'gtzan', 'data/gtzan/manifest.csv' or 'data/gtzan'."""
    path = Path(dataset)
    if path.suffix == ".csv":
        return path.parent.name if path.stem == "manifest" else path.stem
    return path.name


def read_manifest(manifest: str | Path) -> list[Clip]:
    """Parse and validate a manifest; every problem is reported with its file and line."""
    manifest = Path(manifest)
    base = manifest.parent
    raw = manifest.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as spreadsheet programs write, is allowed
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DataError(f"{manifest} line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); save the "
                        "manifest as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise DataError(f"{manifest} line {line}: a NUL byte; a manifest is a text file (is this a binary "
                        "file, or UTF-16 text? save it as UTF-8).")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)  # strict: a stray quote is an error
    rows = []  # (line, row): line_num, not a row count, as blank lines are skipped
    try:
        header = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = header
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as error:  # e.g. a quote opened and never closed: the error comes at the end
        after = rows[-1][0] if rows else 1
        raise DataError(f"{manifest} line {after + 1}: not valid CSV ({error}) in the row from this line on; "
                        "is a quote left open?") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{manifest}: missing required column(s) {', '.join(missing)} (header is "
            f"'{','.join(header)}'). The first line must name at least path,label,split.")
    clips, first_line = [], {}  # first_line: path -> the line that first listed it
    for line, row in rows:
        where = f"{manifest} line {line}"
        if None in row:  # more fields than the header names
            raise DataError(f"{where}: {len(header) + len(row[None])} fields, but the header names "
                            f"{len(header)}. A comma inside a path or label needs the field in double quotes.")
        path, label, split = ((row.get(c) or "").strip() for c in REQUIRED_COLUMNS)
        if not path or not label:
            raise DataError(f"{where}: empty path or label. Every row needs path,label,split.")
        if any(char == '"' or char < " " for char in path + label):
            raise DataError(f"{where}: a double quote or a line break inside the path or label "
                            f"({path!r}, {label!r}): a quoting mistake? Quote a whole field, as in \"a, b\".")
        if split not in SPLITS:
            raise DataError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}.")
        if LABEL_SEPARATOR in label:
            parts = [part.strip() for part in label.split(LABEL_SEPARATOR)]
            if not all(parts):
                raise DataError(f"{where}: an empty label in '{label}': several labels are joined by "
                                f"'{LABEL_SEPARATOR}' with a label on each side (e.g. dog;car).")
            repeated = sorted({part for part in parts if parts.count(part) > 1})
            if repeated:
                raise DataError(f"{where}: label '{repeated[0]}' is given twice in '{label}'.")
            label = LABEL_SEPARATOR.join(parts)
        fold_text = (row.get("fold") or "").strip()
        try:
            fold = int(fold_text) if fold_text else None
        except ValueError:
            raise DataError(f"{where}: fold '{fold_text}' is not an integer.") from None
        speaker = (row.get("speaker") or "").strip() or None
        group = (row.get("group") or "").strip() or None
        full_path = path if os.path.isabs(path) else str(base / path)
        # A clip listed twice would count twice, or sit in train and test at once.
        key = os.path.normpath(full_path)
        if key in first_line:
            raise DataError(f"{where}: {path} is listed again (first at {first_line[key]}). Each clip "
                            "appears once.")
        first_line[key] = f"line {line}"
        clips.append(Clip(full_path, label, split, fold, speaker, where, group))
    if not clips:
        raise DataError(f"{manifest}: no rows after the header.")
    return clips


def check_record_path(manifest) -> Path:
    """Where the record of a manifest's checked files lives: a cache folder of our own ($CONFIT_CACHE, else
    $XDG_CACHE_HOME/audioconfit, else ~/.cache/audioconfit), never beside the user's data; one JSON file a
    manifest, named by a hash of its absolute path. Deleting it only makes the next run check every file."""
    root = os.environ.get("CONFIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                   "audioconfit")
    key = hashlib.sha256(str(Path(manifest).resolve()).encode()).hexdigest()[:20]
    return Path(root, "checked-audio", f"{key}.json")


def read_check_record(record: Path) -> dict:
    """{path: [size, mtime_ns, problem, frames, sample_rate, silent]} from a record file; {} when it is
    missing or not a record of ours (plain JSON, checked entry by entry: nothing in it is executed)."""
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        entries = saved["files"] if saved.get("version") == 1 else {}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}
    shape = (int, int, (str, type(None)), int, int, bool)
    return {path: entry for path, entry in (entries.items() if isinstance(entries, dict) else ())
            if isinstance(entry, list) and len(entry) == 6
            and all(isinstance(value, kind) for value, kind in zip(entry, shape))}


def write_check_record(record: Path, entries: dict):
    """The record, replaced whole (a temporary file renamed over it: a reader never sees half of one, and two
    runs writing at once leave one whole record). A cache that cannot be written is only a slower next start."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_name(f"{record.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"version": 1, "files": entries}), encoding="utf-8")
        os.replace(partial, record)
    except OSError as error:
        print(f"note: could not keep the record of checked audio in {record} ({error}); every run will decode "
              "every file", file=sys.stderr)


def check_audio_files(clips: list[Clip], skip_bad: bool = False, record: Path | None = None) -> list[Clip]:
    """Fail early, naming the file and manifest line, for audio no stage could use (`check_audio`);
    with skip_bad such clips are left out, with a warning each and a count. Silent clips are kept
    and counted in one warning. Every file is decoded once here, for these checks only: nothing of
    it reaches a model (so test audio is still first read by the model after selection).

    `record` (check_record_path): the results of earlier checks by path, size and modification time. A
    file whose size and mtime are those recorded is not decoded again (FSD50K's 51k clips take about a
    minute to decode; a second run then starts in seconds); a changed, new or replaced file is."""
    known = read_check_record(record) if record is not None else {}
    entries, decoded = {}, 0
    # A file modified in the last 2 s may change again within its mtime's resolution without its size or
    # mtime changing (as git's index handles it): such a file is checked but not recorded.
    recent = time.time_ns() - 2_000_000_000
    good, bad, silent = [], [], []
    for clip in tqdm(clips, desc="checking audio", unit="file", disable=None, leave=False):
        try:
            stat = os.stat(clip.path)  # before decoding: a file changed after this is checked again next time
        except OSError:
            stat = None
        saved = known.get(clip.path) if stat else None
        if saved and saved[:2] == [stat.st_size, stat.st_mtime_ns]:
            check = AudioCheck(*saved[2:])
        else:
            check = check_audio(clip.path)
            decoded += 1
        if stat and stat.st_mtime_ns < recent:
            entries[clip.path] = [stat.st_size, stat.st_mtime_ns, check.problem, check.frames, check.sample_rate,
                                  check.silent]
        if check.problem is None:
            good.append(clip)
            if check.silent:
                silent.append(clip)
        elif skip_bad:
            warnings.warn(f"skipping {clip.path} ({clip.where}): {check.problem}", stacklevel=2)
            bad.append(clip)
        else:
            if record is not None and decoded:  # the files checked so far need not be decoded again after the fix
                write_check_record(record, {**known, **entries})
            raise DataError(f"{clip.where}: {clip.path}: {check.problem}. Fix or remove the row, "
                            "or run with --skip-bad to skip unusable files.")
    if record is not None and decoded:  # only what changed makes the record worth writing again
        write_check_record(record, {**known, **entries})
    if bad:
        print(f"--skip-bad: skipped {len(bad)} unusable file(s) of {len(clips)}", file=sys.stderr)
    if silent:
        print(f"warning: {len(silent)} of {len(clips)} clips are pure silence (every sample 0), e.g. "
              f"{silent[0].path} ({silent[0].where}); kept, but silent clips are often a data bug "
              "(a failed conversion or download)", file=sys.stderr)
    return good


@dataclass(frozen=True)
class AudioCheck:
    problem: str | None  # why no stage can use the file, or None
    frames: int = 0
    sample_rate: int = 0
    silent: bool = False  # every sample is 0: usable, but reported


def check_audio(path: str) -> AudioCheck:
    """Decode a whole file and say whether it can be used: it must exist and decode, hold at least
    one sample, only finite samples (NaN or inf would turn the loss into NaN), and, for WAV, as
    many bytes of audio as its header declares (libsndfile silently reads a cut file to its end)."""
    if not os.path.isfile(path):
        return AudioCheck("file not found")
    try:
        with sf.SoundFile(path) as audio_file:
            header_log, sample_rate = audio_file.extra_info, audio_file.samplerate
            samples = audio_file.read(dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile raises several types; all mean "cannot decode"
        what = ("a format libsndfile does not decode" if Path(path).suffix.lower() in UNSUPPORTED_SUFFIXES
                else "damaged, or in a format libsndfile does not decode")
        return AudioCheck(f"cannot be read as audio ({error}): {what}. libsndfile {sf.__libsndfile_version__} "
                          "reads WAV, AU, AIFF, FLAC, OGG/Vorbis/Opus, MP3 and uncompressed NIST SPHERE; convert "
                          "other files, e.g. `ffmpeg -i IN OUT.wav`")
    if samples.shape[0] == 0:
        return AudioCheck("file is empty (0 samples)")
    # libsndfile logs "data : <declared> (should be <present>)" for a WAV whose header disagrees with
    # the file; 0 and 0xFFFFFFFF are the "unknown length" that streaming writers leave there.
    declared = re.search(r"^data : (\d+) \(should be (\d+)\)", header_log, re.MULTILINE)
    if declared and int(declared[1]) > int(declared[2]) and int(declared[1]) not in (0, 0xFFFFFFFF):
        return AudioCheck(f"truncated: its header declares {declared[1]} bytes of audio, the file holds "
                          f"{declared[2]} (an interrupted copy or download?)")
    finite = np.isfinite(samples)
    if not finite.all():
        first = int(np.argwhere(~finite)[0][0])
        return AudioCheck(f"{int((~finite).sum())} NaN or infinite sample(s), the first at sample {first}")
    return AudioCheck(None, samples.shape[0], sample_rate, silent=not samples.any())


VALID_FRACTION = 0.1  # the share of train carved as valid where a manifest has no valid rows (--valid-fraction)


def carve_valid(train: list[Clip], fraction: float = VALID_FRACTION, by: str = "group",
                seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """Move a deterministic `fraction` of train into valid, keeping each group on one side.

    Clips are sorted by path and shuffled with a fixed seed (0 when loading), independent of the run's
    seed, so every method and every seed sees the same valid set. `by` names the Clip field that makes
    the groups: "group" (the manifest's optional group column) or "speaker"; clips sharing one move
    together, so valid never holds part of a group that train also holds, and a clip without one is a
    group of its own. prepare.py folder carves test the same way, with its --seed.

    - Every group within one class (ESC-50: the takes cut from one recording): class-stratified.
      Per class, groups are taken in shuffled order while they fit the target (round(fraction *
      clips), at least 1); if none fits, the smallest one goes. A class always keeps one group for
      train, so a class with a single group (or clip) gives nothing to valid.
    - Some group spanning classes (EmoDB: a speaker): whole groups across all classes, as the same
      rule over all of train (target round(fraction * clips), at least 1), except that a group is
      never taken if it would leave some class with no train clip (so train keeps a group). If none
      fits, the smallest group that may go goes (the first in shuffled order on ties).
    """
    def group_of(clip):
        return getattr(clip, by) or clip.path

    labels_of: dict[str, set[str]] = {}
    for clip in train:
        labels_of.setdefault(group_of(clip), set()).add(clip.label)
    # Multi-label clips have no one class to stratify by: whole groups (a clip alone where none is
    # named), each label keeping a train clip.
    if any(len(labels) > 1 for labels in labels_of.values()) or is_multilabel(train):
        return carve_whole_groups(train, fraction, group_of, seed)
    by_label: dict[str, list[Clip]] = {}
    for clip in train:
        by_label.setdefault(clip.label, []).append(clip)
    keep, valid = [], []
    rng = random.Random(seed)
    for label in sorted(by_label):
        groups: dict[str, list[Clip]] = {}
        for clip in sorted(by_label[label], key=lambda c: c.path):
            groups.setdefault(group_of(clip), []).append(clip)
        order = list(groups.values())
        rng.shuffle(order)
        target = max(1, round(fraction * len(by_label[label])))
        chosen, taken = [], 0
        for group in order:
            if taken + len(group) <= target and len(chosen) < len(order) - 1:
                chosen.append(group)
                taken += len(group)
        if not chosen and len(order) > 1:
            chosen.append(min(order, key=len))  # the first smallest group in shuffled order
        for group in order:
            (valid if any(group is c for c in chosen) else keep).extend(group)
    return keep, valid


def carve_whole_groups(train: list[Clip], fraction: float, group_of,
                       seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """carve_valid's rule for groups that span classes: whole groups, not a share of each class
    (stratifying would send a speaker's anger clips to valid and keep their sadness clips in train)."""
    groups: dict[str, list[Clip]] = {}
    for clip in sorted(train, key=lambda c: c.path):
        groups.setdefault(group_of(clip), []).append(clip)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    def label_counts(clips):  # clips per label (a multi-label clip counts for each of its labels)
        return Counter(label for c in clips for label in c.labels)

    left = label_counts(train)  # train clips per class once the chosen groups have gone

    def may_go(group):  # every class keeps a train clip without it
        return all(left[label] > n for label, n in label_counts(group).items())

    target = max(1, round(fraction * len(train)))
    chosen, taken = [], 0
    for group in order:
        if taken + len(group) <= target and may_go(group):
            chosen.append(group)
            taken += len(group)
            left -= label_counts(group)
    if not chosen:
        eligible = [group for group in order if may_go(group)]
        if eligible:
            chosen.append(min(eligible, key=len))  # the first smallest in shuffled order
    keep, valid = [], []
    for group in order:
        (valid if any(group is c for c in chosen) else keep).extend(group)
    return keep, valid


def valid_grouping(train: list[Clip], test: list[Clip]) -> tuple[str, str | None]:
    """How load_splits carves valid from train: carve_valid's `by`, and why (None: nothing to say).

    The rule: valid is as independent of train as test is. A manifest's group column is followed as it
    always was. Otherwise, where it names speakers: if none of test's speakers is in train (speaker-
    independent test), valid is whole train speakers; if test shares speakers with train, clips are
    carved one by one, as test was."""
    if any(c.group for c in train):
        return "group", None
    train_speakers = {c.speaker for c in train if c.speaker}
    test_speakers = {c.speaker for c in test if c.speaker}
    if not train_speakers:
        return "group", None  # no group, no speaker: clip by clip
    if test_speakers and not train_speakers & test_speakers:
        return "speaker", "test's speakers are all unseen in train"
    shared = len(train_speakers & test_speakers)
    why = (f"test shares {shared} of its {len(test_speakers)} speakers with train" if test_speakers
           else "test rows name no speaker")
    return "group", why


def require_two_classes(classes: list, dataset: str, data_root: str | None = None):
    """Training or probing on one class: every prediction is right, and a table would say 100%."""
    if len(classes) < 2:
        raise DataError(f"{resolve_dataset(dataset, data_root)}: train has {len(classes)} class "
                        f"({', '.join(classes)}): classification needs at least two.")


def load_splits(dataset: str, data_root: str | None = None, fold: int | None = None,
                skip_bad: bool = False, valid_fraction: float = VALID_FRACTION, check_files: bool = True):
    """Read a dataset into {train, valid, test} lists of Clip plus the sorted class names.

    With `fold`, rows of that fold are test and all other rows train (the split column is ignored);
    valid is then carved from train, as it is for any manifest without valid rows: `valid_fraction` of
    it, grouped as `valid_grouping` says (whole speakers where test's speakers are unseen in train, with
    a note on stderr saying so, or clip by clip where test shares them). check_files=False
    skips decoding every file first (check_audio_files), for a caller that reads a few clips only and
    meets a bad one as a DataError when it loads it; skip_bad then has no effect.
    """
    manifest = resolve_dataset(dataset, data_root)
    clips = read_manifest(manifest)
    if check_files:
        clips = check_audio_files(clips, skip_bad, record=check_record_path(manifest))
    if fold is not None:
        if any(c.fold is None for c in clips):
            raise DataError(f"{manifest}: --fold {fold} given but the manifest has rows without a fold.")
        folds = sorted({c.fold for c in clips})
        if fold not in folds:
            raise DataError(f"{manifest}: --fold {fold} not among the folds {folds}.")
        splits = {"train": [c for c in clips if c.fold != fold], "valid": [],
                  "test": [c for c in clips if c.fold == fold]}
    else:
        splits = {s: [c for c in clips if c.split == s] for s in SPLITS}
    if not splits["train"]:
        raise DataError(f"{manifest}: no train rows.")
    if not splits["test"]:
        hint = (" It is a fold dataset (ESC-50): pass --fold k to make fold k the test set."
                if all(c.fold is not None for c in clips) else " Add test rows.")
        raise DataError(f"{manifest}: no test rows.{hint}")
    if not splits["valid"]:
        by, why = valid_grouping(splits["train"], splits["test"])
        splits["train"], splits["valid"] = carve_valid(splits["train"], valid_fraction, by)
        if not splits["valid"] and by == "speaker":
            raise DataError(f"{manifest}: no valid rows, and no whole train speaker can go to valid without "
                            "leaving a class with no train clip (test's speakers are unseen in train, so valid "
                            "is whole speakers too). Add valid rows.")
        if not splits["valid"]:
            raise DataError(f"{manifest}: no valid rows, and train is too small to carve a valid set from "
                            "(every class has a single train clip or group, or no group can go without leaving "
                            "a class with no train clip). Add valid rows.")
        if by == "speaker":  # a line either way where speakers are known: which rule, and why
            speakers = sorted({c.speaker for c in splits["valid"]})
            named = ", ".join(speakers[:5]) + (" ..." if len(speakers) > 5 else "")
            print(f"note: {manifest} has no valid rows: valid is {len(splits['valid'])} clips of whole train "
                  f"speaker(s) {named} (target {valid_fraction:g} of train), as {why}", file=sys.stderr)
        elif why:
            print(f"note: {manifest} has no valid rows: valid is {len(splits['valid'])} train clips carved one "
                  f"by one ({valid_fraction:g} of each class), not whole speakers, as {why}", file=sys.stderr)
    classes = sorted({label for c in splits["train"] for label in c.labels})
    known = set(classes)
    for split in ("valid", "test"):
        unknown = [c for c in splits[split] if not known.issuperset(c.labels)]
        if unknown:
            label = next(label for label in unknown[0].labels if label not in known)
            raise DataError(
                f"{unknown[0].where}: label '{label}' appears in {split} but never in train "
                f"({len(unknown)} such {split} row(s)). A classifier cannot predict a class it never saw: "
                "move some of its clips to train or drop the class.")
    return splits, classes


def is_multilabel(clips) -> bool:
    """True when some clip carries several labels (a list of Clip, or a dict of splits): the whole
    dataset is then multi-label, every stage scoring each label on its own (sigmoid, BCE, mAP)."""
    if isinstance(clips, dict):
        clips = [clip for split in clips.values() for clip in split]
    return any(LABEL_SEPARATOR in clip.label for clip in clips)


def label_targets(clips, classes, multilabel: bool) -> torch.Tensor:
    """Class indices [N] (long), or for multi-label data multi-hot targets [N, C] (float32)."""
    index = {c: i for i, c in enumerate(classes)}
    if not multilabel:
        return torch.tensor([index[clip.label] for clip in clips], dtype=torch.long)
    targets = torch.zeros(len(clips), len(classes))
    for row, clip in enumerate(clips):
        targets[row, [index[label] for label in clip.labels]] = 1.0
    return targets


def keep_shots(splits: dict, shots: int, seed: int) -> tuple[dict, dict]:
    """Few-shot training: K train clips per class, drawn with `seed` from train only; valid and test
    untouched. The draw depends only on the train clips, K and the seed, so every method given the
    same K and seed trains on the same clips. Returns (splits, {"shots", "shot_seed", "short_classes":
    {class: clips kept} for classes with fewer than K, which keep all they have}); clips stay in
    manifest order."""
    if shots < 1:
        raise DataError(f"--shots must be at least 1, got {shots}")
    if is_multilabel(splits):  # K clips "per class" is ill-defined when a clip carries several classes
        raise DataError("--shots: few-shot draws K clips per class, which needs one label per clip; this "
                        "dataset is multi-label.")
    generator = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for index, clip in enumerate(splits["train"]):
        by_class.setdefault(clip.label, []).append(index)
    kept, short = set(), {}
    for label in sorted(by_class):  # in class order: each class's draw does not depend on dict order
        indices = by_class[label]
        if len(indices) < shots:
            short[label] = len(indices)
        kept.update(indices[i] for i in generator.permutation(len(indices))[:shots])
    train = [clip for index, clip in enumerate(splits["train"]) if index in kept]
    if short:
        listing = ", ".join(f"{label} ({n})" for label, n in sorted(short.items())[:10])
        print(f"note: --shots {shots}: {len(short)} class(es) have fewer train clips and keep all they have: "
              f"{listing}{' ...' if len(short) > 10 else ''}", file=sys.stderr)
    return {**splits, "train": train}, {"shots": shots, "shot_seed": seed, "short_classes": short}


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------

def torchaudio_load_error(error: BaseException) -> str:
    """What to say when torchaudio does not import: the installed versions and the fix.

    torchaudio's compiled library only loads against the torch releases it was built for; a
    mismatched pair fails at import with an undefined symbol deep inside torchaudio.
    """
    from importlib import metadata

    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    requirements = Path(__file__).with_name("requirements.txt")
    pins = []
    if requirements.is_file():
        pins = [line.split("#")[0].strip() for line in requirements.read_text().splitlines()
                if line.startswith(("torch==", "torchaudio=="))]
    while error.__cause__ is not None:  # torchaudio wraps the loader's message (the missing symbol)
        error = error.__cause__
    fix = (f"pip install {' '.join(pins)}   (the tested pair pinned in {requirements})" if pins
           else "pip install torch torchaudio   (one release of each that were built together)")
    return (f"error: torchaudio cannot be loaded with this torch: torch {installed('torch')}, "
            f"torchaudio {installed('torchaudio')} installed.\n"
            f"  ({type(error).__name__}: {error})\n"
            f"torch and torchaudio must be a pair built together. Fix it with:\n  {fix}\n"
            f"or keep your torch and install the torchaudio release built for it.")


# At import, not inside load_audio: with a mismatched pair every script stops at start, saying how to fix
# it, rather than on its first clip to resample.
try:
    import torchaudio.functional as AF
except (ImportError, OSError) as _error:  # OSError: libtorchaudio.so built against another torch
    sys.exit(torchaudio_load_error(_error))


def load_audio(path: str, sample_rate: int) -> np.ndarray:
    """Decode with soundfile, average channels to mono, resample to `sample_rate`; float32 [n]."""
    try:
        audio, file_rate = sf.read(path, dtype="float32", always_2d=True)  # [n, channels]
    except Exception as error:
        raise DataError(f"{path}: cannot be read as audio ({error}).") from None
    if audio.shape[0] == 0:
        raise DataError(f"{path}: file is empty (0 samples).")
    if not np.isfinite(audio).all():  # checked at load too (check_audio); a file may change during a run
        raise DataError(f"{path}: NaN or infinite samples.")
    mono = audio.mean(axis=1)
    if file_rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), file_rate, sample_rate).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def random_crop(wave: np.ndarray, max_samples: int, generator: torch.Generator | None = None) -> np.ndarray:
    """Training view: a random window of at most max_samples (shorter clips are padded per batch)."""
    if len(wave) <= max_samples:
        return wave
    start = int(torch.randint(0, len(wave) - max_samples + 1, (1,), generator=generator))
    return wave[start:start + max_samples]


def split_into_chunks(wave: np.ndarray, max_samples: int) -> list[np.ndarray]:
    """Evaluation view: the whole clip as ceil(n / max_samples) near-equal chunks.

    Equal chunks (rather than max-size chunks plus a short tail) keep every chunk long enough to
    give a meaningful pooled feature.
    """
    n_chunks = max(1, math.ceil(len(wave) / max_samples))
    bounds = np.linspace(0, len(wave), n_chunks + 1).round().astype(int)
    return [wave[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class TrainClips(torch.utils.data.Dataset):
    """(random crop, target) pairs for training: the target is the class index, or with multilabel
    the clip's multi-hot row [C] (float32)."""

    def __init__(self, clips, classes, sample_rate, max_seconds, multilabel: bool = False):
        self.clips, self.sample_rate = clips, sample_rate
        self.targets = label_targets(clips, classes, multilabel)
        self.max_samples = int(max_seconds * sample_rate)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        wave = load_audio(self.clips[i].path, self.sample_rate)
        return random_crop(wave, self.max_samples), self.targets[i]


class EvalClips(TrainClips):
    """(whole clip as chunks, target, clip index) for deterministic evaluation."""

    def __getitem__(self, i):
        wave = load_audio(self.clips[i].path, self.sample_rate)
        return split_into_chunks(wave, self.max_samples), self.targets[i], i


class CollateTrain:
    """Pads a batch through the encoder's own preprocessor (a picklable object, for workers)."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, batch):
        waves, labels = zip(*batch)
        return self.preprocess(list(waves)), torch.stack([torch.as_tensor(label) for label in labels])


class CollateEval:
    """Flattens the chunks of a batch of clips; `owner[j]` is the batch position of chunk j."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, batch):
        chunks, owner, labels, indices = [], [], [], []
        for position, (clip_chunks, label, index) in enumerate(batch):
            chunks += clip_chunks
            owner += [position] * len(clip_chunks)
            labels.append(label)
            indices.append(index)
        labels = torch.stack([torch.as_tensor(label) for label in labels])  # class indices, or multi-hot rows
        return self.preprocess(chunks), torch.tensor(owner), labels, torch.tensor(indices)


def length_sorted_order(clips: list[Clip]) -> list[int]:
    """Clip indices sorted by duration, so evaluation batches carry little padding."""
    return sorted(range(len(clips)), key=lambda i: (sf.info(clips[i].path).duration, clips[i].path))


class ClassBalancedBatchSampler(torch.utils.data.Sampler):
    """Batches of P classes x K clips, so that every anchor in a SupCon batch has positives.

    Multi-label data (each entry of `labels` a list of class indices): a clip joins the queue of every
    label it carries, and a batch is P labels x K clips carrying each. Labels are visited equally often
    however rare they are, so a label on 20 clips of 40,000 still meets K clips carrying it in each of
    its batches (its positives); a clip drawn for two labels of one batch is two random crops.

    Classes are visited in a shuffled cyclic order (every class appears about equally often, however
    many classes there are compared with P); each class hands out its clips in a shuffled cyclic
    order, so all clips are used before any repeats. A class with fewer than K clips repeats some
    (each repeat is a different random crop, i.e. an augmented view). One epoch has
    max(ceil(N / (P*K)), ceil(classes / P)) batches: about one pass over the data, and every class
    at least once. Deterministic given the seed and the epoch (call set_epoch each epoch).
    """

    def __init__(self, labels: list[int], classes_per_batch: int, clips_per_class: int, seed: int = 0):
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            for one in (label if isinstance(label, (list, tuple)) else [label]):
                self.by_class.setdefault(one, []).append(index)
        if clips_per_class < 2:
            raise ValueError("clips_per_class must be >= 2, or anchors have no positives")
        self.classes_per_batch = min(classes_per_batch, len(self.by_class))
        self.clips_per_class = clips_per_class
        # About one pass over the clips, but at least enough batches to visit every class once.
        self.num_batches = max(math.ceil(len(labels) / (self.classes_per_batch * clips_per_class)),
                               math.ceil(len(self.by_class) / self.classes_per_batch))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        rng = random.Random(self.seed * 100_003 + self.epoch)
        class_queue: list[int] = []
        clip_queues: dict[int, list[int]] = {c: [] for c in self.by_class}
        for _ in range(self.num_batches):
            batch, chosen, deferred = [], [], []
            while len(chosen) < self.classes_per_batch:
                if not class_queue:
                    class_queue = sorted(self.by_class)
                    rng.shuffle(class_queue)
                candidate = class_queue.pop()
                # A refill can bring back a class already in this batch: defer it to the next batch
                # rather than drop it, so every class keeps its share of visits.
                (deferred if candidate in chosen else chosen).append(candidate)
            class_queue += deferred
            for c in chosen:
                for _ in range(self.clips_per_class):
                    if not clip_queues[c]:
                        clip_queues[c] = list(self.by_class[c])
                        rng.shuffle(clip_queues[c])
                    batch.append(clip_queues[c].pop())
            yield batch
