"""The two probes of a frozen feature space, one implementation each: how well do pooled features
separate the classes, read by a linear layer or by their neighbours?

The linear probe (train_linear): linear + softmax trained with Adam on the features, one (lr, batch
size) at a time, the epoch chosen on valid accuracy (ties: lower valid loss). probe.py runs it over a
grid of lrs and batch sizes on standardised features (the linear rows of the tables); ProbeHead is the
chosen classifier read back, standardisation included.

The k-NN probe (knn_predict, choose_k, knn_results): on L2-normalised pooled features, a clip's class
is the weighted vote of its k most similar train clips (cosine similarity), each neighbour voting
exp(similarity / T) for its class (T = 0.07, the weighting of the X-ARES benchmark's k-NN probe). k is
chosen on valid from a small grid (ties: the smaller k); test is then read once with it. probe.py
(PairTune's and frozen encoders' features) and finetune.py (FineTune's encoder features, before its
head) report it through knn_results, so all three methods are scored the same way.

pairtune.py's --select-by knn and linear metrics call knn_predict and train_linear, so the metric
that selects an epoch is the probe the tables report. Ties are broken by order, so a k-NN result never
depends on the hardware: among equally similar train clips the earlier one is nearer, and among
classes with equal votes the lower class index wins.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# The k-NN probe
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# The linear probe
# ----------------------------------------------------------------------------------------------

def train_linear(train_x, train_y, valid_x, valid_y, n_classes, lr, batch_size, epochs, seed):
    """Adam on linear + softmax; returns the best-valid epoch's (state, valid_acc, valid_loss, epoch)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(train_x.shape[1], n_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    best = None
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(head(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = head(valid_x)
            acc = (logits.argmax(1) == valid_y).float().mean().item()
            valid_loss = F.cross_entropy(logits, valid_y).item()
        if best is None or (acc, -valid_loss) > (best[1], -best[2]):
            best = ({k: v.clone() for k, v in head.state_dict().items()}, acc, valid_loss, epoch)
    return best


class ProbeHead(nn.Module):
    """The linear probe as probe.py applies it: standardise with train statistics, then linear. probe.py
    saves the parts in RUN/head.pt; trained.py rebuilds the classifier from them for export and predict."""

    def __init__(self, linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, features):
        return self.linear((features - self.mean) / self.std)
