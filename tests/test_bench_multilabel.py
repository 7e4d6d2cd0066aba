"""bench.py --multilabel: the multi-label loss's rows beside the single-label fused step (small B)."""
import re

import torch

import bench


def test_multilabel_inputs_have_one_to_max_labels_drawn_at_random():
    generator = torch.Generator().manual_seed(0)
    z, targets = bench.make_multilabel_inputs(3000, 16, torch.device("cpu"), generator, n_classes=200, max_labels=6)
    assert z.shape == (3000, 16) and targets.shape == (3000, 200) and targets.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3000))
    assert set(targets.unique().tolist()) == {0.0, 1.0}
    counts = targets.sum(dim=1)
    assert set(counts.unique().tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    # uniform counts: each of the six about 500 times; every label carried, about 3000 * 3.5 / 200 = 52 times
    assert all(400 < (counts == k).sum() < 600 for k in range(1, 7))
    per_label = targets.sum(dim=0)
    assert per_label.min() > 20 and per_label.max() < 90


def test_rows_and_the_ratio_to_the_single_label_step(capsys):
    bench.main(["--multilabel", "--sizes", "48", "--repeats", "1", "--rounds", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "multi-label jaccard, 200 classes, 1-6 labels a clip" in out
    assert re.search(r"^fused: first call \(compile\) \d+\.\d s$", out, re.M)
    assert re.search(r"^single: first call \(compile\) \d+\.\d s$", out, re.M)
    rows = {m: float(ms) for m, ms in re.findall(r"^\s+48\s+(eager|fused|floor|single)\s+(\d+\.\d{2})\s", out, re.M)}
    assert set(rows) == {"eager", "fused", "floor", "single"}, out
    ratio = float(re.search(r"^B = 48: multi-label fused / single-label fused (\d+\.\d{2})$", out, re.M).group(1))
    fused, single = rows["fused"], rows["single"]
    # the printed ms are rounded to 0.005 and the ratio to 0.005
    assert (fused - 5e-3) / (single + 5e-3) - 5e-3 <= ratio <= (fused + 5e-3) / (single - 5e-3) + 5e-3
