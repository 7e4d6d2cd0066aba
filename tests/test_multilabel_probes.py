"""probes.py on multi-label data (multi-hot labels [N, C]): knn_scores against a naive loop written from
its definition and a hand-worked example; k and the linear probe's epoch chosen on valid macro mAP,
checked against mAP computed here from the definition of average precision."""
import math

import pytest
import torch
import torch.nn.functional as F

import multilabel
import probes


def naive_knn_scores(train_x, train_y, query_x, k, temperature):
    """Plain Python, from the definition: the k most cosine-similar train clips (ties: the earlier
    clip), each weighing exp(cos / T); a class's score is the weight of the neighbours carrying it over
    the weight of all k."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]
    train, labels = [unit(row) for row in train_x.tolist()], train_y.tolist()
    scores = []
    for query in query_x.tolist():
        q = unit(query)
        similarity = [sum(a * b for a, b in zip(q, t)) for t in train]
        nearest = sorted(range(len(train)), key=lambda i: (-similarity[i], i))[:k]
        weight = {i: math.exp(similarity[i] / temperature) for i in nearest}
        total = sum(weight.values())
        scores.append([sum(weight[i] for i in nearest if labels[i][c] == 1) / total for c in range(len(labels[0]))])
    return scores


def naive_map(scores, targets):
    """Macro mAP from the definition of AP: over the distinct scores t of a class, high to low, the
    precision of `score >= t` times the recall it gains; the mean over classes with a positive clip."""
    aps = []
    for c in range(len(targets[0])):
        column = [(row[c], truth[c]) for row, truth in zip(scores, targets)]
        positives = sum(truth for _, truth in column)
        if positives == 0:
            continue
        ap, recall_before = 0.0, 0.0
        for t in sorted({score for score, _ in column}, reverse=True):
            above = [truth for score, truth in column if score >= t]
            recall = sum(above) / positives
            ap += (recall - recall_before) * sum(above) / len(above)
            recall_before = recall
        aps.append(ap)
    return sum(aps) / len(aps)


def random_multi_hot(n, n_classes, generator):
    """n rows of 1 to 3 distinct classes."""
    rows = torch.zeros(n, n_classes)
    for row in rows:
        count = int(torch.randint(1, 4, (1,), generator=generator))
        row[torch.randperm(n_classes, generator=generator)[:count]] = 1.0
    return rows


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 4, 9, 500])
def test_knn_scores_equal_a_naive_loop_with_ties_in_similarity(k, seed):
    generator = torch.Generator().manual_seed(seed)
    # Copies of 8 directions whose cosines are exact in floating point: many equal similarities, so the
    # order among tied neighbours (the earlier clip first) decides who is among the k.
    one_hot = torch.eye(4, dtype=torch.float64)[:3]
    halves = (torch.randint(0, 2, (5, 4), generator=generator).double() * 2 - 1) / 2
    directions = torch.cat([one_hot, halves])
    train_x = directions[torch.randint(0, len(directions), (40,), generator=generator)]
    train_y = random_multi_hot(40, 5, generator)
    query_x = torch.cat([directions, torch.randn(12, 4, generator=generator).double()])
    for temperature in (0.07, 1.0):
        ours = probes.knn_scores(train_x, train_y, query_x, k, 5, temperature, chunk=6)  # several chunks
        assert ours.dtype == torch.float64 and ours.shape == (len(query_x), 5)
        expected = torch.tensor(naive_knn_scores(train_x, train_y, query_x, min(k, 40), temperature),
                                dtype=torch.float64)
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_knn_scores_by_hand():
    # Four train clips; query (1, 0); T = 1. Cosines: (1, 0) -> 1, (0, 1) -> 0, (-1, 0) -> -1, (3, 4) -> 0.6.
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 4.0]])
    train_y = torch.tensor([[1.0, 1.0, 0.0],   # classes 0 and 1
                            [0.0, 1.0, 0.0],   # 1
                            [0.0, 0.0, 1.0],   # 2
                            [1.0, 0.0, 1.0]])  # 0 and 2
    query = torch.tensor([[1.0, 0.0]])
    score = lambda k: probes.knn_scores(train_x, train_y, query, k, 3, temperature=1.0)[0].tolist()
    # k = 1: clip 0 alone, weight e: classes 0 and 1 carry all of it.
    assert score(1) == pytest.approx([1.0, 1.0, 0.0])
    # k = 3: clips 0, 3, 1 with weights e = 2.718282, e^0.6 = 1.822119, e^0 = 1; total 5.540401.
    # class 0: (2.718282 + 1.822119) / 5.540401; class 1: (2.718282 + 1) / 5.540401; class 2: 1.822119 / 5.540401
    assert score(3) == pytest.approx([0.819508, 0.671122, 0.328878], abs=1e-6)
    # k = 4 (every clip): clip 2 adds e^-1 = 0.367879 to class 2 and to the total (5.908280).
    assert score(4) == pytest.approx([0.768481, 0.629334, 0.370666], abs=1e-6)


def test_knn_scores_with_class_indices_are_the_one_hot_scores_and_keep_knn_predicts_vote():
    generator = torch.Generator().manual_seed(4)
    train_x, query_x = torch.randn(50, 6, generator=generator), torch.randn(9, 6, generator=generator)
    train_y = torch.randint(0, 4, (50,), generator=generator)
    indices = probes.knn_scores(train_x, train_y, query_x, 7, 4)
    torch.testing.assert_close(indices, probes.knn_scores(train_x, F.one_hot(train_y, 4).float(), query_x, 7, 4))
    torch.testing.assert_close(indices.sum(1), torch.ones(9, dtype=torch.float64))
    assert probes.knn_predict(train_x, train_y, query_x, 7, 4).tolist() == indices.argmax(1).tolist()


def two_clusters(centre_labels, rim_labels):
    """Train: two clusters 90 degrees apart, each a centre clip and four rim clips a few degrees off;
    valid: two clips per cluster, a degree from its centre (the centre is every valid clip's nearest
    train clip, the rest of its cluster the next four)."""
    angles = [0.0, 4.0, -4.0, 8.0, -8.0]
    train_x = torch.tensor([[math.cos(math.radians(base + a)), math.sin(math.radians(base + a))]
                            for base in (0.0, 90.0) for a in angles])
    train_y = torch.tensor([row for cluster in (0, 1) for row in [centre_labels[cluster]] + [rim_labels[cluster]] * 4])
    valid_x = torch.tensor([[math.cos(math.radians(base + a)), math.sin(math.radians(base + a))]
                            for base in (0.0, 90.0) for a in (1.0, -1.0)])
    return train_x, train_y.float(), valid_x


def test_choose_k_picks_the_k_with_the_best_valid_map():
    a, b = [1, 0, 0], [0, 1, 1]  # cluster labels: class 0 alone, classes 1 and 2 together
    train_x, train_y, valid_x = two_clusters(centre_labels=[b, a], rim_labels=[a, b])  # each centre mislabelled
    for valid_y, best in ((torch.tensor([a, a, b, b]).float(), 5),   # valid agrees with the rims: k = 5 wins
                          (torch.tensor([b, b, a, a]).float(), 1)):  # valid agrees with the centres: k = 1 wins
        k, valid_map, by_k = probes.choose_k(train_x, train_y, valid_x, valid_y, 3, grid=(5, 1), temperature=0.07)
        expected = {kk: naive_map(naive_knn_scores(train_x, train_y, valid_x, kk, 0.07), valid_y.tolist())
                    for kk in (1, 5)}
        assert by_k == pytest.approx(expected, abs=1e-6) and expected[best] == 1.0 and expected[6 - best] < 0.6
        assert (k, valid_map) == (best, by_k[best])
    # equal valid mAP: the smaller k
    k, _, by_k = probes.choose_k(train_x, train_y, valid_x, torch.tensor([a, a, b, b]).float(), 3, grid=(5, 4))
    assert by_k[4] == by_k[5] == 1.0 and k == 4


def test_knn_results_multilabel_fields_against_the_naive_loop():
    generator = torch.Generator().manual_seed(7)
    # Features that carry the labels (multi-hot times a random map) plus noise, so k matters.
    project = torch.randn(6, 12, generator=generator)
    split = lambda n: (lambda y: (y @ project + 0.8 * torch.randn(n, 12, generator=generator), y))(
        random_multi_hot(n, 6, generator))
    features = {"train": split(120), "valid": split(40), "test": split(40)}
    results = probes.knn_results(features, 6, grid=(1, 5, 10), temperature=0.07)
    assert "knn_test_acc" not in results and "knn_valid_acc" not in results
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = features["train"], features["valid"], features["test"]
    by_k = {k: naive_map(naive_knn_scores(train_x, train_y, valid_x, k, 0.07), valid_y.tolist()) for k in (1, 5, 10)}
    k = max(by_k, key=lambda key: (round(by_k[key], 6), -key))
    assert results["knn_k"] == k and results["knn_grid"] == pytest.approx({str(kk): v for kk, v in by_k.items()},
                                                                          abs=1e-6)
    assert results["knn_valid_map"] == pytest.approx(by_k[k], abs=1e-6)
    test_scores = naive_knn_scores(train_x, train_y, test_x, k, 0.07)
    assert results["knn_test_map"] == pytest.approx(naive_map(test_scores, test_y.tolist()), abs=1e-6)
    # F1 at the thresholds chosen on valid's scores, counted here clip by clip
    thresholds = multilabel.choose_thresholds(torch.tensor(naive_knn_scores(train_x, train_y, valid_x, k, 0.07)),
                                              valid_y).tolist()
    counts = [[0, 0, 0] for _ in range(6)]  # per class: true positives, false positives, false negatives
    for row, truth in zip(test_scores, test_y.tolist()):
        for c in range(6):
            said, true = row[c] >= thresholds[c], truth[c] == 1
            if said and true:
                counts[c][0] += 1
            elif said:
                counts[c][1] += 1
            elif true:
                counts[c][2] += 1
    tp, fp, fn = (sum(n[i] for n in counts) for i in range(3))
    assert results["knn_test_micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    per_class = [2 * n[0] / (2 * n[0] + n[1] + n[2]) for n, truth in zip(counts, test_y.T) if truth.any()]
    assert results["knn_test_macro_f1"] == pytest.approx(sum(per_class) / len(per_class), abs=1e-6)
    assert 0 <= results["knn_test_micro_f1"] <= 1 and results["knn_temperature"] == 0.07


def test_linear_probe_on_separable_multilabel_features():
    generator = torch.Generator().manual_seed(0)
    # Each class adds its own direction: the classes are linearly separable, one logit each.
    directions = 3 * torch.randn(5, 16, generator=generator)
    make = lambda n: (lambda y: (y @ directions + 0.3 * torch.randn(n, 16, generator=generator), y))(
        random_multi_hot(n, 5, generator))
    (train_x, train_y), (valid_x, valid_y) = make(200), make(80)
    state, valid_map, valid_loss, epoch = probes.train_linear(train_x, train_y, valid_x, valid_y, 5, lr=0.05,
                                                              batch_size=32, epochs=30, seed=0)
    assert valid_map > 0.99 and 1 <= epoch <= 30
    head = torch.nn.Linear(16, 5)
    head.load_state_dict(state)
    with torch.no_grad():
        logits = head(valid_x)
    # the returned numbers are those of the returned state
    assert valid_map == multilabel.mean_average_precision(torch.sigmoid(logits.double()), valid_y)["map"]
    assert valid_map == pytest.approx(naive_map(torch.sigmoid(logits.double()).tolist(), valid_y.tolist()), abs=1e-9)
    # binary cross-entropy by formula: -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))) = log(1 + e^x) - y x
    x = logits.double()
    bce = (torch.logaddexp(torch.zeros_like(x), x) - valid_y * x).mean().item()
    assert valid_loss == pytest.approx(bce, rel=1e-4)
    # the same call again: the same answer (seeded)
    again = probes.train_linear(train_x, train_y, valid_x, valid_y, 5, lr=0.05, batch_size=32, epochs=30, seed=0)
    assert (again[1], again[2], again[3]) == (valid_map, valid_loss, epoch)


def test_a_class_every_neighbour_carries_scores_exactly_one():
    # Ties decide AP: the k = 5 neighbours all carrying class 0 must give exactly 1 (and class 2, carried by
    # none, exactly 0), whatever the weights, so that such queries tie.
    generator = torch.Generator().manual_seed(3)
    train_x, query_x = torch.randn(30, 8, generator=generator), torch.randn(25, 8, generator=generator)
    train_y = torch.zeros(30, 3)
    train_y[:, 0] = 1.0
    train_y[::2, 1] = 1.0
    scores = probes.knn_scores(train_x, train_y, query_x, 5, 3)
    assert (scores[:, 0] == 1.0).all() and (scores[:, 2] == 0.0).all()
