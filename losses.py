"""Supervised-contrastive loss with optional pair mining (the AudioConFit objective).

`supcon_loss` is the eager reference implementation: everything is vectorised over
the batch and free of data-dependent Python control flow. `fused_supcon_loss` (after
it) computes the same loss and gradient with a closed-form backward
and torch.compile'd passes over the similarity matrix, and is checked against it.

Multi-label data (multi-hot targets [B, C]; the notes at the end of this file):
`multilabel_supcon_loss(z, targets, temperature, mining, epsilon, kind)` is the eager
Jaccard-weighted SupCon (kind="jaccard", Audibert et al. 2024) or MulSupCon
(kind="mulsupcon", Zhang & Wu 2024, in-batch and single-view), and
`fused_multilabel_supcon_loss` (same arguments, plus `compiled`) its fused path. Both
reduce to `supcon_loss` on one-hot targets. `contrastive_loss(z, labels, ..., fused,
multilabel_kind)` calls the right one for [B] integer labels or [B, C] targets.

Notation
--------
z        [B, p]  L2-normalised embeddings, so s_ij = z_i . z_j is a cosine.
labels   [B]     integer class ids.
tau      > 0     temperature.
P(i)             positives of anchor i: {k != i : y_k = y_i}.
N(i)             negatives of anchor i: {j : y_j != y_i}.
Pairs (i, i) are never used.

SupCon, L_out form (Khosla et al. 2020, "Supervised Contrastive Learning", eq. 2):

    L_i = -1/|P(i)| * sum_{k in P(i)} log( exp(s_ik/tau) / sum_{a != i} exp(s_ia/tau) )
    L   = mean of L_i over anchors with |P(i)| >= 1

Multi-similarity mining (Wang et al. 2019, "Multi-Similarity Loss with General
Pair Weighting for Deep Metric Learning", sec. 4.1, pair mining with margin eps):

    keep negative j  iff  s_ij + eps > min_{k in P(i)} s_ik
    keep positive k  iff  s_ik - eps < max_{j in N(i)} s_ij

Every mode computes the same restricted SupCon term over kept pairs P'(i), N'(i):

    L_i = -1/|P'(i)| * sum_{k in P'(i)} [ s_ik/tau - logsumexp_{a in P'(i) u N'(i)} s_ia/tau ]
    L   = mean of L_i over anchors with |P'(i)| >= 1

    mining="none"        P' = P, N' = N; the denominator then runs over all a != i,
                         which is exactly L_out above.
    mining="ms"          P', N' from multi-similarity mining (default).
    mining="batch-hard"  P' = {hardest positive (lowest cosine)},
                         N' = {hardest negative (highest cosine)}, so
                         L_i = softplus((s_in* - s_ik*)/tau). An anchor that lacks a
                         positive or a negative keeps neither, so the mean runs over
                         anchors that have both: an anchor with only a positive would
                         add a constant log(1) = 0 term and just dilute the mean.

For MS mining an anchor keeps some positive iff it keeps some negative (if some
positive k is kept, then min_pos - eps <= s_ik - eps < max_neg, so the hardest
negative is kept, and the converse holds the same way), up to rounding at the margin.

Edge cases (none gives NaN or inf in the loss or its gradient)
--------------------------------------------------------------
* An anchor with no (kept) positive, e.g. the only member of its class, adds no
  term and is not counted, though it still appears in other anchors' denominators.
* If no anchor has a kept positive (B <= 1, all classes singletons, nothing mined,
  or an all-same-label batch under "ms"/"batch-hard") the loss is 0. The 0 is
  still connected to z, so backward() works and gives zero gradients.
* All-same-label batch under "none": there are no negatives, and L_out is still
  defined (positives-only denominator). It is 0 for B = 2 and > 0 for B >= 3.
* bf16/fp16 inputs or autocast: the similarities and logsumexp run in float32
  (float64 stays float64) with autocast turned off, and the loss comes back in
  that dtype.

Differences from pytorch-metric-learning
----------------------------------------
`losses.SupConLoss(temperature=tau)` together with
`miners.MultiSimilarityMiner(epsilon=eps)` (pml 2.9) gives the same value and
gradient as mining="ms", and SupConLoss without a miner gives the same as
mining="none", except in these cases:
  1. pml averages with AvgNonZeroReducer, i.e. over anchors whose loss is > 0,
     whereas we average over anchors with >= 1 kept positive. The two differ only
     when an anchor's loss is exactly 0: an anchor whose only kept pair is one
     positive (log 1 = 0), or a float underflow when every kept negative is far
     below the positives (about 17 logits apart in float32).
  2. pml returns 0 if the kept pairs contain no positive pair or no negative
     pair anywhere in the batch. So for an all-same-label batch under "none" we
     return L_out with its positives-only denominator, and pml returns 0.
  3. pml (GenericPairLoss) also returns 0 if at most one positive pair and at
     most one negative pair are kept; we return that single anchor's loss.
  4. pml L2-normalises the embeddings again inside CosineSimilarity; we use z
     as given. This makes no difference for unit-norm z, and the gradients with
     respect to a tensor before normalisation also agree.
pml puts finfo.max/min sentinels where we use +-inf for the mining thresholds.
For finite similarities both give the same masks.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["MINING_MODES", "MULTILABEL_KINDS", "contrastive_loss", "fused_multilabel_supcon_loss",
           "fused_supcon_loss", "mining_masks", "multilabel_supcon_loss", "supcon_loss"]

MINING_MODES = ("none", "ms", "batch-hard")


def _check_mining(mining: str) -> None:
    if mining not in MINING_MODES:
        raise ValueError(f"unknown mining mode {mining!r}; expected one of {MINING_MODES}")


def mining_masks(
    sim: Tensor, labels: Tensor, mining: str = "ms", epsilon: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Select the anchor-positive and anchor-negative pairs that enter the loss.

    Args:
        sim: [B, B] similarity matrix (cosines); row i holds anchor i.
        labels: [B] integer class ids.
        mining: "none", "ms" or "batch-hard" (see the module docstring).
        epsilon: MS margin; ignored by the other modes.

    Returns:
        (pos_mask, neg_mask), both bool [B, B] with a False diagonal. pos_mask[i, k]
        means pair (i, k) is a kept positive of anchor i, and neg_mask the same for
        negatives. The masks are computed without gradient: mining only chooses
        pairs and is piecewise constant in sim.
    """
    _check_mining(mining)
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square [B, B] matrix, got shape {tuple(sim.shape)}")
    if labels.dim() != 1 or labels.shape[0] != sim.shape[0]:
        raise ValueError(
            f"labels must have shape [{sim.shape[0]}] to match sim, got {tuple(labels.shape)}"
        )

    return _masks_from_same(sim.detach(), labels[:, None] == labels[None, :], mining, epsilon)


def _masks_from_same(sim: Tensor, same: Tensor, mining: str, epsilon: float) -> tuple[Tensor, Tensor]:
    """mining_masks' selection, given same [B, B] (True for pairs of one class, and on the diagonal).

    The multi-label losses call it with same = "shares a label" (and the diagonal set True).
    """
    with torch.no_grad():
        batch = sim.shape[0]
        not_self = ~torch.eye(batch, dtype=torch.bool, device=sim.device)
        pos = same & not_self
        neg = ~same  # the diagonal is "same", so it is already excluded here
        if mining == "none" or batch == 0:  # amin/amax reject empty rows
            return pos, neg

        # +-inf stand in for "no positive" / "no negative". They are only compared,
        # never used in arithmetic, so they make no NaN: with no positive, no negative
        # is kept (x > +inf is false), and with no negative, no positive is kept.
        hardest_pos_sim = sim.masked_fill(~pos, math.inf)
        hardest_neg_sim = sim.masked_fill(~neg, -math.inf)

        if mining == "ms":
            min_pos = hardest_pos_sim.amin(dim=1, keepdim=True)
            max_neg = hardest_neg_sim.amax(dim=1, keepdim=True)
            keep_neg = neg & (sim + epsilon > min_pos)
            keep_pos = pos & (sim - epsilon < max_neg)
            return keep_pos, keep_neg

        # batch-hard: one-hot rows. Ties go to the lowest index (argmin/argmax
        # return the first extremum).
        has_both = (pos.any(dim=1) & neg.any(dim=1))[:, None]
        pos_idx = hardest_pos_sim.argmin(dim=1, keepdim=True)
        neg_idx = hardest_neg_sim.argmax(dim=1, keepdim=True)
        keep_pos = torch.zeros_like(pos).scatter_(1, pos_idx, True) & has_both
        keep_neg = torch.zeros_like(neg).scatter_(1, neg_idx, True) & has_both
        return keep_pos, keep_neg


def _masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise logsumexp over mask; rows with an empty mask give 0.

    The fill value is finite, not -inf, so every intermediate stays finite. With
    -inf an empty row's logsumexp is -inf, and later arithmetic on it (-inf - -inf,
    0 * -inf) gives NaN. Eager torch.logsumexp's backward happens to mask that case,
    but a hand-written or fused kernel need not. Empty rows get 0, so callers never
    see the fill value.
    """
    filled = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    out = torch.logsumexp(filled, dim=1)  # subtracts the row max internally
    return torch.where(mask.any(dim=1), out, torch.zeros_like(out))


def _autocast_disabled(device_type: str):
    # Under CPU/CUDA autocast, matmul would run in bf16/fp16 even on float32
    # inputs, and a temperature of 0.1 magnifies that rounding tenfold.
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _validate_z(z: Tensor) -> None:
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D [B, p], got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")


def _validate_options(temperature: float, mining: str, epsilon: float) -> None:
    _check_mining(mining)
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if not math.isfinite(float(epsilon)):
        raise ValueError(f"epsilon must be finite, got {epsilon}")


def _validate(z: Tensor, labels: Tensor, temperature: float, mining: str, epsilon: float) -> None:
    if not isinstance(z, Tensor) or not isinstance(labels, Tensor):
        raise ValueError("z and labels must be torch tensors")
    _validate_z(z)
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D [B], got shape {tuple(labels.shape)}")
    if labels.shape[0] != z.shape[0]:
        raise ValueError(
            f"batch size mismatch: z has {z.shape[0]} rows but labels has {labels.shape[0]}"
        )
    if labels.device != z.device:
        raise ValueError(f"labels are on {labels.device} but z is on {z.device}; move them to z's device")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    _validate_options(temperature, mining, epsilon)


def supcon_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    mining: str = "ms",
    epsilon: float = 0.1,
) -> Tensor:
    """Supervised-contrastive loss (Khosla et al. 2020, L_out) over mined pairs.

    Args:
        z: [B, p] L2-normalised embeddings (not renormalised here). Any float dtype.
        labels: [B] integer class ids.
        temperature: tau > 0.
        mining: "ms" (multi-similarity, Wang et al. 2019), "none" (all pairs),
            or "batch-hard" (hardest positive and hardest negative per anchor).
        epsilon: MS mining margin (cosine units).

    Returns:
        Scalar loss, in float32 (float64 if z is float64), differentiable w.r.t. z.
        The equations and edge cases are in the module docstring.

    Raises:
        ValueError: wrong dimensions, mismatched batch sizes, non-integer labels,
            unknown mining mode, non-positive temperature or non-finite epsilon.
    """
    _validate(z, labels, temperature, mining, epsilon)
    compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32

    with _autocast_disabled(z.device.type):
        zc = z.to(compute_dtype)
        sim = zc @ zc.T  # [B, B]
        pos, neg = mining_masks(sim, labels, mining, epsilon)

        logits = sim / temperature
        log_denom = _masked_logsumexp(logits, pos | neg)  # [B]

        n_pos = pos.sum(dim=1)
        has_pos = n_pos > 0
        # clamp only guards anchors without positives; torch.where discards them.
        mean_pos_logit = torch.where(pos, logits, 0.0).sum(dim=1) / n_pos.clamp_min(1)
        per_anchor = torch.where(has_pos, log_denom - mean_pos_logit, 0.0)

        # Dividing a sum of (possibly all) zeros keeps the result attached to z,
        # so "nothing mined" still gives a backward-able 0 with zero gradients.
        return per_anchor.sum() / has_pos.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------------
# Fused path: the same loss, with a closed-form backward and torch.compile'd passes over S
# ----------------------------------------------------------------------------------------------
#
# S = Z Z^T is the only O(B^2 p) forward work and dZ = (G + G^T) Z the only O(B^2 p) backward
# work, where G = dL/dS. Everything in between is elementwise or a row reduction over S, which
# Inductor fuses into loops that read S without materialising masks or logits (Triton kernels on
# CUDA, C++/OpenMP on CPU):
#
#   forward   S = Z Z^T                                                     GEMM
#             its diagonal set to +inf (see below)
#             per row of S, in one compiled graph:
#             pass 1 (ms, batch-hard): the mining thresholds
#             pass 2: sum of exp(S/tau) over kept pairs, number of kept positives, sum of their
#             S  ->  the loss
#   backward  Gs = G + G^T in one elementwise pass, written over S: S is symmetric, so g[a, i] is
#             computed at position (i, a) from S[i, a] and anchor a's row stats; no transposed
#             B x B read, and no second B x B buffer
#             dZ = Gs Z                                                     GEMM
#
# For an anchor i with kept positives (h_i = 1), M such anchors, kept pairs K, kept positives P:
#   L      = 1/M sum_i h_i ( lse_i - 1/|P_i| sum_k P[i,k] S[i,k] / tau ),
#   lse_i  = log sum_a K[i,a] exp(S[i,a] / tau),
#   g[i,a] = dL/dS[i,a] = h_i / (M tau) ( K[i,a] exp(S[i,a] / tau - lse_i) - P[i,a] / |P_i| ).
# The masks are constants of the step (mining only selects pairs), as in supcon_loss. Autograd
# through the eager version does the same maths with about ten B x B temporaries and two backward
# GEMMs for S = Z Z^T. Extra memory here: S alone (kept for backward, then overwritten by Gs).
#
# Pairs (i, i) never enter the loss, so S's diagonal is free to hold a sentinel: +inf. Then the
# passes need no index comparison to leave an anchor's own entry out (on CPU it cost an arange,
# a conversion, a compare and a mask op per vector of S in each pass): +inf is never a hardest positive (the min),
# sits among "same" entries so never among negatives, and fails every "kept" test (inf - eps <
# max_neg is false; mining="none" tests S < inf). A row whose hardest positive is +inf has no
# positive at all. S itself is finite: inputs with NaN or beyond the range below go to the eager
# loss.
#
# exp(S / tau) is taken without subtracting a row maximum: that needs |S| / tau + ln B < 80 (the
# row sums stay within float32), true for unit-norm z at tau = 0.1 for any B. fused_supcon_loss
# checks the bound and hands other inputs to the eager supcon_loss.


def _thresholds(sim: Tensor, same: Tensor, mining: str):
    """Pass 1: what each anchor's mining keeps, as [B, 1] columns (empty for mining="none").

    same[i, a]: the pair is of one class (for the multi-label losses: shares a label); True on the diagonal.
    """
    if mining == "none":
        return ()
    # hardest positive and hardest negative similarity per anchor (the +inf diagonal is in `same`)
    min_pos = torch.where(same, sim, math.inf).amin(dim=1, keepdim=True)
    max_neg = torch.where(same, -math.inf, sim).amax(dim=1, keepdim=True)
    if mining == "ms":
        return min_pos, max_neg
    has_both = (min_pos < math.inf) & (max_neg > -math.inf)  # batch-hard: the two chosen columns
    return (torch.where(same, sim, math.inf).argmin(dim=1, keepdim=True),
            torch.where(same, -math.inf, sim).argmax(dim=1, keepdim=True), has_both)


def _kept(sim, same, cols, stats, mining: str, epsilon: float):
    """Kept-positive and kept-negative masks at every position (i, a) of S (diagonal +inf).

    With the row anchors' stats ([B, 1] columns) and cols = index[None, :], entry (i, a) says
    whether anchor i keeps pair (i, a). With the stats transposed ([1, B] rows) and
    cols = index[:, None], entry (i, a) says whether anchor a keeps pair (a, i): the similarity
    S[a, i] it compares is S[i, a] (S is symmetric), and `same` is symmetric too. That second
    form puts g[a, i] at (i, a), so G + G^T needs no transposed read of a B x B matrix.
    """
    if mining == "ms":
        min_pos, max_neg = stats
        return same & (sim - epsilon < max_neg), ~same & (sim + epsilon > min_pos)
    if mining == "batch-hard":  # has_both is False where the chosen column could be the diagonal
        pos_idx, neg_idx, has_both = stats
        return (cols == pos_idx) & has_both, (cols == neg_idx) & has_both
    return same & (sim < math.inf), ~same



def _loss_terms(sim: Tensor, labels: Tensor, temperature: float, mining: str, epsilon: float):
    """Passes 1 and 2: the loss, the mining stats and the per-anchor vectors the backward needs.

    Compiled as one graph (on CPU, Inductor makes one loop over rows that runs both passes on
    each row in turn).
    """
    same = labels[:, None] == labels[None, :]
    stats = _thresholds(sim, same, mining)
    index = torch.arange(sim.shape[0], device=sim.device, dtype=torch.int32)  # read by batch-hard alone
    pos, neg = _kept(sim, same, index[None, :], stats, mining, epsilon)
    exp_sim = torch.exp(sim * (1.0 / temperature))
    sum_exp = torch.where(pos | neg, exp_sim, 0.0).sum(dim=1, keepdim=True)
    # counted in floating point: exact below 2^24 per row, and no int64 vector conversions
    n_pos = torch.where(pos, 1.0, 0.0).to(sim.dtype).sum(dim=1, keepdim=True)
    sum_pos = torch.where(pos, sim, 0.0).sum(dim=1, keepdim=True)
    has_pos = n_pos > 0
    inv_n_pos = torch.where(has_pos, 1.0 / n_pos.clamp_min(1), 0.0)  # 0 also switches anchors off
    # an anchor with positives has a non-empty kept set, so sum_exp > 0 wherever it is used
    lse = torch.log(torch.where(has_pos, sum_exp, 1.0))
    per_anchor = torch.where(has_pos, lse - sum_pos * inv_n_pos / temperature, 0.0)
    n_anchors = has_pos.sum().clamp_min(1).to(sim.dtype)
    # softmax_scale_i = h_i / sum_exp_i: exp(S[i, a] / tau) * softmax_scale_i is anchor i's softmax
    # over its kept pairs (0 for anchors without positives, which add no term)
    softmax_scale = torch.where(has_pos, 1.0 / sum_exp, 0.0)
    return per_anchor.sum() / n_anchors, stats, softmax_scale, inv_n_pos, n_anchors


def _symmetric_pair_grad_into_sim(sim: Tensor, labels: Tensor, stats, softmax_scale: Tensor,
                                  inv_n_pos: Tensor, scale: Tensor, temperature: float,
                                  mining: str, epsilon: float) -> None:
    """Gs = G + G^T, G = dL/dS, in one elementwise pass over S, written over S.

    scale = grad_out / (M tau). Entry (i, a) of Gs needs S[i, a] alone, so the pass can overwrite
    S as it goes: compiled, Inductor writes the result straight into S's buffer.
    """
    same = labels[:, None] == labels[None, :]
    index = torch.arange(sim.shape[0], device=sim.device, dtype=torch.int32)  # read by batch-hard alone
    exp_sim = torch.exp(sim * (1.0 / temperature))  # shared by g[i, a] and g[a, i]
    # g[i, a] at (i, a): anchor i's kept pairs and row stats
    pos_r, neg_r = _kept(sim, same, index[None, :], stats, mining, epsilon)
    g_rows = torch.where(pos_r | neg_r, exp_sim * softmax_scale, 0.0) - torch.where(pos_r, inv_n_pos, 0.0)
    # g[a, i] at (i, a): anchor a's kept pairs and row stats, laid along the columns (see _kept)
    stats_t = tuple(s.T for s in stats)
    pos_c, neg_c = _kept(sim, same, index[:, None], stats_t, mining, epsilon)
    g_cols = torch.where(pos_c | neg_c, exp_sim * softmax_scale.T, 0.0) - torch.where(pos_c, inv_n_pos.T, 0.0)
    sim.copy_(scale * (g_rows + g_cols))


_compiled_passes: dict = {}  # (pass, temperature, mining, epsilon, *constants) -> compiled function


def _compiled(fn, temperature: float, mining: str, epsilon: float, **constants):
    """`fn` compiled with temperature, mining, epsilon (and any other keyword `constants`, such as the
    multi-label loss's kind) as compile-time constants.

    dynamic=True gives one graph for every batch size (a smaller last batch, any number of
    classes). specialize_float makes the floats constants of the graph: by default Dynamo turns
    them into runtime scalars of a dynamic graph, and the C++ kernels then ran 3-5x slower
    (measured on CPU: 8 ms against 27-42 ms for the forward passes at B = 2048).
    """
    key = (fn, temperature, mining, epsilon, *sorted(constants.items()))
    if key not in _compiled_passes:
        compiled = torch.compile(partial(fn, temperature=temperature, mining=mining, epsilon=epsilon,
                                         **constants), dynamic=True)

        def run(*tensors):
            # The patch is process-wide while it lasts (torch._dynamo.config is not thread-local).
            # recompile_limit: every (temperature, mining, epsilon) compiles the same code objects,
            # and past Dynamo's default of 8 variants it would silently fall back to eager.
            with torch._dynamo.config.patch(specialize_float=True, recompile_limit=64):
                return compiled(*tensors)
        _compiled_passes[key] = run
    return _compiled_passes[key]


class _FusedSupCon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, labels, temperature, mining, epsilon, compiled):
        options = dict(temperature=temperature, mining=mining, epsilon=epsilon)
        run = (lambda fn: _compiled(fn, **options)) if compiled else (lambda fn: partial(fn, **options))
        zc = z.detach().to(torch.float64 if z.dtype == torch.float64 else torch.float32)
        sim = zc @ zc.T  # [B, B], the one forward GEMM
        sim.diagonal().fill_(math.inf)  # the sentinel for pairs (i, i), see the notes above
        loss, stats, softmax_scale, inv_n_pos, n_anchors = run(_loss_terms)(sim, labels)
        ctx.save_for_backward(zc, sim, labels, softmax_scale, inv_n_pos, n_anchors, *stats)
        ctx.run, ctx.temperature, ctx.z_dtype = run, temperature, z.dtype
        ctx.sim_overwritten = False
        return loss

    @staticmethod
    @once_differentiable  # the closed-form backward is not itself differentiable (no double backward)
    def backward(ctx, grad_out):
        if ctx.sim_overwritten:  # a second backward through a retained graph
            raise RuntimeError("fused_supcon_loss's backward overwrites its saved similarities with "
                               "the gradient, so it runs once per forward; use supcon_loss for "
                               "backward(retain_graph=True) run twice")
        ctx.sim_overwritten = True
        zc, sim, labels, softmax_scale, inv_n_pos, n_anchors, *stats = ctx.saved_tensors
        scale = grad_out.to(sim.dtype) / (n_anchors * ctx.temperature)
        ctx.run(_symmetric_pair_grad_into_sim)(sim, labels, tuple(stats), softmax_scale, inv_n_pos, scale)
        grad_z = sim @ zc  # [B, p], the one backward GEMM; sim now holds Gs
        return grad_z.to(ctx.z_dtype), None, None, None, None, None


def fused_supcon_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    mining: str = "ms",
    epsilon: float = 0.1,
    compiled: bool = True,
) -> Tensor:
    """`supcon_loss` with the same arguments, value and gradient, by the fused path above.

    Args: as `supcon_loss`, plus `compiled`: False runs the same passes eagerly (no compiler
    needed; for debugging, and for machines without a C++ compiler). The first compiled call
    compiles (tens of seconds on CPU); later calls of any batch size reuse that.
    Inputs outside the fused path's range (max |s| / tau + ln B >= 80 in float32, e.g. z far from
    unit norm, or tau < 0.014 at B = 4096), inputs with NaN, and batches of fewer than 2 go to
    `supcon_loss` instead. No double backward (create_graph), and one backward per forward (it
    writes the gradient over its saved S; a second one through a retained graph raises): use
    `supcon_loss` for either.
    The backward reads S[i, a] for both g[i, a] and g[a, i], assuming the GEMM's S is symmetric;
    where it is not bit-exact (some GPU GEMMs), a pair lying exactly on an MS margin could be
    counted as kept in the forward and not in the backward.
    """
    _validate(z, labels, temperature, mining, epsilon)
    if z.shape[0] < 2:  # no pairs at all: the loss is a 0 attached to z either way
        return supcon_loss(z, labels, temperature, mining, epsilon)
    # One host sync for three checks. exp(S / tau) is summed over up to B pairs without a row
    # maximum, so |S| / tau + ln B must stay below float32's exp limit (88.7; 709 in float64),
    # and |S| <= the largest squared norm. Labels are narrowed to int32 only when they fit.
    with torch.no_grad():
        max_norm = torch.linalg.vector_norm(z.detach().float(), dim=1).max()  # no [B, p] temporary
        max_norm, low, high = torch.stack([max_norm.double(), labels.min().double(),
                                           labels.max().double()]).tolist()
    max_sq_norm = max_norm * max_norm
    exp_limit = 700.0 if z.dtype == torch.float64 else 80.0
    if not max_sq_norm / float(temperature) + math.log(z.shape[0]) < exp_limit:  # NaN fails too
        return supcon_loss(z, labels, temperature, mining, epsilon)
    # int32 labels: the label comparisons run 8 to a vector register instead of 4
    small_labels = -(2**31) <= low and high < 2**31
    with _autocast_disabled(z.device.type):
        labels = labels.to(torch.int32 if small_labels else torch.long)
        return _FusedSupCon.apply(z, labels, float(temperature), mining,
                                  float(epsilon), compiled)


# ----------------------------------------------------------------------------------------------
# Multi-label: the Jaccard-weighted SupCon and MulSupCon, eager and fused
# ----------------------------------------------------------------------------------------------
#
# targets [B, C] is multi-hot (0/1, float, int or bool); n_i = |y_i| labels of clip i, m_c clips
# carrying label c. Both losses are a SupCon whose positives carry weights W_ij (W symmetric, zero
# diagonal) and whose anchors carry weights alpha_i:
#
#   L_i = alpha_i ( logsumexp_{a in P'(i) u N'(i)} s_ia / tau - sum_{k in P'(i)} p_ik s_ik / tau ),
#   p_ik = W_ik / sum_{k' in P'(i)} W_ik',        L = sum_i L_i / sum_{i : P'(i) nonempty} alpha_i,
#
#   kind="jaccard"    (Audibert et al. 2024, arXiv 2412.00101, their "base" loss)
#                     W_ij = J_ij = |y_i ^ y_j| / |y_i v y_j|, alpha_i = 1. The intersections are the
#                     one GEMM Y Y^T, the unions n_i + n_j - |y_i ^ y_j|.
#   kind="mulsupcon"  (Zhang & Wu, AAAI 2024) ported to one view in the batch: every (i, c) with
#                     y_ic = 1 and m_c >= 2 is an anchor whose positives are the other clips carrying
#                     c, so |P(i, c)| = m_c - 1. All of i's anchors share i's denominator, so the
#                     (i, c) terms sum to W = (Y diag(1 / (m - 1))) Y^T (one GEMM; a label carried by
#                     one clip weighs 0), with alpha_i = #{c : y_ic = 1, m_c >= 2} = sum_j W_ij and
#                     normaliser sum_i alpha_i = |Omega'| = sum_{c : m_c >= 2} m_c. No momentum
#                     encoder, no queue, no self-pair (the official code has all three).
#
# Without mining P'(i) = {j != i : W_ij > 0}, N'(i) = the rest, and these are the published losses.
# Pairs: a positive shares a label (J > 0, equivalently W > 0), a negative shares none (J = 0).
# Mining (our choice, stated in the docstrings): "ms" and "batch-hard" select P'(i) and N'(i) by the
# same thresholds as mining_masks; the kept positives keep their weights, renormalised over the kept
# positives (p_ik above), and an anchor keeps its weight alpha_i while it keeps a positive. So
# MulSupCon drops mined pairs, not (i, c) anchors. With one-hot targets both kinds are supcon_loss,
# mining or not: W_ij = 1 (jaccard) or 1/(m - 1) (mulsupcon) for same-class pairs, so p_ik = 1/|P'(i)|,
# and alpha_i = 1 for every anchor with a positive.

MULTILABEL_KINDS = ("jaccard", "mulsupcon")


def _validate_multilabel(z: Tensor, targets: Tensor, temperature: float, mining: str, epsilon: float,
                         kind: str) -> None:
    if not isinstance(z, Tensor) or not isinstance(targets, Tensor):
        raise ValueError("z and targets must be torch tensors")
    _validate_z(z)
    if targets.dim() != 2:
        raise ValueError(f"targets must be 2-D multi-hot [B, C], got shape {tuple(targets.shape)}")
    if targets.shape[0] != z.shape[0]:
        raise ValueError(f"batch size mismatch: z has {z.shape[0]} rows but targets has {targets.shape[0]}")
    if targets.device != z.device:
        raise ValueError(f"targets are on {targets.device} but z is on {z.device}; move them to z's device")
    if targets.is_complex():
        raise ValueError(f"targets must be multi-hot 0/1, got dtype {targets.dtype}")
    _validate_options(temperature, mining, epsilon)
    if kind not in MULTILABEL_KINDS:
        raise ValueError(f"unknown multi-label loss {kind!r}; expected one of {MULTILABEL_KINDS}")


def _not_multi_hot(targets: Tensor) -> Tensor:
    """A 0-d bool tensor: True if some entry of targets is neither 0 nor 1 (NaN included)."""
    return ((targets != 0) & (targets != 1)).any()


_NOT_MULTI_HOT = "targets must be multi-hot: every entry 0 or 1"


def _pair_weights(y: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """W [B, B] (zero diagonal) and alpha [B] of the notes above, from multi-hot y [B, C] (float)."""
    if kind == "jaccard":
        inter = y @ y.T  # |y_i ^ y_j|
        n = y.sum(dim=1)
        union = n[:, None] + n[None, :] - inter  # >= 1 wherever inter > 0
        weights = torch.where(inter > 0, inter / union.clamp_min(1), 0.0)
        anchor = torch.ones_like(n)
    else:
        m = y.sum(dim=0)
        valid = m >= 2  # a label on one clip gives its anchor (i, c) no positive: weight 0
        weights = (y * torch.where(valid, 1.0 / (m - 1).clamp_min(1), 0.0)) @ y.T
        anchor = y @ valid.to(y.dtype)
    return weights.fill_diagonal_(0), anchor


def multilabel_supcon_loss(
    z: Tensor,
    targets: Tensor,
    temperature: float = 0.1,
    mining: str = "ms",
    epsilon: float = 0.1,
    kind: str = "jaccard",
) -> Tensor:
    """Multi-label SupCon: Jaccard-weighted (kind="jaccard", the default) or MulSupCon ("mulsupcon").

    The equations are in the notes above this function. A pair is a positive when the two clips share
    a label and a negative when they share none; mining="ms" and "batch-hard" pick pairs by the same
    thresholds as supcon_loss. Our choice for mining (no paper defines it): the kept positives keep
    their weights, renormalised to sum to 1 over the kept positives, and the denominator runs over the
    kept positives and negatives, as supcon_loss's restricted term does. With one-hot targets this is
    supcon_loss(z, labels, ...) for either kind.

    Args:
        z: [B, p] L2-normalised embeddings (not renormalised here). Any float dtype.
        targets: [B, C] multi-hot, every entry 0 or 1 (float, integer or bool). A clip with no label
            is a negative of every other clip.
        temperature, mining, epsilon: as supcon_loss.
        kind: "jaccard" or "mulsupcon".

    Returns:
        Scalar loss, in float32 (float64 if z is float64), differentiable w.r.t. z. An anchor without a
        (kept) positive adds no term; with none at all the loss is a 0 still attached to z (zero
        gradients), as supcon_loss's.

    Raises:
        ValueError: wrong dimensions, mismatched batch sizes, targets not 0/1, unknown mining or kind,
            non-positive temperature or non-finite epsilon.
    """
    _validate_multilabel(z, targets, temperature, mining, epsilon, kind)
    if _not_multi_hot(targets):
        raise ValueError(_NOT_MULTI_HOT)
    compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32

    with _autocast_disabled(z.device.type):
        zc = z.to(compute_dtype)
        sim = zc @ zc.T  # [B, B]
        weights, anchor = _pair_weights(targets.to(compute_dtype), kind)
        eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        pos, neg = _masks_from_same(sim, (weights > 0) | eye, mining, epsilon)

        logits = sim / temperature
        log_denom = _masked_logsumexp(logits, pos | neg)  # [B]

        kept_weights = torch.where(pos, weights, 0.0)
        has_pos = pos.any(dim=1)
        # p_ik: the kept positives' weights over their sum (the 1 only guards anchors without positives)
        weighted_pos_logit = (kept_weights * logits).sum(dim=1) / torch.where(has_pos, kept_weights.sum(dim=1), 1.0)
        anchor = torch.where(has_pos, anchor, 0.0)
        per_anchor = anchor * (log_denom - weighted_pos_logit)
        # as in supcon_loss: with no anchor this is a sum of zeros over 1, still attached to z
        return per_anchor.sum() / anchor.sum().clamp_min(1)


# The fused path is _FusedSupCon's with "same class" replaced by "shares a label" (overlap > 0) and
# the plain mean over kept positives by the weighted one:
#   forward   S = Z Z^T and the overlap O (a GEMM over the multi-hot matrix; jaccard: the counts
#             |y_i ^ y_j|, mulsupcon: W), both diagonals set to sentinels: S_ii = +inf as before,
#             O_ii = 1, so that (i, i) is "same" and, like the single-label diagonal, never a negative
#             (even for a clip with no label) and never kept; then one compiled pass per row of S and
#             O, the weights W_ia computed in the pass from O_ia (jaccard: O / (n_i + n_a - O)).
#   backward  with P' the kept positives, h_i = 1 if anchor i keeps one, M = sum_i h_i alpha_i,
#             w_i = sum_{k in P'(i)} W_ik:
#             g[i, a] = h_i alpha_i / (M tau) ( K[i, a] exp(S[i, a] / tau - lse_i) - P'[i, a] W_ia / w_i ),
#             Gs = G + G^T written over S in one pass (W and O are symmetric), and dZ = Gs Z.
# The jaccard counts come from a bfloat16 GEMM where the hardware has one (CUDA; CPUs with
# AVX512-BF16 or AMX): the inputs are 0/1, so every product and every partial sum is an integer no
# larger than the clip's label count, and integers up to 256 are exact in bfloat16, whatever the
# accumulation order. That GEMM took 18 ms against 50 ms in float32 on this project's 2-core AMX CPU
# (B = 4096, C = 200), and O is read at half the bytes. Clips with more than 256 labels, and mulsupcon
# (whose 1/(m - 1) weights are not exact in bfloat16), use the GEMM in the computation's dtype: that is
# why mulsupcon's fused step costs more (bench.py --multilabel, one thread, B = 1024-4096: jaccard
# 1.23-1.25x the single-label fused step, mulsupcon 1.48-1.85x).


def _bf16_matmul_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # private helpers; without them, float32 (exact anyway, just slower)
        cpu = torch.cpu
        return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                     "_is_amx_tile_supported"))
    return False


def _multilabel_weights(overlap: Tensor, counts: Tensor, kind: str) -> Tensor:
    """W at every position from the overlap O: jaccard O / (n_i + n_a - O), mulsupcon O itself."""
    if kind == "jaccard":
        inter = overlap.to(counts.dtype)
        return inter / (counts + counts.T - inter).clamp_min(1)  # counts [B, 1]: symmetric in (i, a)
    return overlap


def _multilabel_loss_terms(sim: Tensor, overlap: Tensor, counts: Tensor, anchor: Tensor, temperature: float,
                           mining: str, epsilon: float, kind: str):
    """The forward passes over S and O: the loss, the mining stats and the row vectors the backward needs."""
    same = overlap > 0
    stats = _thresholds(sim, same, mining)
    index = torch.arange(sim.shape[0], device=sim.device, dtype=torch.int32)  # read by batch-hard alone
    pos, neg = _kept(sim, same, index[None, :], stats, mining, epsilon)
    weights = _multilabel_weights(overlap, counts, kind)
    exp_sim = torch.exp(sim * (1.0 / temperature))
    sum_exp = torch.where(pos | neg, exp_sim, 0.0).sum(dim=1, keepdim=True)
    sum_weights = torch.where(pos, weights, 0.0).sum(dim=1, keepdim=True)
    # where, not weights * sim: S's diagonal is +inf, and 0 * inf is NaN
    sum_pos = torch.where(pos, weights * sim, 0.0).sum(dim=1, keepdim=True)
    has_pos = sum_weights > 0  # kept positives have W > 0
    anchor = torch.where(has_pos, anchor, 0.0)  # 0 also switches anchors without positives off
    pos_scale = anchor / torch.where(has_pos, sum_weights, 1.0)  # alpha_i / w_i
    lse = torch.log(torch.where(has_pos, sum_exp, 1.0))
    per_anchor = anchor * lse - sum_pos * pos_scale / temperature
    n_anchors = anchor.sum().clamp_min(1)
    softmax_scale = anchor / torch.where(has_pos, sum_exp, 1.0)
    return per_anchor.sum() / n_anchors, stats, softmax_scale, pos_scale, n_anchors


def _multilabel_pair_grad_into_sim(sim: Tensor, overlap: Tensor, counts: Tensor, stats, softmax_scale: Tensor,
                                   pos_scale: Tensor, scale: Tensor, temperature: float, mining: str,
                                   epsilon: float, kind: str) -> None:
    """Gs = G + G^T written over S, as _symmetric_pair_grad_into_sim (see _kept for the column form)."""
    same = overlap > 0
    index = torch.arange(sim.shape[0], device=sim.device, dtype=torch.int32)
    exp_sim = torch.exp(sim * (1.0 / temperature))
    weights = _multilabel_weights(overlap, counts, kind)  # symmetric: W_ia serves g[i, a] and g[a, i]
    pos_r, neg_r = _kept(sim, same, index[None, :], stats, mining, epsilon)
    g_rows = torch.where(pos_r | neg_r, exp_sim * softmax_scale, 0.0) - torch.where(pos_r, weights * pos_scale, 0.0)
    stats_t = tuple(s.T for s in stats)
    pos_c, neg_c = _kept(sim, same, index[:, None], stats_t, mining, epsilon)
    g_cols = (torch.where(pos_c | neg_c, exp_sim * softmax_scale.T, 0.0)
              - torch.where(pos_c, weights * pos_scale.T, 0.0))
    sim.copy_(scale * (g_rows + g_cols))


def _overlap(targets: Tensor, kind: str, dtype: torch.dtype, bf16: bool) -> tuple[Tensor, Tensor, Tensor]:
    """O [B, B] (diagonal 1), the label counts n [B, 1] (jaccard) and alpha [B, 1]."""
    if kind == "jaccard":
        y = targets.to(torch.bfloat16 if bf16 else dtype)  # exact: see the notes above
        counts = y.sum(dim=1, keepdim=True, dtype=dtype)
        overlap, anchor = y @ y.T, torch.ones_like(counts)
    else:
        y = targets.to(dtype)
        m = y.sum(dim=0)
        valid = m >= 2
        overlap = (y * torch.where(valid, 1.0 / (m - 1).clamp_min(1), 0.0)) @ y.T
        counts = anchor = (y @ valid.to(dtype))[:, None]  # counts: unused by mulsupcon's passes
    overlap.diagonal().fill_(1)
    return overlap, counts, anchor


class _FusedMultiLabelSupCon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, temperature, mining, epsilon, kind, compiled, bf16):
        options = dict(temperature=temperature, mining=mining, epsilon=epsilon, kind=kind)
        run = (lambda fn: _compiled(fn, **options)) if compiled else (lambda fn: partial(fn, **options))
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        zc = z.detach().to(dtype)
        sim = zc @ zc.T
        sim.diagonal().fill_(math.inf)
        overlap, counts, anchor = _overlap(targets, kind, dtype, bf16)
        loss, stats, softmax_scale, pos_scale, n_anchors = run(_multilabel_loss_terms)(sim, overlap, counts, anchor)
        ctx.save_for_backward(zc, sim, overlap, counts, softmax_scale, pos_scale, n_anchors, *stats)
        ctx.run, ctx.temperature, ctx.z_dtype = run, temperature, z.dtype
        ctx.sim_overwritten = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.sim_overwritten:
            raise RuntimeError("fused_multilabel_supcon_loss's backward overwrites its saved similarities with "
                               "the gradient, so it runs once per forward; use multilabel_supcon_loss for "
                               "backward(retain_graph=True) run twice")
        ctx.sim_overwritten = True
        zc, sim, overlap, counts, softmax_scale, pos_scale, n_anchors, *stats = ctx.saved_tensors
        scale = grad_out.to(sim.dtype) / (n_anchors * ctx.temperature)
        ctx.run(_multilabel_pair_grad_into_sim)(sim, overlap, counts, tuple(stats), softmax_scale, pos_scale, scale)
        grad_z = sim @ zc
        return grad_z.to(ctx.z_dtype), None, None, None, None, None, None, None


def fused_multilabel_supcon_loss(
    z: Tensor,
    targets: Tensor,
    temperature: float = 0.1,
    mining: str = "ms",
    epsilon: float = 0.1,
    kind: str = "jaccard",
    compiled: bool = True,
) -> Tensor:
    """`multilabel_supcon_loss` with the same arguments, value and gradient, by the fused path above.

    As `fused_supcon_loss`: `compiled=False` runs the same passes eagerly; inputs outside the fused
    range, with NaN, or of fewer than 2 clips go to `multilabel_supcon_loss`; no double backward and
    one backward per forward. Its extra work over `fused_supcon_loss`: one GEMM over the targets
    (B x C x B) and a second B x B matrix read by each pass.
    """
    _validate_multilabel(z, targets, temperature, mining, epsilon, kind)
    if z.shape[0] < 2:
        return multilabel_supcon_loss(z, targets, temperature, mining, epsilon, kind)
    with torch.no_grad():  # one host sync for the range check, the 0/1 check and the largest label count
        max_norm = torch.linalg.vector_norm(z.detach().float(), dim=1).max()
        carried = targets != 0
        not_multi_hot = (carried & (targets != 1)).any()  # as _not_multi_hot, reusing `carried`
        max_norm, not_multi_hot, max_labels = torch.stack(
            [max_norm.double(), not_multi_hot.double(), carried.sum(dim=1).max().double()]).tolist()
    if not_multi_hot:
        raise ValueError(_NOT_MULTI_HOT)
    exp_limit = 700.0 if z.dtype == torch.float64 else 80.0
    if not max_norm * max_norm / float(temperature) + math.log(z.shape[0]) < exp_limit:  # NaN fails too
        return multilabel_supcon_loss(z, targets, temperature, mining, epsilon, kind)
    bf16 = z.dtype != torch.float64 and max_labels <= 256 and _bf16_matmul_is_fast(z.device)
    with _autocast_disabled(z.device.type):
        return _FusedMultiLabelSupCon.apply(z, targets, float(temperature), mining, float(epsilon), kind,
                                            compiled, bf16)


def contrastive_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    mining: str = "ms",
    epsilon: float = 0.1,
    fused: bool = True,
    multilabel_kind: str = "jaccard",
) -> Tensor:
    """The training loss for either kind of label: SupCon for [B] integer labels, the multi-label loss
    `multilabel_kind` for [B, C] multi-hot targets; `fused` picks the fused or the eager implementation."""
    if multilabel_kind not in MULTILABEL_KINDS:  # checked for single-label data too, so a typo fails at once
        raise ValueError(f"unknown multi-label loss {multilabel_kind!r}; expected one of {MULTILABEL_KINDS}")
    if isinstance(labels, Tensor) and labels.dim() == 2:
        loss = fused_multilabel_supcon_loss if fused else multilabel_supcon_loss
        return loss(z, labels, temperature, mining, epsilon, multilabel_kind)
    loss = fused_supcon_loss if fused else supcon_loss
    return loss(z, labels, temperature, mining, epsilon)
