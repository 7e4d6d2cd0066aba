"""Datasets for AudioConFit: manifests, audio loading, samplers and dataset preparation.

Every script reads its data through a *manifest*: a CSV file with a header and one row per clip.

    path,label,split[,fold][,speaker][,group]      (other columns are ignored)
    audio/dog_001.wav,dog,train
    audio/cat_017.wav,cat,test

`path` is relative to the manifest's folder (absolute paths work too); `split` is one of train, valid,
test. Fold datasets (ESC-50) also fill `fold`; `--fold k` then makes fold k the test set and the other
folds train. Whenever a manifest has no valid rows, valid is carved from train (see `carve_valid`).

Prepare a dataset from its raw files (the README's table says where to get each and which split):

    python data.py prepare gtzan --root RAW/gtzan --splits DIR_WITH_THE_3_LISTS      # -> data/gtzan
    python data.py prepare esc50 --root RAW/ESC-50-master                            # -> data/esc50
    python data.py prepare timit --root RAW/TIMIT --rule by-type                     # -> data/timit
    python data.py prepare emodb --root RAW/emodb                                    # -> data/emodb
    python data.py prepare mswc --lang es --root RAW/mswc                            # -> data/mswc-s
    python data.py prepare mswc --lang id --keywords paper --root RAW/mswc           # -> data/mswc-i
    python data.py prepare fsdd --root ../shared/data/fsdd --task digit              # -> data/fsdd-digit
    python data.py prepare demo                                                      # synthetic, < 20 s

and point any script at it with `--dataset gtzan` (looked up as data/gtzan/manifest.csv, root
overridable with --data-root or $CONFIT_DATA) or `--dataset path/to/manifest.csv`.
"""
import argparse
import csv
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm


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


try:
    import torchaudio.functional as AF
except (ImportError, OSError) as _error:  # OSError: libtorchaudio.so built against another torch
    sys.exit(torchaudio_load_error(_error))

SPLITS = ("train", "valid", "test")
UNSUPPORTED_SUFFIXES = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".amr")  # containers libsndfile lacks
REQUIRED_COLUMNS = ("path", "label", "split")


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
        prepare = {"mswc-s": "mswc --lang es", "mswc-i": "mswc --lang id --keywords paper",
                   "fsdd-digit": "fsdd --task digit", "fsdd-speaker": "fsdd --task speaker"}.get(dataset, dataset)
        raise DataError(
            f"dataset '{dataset}' not found: expected a manifest at {manifest}. Prepare it first "
            f"(e.g. `python data.py prepare {prepare} --root RAW --out {root / dataset}`, see the README's "
            "dataset table), pass --data-root, or give the path of a manifest CSV.")
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
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{manifest}: missing required column(s) {', '.join(missing)} (header is "
                f"'{','.join(header)}'). The first line must name at least path,label,split.")
        reader.fieldnames = header
        clips = []
        for row in reader:
            where = f"{manifest} line {reader.line_num}"  # line_num, not a row count: blank lines are skipped
            path, label, split = ((row.get(c) or "").strip() for c in REQUIRED_COLUMNS)
            if not path or not label:
                raise DataError(f"{where}: empty path or label. Every row needs path,label,split.")
            if split not in SPLITS:
                raise DataError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}.")
            fold_text = (row.get("fold") or "").strip()
            try:
                fold = int(fold_text) if fold_text else None
            except ValueError:
                raise DataError(f"{where}: fold '{fold_text}' is not an integer.") from None
            speaker = (row.get("speaker") or "").strip() or None
            group = (row.get("group") or "").strip() or None
            full_path = path if os.path.isabs(path) else str(base / path)
            clips.append(Clip(full_path, label, split, fold, speaker, where, group))
    if not clips:
        raise DataError(f"{manifest}: no rows after the header.")
    return clips


def check_audio_files(clips: list[Clip], skip_bad: bool = False) -> list[Clip]:
    """Fail early, naming the file, for missing, unreadable or empty audio (reads headers only)."""
    good, bad = [], []
    for clip in clips:
        problem = audio_file_problem(clip.path)
        if problem is None:
            good.append(clip)
        elif skip_bad:
            warnings.warn(f"skipping {clip.path} ({clip.where}): {problem}", stacklevel=2)
            bad.append(clip)
        else:
            raise DataError(f"{clip.where}: {clip.path}: {problem}. Fix or remove the row, "
                            "or run with --skip-bad to skip unreadable files.")
    if bad:
        print(f"--skip-bad: skipped {len(bad)} unreadable file(s) of {len(clips)}", file=sys.stderr)
    return good


def audio_file_problem(path: str) -> str | None:
    """Why `path` cannot be used as audio, or None (reads the header only)."""
    if not os.path.isfile(path):
        return "file not found"
    try:
        info = sf.info(path)
    except Exception as error:  # libsndfile raises several types; all mean "cannot decode"
        what = ("a format libsndfile does not decode" if Path(path).suffix.lower() in UNSUPPORTED_SUFFIXES
                else "damaged, or in a format libsndfile does not decode")
        return (f"cannot be read as audio ({error}): {what}. libsndfile {sf.__libsndfile_version__} reads WAV, "
                "AU, AIFF, FLAC, OGG/Vorbis/Opus, MP3 and uncompressed NIST SPHERE; convert other files, "
                "e.g. `ffmpeg -i IN OUT.wav`")
    if info.frames == 0:
        return "file is empty (0 samples)"
    return None


def carve_valid(train: list[Clip], fraction: float = 0.1) -> tuple[list[Clip], list[Clip]]:
    """Move a deterministic, class-stratified `fraction` of train into valid.

    Per class, clips are sorted by path and shuffled with a fixed seed (0), independent of the run's
    seed, so every method and every seed sees the same valid set. Clips sharing a `group` (the
    manifest's optional group column: ESC-50 takes cut from one recording) move together, so valid
    never holds a piece of a recording that train also holds. Per class, groups are taken in shuffled
    order while they fit the target (round(fraction * clips), at least 1); if none fits, the smallest
    one goes. A class always keeps one group for train, so a class with a single group (or clip)
    gives nothing to valid.
    """
    by_label: dict[str, list[Clip]] = {}
    for clip in train:
        by_label.setdefault(clip.label, []).append(clip)
    keep, valid = [], []
    rng = random.Random(0)
    for label in sorted(by_label):
        groups: dict[str, list[Clip]] = {}
        for clip in sorted(by_label[label], key=lambda c: c.path):
            groups.setdefault(clip.group or clip.path, []).append(clip)
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


def load_splits(dataset: str, data_root: str | None = None, fold: int | None = None,
                skip_bad: bool = False, valid_fraction: float = 0.1):
    """Read a dataset into {train, valid, test} lists of Clip plus the sorted class names.

    With `fold`, rows of that fold are test and all other rows train (the split column is ignored);
    valid is then carved from train, as it is for any manifest without valid rows.
    """
    manifest = resolve_dataset(dataset, data_root)
    clips = check_audio_files(read_manifest(manifest), skip_bad)
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
        splits["train"], splits["valid"] = carve_valid(splits["train"], valid_fraction)
    if not splits["valid"]:
        raise DataError(f"{manifest}: no valid rows, and train is too small to carve a valid set from "
                        "(every class has a single train clip). Add valid rows.")
    classes = sorted({c.label for c in splits["train"]})
    known = set(classes)
    for split in ("valid", "test"):
        unknown = [c for c in splits[split] if c.label not in known]
        if unknown:
            raise DataError(
                f"{unknown[0].where}: label '{unknown[0].label}' appears in {split} but never in train "
                f"({len(unknown)} such {split} row(s)). A classifier cannot predict a class it never saw: "
                "move some of its clips to train or drop the class.")
    return splits, classes


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------

def load_audio(path: str, sample_rate: int) -> np.ndarray:
    """Decode with soundfile, average channels to mono, resample to `sample_rate`; float32 [n]."""
    try:
        audio, file_rate = sf.read(path, dtype="float32", always_2d=True)  # [n, channels]
    except Exception as error:
        raise DataError(f"{path}: cannot be read as audio ({error}).") from None
    if audio.shape[0] == 0:
        raise DataError(f"{path}: file is empty (0 samples).")
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
    """(random crop, class index) pairs for training."""

    def __init__(self, clips, classes, sample_rate, max_seconds):
        self.clips, self.sample_rate = clips, sample_rate
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.max_samples = int(max_seconds * sample_rate)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        clip = self.clips[i]
        wave = load_audio(clip.path, self.sample_rate)
        return random_crop(wave, self.max_samples), self.class_index[clip.label]


class EvalClips(TrainClips):
    """(whole clip as chunks, class index, clip index) for deterministic evaluation."""

    def __getitem__(self, i):
        clip = self.clips[i]
        wave = load_audio(clip.path, self.sample_rate)
        return split_into_chunks(wave, self.max_samples), self.class_index[clip.label], i


class CollateTrain:
    """Pads a batch through the encoder's own preprocessor (a picklable object, for workers)."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, batch):
        waves, labels = zip(*batch)
        return self.preprocess(list(waves)), torch.tensor(labels)


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
        return self.preprocess(chunks), torch.tensor(owner), torch.tensor(labels), torch.tensor(indices)


def length_sorted_order(clips: list[Clip]) -> list[int]:
    """Clip indices sorted by duration, so evaluation batches carry little padding."""
    return sorted(range(len(clips)), key=lambda i: (sf.info(clips[i].path).duration, clips[i].path))


class ClassBalancedBatchSampler(torch.utils.data.Sampler):
    """Batches of P classes x K clips, so that every anchor in a SupCon batch has positives.

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
            self.by_class.setdefault(label, []).append(index)
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


# ----------------------------------------------------------------------------------------------
# Preparing datasets
#
# `python data.py prepare NAME --root RAW --out data/NAME` turns a dataset as distributed into
# data/NAME/manifest.csv (paths relative to data/NAME, audio left where it is) and summary.json.
# Each prepare_* function below builds the rows of one dataset with its published split; they all
# end in `finish_prepare`, which reads every file's header, reports unreadable files by name (and
# skips them only with --skip-bad), checks the counts the dataset is known to have, and writes.
# ----------------------------------------------------------------------------------------------

def finish_prepare(name: str, out_dir: Path, rows: list[dict], expected: dict, notes: dict,
                   skip_bad: bool = False, extra_columns=()) -> dict:
    """Check the audio of `rows`, write manifest.csv and summary.json, print the summary.

    rows: dicts with an absolute "path", "label", "split", a "where" (what listed the file, for
    messages) and any of `extra_columns`. expected: {check name: expected value}; the found values
    come from `dataset_facts`, and every mismatch is printed as a loud warning and recorded.
    """
    start = time.time()
    kept, skipped, seconds_per_split, sample_rates = [], [], Counter(), Counter()
    for row in tqdm(rows, desc=f"{name}: reading audio headers", unit="file", disable=None):
        problem = audio_file_problem(row["path"])
        if problem is None:
            info = sf.info(row["path"])  # cheap: a second header read, from the OS cache
            kept.append(row)
            seconds_per_split[row["split"]] += info.frames / info.samplerate
            sample_rates[info.samplerate] += 1
        else:
            skipped.append({"path": row["path"], "where": row["where"], "problem": problem})
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
        "hours": round(sum(seconds_per_split.values()) / 3600, 3),
        "hours_per_split": {s: round(seconds_per_split[s] / 3600, 3) for s in SPLITS},
        "sample_rates": {str(rate): count for rate, count in sorted(sample_rates.items())},
        "skipped": skipped,
        "checks": checks,
        "notes": notes,
        "seconds_to_prepare": round(time.time() - start, 1),
    }
    partial = out_dir / "summary.json.partial"  # written whole, then renamed, like the manifest
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(out_dir / "summary.json")

    rates = ", ".join(f"{rate} Hz ({count})" for rate, count in sorted(sample_rates.items()))
    print(f"{name}: wrote {out_dir / 'manifest.csv'} and summary.json")
    print(f"  clips     train {facts['train']} / valid {facts['valid']} / test {facts['test']}"
          f" ({facts['clips']} in all), {facts['classes']} classes")
    print(f"  audio     {summary['hours']:.2f} h; sample rates: {rates}")
    print(f"  skipped   {len(skipped)} file(s)" + (" (listed in summary.json)" if skipped else ""))
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
    facts["classes"] = len({r["label"] for r in rows})
    per_class = Counter(r["label"] for r in rows)
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
    """Write OUT/manifest.csv through a temporary file, so an interrupted prepare leaves no half file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    partial = out_dir / "manifest.csv.partial"
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", *extra_columns],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(manifest)
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


# --- GTZAN --------------------------------------------------------------------------------------
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
    target.mkdir(parents=True, exist_ok=True)
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
        (target / file).write_text(text)
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


# --- ESC-50 -------------------------------------------------------------------------------------
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


# --- TIMIT --------------------------------------------------------------------------------------
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


# --- EmoDB --------------------------------------------------------------------------------------
EMODB_EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness",
                  "T": "sadness", "N": "neutral"}  # German initials: Wut, Langeweile, Ekel, Angst, ...
# The speaker-independent split of audeering/emodb >= 1.2.0, which is also the AudioConFit authors'
# (confit/emodb: 304 train / 231 test clips).
EMODB_SPEAKERS = {"train": ("03", "08", "09", "10", "11", "13"), "test": ("12", "14", "15", "16")}
EMODB_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z])\.wav$", re.IGNORECASE)  # 03a01Fa.wav


def prepare_emodb(root: Path, out_dir: Path, split_file: Path | None, skip_bad: bool) -> dict:
    """EmoDB: `wav/*.wav`, emotion from the 6th character, speaker-independent train/test.

    Valid is carved from the train speakers' clips with `carve_valid` (10% of each emotion, fixed
    seed), so every run and both arms see the same valid set; test speakers are never touched.
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
                     "speaker": speaker, "where": str(path)})
    train = [Clip(r["path"], r["label"], "train") for r in rows if r["split"] == "train"]
    _, valid = carve_valid(train)
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
             "valid": "carved from the train speakers' clips: 10% of each emotion, fixed seed 0"}
    return finish_prepare("emodb", out_dir, rows, expected, notes, skip_bad, ("speaker",))


# --- MSWC ---------------------------------------------------------------------------------------
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


# --- FSDD and the demo --------------------------------------------------------------------------

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


def prepare_demo(out_dir: Path, per_split=(("train", 24), ("valid", 8), ("test", 8)), seed: int = 0):
    """10 classes of procedural sounds, 16 kHz mono WAV, deterministic given the seed."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in per_split:
        for kind in DEMO_CLASSES:
            for n in range(count):
                relative = f"audio/{split}/{kind}_{n:03d}.wav"
                (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                sf.write(out_dir / relative, synthesize_demo_clip(kind, rng), DEMO_RATE, subtype="PCM_16")
                rows.append({"path": absolute(out_dir / relative), "label": kind, "split": split,
                             "where": relative})
    expected = {"clips": 40 * len(DEMO_CLASSES), "classes": len(DEMO_CLASSES)}
    return finish_prepare("demo", out_dir, rows, expected, {"source": f"synthesized, seed {seed}"})


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare a dataset into OUT/manifest.csv and OUT/summary.json (audio stays where it is).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="write OUT/manifest.csv and OUT/summary.json",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    prepare.add_argument("name", choices=["gtzan", "esc50", "timit", "emodb", "mswc", "fsdd", "demo"],
                         help="which dataset (see the README's table for where to get each)")
    prepare.add_argument("--root", help="the raw dataset as distributed (not needed for demo)")
    prepare.add_argument("--out", help="output folder (default: $CONFIT_DATA or data/, then the dataset's "
                         "name: gtzan, esc50, timit, emodb, mswc-s, mswc-i, fsdd-digit, demo)")
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
    prepare.add_argument("--seed", type=int, default=0, help="demo: random seed of the synthesis")
    args = parser.parse_args(argv)

    default_name = {"mswc": {"es": "mswc-s", "id": "mswc-i"}.get(args.lang, f"mswc-{args.lang}"),
                    "fsdd": f"fsdd-{args.task}"}.get(args.name, args.name)
    out_dir = Path(args.out or Path(os.environ.get("CONFIT_DATA") or "data") / default_name)
    if args.name != "demo" and not args.root:
        parser.error(f"{args.name} needs --root, the folder of the dataset as distributed")
    root = Path(args.root) if args.root else None
    if root is not None and not root.is_dir():
        parser.error(f"--root {root} is not a folder")
    splits = Path(args.splits) if args.splits else None
    try:
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
    except DataError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
