"""Scores for multi-label data: average precision per class, macro mAP, thresholds chosen on valid, F1.

A multi-label clip carries several classes (data.LABEL_SEPARATOR in the manifest); a model gives each
class its own score (a sigmoid, a k-NN vote) and nothing makes the classes compete. Accuracy then has
no meaning; the field reports **macro mAP**: the average precision of each class's ranking of the clips,
averaged over classes with equal weight, so rare classes count as much as common ones (the FSD50K paper,
HEAR and X-ARES report it). F1 needs a yes/no per class: a threshold per class, chosen on valid (never
on test) to maximise that class's F1 there, then applied to test.

Average precision is the step sum sklearn's average_precision_score computes (not the trapezoid):
AP = sum over distinct score thresholds t, high to low, of (recall(t) - recall(previous t)) x precision(t),
where clips with tied scores cross the threshold together. A class with no positive clip in the scored
split has no AP (it is left out of the mean and counted as skipped), where sklearn would give it 0.
"""
import torch


def _ranked_counts(scores: torch.Tensor, targets: torch.Tensor):
    """For one class: (scores at each distinct threshold, high to low; true positives and false
    positives among the clips scoring at least that threshold). Tied scores form one step."""
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, positive = scores[order], targets[order].double()
    true_positives = positive.cumsum(0)
    false_positives = (1 - positive).cumsum(0)
    # The last clip of each group of equal scores: where the next score differs, and the very last.
    last_of_group = torch.ones_like(ranked, dtype=torch.bool)
    last_of_group[:-1] = ranked[:-1] != ranked[1:]
    return ranked[last_of_group], true_positives[last_of_group], false_positives[last_of_group]


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float | None:
    """AP of one class: scores [N] (higher = more likely), targets [N] in {0, 1}; None when no clip is
    positive (AP is undefined)."""
    positives = float(targets.sum())
    if positives == 0:
        return None
    _, true_positives, false_positives = _ranked_counts(scores, targets)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / positives
    recall_gained = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_gained * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> dict:
    """Macro mAP of scores [N, C] against multi-hot targets [N, C]: {"map": the mean AP over classes with
    at least one positive clip, "per_class": [AP, or None for a class with no positive], "skipped": how
    many classes had none}."""
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]
    present = [ap for ap in per_class if ap is not None]
    return {"map": sum(present) / len(present) if present else float("nan"), "per_class": per_class,
            "skipped": len(per_class) - len(present)}


def choose_thresholds(scores: torch.Tensor, targets: torch.Tensor, default: float = 0.5) -> torch.Tensor:
    """Per class, the threshold t (predict the class when score >= t) that maximises its F1 on these
    clips (give valid's); among equal F1 the highest t. `default` for a class with no positive clip,
    which no threshold can be chosen for (0.5: a sigmoid's even odds)."""
    thresholds = torch.full((targets.shape[1],), default, dtype=torch.float64)
    for c in range(targets.shape[1]):
        positives = float(targets[:, c].sum())
        if positives == 0:
            continue
        levels, true_positives, false_positives = _ranked_counts(scores[:, c], targets[:, c])
        f1 = 2 * true_positives / (true_positives + false_positives + positives)
        thresholds[c] = float(levels[int(torch.argmax(f1))])  # argmax: the first, i.e. highest, t of the best
    return thresholds


def f1_scores(scores: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """Micro and macro F1 of the yes/no predictions scores >= thresholds (per class) against targets.
    Micro pools every (clip, class) decision; macro averages the F1 of classes with at least one
    positive clip (as mean_average_precision does)."""
    predicted = scores.double() >= thresholds.double()
    truth = targets.bool()
    true_positives = (predicted & truth).sum(0).double()
    false_positives = (predicted & ~truth).sum(0).double()
    false_negatives = (~predicted & truth).sum(0).double()
    micro = 2 * true_positives.sum() / (2 * true_positives.sum() + false_positives.sum() + false_negatives.sum())
    present = truth.any(0)
    per_class = 2 * true_positives / (2 * true_positives + false_positives + false_negatives).clamp(min=1)
    macro = per_class[present].mean() if present.any() else torch.tensor(float("nan"))
    return {"micro_f1": float(micro.nan_to_num(0.0)), "macro_f1": float(macro)}
