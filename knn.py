"""The k-NN probe beside the linear one: does the space keep a class's clips near each other?

On L2-normalised pooled features, a clip's class is the weighted vote of its k most similar train
clips (cosine similarity), each neighbour voting exp(similarity / T) for its class (T = 0.07, the
weighting of the X-ARES benchmark's k-NN probe). k is chosen on valid from a small grid (ties: the
smaller k); test is then read once with it. Shared by probe.py (PairTune's and frozen encoders'
probes) and finetune.py (FineTune's encoder features, before its head), so all three methods are
scored the same way.

Ties are broken by order, so a result never depends on the hardware: among equally similar train
clips the earlier one is nearer, and among classes with equal votes the lower class index wins.
"""
import torch
import torch.nn.functional as F

K_GRID = (1, 5, 10, 20)
TEMPERATURE = 0.07


@torch.no_grad()
def knn_predict(train_x, train_y, query_x, k: int, n_classes: int, temperature: float = TEMPERATURE,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted class of each query: the exp(cos / T)-weighted vote of its k nearest train clips."""
    train = F.normalize(train_x.double(), dim=1)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(query_x), chunk):  # [chunk, N] similarities at a time: bounded memory
        similarity = F.normalize(query_x[start:start + chunk].double(), dim=1) @ train.T
        # stable sort: among equal similarities the earlier train clip comes first
        order = torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :k]
        weights = torch.exp(similarity.gather(1, order) / temperature)
        votes = torch.zeros(len(similarity), n_classes, dtype=torch.float64)
        votes.scatter_add_(1, train_y[order], weights)
        predictions.append(first_argmax(votes))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def first_argmax(votes: torch.Tensor) -> torch.Tensor:
    """The lowest index among each row's maxima (torch.argmax does not promise which)."""
    is_max = votes == votes.max(dim=1, keepdim=True).values
    return is_max.to(torch.int8).argmax(dim=1)  # argmax over 0/1: documented to return the first


def choose_k(train_x, train_y, valid_x, valid_y, n_classes: int, grid=K_GRID,
             temperature: float = TEMPERATURE) -> tuple[int, float, dict]:
    """(k, its valid accuracy, {k: valid accuracy}): the best k on valid, ties to the smaller."""
    accuracy = {}
    for k in sorted(grid):
        predicted = knn_predict(train_x, train_y, valid_x, k, n_classes, temperature)
        accuracy[k] = round((predicted == valid_y).double().mean().item(), 6)
    best = max(accuracy, key=lambda k: (accuracy[k], -k))
    return best, accuracy[best], accuracy


def knn_results(features: dict, n_classes: int, grid=K_GRID, temperature: float = TEMPERATURE) -> dict:
    """The k-NN probe on {split: (features, labels)}: k chosen on valid, then test read once."""
    (train_x, train_y), (valid_x, valid_y) = features["train"], features["valid"]
    k, valid_acc, by_k = choose_k(train_x, train_y, valid_x, valid_y, n_classes, grid, temperature)
    test_x, test_y = features["test"]
    test_acc = (knn_predict(train_x, train_y, test_x, k, n_classes, temperature) == test_y).double().mean().item()
    return {"knn_test_acc": round(test_acc, 6), "knn_valid_acc": valid_acc, "knn_k": k,
            "knn_temperature": temperature, "knn_grid": {str(key): value for key, value in by_k.items()}}
