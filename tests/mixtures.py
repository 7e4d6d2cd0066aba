"""Real multi-label audio for the tests: spoken digits (../shared's FSDD recordings) mixed at random offsets
and gains, 1-3 digits a clip, the labels the union of the digits heard (joined by data.LABEL_SEPARATOR).

Each split draws its recordings from its own speakers (train: george, jackson, lucas, nicolas; valid: theo;
test: yweweler), so valid is as independent of train as test is. Deterministic given the seed.

    python tests/mixtures.py OUT [--train 300 --valid 60 --test 100 --seed 0]

writes OUT/audio/*.wav and OUT/manifest.csv (then `python pairtune.py --dataset OUT/manifest.csv ...`).
"""
import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data import LABEL_SEPARATOR  # noqa: E402

FSDD_RECORDINGS = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = {"train": ("george", "jackson", "lucas", "nicolas"), "valid": ("theo",), "test": ("yweweler",)}
SAMPLE_RATE = 8000  # FSDD's


def recordings_by_digit(recordings: Path, speakers) -> dict[int, list[Path]]:
    """{digit: its recordings by these speakers}; FSDD names a file <digit>_<speaker>_<take>.wav."""
    found: dict[int, list[Path]] = {}
    for path in sorted(recordings.glob("*.wav")):
        digit, speaker, _ = path.stem.split("_")
        if speaker in speakers:
            found.setdefault(int(digit), []).append(path)
    return found


def mix(sources: list[np.ndarray], length: int, rng: random.Random) -> np.ndarray:
    """The sources, each peak-normalised then scaled by a gain in [0.4, 1], summed at random offsets into
    `length` samples; the sum scaled down if it would clip."""
    out = np.zeros(length, dtype=np.float32)
    for source in sources:
        source = source[:length] / max(float(np.abs(source).max()), 1e-6)
        start = rng.randrange(0, length - len(source) + 1)
        out[start:start + len(source)] += rng.uniform(0.4, 1.0) * source
    return out / max(1.0, float(np.abs(out).max()) / 0.9)


def make_mixtures(out: Path, counts=None, seed: int = 0, max_digits: int = 3, seconds: float = 2.0,
                  recordings: Path = FSDD_RECORDINGS) -> Path:
    """Write OUT/audio/<split>_<n>.wav and OUT/manifest.csv; returns the manifest's path."""
    counts = counts or {"train": 300, "valid": 60, "test": 100}
    rng = random.Random(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in counts.items():
        pool = recordings_by_digit(recordings, SPEAKERS[split])
        for index in range(n):
            digits = sorted(rng.sample(range(10), rng.randint(1, max_digits)))
            sources = [sf.read(rng.choice(pool[d]), dtype="float32")[0] for d in digits]
            name = f"audio/{split}_{index:04d}.wav"
            sf.write(out / name, mix(sources, int(seconds * SAMPLE_RATE), rng), SAMPLE_RATE)
            rows.append((name, LABEL_SEPARATOR.join(DIGITS[d] for d in digits), split))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return manifest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--valid", type=int, default=60)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not FSDD_RECORDINGS.is_dir():
        sys.exit(f"error: {FSDD_RECORDINGS} is absent (../shared holds the FSDD recordings)")
    print(make_mixtures(args.out, {"train": args.train, "valid": args.valid, "test": args.test}, args.seed))
