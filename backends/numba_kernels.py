"""Numba CPU kernels for fused add + RMSNorm / LayerNorm: rows in parallel, statistics in float64.

Why float64 statistics for float32 data too: the kernel is memory bound (a float32 row of 4096 is read
once from DRAM, then re-read from cache), so the wider accumulator is free, and it makes the error of
mean, variance and the backward's row sums independent of the hidden size C (a float32 running sum
over C terms can lose up to C*u). Each output element is then computed in float64 and rounded once.

Why explicit lanes: fastmath=False forbids LLVM to reorder a sum, so a plain `acc += v` loop is one
serial chain of dependent adds (one add latency per element). Four accumulators in a fixed order run
four chains at once and keep the result bitwise deterministic: it does not depend on the SIMD width or
on the thread count. (They stay scalar: numba leaves LLVM's SLP vectorizer off. The elementwise loops,
one output array each, are vectorized by the loop vectorizer; measured with inspect_asm.)

Why error_model="numpy": IEEE semantics inside prange (0/0 is NaN, a NaN in a row stays in that row's
outputs) instead of Python's ZeroDivisionError, as NumPy does.

Why weight/bias gradients via chunks: rows are split into min(N_CHUNKS, rows) fixed ranges, each chunk
sums its rows into its own float64 partial row, and the partials are summed afterwards in a fixed order.
No two threads write the same memory, and the result does not depend on how many threads run.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

N_CHUNKS = 64  # most row ranges for the weight/bias gradient partials (a function of the shape only)
# prange hands out this many iterations at a time (numba.set_parallel_chunksize) instead of one static
# share per thread: on shared cores a thread that is descheduled no longer holds everyone up.
FORWARD_ROWS_PER_TASK = 16
BACKWARD_CHUNKS_PER_TASK = 1
LANES = 4  # independent float64 accumulators per row reduction

_jit = dict(fastmath=False, cache=True, error_model="numpy")


@njit(**_jit)
def _sum_centered(s, shift, square):
    """sum_j (s_j - shift) or sum_j (s_j - shift)^2 over one row, in float64, LANES chains."""
    a0 = a1 = a2 = a3 = 0.0
    n = s.shape[0]
    n4 = n - n % LANES
    for j in range(0, n4, LANES):
        d0 = s[j] - shift
        d1 = s[j + 1] - shift
        d2 = s[j + 2] - shift
        d3 = s[j + 3] - shift
        if square:
            d0, d1, d2, d3 = d0 * d0, d1 * d1, d2 * d2, d3 * d3
        a0 += d0
        a1 += d1
        a2 += d2
        a3 += d3
    for j in range(n4, n):
        d = s[j] - shift
        a0 += d * d if square else d
    return (a0 + a1) + (a2 + a3)


@njit(**_jit)
def _grad_row_sums(g, w, s, mu, rstd):
    """(sum_j dy_j, sum_j dy_j * xhat_j) with dy = g * w and xhat = (s - mu) * rstd, in float64."""
    a0 = a1 = a2 = a3 = 0.0
    b0 = b1 = b2 = b3 = 0.0
    n = s.shape[0]
    n4 = n - n % LANES
    for j in range(0, n4, LANES):
        dy0 = np.float64(g[j]) * w[j]
        dy1 = np.float64(g[j + 1]) * w[j + 1]
        dy2 = np.float64(g[j + 2]) * w[j + 2]
        dy3 = np.float64(g[j + 3]) * w[j + 3]
        a0 += dy0
        a1 += dy1
        a2 += dy2
        a3 += dy3
        b0 += dy0 * ((s[j] - mu) * rstd)
        b1 += dy1 * ((s[j + 1] - mu) * rstd)
        b2 += dy2 * ((s[j + 2] - mu) * rstd)
        b3 += dy3 * ((s[j + 3] - mu) * rstd)
    for j in range(n4, n):
        dy = np.float64(g[j]) * w[j]
        a0 += dy
        b0 += dy * ((s[j] - mu) * rstd)
    return (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)


@njit(parallel=True, **_jit)
def add_norm_forward(x, residual, weight, bias, eps, rms, out, new_residual, mean, rstd):
    """new_residual = x + residual (rounded to new_residual's dtype); out = norm(new_residual) * w (+ b).

    x, residual, out: (N, C) in the compute dtype; new_residual (N, C) in the residual dtype; weight,
    bias (C,) or bias None; mean, rstd (N,) float64, saved for the backward. rms selects RMSNorm
    (mean fixed at 0). DRAM traffic: x, residual read once, out, new_residual written once; the
    statistics passes re-read the row just written, from cache.
    """
    n_rows, n_cols = x.shape
    for i in prange(n_rows):
        s = new_residual[i]
        xi = x[i]
        ri = residual[i]
        for j in range(n_cols):
            s[j] = xi[j] + ri[j]  # the add in the input dtype, rounded on store to the residual dtype
        mu = 0.0 if rms else _sum_centered(s, 0.0, False) / n_cols
        r = 1.0 / np.sqrt(_sum_centered(s, mu, True) / n_cols + eps)  # two-pass variance: no cancellation
        mean[i] = mu
        rstd[i] = r
        o = out[i]
        if bias is None:
            for j in range(n_cols):
                o[j] = (s[j] - mu) * r * weight[j]
        else:
            for j in range(n_cols):
                o[j] = (s[j] - mu) * r * weight[j] + bias[j]


@njit(parallel=True, **_jit)
def add_norm_backward(g_out, g_residual, new_residual, weight, mean, rstd, rms, d_sum, dweight_part, dbias_part):
    """d_sum = d(loss)/d(x + residual), which is both dx and dresidual; weight/bias partials per chunk.

    loss = <g_out, out> + <g_residual, new_residual>; g_residual may be None (no cotangent on the
    residual output). With dy = g_out * w and xhat = (s - mean) * rstd, per row:
        d_sum = rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) + g_residual   (LayerNorm)
        d_sum = rstd * (dy - xhat * mean(dy * xhat)) + g_residual              (RMSNorm)
    dweight_part[c] = sum over chunk c's rows of g_out * xhat; dbias_part[c] the same of g_out (or None).
    """
    n_rows, n_cols = g_out.shape
    n_chunks = dweight_part.shape[0]
    for c in prange(n_chunks):
        dw = dweight_part[c]
        dw[:] = 0.0
        if dbias_part is not None:
            dbias_part[c, :] = 0.0
        for i in range((c * n_rows) // n_chunks, ((c + 1) * n_rows) // n_chunks):
            s = new_residual[i]
            g = g_out[i]
            d = d_sum[i]
            mu = mean[i]
            r = rstd[i]
            sum_dy, sum_dy_xhat = _grad_row_sums(g, weight, s, mu, r)
            c1 = 0.0 if rms else sum_dy / n_cols
            c2 = sum_dy_xhat / n_cols
            # One simple loop per output (not one loop writing three arrays): LLVM vectorizes these.
            if g_residual is None:  # resolved at compile time: None is its own type
                for j in range(n_cols):
                    d[j] = r * (np.float64(g[j]) * weight[j] - c1 - (s[j] - mu) * r * c2)
            else:
                gr = g_residual[i]
                for j in range(n_cols):
                    d[j] = r * (np.float64(g[j]) * weight[j] - c1 - (s[j] - mu) * r * c2) + gr[j]
            for j in range(n_cols):
                dw[j] += np.float64(g[j]) * ((s[j] - mu) * r)
            if dbias_part is not None:
                db = dbias_part[c]
                for j in range(n_cols):
                    db[j] += g[j]
