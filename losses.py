"""Supervised-contrastive loss with optional pair mining (the AudioConFit objective).

`supcon_loss` is the eager reference implementation: everything is vectorised over
the batch and free of data-dependent Python control flow. `fused_supcon_loss` (at the
end of this file) computes the same loss and gradient with a closed-form backward
and torch.compile'd passes over the similarity matrix, and is checked against it.

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

__all__ = ["MINING_MODES", "fused_supcon_loss", "mining_masks", "supcon_loss"]

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

    with torch.no_grad():
        sim = sim.detach()
        batch = sim.shape[0]
        same = labels[:, None] == labels[None, :]
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


def _validate(z: Tensor, labels: Tensor, temperature: float, mining: str, epsilon: float) -> None:
    if not isinstance(z, Tensor) or not isinstance(labels, Tensor):
        raise ValueError("z and labels must be torch tensors")
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D [B, p], got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")
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
    _check_mining(mining)
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if not math.isfinite(float(epsilon)):
        raise ValueError(f"epsilon must be finite, got {epsilon}")


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


def _thresholds(sim: Tensor, labels: Tensor, mining: str):
    """Pass 1: what each anchor's mining keeps, as [B, 1] columns (empty for mining="none")."""
    if mining == "none":
        return ()
    same = labels[:, None] == labels[None, :]
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
    stats = _thresholds(sim, labels, mining)
    same = labels[:, None] == labels[None, :]
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


_compiled_passes: dict = {}  # (pass, temperature, mining, epsilon) -> compiled function


def _compiled(fn, temperature: float, mining: str, epsilon: float):
    """`fn` compiled with temperature, mining and epsilon as compile-time constants.

    dynamic=True gives one graph for every batch size (a smaller last batch, any number of
    classes). specialize_float makes the floats constants of the graph: by default Dynamo turns
    them into runtime scalars of a dynamic graph, and the C++ kernels then ran 3-5x slower
    (measured on CPU: 8 ms against 27-42 ms for the forward passes at B = 2048).
    """
    key = (fn, temperature, mining, epsilon)
    if key not in _compiled_passes:
        compiled = torch.compile(partial(fn, temperature=temperature, mining=mining, epsilon=epsilon),
                                 dynamic=True)

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
