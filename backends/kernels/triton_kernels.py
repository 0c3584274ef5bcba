"""Triton kernels for fused add + RMSNorm / LayerNorm, forward and backward, and their torch launchers.

Inputs may be float32, bfloat16 or float16; all math is float32. One program normalises one row. A row
of up to MAX_BLOCK columns is held in registers (one block, BLOCK = next power of two of C, masked);
a longer row is walked in BLOCK-sized chunks, recomputing x + residual from the inputs on each pass
(re-reading our own stores within a program is not ordered across threads; re-reading the inputs is).

The backward runs a fixed number of programs, each over a contiguous range of rows: dx/dresidual per
row, and dweight/dbias as one float32 partial row per program, summed afterwards by torch. No atomics,
so results are bitwise reproducible on a given device.

TRITON_INTERPRET=1 must be in the environment when this module is imported: triton.jit decides there,
per kernel, whether to compile or to interpret (triton 3.9 reads the variable at decoration time, not at
launch). Triton's own jitted helpers (tl.sum and the rest of triton.language.standard) were decided when
triton itself was imported, often before a test could set the variable; these kernels call none of them
(rows are summed with tl.reduce and our own combine function, tl.full stands in for tl.zeros), so they
interpret either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

MAX_BLOCK = 16384  # widest row held in registers in one block; wider rows loop over blocks


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(v):
    """tl.sum(v, axis=0), without triton.language.standard (see the module docstring)."""
    return tl.reduce(v, 0, _add)


@triton.jit
def _round(v, dtype: tl.constexpr):
    """float32 v rounded to nearest-even in dtype. bfloat16 is rounded by hand: Triton's interpreter (3.9)
    truncates a float32 -> bfloat16 cast, and the hand rounding is what cvt.rn.bf16.f32 does on the GPU."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        high = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # carries into the exponent: overflow gives inf
        high = tl.where(v != v, 0x7FC0, high)  # NaN stays NaN (its payload could carry into inf)
        r = high.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        r = v.to(dtype)
    return r


@triton.jit
def _rounded_sum(X, R, S, cols, mask, STORE: tl.constexpr):
    """x + residual in float32, rounded to the residual dtype (stored when STORE), returned as float32."""
    x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(R + cols, mask=mask, other=0.0).to(tl.float32)
    s = _round(x + r, S.dtype.element_ty)
    if STORE:
        tl.store(S + cols, s, mask=mask)
    return s.to(tl.float32)


@triton.jit
def _store_out(OUT, W, B, xhat, cols, mask, HAS_BIAS: tl.constexpr):
    y = xhat * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + cols, _round(y, OUT.dtype.element_ty), mask=mask)


@triton.jit
def _forward_kernel(X, R, W, B, OUT, S, MEAN, RSTD, stride_x, stride_r, stride_out, stride_s, n_cols, eps,
                    IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, N_BLOCKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x
    R += row * stride_r
    OUT += row * stride_out
    S += row * stride_s
    if N_BLOCKS == 1:
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        s = _rounded_sum(X, R, S, cols, mask, True)
        if IS_RMS:
            mean = 0.0
        else:
            mean = _sum(s) / n_cols
        d = tl.where(mask, s - mean, 0.0)
        rstd = tl.rsqrt(_sum(d * d) / n_cols + eps)  # two-pass variance: no cancellation
        _store_out(OUT, W, B, d * rstd, cols, mask, HAS_BIAS)
    else:
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            acc += _rounded_sum(X, R, S, cols, cols < n_cols, True)
        if IS_RMS:
            mean = 0.0
        else:
            mean = _sum(acc) / n_cols
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            d = tl.where(mask, _rounded_sum(X, R, S, cols, mask, False) - mean, 0.0)
            acc += d * d
        rstd = tl.rsqrt(_sum(acc) / n_cols + eps)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            d = _rounded_sum(X, R, S, cols, mask, False) - mean
            _store_out(OUT, W, B, d * rstd, cols, mask, HAS_BIAS)
    if not IS_RMS:
        tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _grad_terms(G, S, W, cols, mask, mean, rstd):
    """(g, xhat, dy = g * w) for one block of a row, float32, zero outside the row."""
    g = tl.load(G + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(S + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (s - mean) * rstd, 0.0)
    return g, xhat, g * w


@triton.jit
def _store_grad(DX, DR, GR, cols, mask, ds, HAS_GRES: tl.constexpr, HAS_DR: tl.constexpr):
    """d(x + residual) = ds (+ g_residual): stored as dx, and as dresidual when its dtype differs."""
    if HAS_GRES:
        ds += tl.load(GR + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + cols, _round(ds, DX.dtype.element_ty), mask=mask)
    if HAS_DR:
        tl.store(DR + cols, _round(ds, DR.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(G, GR, S, W, MEAN, RSTD, DX, DR, DW, DB, stride_g, stride_gr, stride_s, stride_dx, stride_dr,
                     n_rows, n_cols, rows_per_program, IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_GRES: tl.constexpr, HAS_DR: tl.constexpr, BLOCK: tl.constexpr, N_BLOCKS: tl.constexpr):
    """With dy = g * w, xhat = (s - mean) * rstd, per row:
        ds = rstd * (dy - mean(dy) - xhat * mean(dy * xhat))  (LayerNorm; RMSNorm drops mean(dy))
    DW/DB: (programs, C) float32, this program's partial sums over its rows (zeroed by the launcher).
    """
    pid = tl.program_id(0).to(tl.int64)  # 64-bit row offsets: N * C may pass 2^31
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    DW += pid * n_cols
    DB += pid * n_cols
    if N_BLOCKS == 1:
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        dw = tl.full([BLOCK], 0.0, tl.float32)
        db = tl.full([BLOCK], 0.0, tl.float32)
        for row in range(row_start, row_end):
            mean = 0.0 if IS_RMS else tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            g, xhat, dy = _grad_terms(G + row * stride_g, S + row * stride_s, W, cols, mask, mean, rstd)
            c2 = _sum(dy * xhat) / n_cols
            if IS_RMS:
                ds = (dy - xhat * c2) * rstd
            else:
                ds = (dy - _sum(dy) / n_cols - xhat * c2) * rstd
            _store_grad(DX + row * stride_dx, DR + row * stride_dr, GR + row * stride_gr, cols, mask, ds,
                        HAS_GRES, HAS_DR)
            dw += g * xhat
            db += g
        tl.store(DW + cols, dw, mask=mask)
        if HAS_BIAS:
            tl.store(DB + cols, db, mask=mask)
    else:
        for row in range(row_start, row_end):
            mean = 0.0 if IS_RMS else tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            acc_dy = tl.full([BLOCK], 0.0, tl.float32)
            acc_dy_xhat = tl.full([BLOCK], 0.0, tl.float32)
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                g, xhat, dy = _grad_terms(G + row * stride_g, S + row * stride_s, W, cols, cols < n_cols, mean, rstd)
                acc_dy += dy
                acc_dy_xhat += dy * xhat
            c1 = 0.0 if IS_RMS else _sum(acc_dy) / n_cols
            c2 = _sum(acc_dy_xhat) / n_cols
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < n_cols
                g, xhat, dy = _grad_terms(G + row * stride_g, S + row * stride_s, W, cols, mask, mean, rstd)
                _store_grad(DX + row * stride_dx, DR + row * stride_dr, GR + row * stride_gr, cols, mask,
                            (dy - c1 - xhat * c2) * rstd, HAS_GRES, HAS_DR)
                # this program's own partial row, read-modify-written once per row
                tl.store(DW + cols, tl.load(DW + cols, mask=mask) + g * xhat, mask=mask)
                if HAS_BIAS:
                    tl.store(DB + cols, tl.load(DB + cols, mask=mask) + g, mask=mask)
            # the next row reads these partials back: make this row's stores visible to every thread of the
            # program first (a load may be issued by another thread than the store, e.g. when pipelined)
            tl.debug_barrier()


INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)


@dataclass(frozen=True)
class Forward:
    """The forward's outputs and what the backward needs: new_residual, mean and rstd (per row)."""

    out: torch.Tensor  # (N, C) x dtype
    new_residual: torch.Tensor  # (N, C) residual dtype
    mean: torch.Tensor  # (N,) float32 (unused for RMSNorm)
    rstd: torch.Tensor  # (N,) float32


def _block(n_cols: int, max_block: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(max(n_cols, 1)), max_block)
    return block, triton.cdiv(n_cols, block)


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


def _rows(a: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (N, C) with unit column stride (a copy only when needed; N counted: C may be 0)."""
    a = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])
    return a if a.stride(-1) == 1 else a.contiguous()


def add_norm_forward(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     eps: float, rms: bool, residual_dtype: torch.dtype, max_block: int = MAX_BLOCK) -> Forward:
    """out = norm(s) * weight (+ bias), s = x + residual rounded to residual_dtype; (N, C) results."""
    x2, r2 = _rows(x), _rows(residual)
    n_rows, n_cols = x2.shape
    out = torch.empty_like(x2)
    s = torch.empty((n_rows, n_cols), dtype=residual_dtype, device=x.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows:
        block, n_blocks = _block(n_cols, max_block)
        _forward_kernel[(n_rows,)](x2, r2, weight, weight if bias is None else bias, out, s, mean, rstd,
                                   x2.stride(0), r2.stride(0), out.stride(0), s.stride(0), n_cols, eps,
                                   IS_RMS=rms, HAS_BIAS=bias is not None, BLOCK=block, N_BLOCKS=n_blocks,
                                   num_warps=_num_warps(block))
    return Forward(out, s, mean, rstd)


def _n_programs(device: torch.device, n_rows: int) -> int:
    per_device = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(min(n_rows, per_device), 1)


def add_norm_backward(g_out: torch.Tensor, g_residual: torch.Tensor | None, fwd: Forward, weight: torch.Tensor,
                      with_bias: bool, rms: bool, dresidual_dtype: torch.dtype, max_block: int = MAX_BLOCK
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dx, dresidual, dweight, dbias) of <g_out, out> + <g_residual, new_residual>; dx in g_out's dtype.

    dx and dresidual are the same numbers: one tensor is returned for both when their dtypes agree.
    """
    g2 = _rows(g_out)
    gr2 = None if g_residual is None else _rows(g_residual)
    n_rows, n_cols = g2.shape
    dx = torch.empty_like(g2)
    dr = dx if dresidual_dtype == dx.dtype else torch.empty_like(g2, dtype=dresidual_dtype)
    programs = _n_programs(g2.device, n_rows)
    rows_per_program = triton.cdiv(n_rows, programs) if n_rows else 0
    programs = triton.cdiv(n_rows, rows_per_program) if n_rows else 1
    dw = torch.zeros((programs, n_cols), dtype=torch.float32, device=g2.device)
    db = torch.zeros((programs, n_cols), dtype=torch.float32, device=g2.device) if with_bias else dw
    if n_rows:
        block, n_blocks = _block(n_cols, max_block)
        _backward_kernel[(programs,)](
            g2, g2 if gr2 is None else gr2, fwd.new_residual, weight, fwd.mean, fwd.rstd, dx, dr, dw, db,
            g2.stride(0), 0 if gr2 is None else gr2.stride(0), fwd.new_residual.stride(0), dx.stride(0),
            dr.stride(0), n_rows, n_cols, rows_per_program, IS_RMS=rms, HAS_BIAS=with_bias,
            HAS_GRES=gr2 is not None, HAS_DR=dr is not dx, BLOCK=block, N_BLOCKS=n_blocks,
            num_warps=_num_warps(block))
    dbias = db.sum(0).to(weight.dtype) if with_bias else None
    return dx, dr, dw.sum(0).to(weight.dtype), dbias
