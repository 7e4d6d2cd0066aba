"""Nothing lost: eval.py and prepare.py write over their own earlier outputs only, never over a file the
user put there or edited since (outdir.write_owned), and one damaged run file does not stop a report."""
import json
import shutil

from conftest import run_script
from test_eval import ev, write_run

USERS = "# my notes on these runs\n"


def error_line(stderr):
    """The one line a refusal prints."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_report_leaves_the_users_own_report_md_alone(tmp_path, capsys):
    write_run(tmp_path, "gtzan/ft/s0")
    (tmp_path / "report").mkdir()
    (tmp_path / "report/report.md").write_text(USERS)
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert str(tmp_path / "report/report.md") in error_line(captured.err) and captured.out == ""
    assert (tmp_path / "report/report.md").read_text() == USERS
    assert sorted(path.name for path in (tmp_path / "report").iterdir()) == ["report.md"]  # no half report


def test_table_leaves_the_users_own_table_md_alone(tmp_path):
    write_run(tmp_path, "gtzan/ft/s0")
    (tmp_path / "table.md").write_text(USERS)
    refused = run_script("eval.py", "table", tmp_path, check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert str(tmp_path / "table.md") in error_line(refused.stderr)
    assert (tmp_path / "table.md").read_text() == USERS
    assert not (tmp_path / "table.csv").exists() and not (tmp_path / "table.json").exists()


def test_prepare_leaves_the_users_own_manifest_alone_and_replaces_its_own(demo_manifest, tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "manifest.csv").write_text("path,label,split\nmine.wav,a,train\n")
    refused = run_script("prepare.py", "demo", "--out", users, check=False)
    assert refused.returncode == 1 and str(users / "manifest.csv") in error_line(refused.stderr)
    assert (users / "manifest.csv").read_text() == "path,label,split\nmine.wav,a,train\n"
    assert sorted(path.name for path in users.iterdir()) == ["manifest.csv"]  # refused before any audio
    # Its own earlier outputs (the fixture's folder, copied with its record) are replaced as before.
    own = tmp_path / "own"
    shutil.copytree(demo_manifest.parent, own)
    run_script("prepare.py", "demo", "--out", own)
    assert (own / "manifest.csv").read_bytes() == demo_manifest.read_bytes()


def test_a_damaged_log_line_is_skipped_with_a_warning_and_the_report_goes_on(tmp_path, capsys):
    logs = {0: [0.1, 0.2, 0.3], 1: [0.2, 0.4, 0.5]}
    for seed, accuracies in logs.items():
        run_dir = write_run(tmp_path, f"gtzan/ft/s{seed}", seed=seed).parent
        lines = [json.dumps({"epoch": epoch, "valid_acc": acc}).encode() for epoch, acc in enumerate(accuracies, 1)]
        if seed == 0:  # the first run's: half a line, then binary garbage
            lines[1] = lines[1][:12]
            lines.append(b"\x00\xff\xfe garbage")
        (run_dir / "log.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 0
    damaged = tmp_path / "gtzan/ft/s0/log.jsonl"
    warnings = [line for line in capsys.readouterr().err.splitlines() if str(damaged) in line]
    assert len(warnings) == 1 and "lines 2, 4 " in warnings[0]
    curve = json.loads((tmp_path / "report/curves.json").read_text())["gtzan · wav2vec2"]["finetune"]
    assert curve["n"] == [2, 1, 2] and curve["mean"][1] == 40.0  # epoch 2: only seed 1's line
    assert "80.00" in (tmp_path / "report/report.md").read_text()  # Table 2 as before


def test_a_run_json_that_is_not_a_run_record_is_skipped_with_a_warning(tmp_path, capsys):
    write_run(tmp_path, "gtzan/ft/s0", test_acc=0.7)
    write_run(tmp_path, "gtzan/pt/s0", method="pairtune", test_acc=0.9)
    broken = {"cut": '{"stage": "finetune", "finished": true, "da', "brackets": "[" * 100_000,
              "args": json.dumps({"stage": "finetune", "finished": True, "dataset": "gtzan", "args": "seed 1"})}
    for name, text in broken.items():
        write_run(tmp_path, f"gtzan/ft/{name}", seed=5, test_acc=0.1)
        (tmp_path / f"gtzan/ft/{name}/run.json").write_text(text)
    write_run(tmp_path, "other/ft/s0", dataset="other")
    (tmp_path / "other/ft/s0/run.json").write_text(json.dumps({"stage": "finetune", "finished": True}))  # no dataset
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    for name in broken:
        assert f"skipping {tmp_path / f'gtzan/ft/{name}/run.json'}: " in err
    report = (tmp_path / "report/report.md").read_text()
    assert "| wav2vec2 | FINETUNE | 70.00 (n=1) | 80.00 (n=1) |" in report  # the broken runs left out


def test_a_rerun_replaces_its_own_report_and_refuses_one_edited_since(tmp_path, capsys):
    write_run(tmp_path, "gtzan/ft/s0", test_acc=0.7)
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 0
    first = {path.name: path.read_bytes() for path in (tmp_path / "report").iterdir()}
    write_run(tmp_path, "gtzan/ft/s1", seed=1, test_acc=0.9)
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 0  # over its own files: as before
    assert "80.00 ± 14.14 (n=2)" in (tmp_path / "report/table.md").read_text()
    second = {path.name: path.read_bytes() for path in (tmp_path / "report").iterdir()}
    assert second.keys() == first.keys() and second["table.md"] != first["table.md"]

    edited = (tmp_path / "report/report.md").read_text() + "\nMy reading: seed 1 is the odd one.\n"
    (tmp_path / "report/report.md").write_text(edited)
    write_run(tmp_path, "gtzan/ft/s2", seed=2, test_acc=0.5)
    capsys.readouterr()
    assert ev.main(["report", str(tmp_path), "--device", "cpu"]) == 1
    assert str(tmp_path / "report/report.md") in error_line(capsys.readouterr().err)
    assert (tmp_path / "report/report.md").read_text() == edited
    assert {path.name: path.read_bytes() for path in (tmp_path / "report").iterdir()} == {
        **second, "report.md": edited.encode()}  # nothing else written either
