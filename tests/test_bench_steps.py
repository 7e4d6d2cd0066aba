"""bench.py --steps: one PairTune training step against one FineTune step, on the tiny backbone."""
import re

import bench


def test_steps_table_has_both_arms_and_a_ratio_that_matches_their_times(capsys):
    bench.main(["--steps", "--backbone", "tiny", "--batch-size", "8", "--crop-seconds", "0.5",
                "--repeats", "1", "--rounds", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "B = 8 (2 classes x 4), crop 0.5 s; loss fused" in out
    assert re.search(r"^fused: first call \(compile\) \d+\.\d s$", out, re.M)
    rows = {arm: (float(ms), float(rate))
            for arm, ms, rate in re.findall(r"^\s*(pairtune|finetune)\s+(\d+\.\d{2})\s+(\d+\.\d)$", out, re.M)}
    assert set(rows) == {"pairtune", "finetune"}, out
    for ms, rate in rows.values():
        assert ms > 0
        assert abs(rate - 8 / ms * 1e3) <= 0.05 + 8e3 / ms**2 * 0.005  # clips/s from the printed ms
    ratio = float(re.search(r"^pairtune/finetune (\d+\.\d{3})$", out, re.M).group(1))
    (pairtune, _), (finetune, _) = rows["pairtune"], rows["finetune"]
    # The printed ms are rounded to 0.005, the ratio to 0.0005: it must lie within those bounds.
    assert (pairtune - 5e-4) / (finetune + 5e-4) - 5e-4 <= ratio <= (pairtune + 5e-4) / (finetune - 5e-4) + 5e-4


def test_epoch_rows_are_the_steps_times_batches_plus_each_arms_valid_metric(capsys):
    bench.main(["--steps", "--backbone", "tiny", "--batch-size", "8", "--crop-seconds", "0.5", "--repeats", "1",
                "--rounds", "1", "--device", "cpu", "--loss", "eager", "--train-clips", "20", "--valid-clips", "6",
                "--classes", "3", "--select-by", "centroid"])
    out = capsys.readouterr().out
    steps = {arm: float(ms)
             for arm, ms in re.findall(r"^\s*(pairtune|finetune)\s+(\d+\.\d{2})\s+\d+\.\d$", out, re.M)}
    assert "per epoch: 20 train clips, 6 valid clips, 3 classes" in out
    row = r"^\s*(pairtune|finetune)\s+(\d+)\s+(\d+\.\d{3})\s+(\d+\.\d{3})\s+(\d+\.\d{3})\s+(\S+)$"
    rows = {arm: (int(batches), float(train), float(metric), float(epoch), name)
            for arm, batches, train, metric, epoch, name in re.findall(row, out, re.M)}
    assert set(rows) == {"pairtune", "finetune"}, out
    # P = 2 classes x K = 4 a batch: PairTune's sampler draws max(ceil(20 / 8), ceil(3 / 2)) = 3 batches, FineTune 3
    assert rows["pairtune"][0] == rows["finetune"][0] == 3
    assert rows["pairtune"][4] == "centroid" and rows["finetune"][4] == "classifier"
    for arm, (batches, train, metric, epoch, _) in rows.items():
        assert abs(train - batches * steps[arm] / 1e3) <= 0.0005 + batches * 0.005e-3  # the steps' printed ms
        # a measured time, printed to the ms: on a fast machine the tiny backbone's 6 valid clips can round to 0.000
        assert metric >= 0
        assert abs(epoch - (train + metric)) <= 0.0015
    ratio = float(re.search(r"^epoch pairtune/finetune (\d+\.\d{3})$", out, re.M).group(1))
    (_, _, _, pairtune, _), (_, _, _, finetune, _) = rows["pairtune"], rows["finetune"]
    assert (pairtune - 5e-4) / (finetune + 5e-4) - 5e-4 <= ratio <= (pairtune + 5e-4) / (finetune - 5e-4) + 5e-4
