"""README's "Your own data" section, run as written: from a folder of recordings to a result, an export and
a prediction, in a fresh copy of the repository (what `git clone` gives: the tracked files and the new
ones git does not ignore, nothing built or downloaded).

The audio is real: FSDD recordings from ../shared linked into `mydata/<digit name>/` (10 classes x 12
clips) and `new-recordings/` (clips not in mydata); skipped where ../shared is absent. Three words of the
README are swapped, and only these, each for a reason the test cannot avoid:
- `wav2vec2` (a Hugging Face Hub download, unreachable here) -> the real Whisper tiny.en encoder in
  ../shared, a local folder as `--backbone` accepts one; the run folders' backbone part follows
  (`runs/mydata/wav2vec2/` -> `runs/mydata/whisper-tiny.en-encoder/`, the name a local folder gets);
- `--epochs 10` -> `--epochs 2`, to keep the suite short.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def own_data_commands() -> str:
    """The first ```bash block under README's '## Your own data'."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Your own data\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def fresh_copy(target):
    """The repository as a clone would give it: git's tracked files plus the untracked ones it does not
    ignore (a commit of this tree), copied without runs, data or caches."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree but still tracked is not in a commit of it
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def test_the_own_data_section_runs_as_written_from_a_folder_to_a_prediction(tmp_path, fsdd_root, whisper_dir):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the fresh copy is made from git's file list")
    clone = tmp_path / "clone"
    fresh_copy(clone)
    for digit, name in enumerate(DIGITS):  # mydata/<class>/*.wav: takes 0-1 of each speaker
        (clone / "mydata" / name).mkdir(parents=True)
        for speaker in SPEAKERS:
            for take in (0, 1):
                source = fsdd_root / "recordings" / f"{digit}_{speaker}_{take}.wav"
                (clone / "mydata" / name / source.name).symlink_to(source)
    (clone / "new-recordings").mkdir()
    new = [fsdd_root / "recordings" / f"{digit}_theo_40.wav" for digit in (3, 7)]
    for source in new:
        (clone / "new-recordings" / source.name).symlink_to(source)

    commands = own_data_commands()
    assert "--backbone wav2vec2" in commands and "runs/mydata/wav2vec2/" in commands and "--epochs 10" in commands
    commands = (commands.replace("--backbone wav2vec2", f"--backbone {whisper_dir}")
                .replace("runs/mydata/wav2vec2/", f"runs/mydata/{whisper_dir.name}/")
                .replace("--epochs 10", "--epochs 2"))
    env = {key: value for key, value in os.environ.items() if key not in ("CONFIT_DATA", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    # prepare.py folder: 12 clips a class -> test 2 (round(0.2 x 12)), valid 1 (round(0.1 x 10)), train 9
    assert "train 90 / valid 10 / test 20 (120 in all), 10 classes" in output, output[-6000:]
    pairtune_run = clone / "runs" / "mydata" / whisper_dir.name / "pairtune" / "seed-0"
    finetune_run = clone / "runs" / "mydata" / whisper_dir.name / "finetune" / "seed-0"
    for run in (pairtune_run, finetune_run):
        assert (run / "run.json").is_file(), sorted(p.name for p in run.parent.parent.rglob("*"))
    # Two epochs of a real encoder on spoken digits: well above chance (10%) on the 20 test clips
    probe = re.search(r"probe of .*?: test/acc (\d\.\d+)", output)
    assert probe and float(probe.group(1)) >= 0.3, output[-6000:]
    assert (clone / "my-model" / "config.json").is_file()
    for source, digit in zip(new, ("three", "seven")):  # predict.py: a line per file, its top class first
        assert re.search(rf"^new-recordings/{source.name}\t{digit} ", output, re.M), output[-3000:]
