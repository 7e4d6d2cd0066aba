"""Datasets for AudioConFit: manifests, audio loading, samplers and dataset preparation.

Every script reads its data through a *manifest*: a CSV file with a header and one row per clip.

    path,label,split[,fold][,speaker]      (other columns are ignored)
    audio/dog_001.wav,dog,train
    audio/cat_017.wav,cat,test

`path` is relative to the manifest's folder (absolute paths work too); `split` is one of train, valid,
test. Fold datasets (ESC-50) also fill `fold`; `--fold k` then makes fold k the test set and the other
folds train. Whenever a manifest has no valid rows, valid is carved from train (see `carve_valid`).

Prepare a dataset (no downloads needed for these two):

    python data.py prepare demo --out data/demo                     # synthetic, ~400 clips, < 20 s
    python data.py prepare fsdd --root ../shared/data/fsdd --task digit --out data/fsdd-digit

and point any script at it with `--dataset demo` (looked up as data/demo/manifest.csv, root
overridable with --data-root or $CONFIT_DATA) or `--dataset path/to/manifest.csv`.
"""
import argparse
import csv
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SPLITS = ("train", "valid", "test")
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
        raise DataError(
            f"dataset '{dataset}' not found: expected a manifest at {manifest}. Prepare it first "
            f"(e.g. `python data.py prepare {dataset} --out {root / dataset}`), pass --data-root, "
            "or give the path of a manifest CSV.")
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
        for line_no, row in enumerate(reader, start=2):
            where = f"{manifest} line {line_no}"
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
            full_path = path if os.path.isabs(path) else str(base / path)
            clips.append(Clip(full_path, label, split, fold, speaker, where))
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
    if not os.path.isfile(path):
        return "file not found"
    try:
        info = sf.info(path)
    except Exception as error:  # libsndfile raises several types; all mean "cannot decode"
        return f"cannot be read as audio ({error})"
    if info.frames == 0:
        return "file is empty (0 samples)"
    return None


def carve_valid(train: list[Clip], fraction: float = 0.1) -> tuple[list[Clip], list[Clip]]:
    """Move a deterministic, class-stratified `fraction` of train into valid.

    Per class, clips are sorted by path and shuffled with a fixed seed (0), independent of the run's
    seed, so every method and every seed sees the same valid set. Every class with two or more clips
    gives at least one to valid and keeps at least one for train; single-clip classes give none.
    """
    by_label: dict[str, list[Clip]] = {}
    for clip in train:
        by_label.setdefault(clip.label, []).append(clip)
    keep, valid = [], []
    rng = random.Random(0)
    for label in sorted(by_label):
        clips = sorted(by_label[label], key=lambda c: c.path)
        rng.shuffle(clips)
        n_valid = min(len(clips) - 1, max(1, round(fraction * len(clips))))
        valid += clips[:n_valid]
        keep += clips[n_valid:]
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
    if not splits["valid"]:
        splits["train"], splits["valid"] = carve_valid(splits["train"], valid_fraction)
    if not splits["valid"]:
        raise DataError(f"{manifest}: no valid rows, and train is too small to carve a valid set from "
                        "(every class has a single train clip). Add valid rows.")
    classes = sorted({c.label for c in splits["train"]})
    for split in ("valid", "test"):
        unknown = [c for c in splits[split] if c.label not in set(classes)]
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
# ----------------------------------------------------------------------------------------------

def write_manifest(out_dir: Path, rows: list[dict], extra_columns=()) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", *extra_columns])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def print_summary(out_dir: Path, rows: list[dict], seconds: float):
    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    summary = {"clips": counts, "classes": len({r["label"] for r in rows}), "seconds": round(seconds, 2)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out_dir / 'manifest.csv'}: {counts} clips, {summary['classes']} classes "
          f"({seconds:.1f} s to prepare)")


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
    start = time.time()
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in per_split:
        for kind in DEMO_CLASSES:
            for n in range(count):
                relative = f"audio/{split}/{kind}_{n:03d}.wav"
                (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                sf.write(out_dir / relative, synthesize_demo_clip(kind, rng), DEMO_RATE, subtype="PCM_16")
                rows.append({"path": relative, "label": kind, "split": split})
    write_manifest(out_dir, rows)
    print_summary(out_dir, rows, time.time() - start)


def prepare_fsdd(root: Path, out_dir: Path, task: str):
    """Free Spoken Digit Dataset, official split: take 0-4 test, 5-49 train.

    Valid is carved deterministically from train: takes 5-9 (300 clips, every digit and speaker
    equally), leaving takes 10-49 (2,400 clips) for training.
    """
    start = time.time()
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
        rows.append({"path": os.path.relpath(file.resolve(), out_dir.resolve()), "label": label,
                     "split": split, "speaker": speaker})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir, rows, extra_columns=("speaker",))
    print_summary(out_dir, rows, time.time() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare a dataset into a manifest.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="write DIR/manifest.csv (and audio, for demo)")
    prepare.add_argument("name", choices=["demo", "fsdd"], help="which dataset")
    prepare.add_argument("--out", required=True, help="output folder; the manifest goes to OUT/manifest.csv")
    prepare.add_argument("--root", help="fsdd: the raw dataset folder (holding recordings/)")
    prepare.add_argument("--task", choices=["digit", "speaker"], default="digit",
                         help="fsdd: classify the spoken digit (10-way) or the speaker (6-way)")
    prepare.add_argument("--seed", type=int, default=0, help="demo: random seed of the synthesis")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    try:
        if args.name == "demo":
            prepare_demo(out_dir, seed=args.seed)
        elif args.name == "fsdd":
            if not args.root:
                parser.error("fsdd needs --root (the folder holding recordings/)")
            prepare_fsdd(Path(args.root), out_dir, args.task)
    except DataError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
