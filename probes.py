"""The two probes of a frozen feature space, one implementation each: how well do pooled features
separate the classes, read by a linear layer or by their neighbours?

The linear probe (train_linear): linear + softmax trained with Adam on the features, one (lr, batch
size) at a time, the epoch chosen on valid accuracy (ties: lower valid loss). probe.py runs it over a
grid of lrs and batch sizes on standardised features (the linear rows of the tables); ProbeHead is the
chosen classifier read back, standardisation included.

Multi-label data (labels given as multi-hot rows [N, C] instead of class indices [N]; data.is_multilabel):
the linear probe is linear + sigmoid trained with binary cross-entropy, its epoch chosen on valid macro
mAP; the k-NN probe scores each class on its own (knn_scores: the share of the k neighbours' weight
carried by clips with that class) and its k is chosen on valid macro mAP. Scores are ranked by
multilabel.py (mAP) and turned into yes/no by per-class thresholds chosen on valid (F1). Class scores
of the linear probe are sigmoid(logits) in float64 (sigmoid_scores): in float32 sigmoid rounds every
logit above ~17 to exactly 1, and ties between clips would change their AP.

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

import multilabel

# ----------------------------------------------------------------------------------------------
# The k-NN probe
# ----------------------------------------------------------------------------------------------

K_GRID = (1, 5, 10, 20)
TEMPERATURE = 0.07


def nearest_neighbours(train_x, query_x, k: int, temperature: float = TEMPERATURE, chunk: int = 1024):
    """Per chunk of queries, (order [chunk, k], weights [chunk, k]): the indices of the k most cosine-similar
    train clips, nearest first, and their exp(cos / T) weights (float64)."""
    train = F.normalize(train_x.double(), dim=1)
    k = min(k, len(train))
    for start in range(0, len(query_x), chunk):  # [chunk, N] similarities at a time: bounded memory
        similarity = F.normalize(query_x[start:start + chunk].double(), dim=1) @ train.T
        # stable sort: among equal similarities the earlier train clip comes first
        order = torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :k]
        yield order, torch.exp(similarity.gather(1, order) / temperature)


@torch.no_grad()
def knn_predict(train_x, train_y, query_x, k: int, n_classes: int, temperature: float = TEMPERATURE,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted class of each query: the exp(cos / T)-weighted vote of its k nearest train clips
    (train_y: class indices [N])."""
    predictions = []
    for order, weights in nearest_neighbours(train_x, query_x, k, temperature, chunk):
        votes = torch.zeros(len(order), n_classes, dtype=torch.float64)
        votes.scatter_add_(1, train_y[order], weights)
        predictions.append(first_argmax(votes))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def knn_scores(train_x, train_y, query_x, k: int, n_classes: int, temperature: float = TEMPERATURE,
               chunk: int = 1024) -> torch.Tensor:
    """Each query's score per class [Q, C] (float64, in [0, 1]): the exp(cos / T) weight of its k nearest
    train clips that carry the class, over the weight of all k. train_y: multi-hot rows [N, C] (multi-label
    data), or class indices [N] (one-hot: the scores of a query then sum to 1)."""
    if train_y.dim() == 1:
        train_y = F.one_hot(train_y, n_classes)
    scores = []
    for order, weights in nearest_neighbours(train_x, query_x, k, temperature, chunk):
        # One neighbour at a time, nearest first, into the classes' votes and the total alike: the same
        # additions in the same order, so a class every neighbour carries scores exactly 1 and one none
        # carries exactly 0. (A matrix product may sum in another order: 1 - 1e-16 and 1 would then
        # be two scores, not a tie, and ties change AP.)
        votes = torch.zeros(len(order), n_classes, dtype=torch.float64)
        total = torch.zeros(len(order), 1, dtype=torch.float64)
        for j in range(order.shape[1]):
            weight = weights[:, j:j + 1]
            votes += weight * train_y[order[:, j]]
            total += weight
        scores.append(votes / total)
    return torch.cat(scores) if scores else torch.zeros(0, n_classes, dtype=torch.float64)


def first_argmax(votes: torch.Tensor) -> torch.Tensor:
    """The lowest index among each row's maxima (torch.argmax does not promise which)."""
    is_max = votes == votes.max(dim=1, keepdim=True).values
    return is_max.to(torch.int8).argmax(dim=1)  # argmax over 0/1: documented to return the first


def choose_k(train_x, train_y, valid_x, valid_y, n_classes: int, grid=K_GRID,
             temperature: float = TEMPERATURE) -> tuple[int, float, dict]:
    """(k, its valid score, {k: valid score}): the best k on valid, ties to the smaller. The score is
    accuracy, or for multi-hot labels [N, C] macro mAP of knn_scores."""
    score = {}
    for k in sorted(grid):
        if valid_y.dim() == 2:
            scores = knn_scores(train_x, train_y, valid_x, k, n_classes, temperature)
            score[k] = round(multilabel.mean_average_precision(scores, valid_y)["map"], 6)
        else:
            predicted = knn_predict(train_x, train_y, valid_x, k, n_classes, temperature)
            score[k] = round((predicted == valid_y).double().mean().item(), 6)
    best = max(score, key=lambda k: (score[k], -k))
    return best, score[best], score


def knn_results(features: dict, n_classes: int, grid=K_GRID, temperature: float = TEMPERATURE) -> dict:
    """The k-NN probe on {split: (features, labels)}: k chosen on valid, then test read once. Multi-hot
    labels: knn_test_map, knn_valid_map and test's micro/macro F1 at per-class thresholds chosen on
    valid's scores, instead of knn_test_acc and knn_valid_acc."""
    (train_x, train_y), (valid_x, valid_y) = features["train"], features["valid"]
    k, valid_score, by_k = choose_k(train_x, train_y, valid_x, valid_y, n_classes, grid, temperature)
    test_x, test_y = features["test"]
    chosen = {"knn_k": k, "knn_temperature": temperature, "knn_grid": {str(key): value for key, value in by_k.items()}}
    if test_y.dim() == 2:
        thresholds = multilabel.choose_thresholds(knn_scores(train_x, train_y, valid_x, k, n_classes, temperature),
                                                  valid_y)
        test_scores = knn_scores(train_x, train_y, test_x, k, n_classes, temperature)
        f1 = multilabel.f1_scores(test_scores, test_y, thresholds)
        return {"knn_test_map": round(multilabel.mean_average_precision(test_scores, test_y)["map"], 6),
                "knn_valid_map": valid_score, "knn_test_micro_f1": round(f1["micro_f1"], 6),
                "knn_test_macro_f1": round(f1["macro_f1"], 6), **chosen}
    test_acc = (knn_predict(train_x, train_y, test_x, k, n_classes, temperature) == test_y).double().mean().item()
    return {"knn_test_acc": round(test_acc, 6), "knn_valid_acc": valid_score, **chosen}


# ----------------------------------------------------------------------------------------------
# The linear probe
# ----------------------------------------------------------------------------------------------

def train_linear(train_x, train_y, valid_x, valid_y, n_classes, lr, batch_size, epochs, seed):
    """Adam on linear + softmax; returns the best-valid epoch's (state, valid_acc, valid_loss, epoch).
    With multi-hot labels [N, C] (float): linear + sigmoid, binary cross-entropy, and valid macro mAP
    (of sigmoid_scores) in place of accuracy; ties between epochs go to the lower valid loss."""
    multi = train_y.dim() == 2
    loss_of = F.binary_cross_entropy_with_logits if multi else F.cross_entropy
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(train_x.shape[1], n_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    best = None
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = loss_of(head(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = head(valid_x)
            if multi:
                score = multilabel.mean_average_precision(sigmoid_scores(logits), valid_y)["map"]
            else:
                score = (logits.argmax(1) == valid_y).float().mean().item()
            valid_loss = loss_of(logits, valid_y).item()
        if best is None or (score, -valid_loss) > (best[1], -best[2]):
            best = ({k: v.clone() for k, v in head.state_dict().items()}, score, valid_loss, epoch)
    return best


def sigmoid_scores(logits: torch.Tensor) -> torch.Tensor:
    """A multi-label classifier's class probabilities: sigmoid in float64, where logits up to ~36 keep
    distinct probabilities (float32's sigmoid is exactly 1 past ~17: ties that change the AP)."""
    return torch.sigmoid(logits.double())


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
