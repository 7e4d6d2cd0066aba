"""Tests for losses.py: loop reference, hand-worked numbers, masks, pml oracle, edge cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses import MINING_MODES, mining_masks, supcon_loss  # conftest puts the repo on sys.path


def unit(x):
    return F.normalize(x, dim=1)


def random_batch(batch, n_classes, dim=3, seed=0, dtype=torch.float64):
    """Unit vectors in a low dimension, so cosines spread over [-1, 1] and MS mining drops pairs."""
    g = torch.Generator().manual_seed(seed)
    z = unit(torch.randn(batch, dim, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    return z, labels


def grad_of(fn, z):
    leaf = z.detach().clone().requires_grad_(True)
    loss = fn(leaf)
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g


# ----------------------------------------------------------------------------------------------
# Loop reference. Written from the equations, not from losses.py: explicit
# loops over anchors and pairs, float64 torch scalars so autograd gives the
# reference gradient, and mining decisions made on Python floats.
# ----------------------------------------------------------------------------------------------
def reference_loss(z, labels, tau, mining, eps):
    z = z.double()
    n = z.shape[0]
    y = [int(v) for v in labels]
    s = [[torch.dot(z[i], z[j]) for j in range(n)] for i in range(n)]
    sv = [[s[i][j].item() for j in range(n)] for i in range(n)]

    terms = []
    for i in range(n):
        positives = [k for k in range(n) if k != i and y[k] == y[i]]
        negatives = [j for j in range(n) if y[j] != y[i]]
        if mining == "none":
            kept_pos, kept_neg = positives, negatives
        elif mining == "ms":
            if not positives or not negatives:
                continue
            min_pos = min(sv[i][k] for k in positives)
            max_neg = max(sv[i][j] for j in negatives)
            kept_neg = [j for j in negatives if sv[i][j] + eps > min_pos]
            kept_pos = [k for k in positives if sv[i][k] - eps < max_neg]
        elif mining == "batch-hard":
            if not positives or not negatives:
                continue
            hardest_pos = positives[0]
            for k in positives:
                if sv[i][k] < sv[i][hardest_pos]:
                    hardest_pos = k
            hardest_neg = negatives[0]
            for j in negatives:
                if sv[i][j] > sv[i][hardest_neg]:
                    hardest_neg = j
            kept_pos, kept_neg = [hardest_pos], [hardest_neg]
        else:
            raise AssertionError(mining)
        if not kept_pos:
            continue

        denom = [s[i][a] / tau for a in kept_pos + kept_neg]
        shift = max(v.item() for v in denom)
        total = 0.0
        for v in denom:
            total = total + torch.exp(v - shift)
        log_denom = shift + torch.log(total)
        term = 0.0
        for k in kept_pos:
            term = term - (s[i][k] / tau - log_denom)
        terms.append(term / len(kept_pos))

    if not terms:
        return (z * 0.0).sum()
    out = 0.0
    for t in terms:
        out = out + t
    return out / len(terms)


CLASS_CONFIGS = {
    "two": lambda b: 2,
    "many": lambda b: max(1, (2 * b) // 3),
    "b_over_8": lambda b: max(1, b // 8),
}


@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("batch", [2, 5, 8, 17, 24])
@pytest.mark.parametrize("classes", sorted(CLASS_CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_loop_reference(mining, batch, classes, dtype):
    tau, eps = 0.1, 0.1
    seed = 1000 * batch + len(classes)
    z, labels = random_batch(batch, CLASS_CONFIGS[classes](batch), seed=seed, dtype=dtype)

    ours, g_ours = grad_of(lambda x: supcon_loss(x, labels, tau, mining, eps), z)
    ref, g_ref = grad_of(lambda x: reference_loss(x, labels, tau, mining, eps), z.double())

    assert ours.dtype == dtype
    assert torch.isfinite(ours) and torch.isfinite(g_ours).all()
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g_ours.double(), g_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("tau,eps", [(0.05, 0.0), (0.5, 0.3), (1.0, -0.05)])
def test_matches_loop_reference_other_hyperparameters(tau, eps):
    z, labels = random_batch(13, 3, seed=7)
    for mining in MINING_MODES:
        ours, g_ours = grad_of(lambda x: supcon_loss(x, labels, tau, mining, eps), z)
        ref, g_ref = grad_of(lambda x: reference_loss(x, labels, tau, mining, eps), z)
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-9)


def test_reference_cases_actually_exercise_ms_mining():
    # MS must keep a strict subset of pairs, but not none, in the data the
    # reference tests use. Otherwise "ms" would only be checked as "none".
    z, labels = random_batch(24, 3, seed=24003)
    sim = z @ z.T
    pos_all, neg_all = mining_masks(sim, labels, "none", 0.1)
    pos_ms, neg_ms = mining_masks(sim, labels, "ms", 0.1)
    assert 0 < pos_ms.sum() < pos_all.sum()
    assert 0 < neg_ms.sum() < neg_all.sum()
    assert not (pos_ms & ~pos_all).any() and not (neg_ms & ~neg_all).any()
    assert supcon_loss(z, labels, mining="ms") != supcon_loss(z, labels, mining="none")


def test_gradcheck_all_modes():
    z, labels = random_batch(6, 2, seed=3)
    for mining in MINING_MODES:
        leaf = z.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda x: supcon_loss(x, labels, 0.5, mining, 0.1), (leaf,), eps=1e-7, atol=1e-6
        )


# ----------------------------------------------------------------------------------------------
# Hand-worked example: 4 points on the unit circle, tau = 1, labels [0, 0, 1, 1].
#   z0 = (1, 0), z1 = (0.6, 0.8), z2 = (0, 1), z3 = (-0.6, 0.8)
#   s01 = 0.6, s02 = 0, s03 = -0.6, s12 = 0.8, s13 = -0.36 + 0.64 = 0.28, s23 = 0.8
#   e^0.6 = 1.822119, e^-0.6 = 0.548812, e^0.8 = 2.225541, e^0.28 = 1.323130
# ----------------------------------------------------------------------------------------------
HAND_Z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]], dtype=torch.float64)
HAND_Y = torch.tensor([0, 0, 1, 1])


def test_hand_example_none():
    # L_0 = -0.6 + log(e^.6 + e^0 + e^-.6)    = -0.6 + log(3.370930) = 0.615189
    # L_1 = -0.6 + log(e^.6 + e^.8 + e^.28)   = -0.6 + log(5.370790) = 1.080975
    # L_2 = -0.8 + log(e^0 + e^.8 + e^.8)     = -0.8 + log(5.451082) = 0.895814
    # L_3 = -0.8 + log(e^-.6 + e^.8 + e^.28)  = -0.8 + log(4.097483) = 0.610373
    # mean = 3.202350 / 4 = 0.800588
    loss = supcon_loss(HAND_Z, HAND_Y, temperature=1.0, mining="none")
    assert loss.item() == pytest.approx(0.800588, abs=1e-6)


def test_hand_example_ms_masks_and_loss():
    # eps = 0.1.
    # anchor 0: min_pos = s01 = .6, max_neg = s02 = 0. Neg kept iff s + .1 > .6: none.
    #           Pos kept iff .6 - .1 < 0: no. Anchor 0 keeps nothing.
    # anchor 1: min_pos = s10 = .6, negs s12 = .8, s13 = .28: .9 > .6 keeps 2, .38 does not.
    #           Pos 0 kept because .5 < max_neg = .8.
    # anchor 2: min_pos = s23 = .8, negs s20 = 0, s21 = .8: only 1 kept (.9 > .8).
    #           Pos 3 kept because .7 < .8.
    # anchor 3: min_pos = s32 = .8, negs s30 = -.6, s31 = .28: -.5 and .38 are not > .8.
    #           Pos .7 is not < .28. Anchor 3 keeps nothing.
    pos, neg = mining_masks(HAND_Z @ HAND_Z.T, HAND_Y, "ms", 0.1)
    expected_pos = torch.zeros(4, 4, dtype=torch.bool)
    expected_pos[1, 0] = expected_pos[2, 3] = True
    expected_neg = torch.zeros(4, 4, dtype=torch.bool)
    expected_neg[1, 2] = expected_neg[2, 1] = True
    assert torch.equal(pos, expected_pos)
    assert torch.equal(neg, expected_neg)

    # L_1 = -0.6 + log(e^.6 + e^.8) = -0.6 + log(4.047660) = 0.798139
    # L_2 = -0.8 + log(e^.8 + e^.8) = log 2                = 0.693147
    # mean = 0.745643 (anchors 0 and 3 are not counted)
    loss = supcon_loss(HAND_Z, HAND_Y, temperature=1.0, mining="ms", epsilon=0.1)
    assert loss.item() == pytest.approx(0.745643, abs=1e-6)


def test_hand_example_batch_hard():
    # Each anchor has one positive, so that is the hardest positive. Hardest negatives:
    # 0 -> 2 (s=0), 1 -> 2 (.8), 2 -> 1 (.8), 3 -> 1 (.28).
    # L_i = log(1 + exp(s_in - s_ip)) with tau = 1:
    #   log(1+e^-.6) = 0.437488, log(1+e^.2) = 0.798139, log(1+e^0) = 0.693147,
    #   log(1+e^-.52) = 0.466573. mean = 2.395347 / 4 = 0.598837
    pos, neg = mining_masks(HAND_Z @ HAND_Z.T, HAND_Y, "batch-hard", 0.1)
    assert pos.nonzero().tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]
    assert neg.nonzero().tolist() == [[0, 2], [1, 2], [2, 1], [3, 1]]
    loss = supcon_loss(HAND_Z, HAND_Y, temperature=1.0, mining="batch-hard")
    assert loss.item() == pytest.approx(0.598837, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Mining masks on a hand-made similarity matrix.
# ----------------------------------------------------------------------------------------------
#            0     1     2     3     4     5
HAND_SIM = torch.tensor(
    [
        [1.00, 0.90, 0.30, 0.35, 0.10, 0.00],  # 0
        [0.90, 1.00, 0.50, 0.20, 0.65, 0.10],  # 1
        [0.30, 0.50, 1.00, 0.40, 0.45, 0.15],  # 2
        [0.35, 0.20, 0.40, 1.00, 0.70, 0.55],  # 3
        [0.10, 0.65, 0.45, 0.70, 1.00, 0.50],  # 4
        [0.00, 0.10, 0.15, 0.55, 0.50, 1.00],  # 5
    ]
)
HAND_SIM_Y = torch.tensor([0, 0, 0, 1, 1, 2])  # 5 is a singleton class


def test_ms_masks_hand_matrix():
    pos, neg = mining_masks(HAND_SIM, HAND_SIM_Y, "ms", 0.1)
    # anchor 0: pos {1: .9, 2: .3}, neg {3: .35, 4: .1, 5: 0}; min_pos .3, max_neg .35.
    #   negs with s + .1 > .3: 3 (.45) only. Pos with s - .1 < .35: 2 (.2); 1 (.8) dropped.
    # anchor 1: pos {0: .9, 2: .5}, neg {3: .2, 4: .65, 5: .1}; min_pos .5, max_neg .65.
    #   negs: 4 (.75 > .5); 3 (.3) and 5 (.2) dropped. Pos: 2 (.4 < .65); 0 (.8) dropped.
    # anchor 2: pos {0: .3, 1: .5}, neg {3: .4, 4: .45, 5: .15}; min_pos .3, max_neg .45.
    #   negs: 3 (.5), 4 (.55); 5 (.25) dropped. Pos: 0 (.2 < .45), 1 (.4 < .45) -> both.
    # anchor 3: pos {4: .7}, neg {0: .35, 1: .2, 2: .4, 5: .55}; min_pos .7, max_neg .55.
    #   negs: best is 5 with .65, not > .7 -> none. Pos: .6 < .55 false -> none.
    # anchor 4: pos {3: .7}, neg {0: .1, 1: .65, 2: .45, 5: .5}; min_pos .7, max_neg .65.
    #   negs: 1 (.75) only. Pos: 3 (.6 < .65).
    # anchor 5: singleton, so no positives and nothing kept.
    # No comparison is an exact tie, so float32 rounding cannot flip a decision.
    exp_pos = {(0, 2), (1, 2), (2, 0), (2, 1), (4, 3)}
    exp_neg = {(0, 3), (1, 4), (2, 3), (2, 4), (4, 1)}
    assert {tuple(p) for p in pos.nonzero().tolist()} == exp_pos
    assert {tuple(p) for p in neg.nonzero().tolist()} == exp_neg


def test_batch_hard_masks_hand_matrix():
    pos, neg = mining_masks(HAND_SIM, HAND_SIM_Y, "batch-hard", 0.1)
    # anchor 0: hardest pos 2 (.3 < .9), hardest neg 3 (.35)
    # anchor 1: hardest pos 2 (.5), hardest neg 4 (.65)
    # anchor 2: hardest pos 0 (.3), hardest neg 4 (.45)
    # anchor 3: only pos 4, hardest neg 5 (.55)
    # anchor 4: only pos 3, hardest neg 1 (.65)
    # anchor 5: singleton, so its row is empty
    assert {tuple(p) for p in pos.nonzero().tolist()} == {(0, 2), (1, 2), (2, 0), (3, 4), (4, 3)}
    assert {tuple(p) for p in neg.nonzero().tolist()} == {(0, 3), (1, 4), (2, 4), (3, 5), (4, 1)}
    assert (pos.sum(1) <= 1).all() and (neg.sum(1) <= 1).all()


def test_none_masks_and_diagonal():
    for mining in MINING_MODES:
        pos, neg = mining_masks(HAND_SIM, HAND_SIM_Y, mining, 10.0)
        assert pos.dtype == torch.bool and neg.dtype == torch.bool
        assert not pos.diagonal().any() and not neg.diagonal().any()
        assert not (pos & neg).any()
    pos, neg = mining_masks(HAND_SIM, HAND_SIM_Y, "none", 0.1)
    same = HAND_SIM_Y[:, None] == HAND_SIM_Y[None, :]
    assert torch.equal(pos, same & ~torch.eye(6, dtype=torch.bool))
    assert torch.equal(neg, ~same)
    # A huge epsilon makes MS keep every pair of anchors that have both kinds.
    pos_ms, neg_ms = mining_masks(HAND_SIM, HAND_SIM_Y, "ms", 10.0)
    assert torch.equal(pos_ms, pos)
    assert torch.equal(neg_ms, neg & pos.any(1, keepdim=True))


def test_batch_hard_row_empty_without_negative():
    # All the same label: positives exist, negatives do not, so batch-hard keeps nothing.
    sim = torch.eye(3)
    pos, neg = mining_masks(sim, torch.tensor([4, 4, 4]), "batch-hard", 0.1)
    assert not pos.any() and not neg.any()


def test_masked_logsumexp_helper():
    from losses import _masked_logsumexp

    x = torch.tensor([[1.0, 2.0, 3.0], [50.0, -50.0, 0.0], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, True, True], [False, False, False]])
    out = _masked_logsumexp(x, mask)
    # Row 0: log(e^1 + e^3). Row 1: max subtraction keeps e^50 from overflowing. Row 2: empty -> 0.
    row0 = math.log(math.exp(1) + math.exp(3))
    row1 = 50.0 + math.log1p(math.exp(-50) + math.exp(-100))
    expected = torch.tensor([row0, row1, 0.0])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[2], torch.zeros(3)) and x.grad[0, 1] == 0


def test_masks_carry_no_gradient():
    sim = HAND_SIM.clone().requires_grad_(True)
    for mining in MINING_MODES:
        pos, neg = mining_masks(sim, HAND_SIM_Y, mining, 0.1)
        assert not pos.requires_grad and not neg.requires_grad


# ----------------------------------------------------------------------------------------------
# pytorch-metric-learning oracle, where it must agree (see the losses.py docstring).
# ----------------------------------------------------------------------------------------------
def _pml_masks(indices_tuple, batch):
    a1, p, a2, n = indices_tuple
    pos = torch.zeros(batch, batch, dtype=torch.bool)
    neg = torch.zeros(batch, batch, dtype=torch.bool)
    pos[a1, p] = True
    neg[a2, n] = True
    return pos, neg


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize(
    "batch,n_classes,eps,tau,spread",
    [(32, 4, 0.1, 0.1, 1.0), (24, 3, 0.2, 0.07, 2.0), (48, 6, 0.1, 0.2, 2.0)],
)
def test_ms_matches_pml(dtype, tol, batch, n_classes, eps, tau, spread):
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners as pml_miners

    g = torch.Generator().manual_seed(batch)
    noise = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    # Every class has at least 3 members, so there are no singletons.
    labels = (torch.arange(batch) % n_classes)[torch.randperm(batch, generator=g)]
    # Overlapping class clusters: anchors keep some pairs and drop others.
    centers = torch.randn(n_classes, 3, generator=g, dtype=torch.float64)
    x = (noise + spread * centers[labels]).to(dtype).requires_grad_(True)
    z = unit(x)

    indices = pml_miners.MultiSimilarityMiner(epsilon=eps)(z, labels)
    pml_pos, pml_neg = _pml_masks(indices, batch)
    pos, neg = mining_masks(z @ z.T, labels, "ms", eps)
    # Precondition for agreement: every anchor keeps a positive and a negative.
    assert pos.any(1).all() and neg.any(1).all()
    # The mining must matter here, otherwise this would only test "none".
    same = labels[:, None] == labels[None, :]
    assert pos.sum() < same.sum() - batch and neg.sum() < (~same).sum()
    assert torch.equal(pos, pml_pos) and torch.equal(neg, pml_neg)

    ref = pml_losses.SupConLoss(temperature=tau)(z, labels, indices_tuple=indices)
    ours = supcon_loss(z, labels, temperature=tau, mining="ms", epsilon=eps)
    (g_ref,) = torch.autograd.grad(ref, x, retain_graph=True)
    (g_ours,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g_ours, g_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_none_matches_pml(dtype, tol):
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses as pml_losses

    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    # Class 9 is a singleton: pml drops its zero loss, and we skip it as an anchor.
    labels = torch.tensor([0, 1, 2] * 6 + [0, 9])
    assert len(labels.unique()) >= 2  # precondition: negatives exist
    z = unit(x)
    ref = pml_losses.SupConLoss(temperature=0.1)(z, labels)
    ours = supcon_loss(z, labels, temperature=0.1, mining="none")
    (g_ref,) = torch.autograd.grad(ref, x, retain_graph=True)
    (g_ours,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g_ours, g_ref, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------
def _loss_and_grad(z, labels, **kw):
    leaf = z.detach().clone().requires_grad_(True)
    loss = supcon_loss(leaf, labels, **kw)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("mining", MINING_MODES)
def test_singleton_anchor_adds_no_term(mining):
    # B = 3, labels [0, 0, 1]: only anchors 0 and 1 have a positive.
    z = unit(torch.tensor([[1.0, 0.2], [0.7, 0.7], [0.9, -0.4]], dtype=torch.float64))
    labels = torch.tensor([0, 0, 1])
    tau = 0.1
    loss, grad = _loss_and_grad(z, labels, temperature=tau, mining=mining, epsilon=0.5)
    s = z @ z.T
    # With eps = 0.5 MS keeps everything here, and with one positive and one negative
    # all three modes reduce to softplus((s_i2 - s_01)/tau) averaged over i in {0, 1}.
    expected = 0.5 * sum(math.log1p(math.exp((s[i, 2] - s[0, 1]).item() / tau)) for i in (0, 1))
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("mining", MINING_MODES)
def test_all_singletons_gives_connected_zero(mining):
    z, _ = random_batch(5, 5, seed=11)
    loss, grad = _loss_and_grad(z, torch.arange(5), mining=mining)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_all_same_label():
    z, _ = random_batch(6, 1, seed=12)
    labels = torch.zeros(6, dtype=torch.long)
    # "none": L_out has a positives-only denominator, which is > 0 for B >= 3 (pml gives 0 here).
    loss, grad = _loss_and_grad(z, labels, mining="none")
    ref = reference_loss(z, labels, 0.1, "none", 0.1)
    assert loss.item() > 0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.isfinite(grad).all()
    # B = 2 with one shared label: log(e^s / e^s) = 0.
    loss2, _ = _loss_and_grad(z[:2], labels[:2], mining="none")
    assert loss2.item() == pytest.approx(0.0, abs=1e-12)
    # ms / batch-hard: no negatives, so nothing is mined and the result is a connected zero.
    for mining in ("ms", "batch-hard"):
        leaf = z.clone().requires_grad_(True)
        out = supcon_loss(leaf, labels, mining=mining)
        assert out.item() == 0.0 and out.requires_grad
        out.backward()
        assert torch.equal(leaf.grad, torch.zeros_like(leaf.grad))


def test_nothing_mined_by_ms():
    # Two tight, opposite clusters: every positive is far above every negative plus eps.
    # float64, so the "none" loss below (about e^-20) does not round to 0 as it would in float32.
    pts = [[1.0, 0.01], [1.0, -0.01], [-1.0, 0.01], [-1.0, -0.01]]
    z = unit(torch.tensor(pts, dtype=torch.float64))
    labels = torch.tensor([0, 0, 1, 1])
    pos, neg = mining_masks(z @ z.T, labels, "ms", 0.1)
    assert not pos.any() and not neg.any()
    leaf = z.clone().requires_grad_(True)
    loss = supcon_loss(leaf, labels, mining="ms")
    assert loss.item() == 0.0 and loss.requires_grad and loss.dim() == 0
    loss.backward()
    assert torch.equal(leaf.grad, torch.zeros_like(leaf.grad))
    # The same batch still trains under "none" (small but nonzero).
    assert supcon_loss(z, labels, mining="none").item() > 0


@pytest.mark.parametrize("mining", MINING_MODES)
def test_batch_of_one(mining):
    leaf = unit(torch.tensor([[0.3, 0.4, 0.5]])).requires_grad_(True)
    loss = supcon_loss(leaf, torch.tensor([2]), mining=mining)
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(leaf.grad).all() and torch.equal(leaf.grad, torch.zeros_like(leaf.grad))


@pytest.mark.parametrize("mining", MINING_MODES)
def test_extreme_inputs_stay_finite(mining):
    # Duplicate points (cosine exactly 1), antipodal negatives and a tiny
    # temperature give logits of +-1000, which overflow a naive exp.
    pts = [[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]
    z = unit(torch.tensor(pts))
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    leaf = z.clone().requires_grad_(True)
    loss = supcon_loss(leaf, labels, temperature=1e-3, mining=mining, epsilon=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()
    ref = reference_loss(z, labels, 1e-3, mining, 2.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-3)


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    feats = torch.randn(32, 16)
    labels = torch.arange(32) % 4

    z32 = unit(layer(feats))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = layer(feats)
        assert h.dtype == torch.bfloat16  # the autocast really is active
        z16 = unit(h)
        losses16 = {m: supcon_loss(z16, labels, mining=m) for m in MINING_MODES}

    for mining, loss16 in losses16.items():
        assert loss16.dtype == torch.float32
        layer.zero_grad()
        loss16.backward(retain_graph=True)  # the three losses share z16's graph
        assert torch.isfinite(loss16) and torch.isfinite(layer.weight.grad).all()
    # Only "none" is compared by value: in bf16, ms/batch-hard may pick different pairs.
    loss32 = supcon_loss(z32, labels, mining="none")
    assert losses16["none"].item() == pytest.approx(loss32.item(), rel=5e-2)


def test_autocast_does_not_downcast_fp32_input():
    # A float32 z under autocast must give the float32 result. Without the local
    # autocast-off, matmul would run in bf16 and miss this tolerance by far.
    z, labels = random_batch(32, 4, dim=8, seed=21, dtype=torch.float32)
    plain = supcon_loss(z, labels, mining="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = supcon_loss(z, labels, mining="none")
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain, rtol=1e-6, atol=1e-6)


def test_half_precision_input_is_upcast():
    z, labels = random_batch(16, 3, seed=22, dtype=torch.float32)
    loss = supcon_loss(z.bfloat16(), labels, mining="none")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(supcon_loss(z, labels, mining="none").item(), rel=5e-2)


# ----------------------------------------------------------------------------------------------
# Degenerate batches: a finite loss and gradient in every mode and input dtype, and known values
# ----------------------------------------------------------------------------------------------
# Each case gives x, what the caller L2-normalises (pairtune.py passes z = F.normalize(head(r)),
# and supcon_loss does not renormalise, so a zero row of x reaches the loss as a zero row of z),
# the labels, and the value by mining mode where it is known in closed form. Wherever it is, the
# gradient with respect to x is zero too: nothing is mined, or the loss is identically 0 (B = 2
# with one positive: log(e^s / e^s)), or the batch is a stationary point (all rows one point, or
# all zero).
MIXED_10 = torch.tensor([0, 1, 2] * 3 + [0])  # every class has >= 3 members
ONE_CLASS_10 = torch.zeros(10, dtype=torch.long)
# One unit vector whose entries are exact in bf16 and fp16, scaled by powers of two: after unit()
# every row is bit-identical in every dtype, so all s are exactly 1.
COINCIDING_10 = torch.tensor([[0.5, -0.5, 0.5, 0.5]], dtype=torch.float64) * 2.0 ** torch.arange(-2.0, 8)[:, None]
# Every positive is far more similar than every negative, and more than eps apart from it.
SEPARATED_4 = torch.tensor([[1.0, 0.01], [1.0, -0.01], [-1.0, 0.01], [-1.0, -0.01]], dtype=torch.float64)
ZERO_LOSS = {mining: 0.0 for mining in MINING_MODES}
# all s equal: each anchor's loss is log(B - 1) over all pairs (ms keeps them all for eps > 0),
# and softplus(0) = log 2 for batch-hard
ALL_EQUAL_10 = {"none": math.log(9), "ms": math.log(9), "batch-hard": math.log(2)}


def _with_zero_rows():
    x = random_batch(10, 3, seed=30)[0]
    x[[0, 4, 7]] = 0.0
    return x


DEGENERATE = {
    "coinciding": lambda: (COINCIDING_10, MIXED_10, ALL_EQUAL_10),
    "coinciding_one_class": lambda: (COINCIDING_10, ONE_CLASS_10, {**ZERO_LOSS, "none": math.log(9)}),
    "one_class": lambda: (random_batch(6, 1, seed=12)[0], torch.zeros(6, dtype=torch.long),
                          {"ms": 0.0, "batch-hard": 0.0}),
    "nothing_mined": lambda: (SEPARATED_4, torch.tensor([0, 0, 1, 1]), {"ms": 0.0}),
    "zero_rows": lambda: (_with_zero_rows(), MIXED_10, {}),
    "all_zero": lambda: (torch.zeros(10, 3, dtype=torch.float64), MIXED_10, ALL_EQUAL_10),
    "batch_of_1": lambda: (random_batch(1, 1, seed=31)[0], torch.tensor([3]), ZERO_LOSS),
    "batch_of_2_same": lambda: (random_batch(2, 1, seed=32)[0], torch.tensor([3, 3]), ZERO_LOSS),
    "batch_of_2_apart": lambda: (random_batch(2, 1, seed=33)[0], torch.tensor([3, 4]), ZERO_LOSS),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_batch_is_finite_and_right(case, mining, dtype):
    x, labels, known = DEGENERATE[case]()
    leaf = x.float().requires_grad_(True)  # float32, as pairtune.py's projection head gives
    z = unit(leaf).to(dtype)
    loss = supcon_loss(z, labels, mining=mining)
    grad_x, grad_z = torch.autograd.grad(loss, (leaf, z))
    assert torch.isfinite(loss) and torch.isfinite(grad_z).all() and torch.isfinite(grad_x).all()

    # the loop reference, on the values supcon_loss received
    ref, g_ref = grad_of(lambda v: reference_loss(v, labels, 0.1, mining, 0.1), z.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(grad_z.double(), g_ref, rtol=tol, atol=tol)
    if mining in known:
        assert loss.item() == pytest.approx(known[mining], abs=1e-5)
        torch.testing.assert_close(grad_x, torch.zeros_like(grad_x), rtol=0, atol=1e-5)
    if not mining_masks(z.float() @ z.float().T, labels, mining)[0].any():
        # nothing mined: an exact 0, connected to z, with zero gradients (module docstring)
        assert loss.item() == 0.0 and loss.requires_grad and torch.count_nonzero(grad_z) == 0


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
GOOD_Z = unit(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
GOOD_Y = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"z": GOOD_Z[0]}, "2-D"),
        ({"z": GOOD_Z[None]}, "2-D"),
        ({"labels": GOOD_Y[:, None]}, "1-D"),
        ({"labels": GOOD_Y[:3]}, "batch size mismatch"),
        ({"labels": GOOD_Y.float()}, "integer"),
        ({"z": torch.ones(4, 3, dtype=torch.long)}, "floating"),
        ({"mining": "semi-hard"}, "unknown mining"),
        ({"mining": "MS"}, "unknown mining"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"epsilon": float("inf")}, "epsilon"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"z": GOOD_Z, "labels": GOOD_Y, "temperature": 0.1, "mining": "ms", "epsilon": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        supcon_loss(**args)


def test_mining_masks_bad_input_raises():
    with pytest.raises(ValueError, match="unknown mining"):
        mining_masks(HAND_SIM, HAND_SIM_Y, "hardest", 0.1)
    with pytest.raises(ValueError, match="square"):
        mining_masks(HAND_SIM[:3], HAND_SIM_Y, "ms", 0.1)
    with pytest.raises(ValueError, match="labels"):
        mining_masks(HAND_SIM, HAND_SIM_Y[:4], "ms", 0.1)
