"""Model selection in both arms: PairTune keeps its best-valid encoder under the same rule as
FineTune (ties: the earlier epoch), its per-epoch valid metrics are right, and no arm reads test
before its model is final."""
import argparse
import json

import numpy as np
import pytest
import torch
import transformers

import backbone
import data
import finetune
import pairtune
import probe
import probes
import runs
from losses import supcon_loss


def weight_sum(model):
    return sum(float(p.detach().double().sum()) for p in model.parameters())


def test_pairtune_keeps_the_epoch_where_valid_peaks(demo_manifest, tmp_path, monkeypatch):
    # The valid metric is scripted to peak at epoch 2 (and tie at epoch 4): encoder/ must hold the
    # weights of epoch 2, encoder-last/ those of epoch 4.
    scripted = iter([0.30, 0.70, 0.50, 0.70])
    weights_at_epoch = []

    def fake_metric(encoder, *args, **kwargs):
        weights_at_epoch.append(weight_sum(encoder.model))
        return next(scripted)

    monkeypatch.setattr(pairtune, "valid_accuracy", fake_metric)
    out = tmp_path / "run"
    pairtune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "4", "--max-seconds", "1",
                   "--lr", "1e-3", "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--out", str(out)])
    run = json.loads((out / "run.json").read_text())
    assert run["selected_epoch"] == 2 and run["selected_valid_acc"] == 0.7 and run["finished"]
    best = transformers.AutoModel.from_pretrained(out / "encoder")
    last = transformers.AutoModel.from_pretrained(out / "encoder-last")
    assert weight_sum(best) == pytest.approx(weights_at_epoch[1], rel=1e-9)
    assert weight_sum(last) == pytest.approx(weights_at_epoch[3], rel=1e-9)
    assert weight_sum(best) != pytest.approx(weight_sum(last), rel=1e-9)  # training moved the weights
    assert not list(out.glob("best-e*.pt")) and not (out / "checkpoint.pt").exists()


def test_saved_encoder_reproduces_its_logged_valid_accuracy(demo_manifest, tmp_path):
    # --select-by centroid (the default before epoch-centroid): its metric is a function of the weights alone
    out = tmp_path / "run"
    pairtune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "3", "--max-seconds", "1",
                   "--lr", "1e-3", "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--out", str(out),
                   "--only-best", "--seed", "4", "--select-by", "centroid"])
    run = json.loads((out / "run.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda line: (line["valid_metric_acc"], -line["epoch"]))
    assert run["selected_epoch"] == best["epoch"] and not (out / "encoder-last").exists()
    # reload encoder/ and recompute the selection metric from scratch
    encoder = backbone.load_encoder(str(out / "encoder"))
    splits, classes = data.load_splits(str(demo_manifest))
    args = pairtune.parse_args(["--dataset", str(demo_manifest), "--max-seconds", "1", "--select-by", "centroid"])
    args.num_workers = 0
    centroid_clips = pairtune.centroid_subset(splits["train"], args.centroid_clips_per_class)
    again = pairtune.valid_accuracy(encoder, centroid_clips, splits["valid"], classes, args, torch.device("cpu"))
    assert again == pytest.approx(best["valid_metric_acc"], abs=1e-6)


def test_pairtune_select_by_probe_records_and_reproduces_its_metric(demo_manifest, tmp_path):
    out = tmp_path / "run"
    pairtune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "2", "--max-seconds", "1",
                   "--lr", "1e-3", "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--out", str(out),
                   "--select-by", "probe", "--seed", "5"])
    run = json.loads((out / "run.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda line: (line["valid_metric_acc"], -line["epoch"]))
    assert run["selected_epoch"] == best["epoch"] and "probe" in run["selected_by"]
    # `probe`, the old name, is the linear probe of probes.py now, and is recorded as such
    assert run["args"]["select_by"] == "linear" and {line["valid_metric"] for line in log} == {"linear"}
    encoder = backbone.load_encoder(str(out / "encoder"))
    splits, classes = data.load_splits(str(demo_manifest))
    args = pairtune.parse_args(["--dataset", str(demo_manifest), "--max-seconds", "1", "--select-by", "probe"])
    args.num_workers = 0
    subset = pairtune.centroid_subset(splits["train"], args.centroid_clips_per_class)
    again = pairtune.valid_accuracy(encoder, subset, splits["valid"], classes, args, torch.device("cpu"))
    assert again == pytest.approx(best["valid_metric_acc"], abs=1e-6)


# ----------------------------------------------------------------------------------------------
# The three per-epoch metrics, on hand-made features
# ----------------------------------------------------------------------------------------------

def test_centroid_and_knn_predictions_by_hand():
    unit = lambda rows: torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)
    # class 0 around +x, class 1 around +y; one class-1 outlier sits near +x
    train_x = unit([[1, 0.1], [1, -0.1], [1, 0.0], [0.1, 1], [-0.1, 1], [1, 0.16]])
    train_y = torch.tensor([0, 0, 0, 1, 1, 1])
    valid_x = unit([[1, 0.15], [0.2, 1], [0.7, 0.7]])
    # centroids: class 0 = (1, 0); class 1 ~ (0.42, 0.91), so (1, 0.15) -> 0, (0.7, 0.7) -> 1
    assert pairtune.centroid_predictions(train_x, train_y, valid_x, 2).tolist() == [0, 1, 1]
    # angles from (1, 0.15) (8.5 deg): outlier 9.1, (1, 0.1) 5.7, (1, 0) 0, (1, -0.1) -5.7 deg
    # k = 1: the outlier is nearest, class 1; k = 3: outlier, (1, 0.1), (1, 0) -> two votes for 0
    assert probes.knn_predict(train_x, train_y, valid_x, 1, 2).tolist() == [1, 1, 1]
    assert probes.knn_predict(train_x, train_y, valid_x, 3, 2).tolist() == [0, 1, 1]
    # k = 2: one voter each for (1, 0.15); the more similar voter, the outlier, weighs more
    assert probes.knn_predict(train_x, train_y, valid_x[:1], 2, 2).tolist() == [1]


def test_linear_probe_metric_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1) * 3
    train_y = torch.arange(40) % 4
    train_x = centres[train_y] + 0.3 * torch.randn(40, 16, generator=g)
    valid_y = torch.arange(20) % 4
    valid_x = centres[valid_y] + 0.3 * torch.randn(20, 16, generator=g)
    state = torch.get_rng_state()
    accuracy = pairtune.linear_probe_accuracy(train_x, train_y, valid_x, valid_y, 4)
    assert accuracy == 1.0
    assert accuracy == pairtune.linear_probe_accuracy(train_x, train_y, valid_x, valid_y, 4)  # deterministic
    assert torch.equal(torch.get_rng_state(), state)  # the run's random stream is left where it was


# ----------------------------------------------------------------------------------------------
# epoch-centroid (the default): centroids from the training pass's own r
# ----------------------------------------------------------------------------------------------

def tiny_training(dropout=True):
    """The tiny model (seeded), a head, Adam, and three P x K batches (2 of the 4 classes x 2 clips, waves
    of different lengths; class 3 in none of them), collated as the training loader collates them."""
    torch.manual_seed(0)
    encoder = backbone.load_encoder("tiny")
    if not dropout:  # dropout and LayerDrop off: then a micro-batch's r is the whole batch's
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "dropout", None), float):
                module.dropout = 0.0
        encoder.model.config.layerdrop = 0.0
    head = torch.nn.Linear(encoder.hidden_size, 16)
    rng = np.random.default_rng(3)
    loader = []
    for pair in ((0, 1), (2, 0), (1, 2)):
        labels = [c for c in pair for _ in range(2)]
        waves = [(0.1 * rng.standard_normal(int(rng.integers(2400, 4000)))).astype(np.float32) for _ in labels]
        loader.append(data.CollateTrain(encoder.preprocess)(list(zip(waves, labels))))
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    return encoder, head, optimizer, loader


TRAIN_ARGS = dict(loss="eager", temperature=0.1, mining="ms", epsilon=0.1, lr=1e-3)


def epoch_centroids(micro_batch=None, dropout=True):
    """train_one_epoch's centroids and mean loss over tiny_training's batches."""
    encoder, head, optimizer, loader = tiny_training(dropout)
    centroids = pairtune.EpochCentroids(4, encoder.hidden_size, torch.device("cpu"))
    torch.manual_seed(1)
    loss, clips = pairtune.train_one_epoch(pairtune.Embedder(encoder, head, "fp32"), loader, optimizer,
                                           argparse.Namespace(micro_batch=micro_batch, **TRAIN_ARGS),
                                           torch.device("cpu"), 1, centroids)
    assert clips == 12
    return centroids.result(), loss


def test_epoch_centroids_are_the_mean_r_of_the_epochs_training_batches():
    (centroids, counts), _ = epoch_centroids()
    # By hand: the same steps replayed outside pairtune (same seed, so the same dropout masks), keeping each
    # batch's normalised pooled features as the step computed them, before Adam moves the weights.
    encoder, head, optimizer, loader = tiny_training()
    encoder.train()
    torch.manual_seed(1)
    kept = {c: [] for c in range(4)}
    for inputs, labels in loader:
        r = torch.nn.functional.normalize(encoder(inputs).float(), dim=1)
        for row, label in zip(r.detach(), labels.tolist()):
            kept[label].append(row)
        z = torch.nn.functional.normalize(head(r), dim=1)
        loss = supcon_loss(z, labels, temperature=0.1, mining="ms", epsilon=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert counts.tolist() == [4, 4, 4, 0]
    for c in range(3):
        torch.testing.assert_close(centroids[c], torch.stack(kept[c]).mean(0), rtol=0, atol=1e-6)
    assert not centroids[3].any()
    # A class the pass never saw is never predicted, even for a clip that every real centroid points away from
    # (its zero centroid would otherwise win with a similarity of 0).
    away = -centroids[:3].sum(0, keepdim=True)
    assert (away @ torch.nn.functional.normalize(centroids[:3], dim=1).T < 0).all()
    assert pairtune.nearest_centroid(centroids, counts, away).item() != 3


def test_epoch_centroid_metric_is_the_same_under_gradient_caching():
    (plain, plain_counts), plain_loss = epoch_centroids(dropout=False)
    g = torch.Generator().manual_seed(5)
    valid_x = plain[:3][torch.arange(30) % 3] + 0.5 * torch.randn(30, plain.shape[1], generator=g)
    for micro_batch in (1, 3):
        (cached, cached_counts), cached_loss = epoch_centroids(micro_batch, dropout=False)
        assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
        assert torch.equal(cached_counts, plain_counts)
        torch.testing.assert_close(cached, plain, rtol=0, atol=1e-5)
        assert torch.equal(pairtune.nearest_centroid(cached, cached_counts, valid_x),
                           pairtune.nearest_centroid(plain, plain_counts, valid_x))


def test_pairtune_selects_by_epoch_centroid_by_default_and_encodes_no_train_clip(demo_manifest, tmp_path, monkeypatch):
    encoded = []
    original = backbone.extract_features
    monkeypatch.setattr(backbone, "extract_features",
                        lambda encoder, clips, *args, **kwargs: encoded.append(len(clips)) or
                        original(encoder, clips, *args, **kwargs))
    out = tmp_path / "run"
    pairtune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "2", "--max-seconds", "1",
                   "--lr", "1e-3", "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--out", str(out)])
    splits, _ = data.load_splits(str(demo_manifest))
    assert encoded == [len(splits["valid"])] * 2  # valid alone, once an epoch
    run = json.loads((out / "run.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert run["args"]["select_by"] == "epoch-centroid" and {line["valid_metric"] for line in log} == {"epoch-centroid"}
    assert "valid_metric_acc" in run["selected_by"] and "training pass" in run["selected_by"]
    best = max(log, key=lambda line: (line["valid_metric_acc"], -line["epoch"]))
    assert run["selected_epoch"] == best["epoch"] and run["selected_valid_acc"] == best["valid_metric_acc"]
    assert all("valid_acc" not in line for line in log)  # one key per meaning: valid_acc is FineTune's


def test_select_by_knn_is_the_reported_knn_probe(demo_manifest, tmp_path):
    out = tmp_path / "run"
    pairtune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "2", "--max-seconds", "1",
                   "--lr", "1e-3", "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--out", str(out),
                   "--select-by", "knn", "--knn-k", "5", "--only-best", "--seed", "8"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda line: (line["valid_metric_acc"], -line["epoch"]))
    assert {line["valid_metric"] for line in log} == {"knn"}
    # The selected encoder's features of the train subset and valid, through probes.knn_predict itself
    encoder = backbone.load_encoder(str(out / "encoder"))
    splits, classes = data.load_splits(str(demo_manifest))
    subset = pairtune.centroid_subset(splits["train"], 32)
    cpu = torch.device("cpu")
    train_x, train_y = backbone.extract_features(encoder, subset, classes, 1.0, cpu)
    valid_x, valid_y = backbone.extract_features(encoder, splits["valid"], classes, 1.0, cpu)
    predicted = probes.knn_predict(train_x, train_y, valid_x, 5, len(classes))
    assert (predicted == valid_y).float().mean().item() == pytest.approx(best["valid_metric_acc"], abs=1e-6)
    assert not hasattr(pairtune, "knn_predictions") and not hasattr(pairtune, "probe_predictions")


def test_a_run_started_under_centroid_resumes_under_centroid(demo_manifest, tmp_path):
    # A run begun when centroid was the default (its run.json says so), resumed without --select-by: it keeps
    # its metric rather than being refused for the new default.
    common = ["--dataset", str(demo_manifest), "--backbone", "tiny", "--max-seconds", "1", "--lr", "1e-3",
              "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--seed", "6", "--out", str(tmp_path)]
    pairtune.main(common + ["--epochs", "1", "--select-by", "centroid", "--keep-checkpoint"])
    pairtune.main(common + ["--epochs", "2", "--resume"])
    run = json.loads((tmp_path / "run.json").read_text())
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert run["args"]["select_by"] == "centroid" and [line["valid_metric"] for line in log] == ["centroid"] * 2
    assert pairtune.parse_args(["--dataset", "d", "--resume"]).select_by is None  # decided by main, from run.json


# ----------------------------------------------------------------------------------------------
# Nobody looks at test before the model is final
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def audio_reads(monkeypatch, demo_manifest):
    """Records, in order, which split every decoded audio file belongs to, plus named events."""
    split_of = {c.path: c.split for c in data.read_manifest(demo_manifest)}
    events = []
    original = data.load_audio

    def recording_load_audio(path, sample_rate):
        events.append(split_of[path])
        return original(path, sample_rate)

    monkeypatch.setattr(data, "load_audio", recording_load_audio)
    return events


def test_finetune_reads_test_once_after_selection(demo_manifest, tmp_path, monkeypatch, audio_reads):
    original = finetune.evaluate

    weights = {}  # evaluation -> weight fingerprint

    def recording_evaluate(encoder, head, clips, classes, args, device, desc, **kwargs):
        audio_reads.append(f"evaluate {desc}")
        result = original(encoder, head, clips, classes, args, device, desc, **kwargs)
        weights[len(weights)] = (desc, weight_sum(encoder.model), result[0])
        return result

    monkeypatch.setattr(finetune, "evaluate", recording_evaluate)
    finetune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "2", "--max-seconds", "1",
                   "--lr", "1e-3", "--device", "cpu", "--num-workers", "0", "--out", str(tmp_path / "ft")])
    first_test = audio_reads.index("test")
    assert audio_reads.count("evaluate test") == 1
    assert audio_reads.index("evaluate test") > max(i for i, e in enumerate(audio_reads) if e == "evaluate valid")
    assert first_test > max(i for i, e in enumerate(audio_reads) if e in ("train", "valid"))
    assert audio_reads.count("test") == 80  # every test clip once, nothing before the final model
    valids = [(w, acc) for desc, w, acc in weights.values() if desc == "valid"]
    best_weights = max(enumerate(valids), key=lambda item: (item[1][1], -item[0]))[1][0]
    last = weights[len(weights) - 1]  # keyed by evaluation number
    assert last[0] == "test" and last[1] == pytest.approx(best_weights, rel=1e-12)


def test_pairtune_never_reads_test_and_probe_reads_it_after_its_choice(demo_manifest, tmp_path, monkeypatch,
                                                                      audio_reads):
    out = tmp_path / "pt"
    pairtune.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "1", "--max-seconds", "1",
                   "--lr", "1e-3", "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--out", str(out)])
    assert "test" not in audio_reads and audio_reads.count("valid") == 80
    audio_reads.clear()
    original = probes.train_linear

    def recording_train_linear(*args, **kwargs):
        audio_reads.append("grid point")
        return original(*args, **kwargs)

    original_cache = runs.cached_features

    def recording_cached_features(*args):
        audio_reads.append(f"features {','.join(args[6])}")  # the split names
        return original_cache(*args)

    monkeypatch.setattr(probes, "train_linear", recording_train_linear)
    monkeypatch.setattr(runs, "cached_features", recording_cached_features)
    probe_args = ["--ckpt", str(out), "--lrs", "1e-2", "--batch-sizes", "32", "--epochs", "5", "--device", "cpu",
                  "--num-workers", "0"]
    probe.main(probe_args)
    last_grid_point = max(i for i, e in enumerate(audio_reads) if e == "grid point")
    assert audio_reads.index("test") > last_grid_point and audio_reads.count("test") == 80
    assert audio_reads.index("features test") > last_grid_point
    audio_reads.clear()
    probe.main(probe_args + ["--out", str(out / "probe-again")])  # features now come from the cache
    assert "test" not in audio_reads and audio_reads.index("features test") > audio_reads.index("grid point")


def test_an_interrupted_run_selects_like_an_uninterrupted_one(demo_manifest, tmp_path):
    common = ["--dataset", str(demo_manifest), "--backbone", "tiny", "--max-seconds", "1", "--lr", "1e-3",
              "--loss", "eager", "--device", "cpu", "--num-workers", "0", "--seed", "6", "--select-by", "centroid"]
    pairtune.main(common + ["--epochs", "3", "--out", str(tmp_path / "straight")])
    pairtune.main(common + ["--epochs", "1", "--out", str(tmp_path / "resumed"), "--keep-checkpoint"])
    assert (tmp_path / "resumed" / "best-e1.pt").exists()
    with pytest.raises(SystemExit, match="other settings than it was started with: --select-by 'centroid' .now 'knn'."):
        pairtune.main(common + ["--epochs", "3", "--out", str(tmp_path / "resumed"), "--resume", "--select-by", "knn"])
    pairtune.main(common + ["--epochs", "3", "--out", str(tmp_path / "resumed"), "--resume"])
    straight = json.loads((tmp_path / "straight" / "run.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert resumed["selected_epoch"] == straight["selected_epoch"]
    assert resumed["selected_valid_acc"] == straight["selected_valid_acc"]
    same = [weight_sum(transformers.AutoModel.from_pretrained(tmp_path / run / "encoder"))
            for run in ("straight", "resumed")]
    assert same[0] == pytest.approx(same[1], rel=1e-12)
    assert not list((tmp_path / "straight").glob("best-e*.pt"))  # removed with the checkpoint


def test_an_interrupted_finetune_run_tests_the_same_epoch(demo_manifest, tmp_path):
    common = ["--dataset", str(demo_manifest), "--backbone", "tiny", "--max-seconds", "1", "--lr", "1e-3",
              "--device", "cpu", "--num-workers", "0", "--seed", "7"]
    finetune.main(common + ["--epochs", "3", "--out", str(tmp_path / "straight")])
    finetune.main(common + ["--epochs", "2", "--out", str(tmp_path / "resumed"), "--keep-checkpoint"])
    refused = "other settings than it was started with: --lr 0.001 .now 0.01.; --seed 7 .now 8."
    with pytest.raises(SystemExit, match=refused):  # each differing flag named, with both values
        finetune.main(common + ["--epochs", "3", "--out", str(tmp_path / "resumed"), "--resume", "--lr", "1e-2",
                                "--seed", "8"])
    # how long, and how fast evaluation batches go, may change: the numbers stay the uninterrupted run's
    finetune.main(common + ["--epochs", "3", "--out", str(tmp_path / "resumed"), "--resume", "--eval-batch-size", "5"])
    straight, resumed = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("straight", "resumed"))
    assert (resumed["selected_epoch"], resumed["test_acc"]) == (straight["selected_epoch"], straight["test_acc"])
    assert not list((tmp_path / "straight").glob("best-e*.pt"))


@pytest.mark.parametrize("arm", ["pairtune", "pairtune-epoch-centroid", "finetune"])
def test_valid_metric_decodes_its_clips_once_and_selects_as_before(arm, demo_manifest, tmp_path, monkeypatch):
    # --eval-cache-mb keeps the valid metric's decoded inputs between epochs: the same log, the same
    # weights, and each clip decoded once instead of once an epoch (--eval-cache-mb 0, the old way).
    decoded = []
    decode = data.EvalClips.__getitem__
    monkeypatch.setattr(data.EvalClips, "__getitem__", lambda self, i: decoded.append(i) or decode(self, i))
    script = finetune if arm == "finetune" else pairtune
    # pairtune: centroid decodes a train subset and valid; epoch-centroid (the default) valid alone
    extra = {"pairtune": ["--loss", "eager", "--select-by", "centroid"], "pairtune-epoch-centroid": ["--loss", "eager"],
             "finetune": []}[arm]
    runs_made = {}
    for cache_mb in ("1024", "0"):
        decoded.clear()
        out = tmp_path / f"cache-{cache_mb}"
        script.main(["--dataset", str(demo_manifest), "--backbone", "tiny", "--epochs", "3", "--max-seconds", "1",
                     "--lr", "1e-3", "--device", "cpu", "--num-workers", "0", "--out", str(out), "--seed", "2",
                     "--eval-cache-mb", cache_mb] + extra)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        key = "valid_acc" if arm == "finetune" else "valid_metric_acc"
        runs_made[cache_mb] = ([(line["train_loss"], line[key]) for line in log],
                               (out / "encoder" / "model.safetensors").read_bytes(), len(decoded))
    splits, _ = data.load_splits(str(demo_manifest))
    metric_clips = len(splits["valid"]) + (len(pairtune.centroid_subset(splits["train"], 32)) if arm == "pairtune"
                                           else 0)
    # FineTune's final encoder, at the end: train and valid for its k-NN probe, then test
    read_once = 0 if arm != "finetune" else len(splits["train"]) + len(splits["valid"]) + len(splits["test"])
    assert runs_made["1024"][:2] == runs_made["0"][:2]
    assert runs_made["1024"][2] == metric_clips + read_once
    assert runs_made["0"][2] == 3 * metric_clips + read_once
