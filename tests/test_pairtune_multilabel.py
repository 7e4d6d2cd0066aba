"""PairTune on multi-label audio (real FSDD digits mixed, 1-3 a clip; the `tiny` backbone has random
weights): it trains with either multi-label loss, selects its epoch by valid macro mAP, and the logged
metric is reproduced from the saved encoder by an independent computation (sklearn's AP where present)."""
import json

import pytest
import torch
import torch.nn.functional as F

import backbone
import data
import multilabel
import pairtune
import runs

COMMON = ["--backbone", "tiny", "--max-seconds", "1", "--lr", "1e-3", "--loss", "eager", "--device", "cpu",
          "--num-workers", "0", "--batch-size", "16", "--clips-per-class", "4"]


def naive_map(scores, targets):
    """Macro mAP from the definition (precision at each positive's rank, ties cross together), or sklearn's."""
    try:
        from sklearn.metrics import average_precision_score
        return float(average_precision_score(targets.numpy(), scores.numpy(), average="macro"))
    except ImportError:
        total = 0.0
        for c in range(targets.shape[1]):
            s, y = scores[:, c].tolist(), targets[:, c].tolist()
            hits = [sum(1 for t, z in zip(s, y) if t >= s[i] and z) / sum(1 for t in s if t >= s[i])
                    for i in range(len(s)) if y[i]]
            total += sum(hits) / len(hits)
        return total / targets.shape[1]


@pytest.mark.parametrize("kind", ["jaccard", "mulsupcon"])
def test_pairtune_on_mixtures_selects_by_valid_map_and_reproduces_it(mixture_manifest, tmp_path, kind):
    out = tmp_path / kind
    pairtune.main(["--dataset", str(mixture_manifest), *COMMON, "--epochs", "2", "--out", str(out), "--only-best",
                   "--select-by", "centroid", "--centroid-clips-per-class", "8", "--multilabel-loss", kind])
    run = json.loads((out / "run.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("valid_metric_acc" not in line and 0 <= line["valid_metric_map"] <= 1 for line in log)
    assert all(line["train_loss"] > 0 for line in log)  # the multi-label loss ran and was not empty
    best = max(log, key=lambda line: (line["valid_metric_map"], -line["epoch"]))
    assert run["selected_epoch"] == best["epoch"] and "macro mAP" in run["selected_by"]
    assert run["args"]["multilabel_loss"] == kind

    # Recompute the metric from encoder/: class centroids as the mean of the subset's normalised features
    # over the clips carrying each class (a loop), cosine scores, macro mAP by sklearn (or the definition).
    encoder = backbone.load_encoder(str(out / "encoder"))
    splits, classes = data.load_splits(str(mixture_manifest))
    subset = pairtune.centroid_subset(splits["train"], 8)
    train_x, _ = backbone.extract_features(encoder, subset, classes, 1.0, torch.device("cpu"), multilabel=True)
    valid_x, valid_y = backbone.extract_features(encoder, splits["valid"], classes, 1.0, torch.device("cpu"),
                                                 multilabel=True)
    centroids = torch.stack([torch.stack([F.normalize(x, dim=0) for x, clip in zip(train_x, subset)
                                          if name in clip.labels]).mean(0) for name in classes])
    scores = F.normalize(valid_x, dim=1) @ F.normalize(centroids, dim=1).T
    assert naive_map(scores, valid_y) == pytest.approx(best["valid_metric_map"], abs=1e-5)
    assert multilabel.mean_average_precision(scores, valid_y)["map"] == pytest.approx(best["valid_metric_map"],
                                                                                     abs=1e-5)


def test_centroid_subset_takes_clips_while_one_of_their_labels_is_short():
    clips = [data.Clip(f"/{i}", label, "train") for i, label in enumerate(["a;b", "a", "a;c", "b", "c", "c"])]
    chosen = pairtune.centroid_subset(clips, 1)
    assert [c.path for c in chosen] == ["/0", "/2"]  # /0 gives a and b; /1 adds nothing; /2 gives c


def test_epoch_centroids_sum_each_clip_into_every_class_it_carries():
    centroids = pairtune.EpochCentroids(3, 2, torch.device("cpu"))
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    means, counts = centroids.add(r, targets) or centroids.result()
    assert counts.tolist() == [2, 2, 0]
    torch.testing.assert_close(means, torch.tensor([[1.0, 0.5], [0.5, 0.5], [0.0, 0.0]]))


def test_a_checkpoint_from_before_multilabel_loss_still_resumes():
    # A pairtune checkpoint written before --multilabel-loss has no such argument: it ran as jaccard would
    assert runs.settings_differences({"epochs": 2}, {"epochs": 4, "multilabel_loss": "jaccard"}) == []
    assert runs.settings_differences({"epochs": 2}, {"epochs": 4, "multilabel_loss": "mulsupcon"}) == [
        "--multilabel-loss 'jaccard' (now 'mulsupcon')"]
    assert runs.settings_differences({"epochs": 2}, {"epochs": 4}) == []  # finetune.py has no such setting
