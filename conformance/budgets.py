"""Every allowance the suite holds a backend to, with its reasoning: the one place that owns them.

1. Agreement with the float64 oracle (XB-1/2/3/5, ID-3/4, GR-1/2/3, VG-4): a per-case error budget.
   A comparison's error is normwise, err = ||got - ref|| / ||ref||, where ref is the oracle's value on
   inputs and parameters already rounded to the dtype, so only the backend's own roundings count. What a
   correct backend may show depends on the case (how many roundings, how long the sums, how much they
   cancel), so the budget is measured on the case itself. The baseline (backends/controls.Baseline) runs
   the oracle's own code the way a framework does: each operation computed in float32 (bfloat16, float16)
   or in its own dtype and rounded once to the dtype, the glue between operations in the dtype, every sum
   in another order than the oracle's, and operations in float32/float64 faithful (within 1 ulp) rather
   than correctly rounded. Its error on the same comparison, e_base, is one draw of the error a legitimate
   implementation makes on this case. The backend is allowed

       budget = max(FLOOR_ULPS[kind] * u * sqrt(L) * r,  RATIO * e_base)

   RATIO: two legitimate implementations' normwise errors over the same many elements are each a sum of
   many independent roundings, so they concentrate near the same value; a backend may still round at a
   few more places than the baseline (a separate bias add, a rounded softmax) or sum over longer chains.
   Calibrated over thousands of cases per dtype (docs/spec.md, tests/test_budgets.py): the worst ratio
   of torch's or JAX's error to e_base stayed below RATIO / 2 wherever e_base was above the floor.
   FLOOR: where the compared value is dominated by an exact term (x_L = x_0 + small writes, dx = g + a
   small branch gradient) e_base can round away to 0 while a backend keeps a fraction of an ulp; the
   floor is a handful of roundings, independent across the L blocks of a stack (so sqrt(L)), and
   r = sqrt(1 + log2 C) for a bare norm output, whose mean and variance reductions a tree of depth
   log2 C computes (in a block the skip hides them).
   A mutant sits far above both terms: a skip scaled by 1 + 2^-10 errs by ~1e-3, against budgets of
   ~1e-15 (float64) and ~1e-6 (float32); a bfloat16 weight gradient summed in bfloat16 over n tokens errs
   by ~sqrt(n / 2) u against e_base ~ 2 u, which the long-sequence cases (n >= 1024) separate.

2. A dot product to a scalar (ReZero's gate gradient <g, F>): its error is measured against
   sum |g_i F_i| rather than |<g, F>|, which cancellation can make arbitrarily small (Higham, ch. 3: the
   error of a computed dot product is bounded by a multiple of u sum |x_i y_i|); the budget is as in 1.

3. A summation identity (VG-1: x_L == x_0 + sum_l F_l): recursive summation of n terms errs by at most
   (n - 1) u sum |terms| (Higham, ch. 4), a deterministic bound that holds on any machine; a backend may
   report each write rounded apart from the value it added (one more u per term), so 2 n u.

4. Statistical properties (VG-2, VG-3): Z standard deviations of the sampling distribution derived in
   conformance/stream_theory.py.

5. Finite differences (GR-4) keep the method's own allowance, next to the method
   (backends/numpy_ref.FD_REL_TOL plus the stencil's rounding noise): it is a property of the check,
   not of a dtype.

6. Gradients that only the keys' gradient reaches (the key projection's weight and bias, QK-norm's key
   gain), zero or nearly zero in exact arithmetic. Softmax is invariant to a constant added to every score
   of one query, and a key bias b adds <q_i, b> to every score of query i, so d loss / d b =
   sum_i q_i (sum_j ds_ij) / sqrt(d) = 0 exactly (ds = p (dp - D): each row sums to 0) wherever the key is
   not transformed per token (no RoPE, no QK-norm); the other key-side gradients nearly cancel the same way
   where the keys are nearly alike (a deepnorm stack at x scale 1e-2: keys ~ the bias). Their relative
   error has no meaning: the oracle's float64 value is its own rounding residue, and a correct backend's
   error against it depends on where it rounds (torch's in bfloat16 was 9x the baseline's, issue 20). What
   a backend computes is that residue: per query, sum_j ds_ij = sum_j p_ij dp_ij - D_i, D_i = <g_i, o_i>
   taken from the rounded output o as FlashAttention does; both are sums of products of the incoming
   gradient with activations, so (Higham, ch. 3) the residue of query i is a few u times
   m_i = sum_j p_ij |dp_ij| + sum_c |g_ic o_ic|, spread over the keys as ds spreads it,
   dk_j = sum_i p_ij r_i q_i / sqrt(d), and dq_i = r_i sum_j p_ij k_j / sqrt(d) (the query side cancels the
   same way where the keys are nearly alike: a plain or ReZero stack at x scale 1e-2). Queries round
   independently: score_side_scales draws r_i = +-m_i and carries both fields through the oracle's own
   query and key paths (projection, QK-norm, RoPE, grouped heads) to each parameter; S is the RMS of the results (for the key bias without RoPE and QK-norm it is exactly
   sqrt(sum_i m_i^2 ||q_i||^2 / d) in expectation). The error is measured against max(S, ||ref||) and
   budgeted as in 1 (its floor FLOOR u sqrt(L) S). Measured (torch, a pairwise control; bfloat16, float16,
   float32; gpt2, encoder, gptj, modern presets; pre, post, deepnorm): the error stays below 1.0 u S sqrt(L),
   a quarter of the floor; a key bias given the value bias's gradient (tests/mutants.KeyBiasGradientFromValue)
   errs by at least 4e3 u S.

7. ReLU kinks (XB-2), the oracle's one non-smooth operation (softmax's max and the sigmoid's abs are smooth
   rewritings). A correct backend's pre-activation a_j = sum_k h_k w_kj + b_j errs by a few u times
   sum_k |h_k w_kj| + |b_j| (the branch input's rounding, the product's, a separate bias add: Higham ch. 3),
   plus what its input carries: the stream is rounded to the dtype at each of the U updates (the oracle's
   is exact), independent roundings that norms and skips pass on at most unchanged, so h errs normwise by
   ~sqrt(U) u ||h||, which reaches a_j as at most sqrt(U) u ||h|| ||w_j|| (Cauchy-Schwarz). Within kink_width of 0 a
   correct rounding may take either side (torch, bfloat16, issue 20: |a| / sum |terms| = 3e-4 < u flipped,
   d mlp.w_up 0.142 > 0.0404). kink_contributions reruns the oracle's VJP with the ReLU derivative set to 1
   at those elements only, 0 elsewhere (and random-sign draws of it: flips go either way), so the backward
   carries exactly what they contribute; its largest norm C is added to what the floor admits (kink_scale:
   the scale becomes scale + C / floor). Away from the kink nothing is added: in float32 and float64 C is 0.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np

from resconf.backends.oracle import numpy_ops as ops
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import unit_roundoff
from resconf.backends.params import LayerParams

RATIO = 8.0
FLOOR_ULPS = {"forward": 2.0, "gradient": 4.0}
Z = 6.0  # |z| bound: a correct backend fails a 6-sigma check with probability ~2e-9 per comparison


@dataclass(frozen=True)
class Budget:
    """What one comparison is allowed, and where the number came from (shown in failure messages)."""

    floor: float
    baseline_error: float

    @property
    def allowed(self) -> float:
        return max(self.floor, RATIO * self.baseline_error)

    def __str__(self) -> str:
        return f"max(floor {self.floor:.2g}, {RATIO:g} x baseline error {self.baseline_error:.2g})"


def budget(kind: str, dtype: str, baseline_error: float, depth: int = 1, reduction: int = 1) -> Budget:
    """The budget of a comparison of `kind` ("forward" values or "gradient"s) in `dtype`, for a stack of
    `depth` blocks; `reduction`: the length C of the reductions behind a bare norm output, else 1."""
    if kind not in FLOOR_ULPS:
        raise ValueError(f"kind={kind!r} is not one of {sorted(FLOOR_ULPS)}")
    floor = FLOOR_ULPS[kind] * unit_roundoff(dtype) * math.sqrt(depth) * math.sqrt(1.0 + math.log2(reduction))
    return Budget(floor=floor, baseline_error=baseline_error)


def summation_bound(dtype: str, n_terms: int) -> float:
    """VG-1 (see 3. above): 2 n u, a bound on |fl(sum) - sum| / sum |terms|."""
    return 2.0 * n_terms * unit_roundoff(dtype)




# what only the queries' (keys') gradient reaches
SCORE_SIDES = ("attention.wq", "attention.bq", "attention.q_norm_weight",
               "attention.wk", "attention.bk", "attention.k_norm_weight",
               "cross_attention.wq", "cross_attention.bq", "cross_attention.wk", "cross_attention.bk")
RESIDUE_DRAWS = 4  # random-sign draws of the residues (6.): the RMS of four is within ~25 % of their rss


def score_side_scales(cfg: BlockConfig, params: tuple[LayerParams, ...], x: np.ndarray, g: np.ndarray
                    ) -> dict[tuple[int, str], float]:
    """(layer, name) -> S of 6. for every parameter only the keys' gradient reaches: the oracle's attention
    VJPs are recorded at its own trajectory, then its backward runs again with each attention returning a
    draw of the residue field instead of its gradients (the mutants' way of changing one operation), so
    the key path (projection, QK-norm, RoPE, grouped heads) carries it to the parameters as it carries dk."""
    if not {"attention", "cross_attention"} & set(cfg.sublayers):
        return {}
    calls: list[tuple] = []

    def recording(original, *args):
        calls.append(args)
        return original(*args)

    _backward_with(recording, cfg, params, x, g)
    rng, total = np.random.default_rng(0), {}
    for _ in range(RESIDUE_DRAWS):
        fields = iter([_residue_field(*args, rng) for args in calls])  # the calls come in the same order
        grads = _backward_with(lambda _, q, k, v, *rest: (*next(fields), np.zeros_like(v)), cfg, params, x, g)
        for layer, p in enumerate(grads):
            for name in SCORE_SIDES:
                if p.get(name) is not None:
                    total[(layer, name)] = total.get((layer, name), 0.0) + float(np.sum(p[name] ** 2))
    return {key: math.sqrt(t / RESIDUE_DRAWS) for key, t in total.items()}


def _residue_field(q, k, v, o, causal, g_o, rng) -> tuple[np.ndarray, np.ndarray]:
    """A draw of the score gradients' error in units of u: query i's residue r_i, of size m_i and a random
    sign, spread as ds spreads it: dq_i = r_i sum_j p_ij k_j / sqrt(d), dk_j = sum_i p_ij r_i q_i / sqrt(d)."""
    p = ops.probs(q, k, causal)  # (B, nh, T, T)
    m = np.sum(p * np.abs(g_o @ v.swapaxes(-1, -2)), axis=-1) + np.sum(np.abs(g_o * o), axis=-1)  # (B, nh, T)
    signed = rng.choice((-1.0, 1.0), size=m.shape) * m
    root = math.sqrt(q.shape[-1])
    return signed[..., None] * (p @ k) / root, p.swapaxes(-1, -2) @ (signed[..., None] * q) / root


def _backward_with(attention_vjp, cfg, params, x, g) -> tuple[LayerParams, ...]:
    """The oracle's parameter gradients with ops.attention_vjp(...) replaced by attention_vjp(original, ...)."""
    with _replaced(attention_vjp=attention_vjp):
        return ref.stack_vjp(cfg, params, x, g).dparams


@contextlib.contextmanager
def _replaced(**replacements):
    """The oracle's ops.NAME(...) replaced by replacements[NAME](original, ...) for the duration."""
    originals = {name: getattr(ops, name) for name in replacements}
    for name, f in replacements.items():
        setattr(ops, name, functools.partial(f, originals[name]))
    try:
        yield
    finally:
        for name, f in originals.items():
            setattr(ops, name, f)


KINK_ULPS = 4.0  # 7.: the branch input's own rounding, the product's, the bias add's, with a margin
KINK_DRAWS = 3  # random-sign draws of the flips (7.), besides the one that flips every undetermined element alike


def kink_width(h: np.ndarray, w: np.ndarray, b: np.ndarray | None, u: float, n_states: int) -> np.ndarray:
    """7.: how close to 0 a pre-activation a = h w + b (h (..., in), w (in, out)) may lie and still take either
    sign in a correct backend: u (KINK_ULPS (sum_k |h_k w_kj| + |b_j|) + sqrt(n_states) ||h|| ||w_j||)."""
    terms = np.abs(h) @ np.abs(w) + (0.0 if b is None else np.abs(b))
    propagated = np.linalg.norm(h, axis=-1, keepdims=True) * np.linalg.norm(w, axis=0)
    return u * (KINK_ULPS * terms + math.sqrt(n_states) * propagated)


def kink_contributions(cfg: BlockConfig, params: tuple[LayerParams, ...], x: np.ndarray, g: np.ndarray,
                       dtype: str) -> dict[object, float]:
    """(layer, name) and "dx" -> the norm of what the ReLU elements within kink_width of 0 contribute to that
    gradient (7.); {} where none is. The oracle's VJP runs once to record each ReLU's pre-activations, the
    linear map that made them, and its incoming cotangent; then again from a zero cotangent with each ReLU's
    VJP adding its cotangent at the undetermined elements (the derivative there set to 1, 0 elsewhere), so
    the rest of the backward carries exactly what those elements contribute to every parameter and x_0."""
    if cfg.activation != "relu" or "mlp" not in cfg.sublayers:
        return {}
    u, made, kinks = unit_roundoff(dtype), {}, []

    def linear(original, h, w, b):
        out = original(h, w, b)
        made[id(out)] = (out, h, w, b)  # holding out keeps its id unique while the backward runs
        return out

    def relu_vjp(original, a, da):
        _, h, w, b = made[id(a)]
        kinks.append((np.abs(a) <= kink_width(h, w, b, u, cfg.n_updates), da))
        return original(a, da)

    with _replaced(linear=linear, relu_vjp=relu_vjp):
        ref.stack_vjp(cfg, params, x, g)
    if not any(mask.any() for mask, _ in kinks):
        return {}
    rng, worst = np.random.default_rng(0), {}
    for draw in range(1 + KINK_DRAWS):
        signs = [1.0 if draw == 0 else rng.choice((-1.0, 1.0), size=da.shape) for _, da in kinks]
        flips = iter([np.where(mask, s * da, 0.0) for (mask, da), s in zip(kinks, signs)])  # same call order
        with _replaced(relu_vjp=lambda original, a, da: original(a, da) + next(flips)):
            grads = ref.stack_vjp(cfg, params, x, np.zeros_like(g))
        parts = [("dx", grads.dx)] + [((layer, name), t) for layer, p in enumerate(grads.dparams)
                                      for name, t in p.items() if t is not None]
        for key, t in parts:
            worst[key] = max(worst.get(key, 0.0), float(np.linalg.norm(t)))
    return worst


def kink_scale(scale: float, contribution: float, dtype: str, depth: int) -> float:
    """7.: the scale a gradient's error is measured against, raised so that its floor admits the kinks'
    contribution on top of what it admitted: floor x scale + contribution."""
    return scale + contribution / budget("gradient", dtype, 0.0, depth).floor
