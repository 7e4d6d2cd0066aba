"""fused_supcon_loss against the eager supcon_loss (the oracle, itself tested against a loop in
test_losses.py): value and gradient, every mining mode, edge cases, dtypes, and no recompiles.

The compiled tests use small shapes: each mining mode compiles once per process (a few seconds on
CPU), and every later call of any batch size reuses that.
"""

import pytest
import torch
import torch.nn.functional as F

import losses
from losses import MINING_MODES, fused_supcon_loss, supcon_loss
from test_losses import DEGENERATE  # the same degenerate batches as the eager loss's tests


def batch(n, n_classes, dim=8, seed=0, dtype=torch.float32):
    """Unit vectors in a low dimension, so cosines spread and MS mining keeps and drops pairs."""
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1).to(dtype)
    return z, torch.randint(0, n_classes, (n,), generator=g)


def value_and_grad(loss_fn, z, labels, **kwargs):
    leaf = z.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf, labels, **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def assert_same(z, labels, tol, **kwargs):
    want_loss, want_grad = value_and_grad(supcon_loss, z, labels, **kwargs)
    got_loss, got_grad = value_and_grad(fused_supcon_loss, z, labels, **kwargs)
    assert got_loss.dtype == want_loss.dtype and got_grad.dtype == z.dtype
    torch.testing.assert_close(got_loss, want_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(got_grad, want_grad, rtol=tol, atol=tol)
    return want_loss, want_grad


# ----------------------------------------------------------------------------------------------
# The same passes run eagerly (compiled=False): exact agreement in float64, no compiler involved
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("n, n_classes", [(2, 1), (3, 2), (7, 3), (33, 5), (40, 40), (64, 4)])
def test_uncompiled_fused_equals_eager_in_float64(mining, n, n_classes):
    z, labels = batch(n, n_classes, dim=3, seed=n, dtype=torch.float64)
    want = value_and_grad(supcon_loss, z, labels, mining=mining)
    got = value_and_grad(fused_supcon_loss, z, labels, mining=mining, compiled=False)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Compiled: float32 within 1e-5
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mining", MINING_MODES)
def test_compiled_matches_eager_across_batch_sizes_and_classes(mining):
    # odd sizes, few and many classes (40 classes in 41 clips: mostly singletons)
    for n, n_classes, seed in [(32, 4, 0), (17, 3, 1), (41, 40, 2), (64, 8, 3), (5, 2, 4)]:
        z, labels = batch(n, n_classes, seed=seed)
        loss, grad = assert_same(z, labels, 1e-5, mining=mining)
        if n_classes < n // 2:
            assert loss > 0 and grad.abs().sum() > 0  # the comparison is not between two zeros


@pytest.mark.parametrize("tau, eps", [(0.07, 0.0), (0.5, 0.3)])
def test_compiled_matches_eager_other_hyperparameters(tau, eps):
    z, labels = batch(24, 3, seed=5)
    assert_same(z, labels, 1e-5, mining="ms", temperature=tau, epsilon=eps)


def test_anchor_without_positives_adds_no_term():
    # label 9 occurs once: its anchor has no positive, but it still sits in the others' denominators
    z, labels = batch(12, 3, seed=6)
    labels[4] = 9
    for mining in MINING_MODES:
        assert_same(z, labels, 1e-5, mining=mining)


def test_batch_where_nothing_is_mined_gives_a_connected_zero():
    # two tight, far-apart classes: every positive is far more similar than every negative, so
    # MS mining keeps no pair at all
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.01], [-1.0, 0.0], [-0.99, 0.02]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    assert losses.mining_masks(z @ z.T, labels, "ms")[0].sum() == 0
    loss, grad = assert_same(z, labels, 1e-6, mining="ms")
    assert loss == 0 and torch.count_nonzero(grad) == 0


def test_all_singletons_and_all_same_label():
    z, _ = batch(6, 1, seed=7)
    for labels in (torch.arange(6), torch.zeros(6, dtype=torch.long)):
        for mining in MINING_MODES:
            assert_same(z, labels, 1e-5, mining=mining)


def test_bf16_input_and_autocast():
    z32, labels = batch(24, 4, seed=8)
    z16 = z32.to(torch.bfloat16)
    for mining in MINING_MODES:
        # both upcast the same bf16 values, so they agree closely; the gradient is bf16
        assert_same(z16, labels, 2e-2, mining=mining)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = value_and_grad(fused_supcon_loss, z32, labels, mining=mining)
        want, _ = value_and_grad(supcon_loss, z32, labels, mining=mining)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # autocast does not downcast S


def test_inputs_outside_the_fused_range_fall_back_to_eager():
    z, labels = batch(16, 3, seed=9)
    big = 10 * z  # |s| / tau = 1000: exp would overflow without a row maximum
    want = value_and_grad(supcon_loss, big, labels)
    got = value_and_grad(fused_supcon_loss, big, labels)
    torch.testing.assert_close(got, want)
    assert torch.isfinite(got[0]) and torch.isfinite(got[1]).all()
    for n in (0, 1):  # no pairs
        loss, grad = value_and_grad(fused_supcon_loss, z[:n], labels[:n])
        assert loss == 0 and grad.shape == (n, 8)


def test_no_recompile_for_a_smaller_last_batch_or_other_classes():
    from torch._dynamo.utils import counters

    leaf = batch(48, 6, seed=10)[0].requires_grad_()
    fused_supcon_loss(leaf, batch(48, 6, seed=10)[1], mining="ms").backward()  # compiled (or found) here
    graphs = counters["stats"]["unique_graphs"]
    # error_on_recompile: a recompile raises, rather than passing quietly when Dynamo gives up and
    # runs eagerly
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n, n_classes in [(37, 6), (48, 11), (20, 2), (96, 30)]:
            z, labels = batch(n, n_classes, seed=n)
            leaf = z.requires_grad_()
            fused_supcon_loss(leaf, labels, mining="ms").backward()
    assert counters["stats"]["unique_graphs"] == graphs


def test_bad_input_raises_like_eager():
    z, labels = batch(4, 2)
    with pytest.raises(ValueError, match="unknown mining mode"):
        fused_supcon_loss(z, labels, mining="hardest")
    with pytest.raises(ValueError, match="temperature"):
        fused_supcon_loss(z, labels, temperature=0.0)
    with pytest.raises(ValueError, match="batch size mismatch"):
        fused_supcon_loss(z, labels[:3])


def test_large_label_ids_are_not_merged():
    # ids beyond int32 must stay distinct (the int32 fast path is only taken when they fit)
    z, _ = batch(6, 1, seed=11)
    labels = torch.tensor([0, 2**32, 1, 2**32 + 1, 0, 1])
    for mining in MINING_MODES:
        assert_same(z, labels, 1e-5, mining=mining)


def test_nan_input_goes_to_eager_and_double_backward_is_refused():
    z, labels = batch(8, 2, seed=12)
    z[3, 0] = float("nan")
    want = value_and_grad(supcon_loss, z, labels, mining="none")
    got = value_and_grad(fused_supcon_loss, z, labels, mining="none")
    torch.testing.assert_close(got, want, equal_nan=True)
    leaf = batch(8, 2, seed=12)[0].requires_grad_()
    (grad,) = torch.autograd.grad(fused_supcon_loss(leaf, labels, compiled=False), leaf, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()


def test_coinciding_and_duplicate_embeddings():
    # S's diagonal holds the +inf sentinel in the fused path; here other entries equal the diagonal's
    # true value (s = 1 for a duplicate), so leaving out (i, i) must not depend on the value there
    z, labels = batch(12, 3, seed=13)
    z[5] = z[2]
    labels[5] = labels[2]  # a duplicate positive
    z[7] = z[3]
    labels[7] = (labels[3] + 1) % 3  # a duplicate negative
    one_point = z[:1].repeat(10, 1)  # every embedding the same
    for mining in MINING_MODES:
        assert_same(z, labels, 1e-5, mining=mining)
        loss, grad = assert_same(one_point, labels[:10], 1e-5, mining=mining)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        got = value_and_grad(fused_supcon_loss, z.double(), labels, mining=mining, compiled=False)
        torch.testing.assert_close(got, value_and_grad(supcon_loss, z.double(), labels, mining=mining),
                                   rtol=1e-12, atol=1e-12)


def test_a_second_backward_through_a_retained_graph_is_refused():
    # the backward writes the gradient over the saved similarities, so it cannot run twice
    z, labels = batch(16, 4, seed=14)
    for compiled in (False, True):
        leaf = z.clone().requires_grad_()
        loss = fused_supcon_loss(leaf, labels, compiled=compiled)
        loss.backward(retain_graph=True)
        want = value_and_grad(supcon_loss, z, labels)[1]
        torch.testing.assert_close(leaf.grad, want, rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="runs once per forward"):
            loss.backward()


# ----------------------------------------------------------------------------------------------
# Degenerate batches, compiled, in every mode and input dtype: test_losses.py's DEGENERATE, whose
# eager loss it checks against its loop reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_batch_is_finite_and_matches_eager(case, mining, dtype):
    x, labels, known = DEGENERATE[case]()
    z = F.normalize(x, dim=1).to(dtype)
    loss, grad = value_and_grad(fused_supcon_loss, z, labels, mining=mining)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if mining in known:
        assert loss.item() == pytest.approx(known[mining], abs=1e-5)
    if not losses.mining_masks(z.float() @ z.float().T, labels, mining)[0].any():
        # nothing mined: an exact 0 with zero gradients, as in supcon_loss
        assert loss == 0 and torch.count_nonzero(grad) == 0
    assert_same(z, labels, 1e-5 if dtype == torch.float32 else 2e-2, mining=mining)
