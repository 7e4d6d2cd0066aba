"""Bad input never crashes deep inside: each row of docs/bad-input.md's table, then a fuzz test.

Every bad file or manifest must end in a DataError naming the file (and the manifest line), or be
used as documented; never another exception, never a silently different set of clips.
"""
import csv
import io
import json
import random
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

import backbone
import data
import prepare

RATE = 16_000
CLASSES = ("a", "b", "c")
SPLIT_OF_COPY = ("train", "train", "valid", "test")  # per class: 2 train, 1 valid, 1 test clip


def write_clip(path, wave, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, RATE, subtype=subtype)
    return path


def noise(seconds=0.25, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def write_manifest(path, rows, header=("path", "label", "split"), encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def dataset(tmp_path):
    """12 clips of noise, 3 classes, with train, valid and test rows; returns (manifest, rows)."""
    rows = []
    for c, label in enumerate(CLASSES):
        for k, split in enumerate(SPLIT_OF_COPY):
            name = f"audio/{label}{k}.wav"
            write_clip(tmp_path / name, noise(seed=10 * c + k))
            rows.append([name, label, split])
    return write_manifest(tmp_path / "manifest.csv", rows), rows


def line_of(rows, name):
    return 2 + [r[0] for r in rows].index(name)  # the header is line 1


# ----------------------------------------------------------------------------------------------
# The table's rows, one test each
# ----------------------------------------------------------------------------------------------

def test_nan_and_inf_samples_stop_at_load_naming_file_and_line(dataset):
    manifest, rows = dataset
    for bad_value in (np.nan, np.inf, -np.inf):
        wave = noise()
        wave[123] = bad_value
        write_clip(manifest.parent / rows[4][0], wave, subtype="FLOAT")
        with pytest.raises(data.DataError, match=rf"{manifest} line {line_of(rows, rows[4][0])}: .*b0.wav: "
                                                 r"1 NaN or infinite sample\(s\), the first at sample 123"):
            data.load_splits(str(manifest))


def test_skip_bad_leaves_nan_files_out_with_a_warning_and_a_count(dataset, capsys):
    manifest, rows = dataset
    wave = noise()
    wave[:10] = np.nan
    write_clip(manifest.parent / rows[0][0], wave, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"skipping .*a0.wav \(.*line 2\): 10 NaN or infinite"):
        splits, _ = data.load_splits(str(manifest), skip_bad=True)
    assert sum(len(s) for s in splits.values()) == 11
    assert "skipped 1 unusable file(s) of 12" in capsys.readouterr().err


def test_load_audio_checks_samples_too(tmp_path):
    wave = noise()
    wave[5] = np.nan
    path = write_clip(tmp_path / "x.wav", wave, subtype="FLOAT")  # e.g. changed after the check at start
    with pytest.raises(data.DataError, match="x.wav: NaN or infinite samples"):
        data.load_audio(str(path), RATE)


def test_a_clip_shorter_than_the_receptive_field_gives_one_frame_never_a_zero_vector():
    encoder = backbone.load_encoder("tiny").eval()  # random weights: the shapes are what is tested
    short, long = noise(100 / RATE, seed=1), noise(1.0, seed=2)
    assert encoder.min_samples == 325  # the tiny config's conv stack
    with torch.no_grad():
        alone = encoder(encoder.preprocess([short]))  # crashed before: no frame at all
        batched = encoder(encoder.preprocess([short, long]))  # pooled to zeros before
    assert torch.isfinite(alone).all() and alone.abs().sum() > 0
    assert torch.allclose(batched[0], alone[0], atol=1e-5)  # the tiny model is given the mask


def test_wav2vec2_base_needs_400_samples_for_a_frame():
    import transformers  # a randomly initialised wav2vec2-base: its config fixes the receptive field
    model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config())
    encoder = backbone.AudioEncoder(model, transformers.Wav2Vec2FeatureExtractor(), "wav2vec2-base", True)
    assert encoder.min_samples == 400
    assert int(model._get_feat_extract_output_lengths(torch.tensor(399))) == 0


def test_silent_clips_are_kept_counted_and_reported(dataset, tmp_path, capsys):
    manifest, rows = dataset
    for row in rows[:2]:
        write_clip(manifest.parent / row[0], np.zeros(4000, np.float32))
    splits, _ = data.load_splits(str(manifest))
    assert sum(len(s) for s in splits.values()) == 12
    err = capsys.readouterr().err
    assert "2 of 12 clips are pure silence (every sample 0), e.g." in err and "a0.wav" in err
    prepare_rows = [{"path": str(manifest.parent / r[0]), "label": r[1], "split": r[2], "where": f"row {i}"}
                    for i, r in enumerate(rows)]
    summary = prepare.finish_prepare("toy", tmp_path / "prepared", prepare_rows, {}, {})
    assert [s["where"] for s in summary["silent"]] == ["row 0", "row 1"]
    assert "silent    2 clip(s)" in capsys.readouterr().out


def wav_bytes(wave) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def with_field(raw: bytes, chunk: bytes, offset: int, fmt: str, value) -> bytes:
    edited = bytearray(raw)
    struct.pack_into(fmt, edited, raw.find(chunk) + offset, value)
    return bytes(edited)


@pytest.mark.parametrize("name, content, problem", [
    ("zero-channels.wav", lambda raw: with_field(raw, b"fmt ", 10, "<H", 0), "Channel count is zero"),
    ("zero-frames.wav", lambda raw: raw[:44], "file is empty"),
    ("claims-more.wav", lambda raw: with_field(raw, b"data", 4, "<I", 10 ** 6),
     "truncated: its header declares 1000000 bytes of audio, the file holds 8000"),
    ("cut-short.wav", lambda raw: raw[:3044],
     "truncated: its header declares 8000 bytes of audio, the file holds 3000"),
    ("random-bytes.wav", lambda raw: np.random.default_rng(0).bytes(5000), "cannot be read as audio"),
    ("text.wav", lambda raw: b"this is not audio\n" * 50, "cannot be read as audio"),
    ("missing.wav", None, "file not found"),
])
def test_broken_files_are_named_errors(dataset, name, content, problem):
    manifest, rows = dataset
    target = manifest.parent / rows[6][0]
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content(wav_bytes(noise())))
    with pytest.raises(data.DataError, match=rf"line 8: .*b2.wav: .*{problem}"):
        data.load_splits(str(manifest))


def test_a_cut_flac_is_a_named_error_and_other_formats_named_wav_decode(dataset):
    manifest, rows = dataset
    target = manifest.parent / rows[3][0]
    sf.write(target.with_suffix(".flac"), noise(), RATE)
    target.write_bytes(target.with_suffix(".flac").read_bytes()[:600])  # a FLAC cut short, named .wav
    with pytest.raises(data.DataError, match=r"line 5: .*a3.wav: cannot be read as audio"):
        data.load_splits(str(manifest))
    sf.write(target.with_suffix(".ogg"), noise(), RATE)
    shutil.copy(target.with_suffix(".ogg"), target)  # libsndfile goes by content, not by name
    splits, _ = data.load_splits(str(manifest))
    assert len(data.load_audio(splits["test"][0].path, RATE)) == pytest.approx(4000, abs=100)


def test_a_streamed_wav_with_unknown_length_is_used(dataset):
    manifest, rows = dataset
    target = manifest.parent / rows[0][0]
    target.write_bytes(with_field(wav_bytes(noise()), b"data", 4, "<I", 0xFFFFFFFF))  # as a pipe writer leaves it
    splits, _ = data.load_splits(str(manifest))
    assert len(data.load_audio(splits["train"][0].path, RATE)) == 4000


@pytest.mark.parametrize("edit, problem", [
    (lambda text: text.replace("a,train", "é,train", 1).encode("latin-1"), r"line 2: not UTF-8 text \(byte 0xe9\)"),
    (lambda text: text.encode("utf-16"), r"line 1: not UTF-8 text"),
    (lambda text: text.replace("b1.wav", "b1\0.wav").encode(), r"line 7: a NUL byte"),
    (lambda text: (text + "audio/a0.wav,a,test\n").encode(),
     r"line 14: audio/a0.wav is listed again \(first at line 2\)"),
    (lambda text: text.replace("audio/c1.wav,c", "audio/c1.wav,c,d", 1).encode(), r"line 11: 4 fields, but the header"),
    (lambda text: text.replace("audio/c1.wav,c,", "audio/c1.wav,,", 1).encode(), r"line 11: empty path or label"),
    (lambda text: text.replace("audio/c1.wav,c,train", "audio/c1.wav", 1).encode(), r"line 11: empty path or label"),
    (lambda text: text.replace("audio/c1.wav,c,train", '"audio/c1.wav,c,train', 1).encode(),
     r"line 11: not valid CSV \(unexpected end of data\)"),
    (lambda text: text.replace("audio/c1.wav,c,train", 'audio/c1.wav,c",train', 1).encode(),
     r"line 11: a double quote or a line break inside the path or label"),
    (lambda text: text.replace("audio/c1.wav,c,train", 'audio/c1.wav,"c\nc",train', 1).encode(),
     r"line 12: a double quote or a line break inside the path or label"),
])
def test_bad_manifests_name_the_line(dataset, edit, problem):
    manifest, _ = dataset
    manifest.write_bytes(edit(manifest.read_text()))
    with pytest.raises(data.DataError, match=rf"{manifest} {problem}"):
        data.load_splits(str(manifest))


def test_odd_but_valid_manifests_read_the_same_clips(dataset):
    manifest, rows = dataset
    expected = [(c.path, c.label, c.split) for c in data.read_manifest(manifest)]
    text = manifest.read_text()
    padded_header = text.replace("path,label,split", " path , label , split ,notes")
    for variant in (("\ufeff" + text).encode(), text.replace("\n", "\r\n").encode(),
                    text.replace("\n", "\n\n").encode(), padded_header.encode()):
        manifest.write_bytes(variant)
        assert [(c.path, c.label, c.split) for c in data.read_manifest(manifest)] == expected
    # a label with a comma, quoted; spaces and non-ASCII in a file name
    (manifest.parent / rows[0][0]).rename(manifest.parent / "audio/ä 0 ñ.wav")
    edited = [["audio/ä 0 ñ.wav", "a, the first", "train"]] + rows[1:]
    edited = [[p, "a, the first" if label == "a" else label, split] for p, label, split in edited]
    write_manifest(manifest, edited)
    splits, classes = data.load_splits(str(manifest))
    assert classes == ["a, the first", "b", "c"]
    assert splits["train"][0].path.endswith("audio/ä 0 ñ.wav")


def test_a_nan_file_stops_a_training_script_before_any_training(dataset, capsys):
    import pairtune
    manifest, rows = dataset
    wave = noise()
    wave[7] = np.inf
    write_clip(manifest.parent / rows[5][0], wave, subtype="FLOAT")
    with pytest.raises(data.DataError, match=r"line 7: .*b1.wav: 1 NaN or infinite sample"):
        pairtune.main(["--dataset", str(manifest), "--backbone", "tiny", "--epochs", "1", "--device", "cpu",
                       "--out", str(manifest.parent / "run")])
    assert not (manifest.parent / "run" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------------
# Fuzz: a few hundred corrupted variants of one valid dataset
# ----------------------------------------------------------------------------------------------

def corrupt_file(raw: bytes, rng: random.Random) -> tuple[str, bytes, bool]:
    """(kind, new bytes, must_fail) for one WAV file."""
    kind = rng.choice(["truncate", "header-bytes", "random", "empty", "nan", "inf", "channels", "data-size",
                       "silent", "rate"])
    if kind == "truncate":
        return kind, raw[:rng.randrange(0, len(raw) - 2)], True
    if kind == "header-bytes":  # anything may come of a scrambled header: a named error or a usable file
        edited = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            edited[rng.randrange(0, 44)] = rng.randrange(256)
        return kind, bytes(edited), False
    if kind == "random":
        return kind, rng.randbytes(rng.randrange(1, 3000)), True
    if kind == "empty":
        return kind, b"", True
    if kind in ("nan", "inf"):
        wave = noise(seed=rng.randrange(1000))
        wave[rng.randrange(len(wave))] = np.nan if kind == "nan" else -np.inf
        buffer = io.BytesIO()
        sf.write(buffer, wave, RATE, format="WAV", subtype=rng.choice(["FLOAT", "DOUBLE"]))
        return kind, buffer.getvalue(), True
    if kind == "channels":
        return kind, with_field(raw, b"fmt ", 10, "<H", 0), True
    if kind == "data-size":
        return kind, with_field(raw, b"data", 4, "<I", len(raw) + rng.randrange(2, 10 ** 6)), True
    if kind == "rate":  # an odd but valid sample rate (and its byte rate, 16-bit mono): resampled
        rate = rng.choice([1000, 8000, 11025, 44100, 96000])
        return kind, with_field(with_field(raw, b"fmt ", 12, "<I", rate), b"fmt ", 16, "<I", 2 * rate), False
    return kind, wav_bytes(np.zeros(4000, np.float32)), False  # silent: used, and reported


def corrupt_manifest(rows, rng: random.Random):
    """(kind, text or bytes, the rows it means or None where it must be a DataError)."""
    rows = [list(r) for r in rows]
    i = rng.randrange(len(rows))
    kind = rng.choice(["bom", "crlf", "blank-lines", "duplicate", "latin1", "utf16", "nul", "extra-field",
                       "missing-field", "empty-label", "empty-path", "unknown-split", "bad-fold", "quoted-comma",
                       "open-quote", "no-header", "spaces-unicode", "extra-column"])

    def as_text(rows, header="path,label,split"):
        lines = [header] + [",".join(f'"{v}"' if "," in v else v for v in r) for r in rows]
        return "\n".join(lines) + "\n"

    if kind == "bom":
        return kind, ("\ufeff" + as_text(rows)).encode(), rows
    if kind == "crlf":
        return kind, as_text(rows).replace("\n", "\r\n").encode(), rows
    if kind == "blank-lines":
        return kind, as_text(rows).replace("\n", "\n\n", rng.randint(1, 5)).encode(), rows
    if kind == "duplicate":
        return kind, as_text(rows + [[rows[i][0], rows[rng.randrange(len(rows))][1], "test"]]).encode(), None
    if kind == "latin1":
        rows[i][1] += "é"
        return kind, as_text(rows).encode("latin-1"), None
    if kind == "utf16":
        return kind, as_text(rows).encode(rng.choice(["utf-16", "utf-16-le", "utf-32"])), None
    if kind == "nul":
        text = as_text(rows)
        at = rng.randrange(len(text))
        return kind, (text[:at] + "\0" + text[at:]).encode(), None
    if kind == "extra-field":
        rows[i].append("extra")
        return kind, as_text(rows).encode(), None
    if kind == "missing-field":
        rows[i] = rows[i][:rng.randint(1, 2)]
        return kind, as_text(rows).encode(), None
    if kind == "empty-label":
        rows[i][1] = rng.choice(["", "  "])
        return kind, as_text(rows).encode(), None
    if kind == "empty-path":
        rows[i][0] = ""
        return kind, as_text(rows).encode(), None
    if kind == "unknown-split":
        rows[i][2] = rng.choice(["Train", "dev", "", "validation"])
        return kind, as_text(rows).encode(), None
    if kind == "bad-fold":
        text = as_text([r + ["1"] for r in rows], "path,label,split,fold").replace(",1\n", ",x\n", 1)
        return kind, text.encode(), None
    if kind == "quoted-comma":  # a label with a comma, quoted as CSV does: read as written
        label = rows[i][1]
        rows = [[p, f"{lab}, {lab}" if lab == label else lab, s] for p, lab, s in rows]
        return kind, as_text(rows).encode(), rows
    if kind == "open-quote":
        text = as_text(rows)
        at = text.index("\n") + 1 + rng.randrange(len(text) - text.index("\n") - 2)
        return kind, (text[:at] + '"' + text[at:]).encode(), None  # strict CSV, and no quote inside a value
    if kind == "no-header":
        return kind, as_text(rows).split("\n", 1)[1].encode(), None
    if kind == "extra-column":
        return kind, as_text([r + ["note, with comma"] for r in rows], "path,label,split,notes").encode(), rows
    return kind, as_text(rows).encode(), rows  # spaces-unicode: the file renamed by the caller


def test_fuzz_corrupted_manifests_and_files_end_in_a_named_error_or_the_right_clips(dataset, tmp_path):
    manifest, rows = dataset
    rng = random.Random(2024)
    pristine = {r[0]: (manifest.parent / r[0]).read_bytes() for r in rows}
    outcomes = {}
    for variant in range(400):
        folder = tmp_path / f"v{variant}"
        shutil.copytree(manifest.parent / "audio", folder / "audio")
        variant_rows = [list(r) for r in rows]
        if variant % 2 == 0:  # a corrupted audio file
            target = rng.choice(rows)[0]
            kind, content, must_fail = corrupt_file(pristine[target], rng)
            (folder / target).write_bytes(content)
            text = manifest.read_bytes()
            expected = None if must_fail else "either"
            named = [str(folder / target), f"line {line_of(rows, target)}"]
        else:  # a corrupted manifest
            kind, text, expected = corrupt_manifest(rows, rng)
            if kind == "spaces-unicode":
                i = rng.randrange(len(rows))
                new_name = f"audio/{rng.choice(['с пробелом', 'a b', 'naïve', '日本'])} {i}.wav"
                (folder / rows[i][0]).rename(folder / new_name)
                variant_rows[i][0] = new_name
                expected = variant_rows
                text = ("path,label,split\n" + "".join(",".join(r) + "\n" for r in variant_rows)).encode()
            named = [str(folder / "manifest.csv")]
        (folder / "manifest.csv").write_bytes(text)
        try:
            splits, classes = data.load_splits(str(folder / "manifest.csv"))
            for split in splits.values():  # and decode every clip as training would
                for clip in split:
                    wave = data.load_audio(clip.path, RATE)
                    assert wave.dtype == np.float32 and np.isfinite(wave).all() and len(wave) > 0
            outcome, message = "ok", ""
        except data.DataError as error:
            outcome, message = "DataError", str(error)
            assert all(name in message for name in named), (variant, kind, message)
        if outcome == "ok":
            assert expected is not None, (variant, kind, "accepted a manifest or file that must be refused")
            if isinstance(expected, list):  # never a silently different set of clips
                got = sorted((c.path, c.label, c.split) for s in splits.values() for c in s)
                want = sorted((str(folder / p), label, split) for p, label, split in expected)
                assert got == want, (variant, kind)
        else:
            assert not isinstance(expected, list), (variant, kind, "refused a valid manifest", message)
        outcomes.setdefault(kind, {}).setdefault(outcome, 0)
        outcomes[kind][outcome] += 1
        shutil.rmtree(folder)
    print("fuzz outcomes:", dict(sorted(outcomes.items())))
    assert sum(n for kinds in outcomes.values() for n in kinds.values()) == 400
    assert len(outcomes) >= 25  # every kind of corruption was drawn


def test_an_odd_but_valid_dataset_trains_through_both_arms(dataset):
    """A BOM, a quoted label with a comma, non-ASCII names, a 6-ms clip, a silent clip and an 8-kHz
    file, through one epoch of PairTune (and its probe) and FineTune on the tiny random backbone."""
    import finetune
    import pairtune
    import probe
    manifest, rows = dataset
    root = manifest.parent
    write_clip(root / rows[0][0], noise(100 / RATE))  # 6 ms: fewer samples than the receptive field
    write_clip(root / rows[1][0], np.zeros(4000, np.float32))  # silent
    sf.write(root / rows[4][0], noise(), 8000)  # another sample rate, resampled at load
    (root / rows[5][0]).rename(root / "audio/b ü 1.wav")
    rows = [["audio/b ü 1.wav", *rows[5][1:]] if i == 5 else r for i, r in enumerate(rows)]
    rows = [[p, "a, first" if label == "a" else label, split] for p, label, split in rows]
    write_manifest(manifest, rows, encoding="utf-8-sig")
    common = ["--dataset", str(manifest), "--backbone", "tiny", "--epochs", "1", "--max-seconds", "0.5",
              "--device", "cpu", "--num-workers", "0", "--lr", "1e-3"]
    pairtune.main(common + ["--loss", "eager", "--batch-size", "6", "--clips-per-class", "2", "--out",
                            str(root / "pt")])
    probe.main(["--ckpt", str(root / "pt"), "--epochs", "2", "--lrs", "1e-2", "--batch-sizes", "4", "--device", "cpu",
                "--num-workers", "0"])
    finetune.main(common + ["--batch-size", "4", "--out", str(root / "ft")])
    for results in (root / "pt/probe/results.json", root / "ft/results.json"):
        saved = json.loads(results.read_text())
        assert saved["classes"] == ["a, first", "b", "c"] and 0 <= saved["test_acc"] <= 1
    line = json.loads((root / "pt/log.jsonl").read_text().splitlines()[0])
    assert np.isfinite(line["train_loss"]) and np.isfinite(line["valid_metric_acc"])


def test_the_probe_of_a_run_made_with_skip_bad_skips_the_same_files(dataset):
    """run_all.sh passes EXTRA_ARGS (--skip-bad among them) to the training scripts only: the probe of
    a run must leave out the files the run left out, not stop on them, nor evaluate other clips."""
    import pairtune
    import probe
    manifest, rows = dataset
    wave = noise()
    wave[3] = np.nan
    write_clip(manifest.parent / rows[3][0], wave, subtype="FLOAT")  # one of class a's test clips
    run = manifest.parent / "pt"
    with pytest.warns(UserWarning, match="a3.wav"):
        pairtune.main(["--dataset", str(manifest), "--backbone", "tiny", "--epochs", "1", "--max-seconds", "0.5",
                       "--device", "cpu", "--num-workers", "0", "--loss", "eager", "--batch-size", "6",
                       "--clips-per-class", "2", "--skip-bad", "--out", str(run)])
        probe.main(["--ckpt", str(run), "--epochs", "2", "--lrs", "1e-2", "--batch-sizes", "4", "--device", "cpu",
                    "--num-workers", "0"])
    results = json.loads((run / "probe/results.json").read_text())
    assert sum(map(sum, results["confusion"])) == 2  # 3 test clips, less the skipped one
    assert json.loads((run / "probe/run.json").read_text())["args"]["skip_bad"] is True
