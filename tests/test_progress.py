"""Progress a person can read in a log file (issue 26): when stdout is not a terminal, a line every
--log-every seconds during training, with steps, loss, clips/s and the ETA of the epoch and the run.

runs.Progress is checked on a fake clock against ETAs worked out by hand; then both training scripts
on the tiny backbone (random weights), whose lines are counted against the steps an epoch has.
"""
import io
import json
import math
import re

import numpy as np
import pytest
import soundfile as sf

import runs
from conftest import run_script

LINE = re.compile(r"epoch (\d+)/(\d+)  step (\d+)/(\d+)  loss (\d+\.\d+)  (\d+\.\d) clips/s  "
                  r"epoch ETA (\S+)  run ETA (\S+)")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def seconds(text: str) -> int:
    """'1h20m', '2m10s', '35s' -> seconds."""
    parts = dict((unit, int(value)) for value, unit in re.findall(r"(\d+)([hms])", text))
    return 3600 * parts.get("h", 0) + 60 * parts.get("m", 0) + parts.get("s", 0)


def test_lines_come_every_interval_with_the_etas_of_the_epoch_and_the_run():
    clock, stream = FakeClock(), io.StringIO()  # a StringIO is not a terminal
    progress = runs.Progress(epochs=3, every=10, stream=stream, clock=clock)
    # epoch 1: 4 steps of 5 s and 8 clips (losses 4, 3, 2, 1), then valid for 6 s: 26 s in all
    progress.start_epoch(1, steps=4)
    for loss in (4.0, 3.0, 2.0, 1.0):
        clock.now += 5
        progress.step(loss, 8)
    progress.end_training()
    clock.now += 6
    progress.end_epoch()
    assert progress.run_eta() == "run ETA 52s"  # 2 epochs left at 26 s
    # epoch 2: the same pace
    progress.start_epoch(2, steps=4)
    for loss in (2.0, 2.0):
        clock.now += 5
        progress.step(loss, 8)
    lines = [LINE.fullmatch(line).groups() for line in stream.getvalue().splitlines()]
    # a line at 10 s and at 20 s of epoch 1, and at 10 s of epoch 2
    assert [(epoch, step) for epoch, _, step, *_ in lines] == [("1", "2"), ("1", "4"), ("2", "2")]
    (_, _, _, _, loss, rate, epoch_eta, run_eta) = lines[0]
    # 2 of 4 steps in 10 s: 10 s of steps left, no valid measured yet; the run's other 2 epochs at this
    # epoch's pace (4 x 5 s), valid unknown
    assert (float(loss), float(rate), seconds(epoch_eta), seconds(run_eta)) == (3.5, 1.6, 10, 10 + 2 * 20)
    (_, _, _, _, loss, rate, epoch_eta, run_eta) = lines[1]
    assert (float(loss), seconds(epoch_eta), seconds(run_eta)) == (2.5, 0, 40)
    (_, _, _, _, loss, rate, epoch_eta, run_eta) = lines[2]
    # 2 steps (10 s) plus epoch 1's 6 s of valid; then 1 epoch left at epoch 1's 26 s
    assert (float(loss), seconds(epoch_eta), seconds(run_eta)) == (2.0, 16, 16 + 26)


def test_no_lines_on_a_terminal_or_with_an_interval_of_0():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, every in ((Terminal(), 10), (io.StringIO(), 0)):
        clock = FakeClock()
        progress = runs.Progress(epochs=1, every=every, stream=stream, clock=clock)
        progress.start_epoch(1, steps=3)
        for _ in range(3):
            clock.now += 60
            progress.step(1.0, 4)
        assert stream.getvalue() == ""


@pytest.mark.parametrize("text, expected", [(0, "0s"), (35.4, "35s"), (130, "2m10s"), (4800, "1h20m"),
                                            (-3, "0s")])
def test_durations_read_at_a_glance(text, expected):
    assert runs.duration(text) == expected


# ----------------------------------------------------------------------------------------------
# The scripts, stdout to a pipe as in a log file
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """3 classes of 8 train, 2 valid and 2 test clips (0.5 s of noise)."""
    root = tmp_path_factory.mktemp("progress")
    rng = np.random.default_rng(0)
    lines = ["path,label,split"]
    for label in ("a", "b", "c"):
        for k, split in enumerate(["train"] * 8 + ["valid"] * 2 + ["test"] * 2):
            sf.write(root / f"{label}{k}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16_000)
            lines.append(f"{label}{k}.wav,{label},{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.mark.parametrize("script", ["finetune.py", "pairtune.py"])
def test_a_run_in_a_log_file_prints_a_line_per_interval_with_right_counts(script, small, tmp_path):
    extra = ["--loss", "eager", "--clips-per-class", "2"] if script == "pairtune.py" else []
    # an interval shorter than any step: a line after every step
    result = run_script(script, "--dataset", small, "--backbone", "tiny", "--epochs", "2", "--max-seconds", "1",
                        "--batch-size", "8", "--device", "cpu", "--log-every", "0.000001", *extra,
                        "--out", tmp_path / "run")
    lines = [LINE.fullmatch(line) for line in result.stdout.splitlines()
             if line.startswith("epoch ") and "  step " in line]
    assert lines and all(lines), result.stdout
    counts = [tuple(int(v) for v in line.groups()[:4]) for line in lines]
    steps = counts[0][3]
    if script == "finetune.py":
        assert steps == math.ceil(24 / 8)  # 24 train clips in batches of 8
    # every step of both epochs, in order, each line counting its own
    assert counts == [(epoch, 2, step, steps) for epoch in (1, 2) for step in range(1, steps + 1)]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # the last line of an epoch: its mean loss is the epoch's train_loss
    for epoch in (1, 2):
        last = lines[epoch * steps - 1]
        assert float(last.group(5)) == pytest.approx(log[epoch - 1]["train_loss"], abs=1e-4)
        assert float(last.group(6)) > 0
    assert "run ETA" in [line for line in result.stdout.splitlines() if line.startswith("epoch 1/2  train/loss")][0]
