"""The multi-label losses (losses.multilabel_supcon_loss, fused_multilabel_supcon_loss, contrastive_loss):
the reduction to supcon_loss on one-hot targets, loop references written from the formulas (per anchor for
the Jaccard loss, per (anchor, label) for MulSupCon), F.cross_entropy with probability targets as a second
oracle, a hand-worked example, and the fused path against the eager one.

Compiled tests compile each (kind, mining) once per process (several seconds each on CPU).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import losses
from losses import (MINING_MODES, MULTILABEL_KINDS, contrastive_loss, fused_multilabel_supcon_loss,
                    multilabel_supcon_loss, supcon_loss)


def value_and_grad(loss_fn, z, targets, **kwargs):
    leaf = z.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf, targets, **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def multi_hot_batch(n, n_classes=8, max_labels=6, dim=3, seed=0, dtype=torch.float64):
    """Unit vectors in a low dimension (cosines spread, so MS mining keeps and drops pairs) and multi-hot
    targets with 1 to max_labels labels per clip. Two more columns make sure of the edge cases: label
    n_classes is carried by clip 0 alone (an (anchor, label) without positives), and clip 1 carries only
    label n_classes + 1, so it shares no label with anyone (an anchor without positives)."""
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1).to(dtype)
    counts = torch.randint(1, max_labels + 1, (n, 1), generator=g)
    targets = (torch.rand(n, n_classes, generator=g).argsort(dim=1) < counts).double()
    targets = torch.cat([targets, torch.zeros(n, 2, dtype=torch.float64)], dim=1)
    targets[0, n_classes] = 1
    targets[1] = 0
    targets[1, n_classes + 1] = 1
    return z, targets


# ----------------------------------------------------------------------------------------------
# Loop references, written from the formulas (not from losses.py): label sets as Python sets,
# mining decided on Python floats, and the loss built from float64 torch scalars so that autograd
# gives the reference gradient.
# ----------------------------------------------------------------------------------------------

def label_sets(targets):
    return [{c for c, v in enumerate(row) if v} for row in targets.tolist()]


def kept_pairs(sv, i, positives, negatives, mining, eps):
    """Anchor i's kept positives and negatives (the definitions of the module docstring)."""
    if mining == "none":
        return positives, negatives
    if not positives or not negatives:
        return [], []
    if mining == "ms":
        min_pos = min(sv[i][k] for k in positives)
        max_neg = max(sv[i][j] for j in negatives)
        return ([k for k in positives if sv[i][k] - eps < max_neg],
                [j for j in negatives if sv[i][j] + eps > min_pos])
    hardest_pos = min(positives, key=lambda k: (sv[i][k], k))  # ties: the lowest index
    hardest_neg = min(negatives, key=lambda j: (-sv[i][j], j))
    return [hardest_pos], [hardest_neg]


def logsumexp(values):
    shift = max(v.item() for v in values)
    total = 0.0
    for v in values:
        total = total + torch.exp(v - shift)
    return shift + torch.log(total)


def reference_jaccard(z, targets, tau=0.1, mining="none", eps=0.1):
    """Per anchor i: J_ij = |y_i & y_j| / |y_i | y_j|, p_ik = J_ik / sum over kept positives,
    l_i = logsumexp_{kept} s_ia / tau - sum_k p_ik s_ik / tau; the mean over anchors with a kept positive."""
    z = z.double()
    n = z.shape[0]
    sets = label_sets(targets)
    s = [[torch.dot(z[i], z[j]) for j in range(n)] for i in range(n)]
    sv = [[v.item() for v in row] for row in s]
    terms = []
    for i in range(n):
        jaccard = {j: len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for j in range(n)
                   if j != i and sets[i] & sets[j]}
        positives = sorted(jaccard)
        negatives = [j for j in range(n) if j != i and j not in jaccard]
        kept_pos, kept_neg = kept_pairs(sv, i, positives, negatives, mining, eps)
        if not kept_pos:
            continue
        total_weight = sum(jaccard[k] for k in kept_pos)
        term = logsumexp([s[i][a] / tau for a in kept_pos + kept_neg])
        for k in kept_pos:
            term = term - jaccard[k] / total_weight * s[i][k] / tau
        terms.append(term)
    return sum(terms) / len(terms) if terms else (z * 0.0).sum()


def reference_mulsupcon_published(z, targets, tau=0.1):
    """MulSupCon without mining, per (anchor i, label c) as Zhang & Wu define it, in one view: the
    positives of (i, c) are the other clips carrying c, the denominator runs over every other clip, and
    the loss is the mean over the (i, c) that have a positive."""
    z = z.double()
    n = z.shape[0]
    sets = label_sets(targets)
    terms = []
    for i in range(n):
        log_denom = logsumexp([torch.dot(z[i], z[a]) / tau for a in range(n) if a != i])
        for c in sorted(sets[i]):
            positives = [k for k in range(n) if k != i and c in sets[k]]
            if not positives:
                continue
            term = 0.0
            for k in positives:
                term = term - (torch.dot(z[i], z[k]) / tau - log_denom)
            terms.append(term / len(positives))
    return sum(terms) / len(terms) if terms else (z * 0.0).sum()


def reference_mulsupcon(z, targets, tau=0.1, mining="none", eps=0.1):
    """MulSupCon with our mining rule, per anchor i: W_ik = sum over labels c shared by i and k of
    1 / (m_c - 1); the kept positives' weights renormalised; anchor i weighs its number of labels
    carried by another clip; the sum over anchors with a kept positive over the sum of their weights."""
    z = z.double()
    n = z.shape[0]
    sets = label_sets(targets)
    carriers = {c: sum(c in labels for labels in sets) for labels in sets for c in labels}
    s = [[torch.dot(z[i], z[j]) for j in range(n)] for i in range(n)]
    sv = [[v.item() for v in row] for row in s]
    total, anchors = 0.0, 0
    for i in range(n):
        weight = {}
        for k in range(n):
            for c in sets[i] & sets[k]:
                if k != i:
                    weight[k] = weight.get(k, 0.0) + 1.0 / (carriers[c] - 1)
        positives = sorted(weight)
        negatives = [j for j in range(n) if j != i and j not in weight]
        kept_pos, kept_neg = kept_pairs(sv, i, positives, negatives, mining, eps)
        if not kept_pos:
            continue
        anchor = sum(1 for c in sets[i] if carriers[c] >= 2)
        total_weight = sum(weight[k] for k in kept_pos)
        term = logsumexp([s[i][a] / tau for a in kept_pos + kept_neg])
        for k in kept_pos:
            term = term - weight[k] / total_weight * s[i][k] / tau
        total = total + anchor * term
        anchors += anchor
    return total / anchors if anchors else (z * 0.0).sum()


REFERENCES = {"jaccard": reference_jaccard, "mulsupcon": reference_mulsupcon}


# ----------------------------------------------------------------------------------------------
# (a) One-hot targets: both kinds are supcon_loss, mining or not
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MULTILABEL_KINDS)
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("n, n_classes, seed", [(4, 1, 0), (9, 3, 1), (24, 5, 2), (31, 20, 3)])
def test_one_hot_targets_reduce_to_supcon(kind, mining, n, n_classes, seed):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    labels[-1] = n_classes  # a class of one clip: an anchor without positives
    targets = F.one_hot(labels, n_classes + 1).double()
    want = value_and_grad(supcon_loss, z, labels, mining=mining)
    got = value_and_grad(multilabel_supcon_loss, z, targets, mining=mining, kind=kind)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert want[0] > 0 and want[1].abs().sum() > 0  # the comparison is not between two zeros


# ----------------------------------------------------------------------------------------------
# (b) The loop references, on random multi-hot batches with 1-6 labels per clip
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MULTILABEL_KINDS)
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("n, n_classes, seed", [(6, 4, 0), (13, 8, 1), (20, 12, 2)])
def test_matches_loop_reference(kind, mining, n, n_classes, seed):
    z, targets = multi_hot_batch(n, n_classes, seed=seed)
    want = value_and_grad(REFERENCES[kind], z, targets, mining=mining)
    got = value_and_grad(multilabel_supcon_loss, z, targets, mining=mining, kind=kind)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert want[0] > 0 and want[1].abs().sum() > 0


@pytest.mark.parametrize("tau, eps", [(0.07, 0.0), (0.5, 0.3)])
def test_matches_loop_reference_other_hyperparameters(tau, eps):
    z, targets = multi_hot_batch(16, 6, seed=4)
    for kind in MULTILABEL_KINDS:
        want = REFERENCES[kind](z, targets, tau=tau, mining="ms", eps=eps)
        got = multilabel_supcon_loss(z, targets, temperature=tau, mining="ms", epsilon=eps, kind=kind)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n, n_classes, seed", [(6, 4, 0), (13, 8, 1), (20, 12, 2)])
def test_mulsupcon_matches_the_published_per_label_form(n, n_classes, seed):
    # the (anchor, label) loop of Zhang & Wu, no weights anywhere: checks that the closed form's W and
    # anchor weights add the per-label terms up right
    z, targets = multi_hot_batch(n, n_classes, seed=seed)
    want = value_and_grad(reference_mulsupcon_published, z, targets)
    got = value_and_grad(multilabel_supcon_loss, z, targets, mining="none", kind="mulsupcon")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_reference_batches_exercise_mining_and_the_edge_cases():
    z, targets = multi_hot_batch(20, 12, seed=2)
    sets = label_sets(targets)
    assert all(1 <= len(labels) <= 7 for labels in sets) and max(len(labels) for labels in sets) >= 5
    assert not any(sets[1] & sets[j] for j in range(20) if j != 1)  # an anchor without positives
    assert sum(12 in labels for labels in sets) == 1  # a label carried by one clip
    # MS mining drops some pairs, so the mined losses differ from the unmined ones
    for kind in MULTILABEL_KINDS:
        assert abs(multilabel_supcon_loss(z, targets, mining="ms", kind=kind)
                   - multilabel_supcon_loss(z, targets, mining="none", kind=kind)) > 1e-3


# ----------------------------------------------------------------------------------------------
# (c) The second oracle: F.cross_entropy with probability targets (mining off)
# ----------------------------------------------------------------------------------------------

def masked_logits(z, tau):
    logits = z @ z.T / tau
    # a large finite value, not -inf: cross_entropy multiplies the targets' zeros by log-probabilities
    return logits.masked_fill(torch.eye(len(z), dtype=torch.bool), -1e9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jaccard_is_cross_entropy_with_jaccard_targets(seed):
    z, targets = multi_hot_batch(18, 10, seed=seed)
    inter = targets @ targets.T
    union = targets.sum(1)[:, None] + targets.sum(1)[None, :] - inter
    jaccard = (inter / union).fill_diagonal_(0)
    rows = jaccard.sum(1) > 0
    want = F.cross_entropy(masked_logits(z, 0.1)[rows], jaccard[rows] / jaccard[rows].sum(1, keepdim=True))
    torch.testing.assert_close(multilabel_supcon_loss(z, targets, mining="none"), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mulsupcon_is_cross_entropy_over_anchor_label_rows(seed):
    z, targets = multi_hot_batch(18, 10, seed=seed)
    logits = masked_logits(z, 0.1)
    rows, probabilities = [], []
    for i, c in targets.nonzero().tolist():  # one row per (anchor, label) with a positive
        positives = targets[:, c].clone()
        positives[i] = 0
        if positives.sum() > 0:
            rows.append(logits[i])
            probabilities.append(positives / positives.sum())
    want = F.cross_entropy(torch.stack(rows), torch.stack(probabilities))
    got = multilabel_supcon_loss(z, targets, mining="none", kind="mulsupcon")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# (e) A hand-worked example
# ----------------------------------------------------------------------------------------------

def test_hand_worked_three_clips():
    # Clips: y1 = {a, b}, y2 = {a}, y3 = {b, c}; z1 = (1, 0), z2 = (0, 1), z3 = (-1, 0); tau = 1, so
    # s12 = 0, s13 = -1, s23 = 0. Let q = log(1 + e^-1) = 0.3132617.
    # Jaccard: J12 = 1/2, J13 = 1/3, J23 = 0, so p12 = 3/5, p13 = 2/5, p21 = 1, p31 = 1.
    #   l1 = log(e^0 + e^-1) - (3/5 * 0 + 2/5 * -1) = q + 0.4            = 0.7132617
    #   l2 = log(e^0 + e^0) - 0                      = log 2              = 0.6931472
    #   l3 = log(e^-1 + e^0) - (-1)                  = q + 1              = 1.3132617
    #   L  = (0.7132617 + 0.6931472 + 1.3132617) / 3                      = 0.9065569
    # MulSupCon: a is on clips 1, 2 and b on 1, 3 (m = 2); c is on clip 3 alone and has no anchor.
    #   (1, a): l = log(e^0 + e^-1) - 0 = q = 0.3132617;   (1, b): q + 1 = 1.3132617
    #   (2, a): log 2 = 0.6931472;                         (3, b): q + 1 = 1.3132617
    #   L = (0.3132617 + 1.3132617 + 0.6931472 + 1.3132617) / 4           = 0.9082331
    # MS mining (eps = 0.1): anchor 1 shares a label with both others, so it has no negative and keeps
    # nothing; anchors 2 and 3 keep their one positive and one negative, so for both kinds
    #   L = (l2 + l3) / 2 = (0.6931472 + 1.3132617) / 2                  = 1.0032044
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    targets = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.float64)
    for loss in (multilabel_supcon_loss, fused_multilabel_supcon_loss):
        extra = {} if loss is multilabel_supcon_loss else {"compiled": False}
        for kind, mining, want in [("jaccard", "none", 0.9065569), ("mulsupcon", "none", 0.9082331),
                                   ("jaccard", "ms", 1.0032044), ("mulsupcon", "ms", 1.0032044)]:
            got = loss(z, targets, temperature=1.0, mining=mining, kind=kind, **extra)
            assert got.item() == pytest.approx(want, abs=1e-7), (loss.__name__, kind, mining)


# ----------------------------------------------------------------------------------------------
# Edge cases and arguments
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MULTILABEL_KINDS)
@pytest.mark.parametrize("mining", MINING_MODES)
def test_no_anchor_with_a_positive_gives_a_connected_zero(kind, mining):
    # every clip has labels of its own (and one has none): no pair shares a label
    z, _ = multi_hot_batch(5, seed=7)
    targets = torch.cat([torch.eye(4, 8, dtype=torch.float64), torch.zeros(1, 8, dtype=torch.float64)])
    for loss, extra in [(multilabel_supcon_loss, {}), (fused_multilabel_supcon_loss, {"compiled": False})]:
        value, grad = value_and_grad(loss, z, targets, mining=mining, kind=kind, **extra)
        assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(z))


def test_a_clip_without_labels_is_everyones_negative():
    z, targets = multi_hot_batch(12, 5, seed=8)
    targets[3] = 0
    for kind in MULTILABEL_KINDS:
        for mining in MINING_MODES:
            want = value_and_grad(REFERENCES[kind], z, targets, mining=mining)
            got = value_and_grad(multilabel_supcon_loss, z, targets, mining=mining, kind=kind)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
            fused = value_and_grad(fused_multilabel_supcon_loss, z, targets, mining=mining, kind=kind,
                                   compiled=False)
            torch.testing.assert_close(fused, want, rtol=1e-9, atol=1e-9)


def test_targets_of_any_dtype_give_the_same_loss():
    z, targets = multi_hot_batch(10, 5, seed=9)
    want = multilabel_supcon_loss(z, targets)
    for dtype in (torch.bool, torch.int64, torch.float32, torch.uint8):
        torch.testing.assert_close(multilabel_supcon_loss(z, targets.to(dtype)), want, rtol=0, atol=0)
        torch.testing.assert_close(fused_multilabel_supcon_loss(z, targets.to(dtype), compiled=False), want,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(targets=torch.ones(4)), "2-D multi-hot"),
    (dict(targets=torch.ones(3, 2)), "batch size mismatch"),
    (dict(targets=torch.full((4, 2), 0.5)), "every entry 0 or 1"),
    (dict(targets=torch.full((4, 2), math.nan)), "every entry 0 or 1"),
    (dict(kind="supcon"), "unknown multi-label loss"),
    (dict(mining="hard"), "unknown mining mode"),
    (dict(temperature=0.0), "temperature"),
    (dict(z=torch.ones(4, 2, dtype=torch.long)), "floating-point"),
])
def test_bad_input_raises(bad, match):
    args = dict(z=F.normalize(torch.ones(4, 2), dim=1), targets=torch.ones(4, 2), kind="jaccard",
                mining="ms", temperature=0.1)
    args.update(bad)
    for loss in (multilabel_supcon_loss, fused_multilabel_supcon_loss):
        with pytest.raises(ValueError, match=match):
            loss(**args)


def test_contrastive_loss_dispatches_on_the_labels_shape():
    z, targets = multi_hot_batch(12, 5, seed=10)
    labels = torch.arange(12) % 4
    assert contrastive_loss(z, labels, fused=False) == supcon_loss(z, labels)
    for kind in MULTILABEL_KINDS:
        want = multilabel_supcon_loss(z, targets, kind=kind, mining="batch-hard", temperature=0.2)
        got = contrastive_loss(z, targets, temperature=0.2, mining="batch-hard", fused=False, multilabel_kind=kind)
        assert got == want
    with pytest.raises(ValueError, match="unknown multi-label loss"):
        contrastive_loss(z, labels, fused=False, multilabel_kind="jacard")  # refused even for single-label data


# ----------------------------------------------------------------------------------------------
# (d) The fused path against the eager one
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MULTILABEL_KINDS)
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("n, n_classes, seed", [(2, 2, 0), (7, 4, 1), (33, 12, 2), (64, 30, 3)])
def test_uncompiled_fused_equals_eager_in_float64(kind, mining, n, n_classes, seed):
    z, targets = multi_hot_batch(n, n_classes, seed=seed)
    want = value_and_grad(multilabel_supcon_loss, z, targets, mining=mining, kind=kind)
    got = value_and_grad(fused_multilabel_supcon_loss, z, targets, mining=mining, kind=kind, compiled=False)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bfloat16_and_float32_overlaps_agree(monkeypatch):
    # the Jaccard counts come from a bfloat16 GEMM where the hardware has one: exact, so the loss is the
    # float32 path's to the last bit. Both branches are run here, whatever this machine has.
    z, targets = multi_hot_batch(48, 200, max_labels=6, dim=16, seed=11, dtype=torch.float32)
    results = {}
    for fast in (True, False):
        monkeypatch.setattr(losses, "_bf16_matmul_is_fast", lambda device, fast=fast: fast)
        results[fast] = value_and_grad(fused_multilabel_supcon_loss, z, targets.float(), compiled=False)
    torch.testing.assert_close(results[True], results[False], rtol=0, atol=0)
    # and a clip with more than 256 labels goes to the float32 GEMM (bfloat16 counts stop being exact)
    wide = torch.cat([torch.ones(2, 300), torch.zeros(2, 300)], dim=1)
    targets = torch.cat([wide, (torch.rand(2, 600) < 0.5).float()])
    z = F.normalize(torch.randn(4, 16), dim=1)
    monkeypatch.setattr(losses, "_bf16_matmul_is_fast", lambda device: True)
    torch.testing.assert_close(value_and_grad(fused_multilabel_supcon_loss, z, targets, compiled=False),
                               value_and_grad(multilabel_supcon_loss, z, targets), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", MULTILABEL_KINDS)
@pytest.mark.parametrize("mining", MINING_MODES)
def test_compiled_matches_eager(kind, mining):
    # float32 within 1e-5 (as the single-label fused loss's tests): odd sizes, few and many labels
    for n, n_classes, max_labels, seed in [(32, 8, 3, 0), (17, 40, 6, 1), (64, 200, 6, 2), (5, 3, 2, 3)]:
        z, targets = multi_hot_batch(n, n_classes, max_labels, dim=8, seed=seed, dtype=torch.float32)
        want = value_and_grad(multilabel_supcon_loss, z, targets.float(), mining=mining, kind=kind)
        got = value_and_grad(fused_multilabel_supcon_loss, z, targets.float(), mining=mining, kind=kind)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert want[0] > 0 and want[1].abs().sum() > 0


def test_fused_falls_back_to_eager_outside_its_range_and_refuses_a_second_backward():
    z, targets = multi_hot_batch(9, 5, seed=12)
    # far from unit norm: |s| / tau + ln B is past the fused path's exp limit in float32
    big = (z * 10).float()
    torch.testing.assert_close(value_and_grad(fused_multilabel_supcon_loss, big, targets),
                               value_and_grad(multilabel_supcon_loss, big, targets))
    one = value_and_grad(fused_multilabel_supcon_loss, z[:1], targets[:1])
    assert one[0].item() == 0.0 and torch.equal(one[1], torch.zeros_like(z[:1]))
    leaf = z.clone().requires_grad_()
    loss = fused_multilabel_supcon_loss(leaf, targets, compiled=False)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once per forward"):
        loss.backward()
