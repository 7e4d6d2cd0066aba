"""The k-NN probe (probes.py) against a brute-force k-NN written here independently, ties included, and
on hand-made features where the linear probe wins and the k-NN loses, and the other way round."""
import math

import pytest
import torch

import probes


def brute_force_knn(train_x, train_y, query_x, k, n_classes, temperature):
    """Plain Python: cosine to every train clip, the k most similar (ties: the earlier train clip),
    votes exp(cos / T) per class, the class with most votes (ties: the lower class index)."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]
    train = [unit(row) for row in train_x.tolist()]
    predictions = []
    for query in query_x.tolist():
        q = unit(query)
        similarity = [sum(a * b for a, b in zip(q, t)) for t in train]
        nearest = sorted(range(len(train)), key=lambda i: (-similarity[i], i))[:k]
        votes = [0.0] * n_classes
        for i in nearest:
            votes[int(train_y[i])] += math.exp(similarity[i] / temperature)
        predictions.append(max(range(n_classes), key=lambda c: (votes[c], -c)))
    return predictions


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 5, 20, 500])
def test_knn_equals_brute_force_with_ties_in_similarity_and_in_votes(k, seed):
    generator = torch.Generator().manual_seed(seed)
    # Train clips are copies of 8 unit directions whose similarities are exact in floating point
    # (one-hot vectors and (+-1, +-1, +-1, +-1) / 2): many exactly equal similarities, and equal
    # votes between classes holding equal copies. Queries: the directions themselves, and random ones.
    one_hot = torch.eye(4, dtype=torch.float64)[:3]
    halves = (torch.randint(0, 2, (5, 4), generator=generator).double() * 2 - 1) / 2
    directions = torch.cat([one_hot, halves])
    train_x = directions[torch.randint(0, len(directions), (60,), generator=generator)]
    train_y = torch.randint(0, 3, (60,), generator=generator)
    query_x = torch.cat([directions, -directions, torch.randn(20, 4, generator=generator).double()])
    for temperature in (0.07, 1.0):
        ours = probes.knn_predict(train_x, train_y, query_x, k, 3, temperature, chunk=7)  # several chunks
        assert ours.tolist() == brute_force_knn(train_x, train_y, query_x, min(k, 60), 3, temperature)


def test_equal_votes_go_to_the_lower_class_and_equal_similarities_to_the_earlier_clip():
    train_x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.0]])
    # Two identical train clips, classes 2 and 0: with k = 1 the earlier one (class 2) is nearest;
    # with k = 2 both vote equally and class 0, the lower index, wins.
    assert probes.knn_predict(train_x, torch.tensor([2, 0, 1]), query, 1, 3).tolist() == [2]
    assert probes.knn_predict(train_x, torch.tensor([2, 0, 1]), query, 2, 3).tolist() == [0]


def test_k_is_chosen_on_valid_ties_to_the_smaller_and_test_is_scored_with_it():
    # Valid answers k = 1 and k = 3 alike; k = 5 lets the big class outvote the query's own.
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])
    train_y = torch.tensor([0, 1, 1, 1, 1])
    valid = (torch.tensor([[1.0, 0.05]]), torch.tensor([0]))
    k, valid_acc, by_k = probes.choose_k(train_x, train_y, *valid, 2, grid=(5, 3, 1), temperature=1.0)
    assert by_k == {1: 1.0, 3: 1.0, 5: 0.0} and (k, valid_acc) == (1, 1.0)
    results = probes.knn_results({"train": (train_x, train_y), "valid": valid,
                                  "test": (torch.tensor([[0.9, 0.1], [0.0, 2.0]]), torch.tensor([0, 1]))},
                                 2, grid=(5, 3, 1), temperature=1.0)
    assert results["knn_k"] == 1 and results["knn_test_acc"] == 1.0 and results["knn_grid"]["5"] == 0.0


def linear_probe_accuracy(train, valid, test, n_classes):
    state, *_ = probes.train_linear(*train, *valid, n_classes, lr=0.05, batch_size=32, epochs=100, seed=0)
    head = torch.nn.Linear(train[0].shape[1], n_classes)
    head.load_state_dict(state)
    with torch.no_grad():
        return (head(test[0]).argmax(1) == test[1]).float().mean().item()


def knn_accuracy(train, valid, test, n_classes):
    return probes.knn_results({"train": train, "valid": valid, "test": test}, n_classes)["knn_test_acc"]


def split_three(x, y):
    return (x[0::3], y[0::3]), (x[1::3], y[1::3]), (x[2::3], y[2::3])


def test_linear_wins_where_the_class_is_one_small_direction_among_large_noise():
    # The label is the sign of the last coordinate (0.3 away from 0); the other 8 carry large noise,
    # so the nearest clips by angle are anyone's. A linear layer reads the one coordinate.
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (600,), generator=generator)
    x = torch.cat([3 * torch.randn(600, 8, generator=generator), (0.6 * y - 0.3).unsqueeze(1)], dim=1)
    train, valid, test = split_three(x, y)
    linear, nearest = linear_probe_accuracy(train, valid, test, 2), knn_accuracy(train, valid, test, 2)
    assert linear >= 0.95 and nearest <= 0.75, (linear, nearest)


def test_knn_wins_where_classes_alternate_around_the_circle():
    # Eight clusters around the circle, every 45 degrees, their classes alternating 0, 1, 0, 1, ...:
    # no linear layer separates them (at best about 5 clusters of 8), neighbours do.
    generator = torch.Generator().manual_seed(1)
    cluster = torch.randint(0, 8, (600,), generator=generator)
    y = cluster % 2
    angle = cluster * math.pi / 4 + 0.1 * torch.randn(600, generator=generator)
    x = torch.stack([angle.cos(), angle.sin()], dim=1)
    train, valid, test = split_three(x, y)
    linear, nearest = linear_probe_accuracy(train, valid, test, 2), knn_accuracy(train, valid, test, 2)
    assert nearest >= 0.95 and linear <= 0.7, (linear, nearest)
