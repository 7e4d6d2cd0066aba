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
    assert (pairtune - 0.005) / (finetune + 0.005) - 5e-4 <= ratio <= (pairtune + 0.005) / (finetune - 0.005) + 5e-4
