"""The residual layer model as idiomatic eager PyTorch modules (nanoGPT's model.py, Llama's layer names).

Kept apart from the adapter (torch/backend.py) so it reads as a model would: a pre-norm update is
`x = x + branch(norm(x))`, here `x = s x + sum_k w_k(N_k(x))` for the general layer (config.py says what
each placement computes; numpy_ref.update_forward is the spec this follows line by line).
Also here: the unfused add+norm composition that fused kernels replace (the torch backends' fused ops).

Modules are named after the parameter table (params.PARAMS), so `parameter_path` maps a tensor's name to
its module parameter by rule; the table stays the one list of names. Weights are stored (in, out) in the
suite's records and (out, in) in nn.Linear, so they are transposed on the way in and their gradients on
the way out.
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resconf.backends.config import BlockConfig
from resconf.backends.params import ANY, LayerParams, ParamSpec, check_params, layer_specs


def make_norm(cfg: BlockConfig) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.eps, bias=cfg.has_norm_bias)
    return nn.RMSNorm(cfg.d_model, eps=cfg.eps)


def activation(cfg: BlockConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    if cfg.activation == "gelu":
        return functools.partial(F.gelu, approximate="tanh" if cfg.gelu == "tanh" else "none")
    return {"relu": F.relu, "silu": F.silu}[cfg.activation]


# --- rotary position embeddings: half-split (GPT-NeoX, Llama's rotate_half) or interleaved (GPT-J's
# rotate_every_two), on the first rotary_dim dims of each head (partial rotary) ---

def rope_cos_sin(T: int, head_dim: int, base: float, dtype: torch.dtype, device,
                 interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hd) of the angle t * base^(-2i/hd), both dims of pair i seeing the same angle (the
    halves repeated for half-split, each angle twice in a row for interleaved); hd is the rotated width.

    The angles are computed in float64 and only cos, sin are cast: in float32 an angle t * f of t up to 256
    is rounded by ~256 * 2^-24 rad before the cos is even taken, far more than one rounding of cos itself."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)  # (hd/2,)
    angles = torch.arange(T, dtype=torch.float64, device=device)[:, None] * inv_freq  # (T, hd/2)
    angles = angles.repeat_interleave(2, dim=-1) if interleaved else torch.cat([angles, angles], dim=-1)  # (T, hd)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """GPT-J's pairing: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """x (..., T, d) -> [x1 cos - x2 sin, x2 cos + x1 sin] for each pair (x1, x2) (x1 cos + (-x2) sin rounds as
    x1 cos - x2 sin); d = cos.shape[-1] leading dims rotate, the rest pass through (partial rotary)."""
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    rotated = rot * cos + (rotate_every_two(rot) if interleaved else rotate_half(rot)) * sin
    return rotated if rest.shape[-1] == 0 else torch.cat([rotated, rest], dim=-1)


# --- the branches F ---

class MLP(nn.Module):
    """down(act(up(x))), or down(act(gate(x)) * up(x)) when gated (SwiGLU with silu, GeGLU with gelu)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        C, H = cfg.d_model, cfg.d_hidden
        self.gate_proj = nn.Linear(C, H, bias=cfg.bias) if cfg.gated else None
        self.up_proj = nn.Linear(C, H, bias=cfg.bias)
        self.down_proj = nn.Linear(H, C, bias=cfg.bias)
        self.act = activation(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)  # (B, T, H)
        h = self.act(self.gate_proj(x)) * h if self.gate_proj is not None else self.act(h)
        return self.down_proj(h)  # (B, T, C)


class Projections(nn.Module):
    """An attention sublayer's q, k, v and output projections; n_kv_heads key/value heads each serve a group of
    query heads."""

    def __init__(self, cfg: BlockConfig, kind: str) -> None:
        super().__init__()
        C, hd = cfg.d_model, cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        bias = cfg.has_bias(kind)
        self.q_proj = nn.Linear(C, self.n_head * hd, bias=bias)
        self.k_proj = nn.Linear(C, self.n_kv_head * hd, bias=bias)
        self.v_proj = nn.Linear(C, self.n_kv_head * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_head * hd, C, bias=bias)

    def heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = t.size()
        return t.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, hd)


class SelfAttention(Projections):
    """Causal or bidirectional self-attention. Optional QK-norm (RMSNorm over each head, before RoPE, as in
    OLMo 2 and Qwen 3) and rotary embeddings."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__(cfg, "attention")
        hd = self.head_dim
        # QK-norm over each head (Qwen 3), or over the whole projection before the heads split (OLMo 2)
        self.qk_norm_per_head = cfg.qk_norm_scope == "head"
        q_width, k_width = (hd, hd) if self.qk_norm_per_head else (self.n_head * hd, self.n_kv_head * hd)
        self.q_norm = nn.RMSNorm(q_width, eps=cfg.eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(k_width, eps=cfg.eps) if cfg.qk_norm else None
        self.rope_base = cfg.rope_base if cfg.rope else None
        self.rotary_dim, self.rope_interleaved = cfg.rotary_dim, cfg.rope_interleaved
        self.causal = cfg.causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k = self.q_proj(x), self.k_proj(x)  # (B, T, nh hd), (B, T, nkv hd)
        if self.q_norm is not None and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.heads(q, self.n_head), self.heads(k, self.n_kv_head)  # (B, nh, T, hd), (B, nkv, T, hd)
        v = self.heads(self.v_proj(x), self.n_kv_head)  # (B, nkv, T, hd)
        if self.q_norm is not None and self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_base is not None:
            cos, sin = rope_cos_sin(T, self.rotary_dim, self.rope_base, q.dtype, q.device, self.rope_interleaved)
            q = apply_rotary(q, cos, sin, self.rope_interleaved)
            k = apply_rotary(k, cos, sin, self.rope_interleaved)
        # enable_gqa: kv head j serves query heads j*groups .. (j+1)*groups - 1 (repeat_interleave, not tile).
        # Asked for only with fewer kv heads, so multi-head attention keeps the kernel it always had.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           enable_gqa=self.n_kv_head != self.n_head)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.o_proj(y)  # (B, T, C)


class CrossAttention(Projections):
    """An encoder-decoder's cross-attention: queries from the stream, keys and values from the memory, the
    encoder's output (S, C), a parameter here as in the record (config.py says why) and shared by the batch;
    every memory token seen (is_causal=False), no RoPE, no QK-norm."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__(cfg, "cross_attention")
        self.memory = nn.Parameter(torch.empty(cfg.memory_len, cfg.d_model))  # (S, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        m = self.memory.expand(B, -1, -1)  # (B, S, C): what a decoder layer gets as encoder_hidden_states
        q = self.heads(self.q_proj(x), self.n_head)  # (B, nh, T, hd)
        k, v = (self.heads(proj(m), self.n_kv_head) for proj in (self.k_proj, self.v_proj))  # (B, nkv, S, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)  # (B, T, nh hd)
        return self.o_proj(y)  # (B, T, C)


class LinearBranch(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(x)


BRANCH_MODULES = {"mlp": MLP, "attention": SelfAttention, "linear": LinearBranch, "cross_attention": CrossAttention}


# --- a residual sublayer, a layer of them, a stack of layers ---

class Sublayer(nn.Module):
    """One residual sublayer's parts: its norm (unless a shared-norm parallel layer lends it another's, or a
    pre layer has none before its branch), its branch F, the norm on F's output (sandwich, OLMo 2), and what
    scales the write w = branch_scale * layer_scale * N_out(F). Which placement applies them is the layer's
    business. rezero and plain keep the norm (the table has it) but never call it."""

    def __init__(self, cfg: BlockConfig, kind: str) -> None:
        super().__init__()
        self.norm = make_norm(cfg) if cfg.norm_owner(kind) == kind and cfg.input_norm else None
        self.branch = BRANCH_MODULES[kind](cfg)
        self.branch_norm = make_norm(cfg) if cfg.branch_norm else None
        self.layer_scale = nn.Parameter(torch.empty(cfg.d_model)) if cfg.layer_scale is not None else None
        self.gate = nn.Parameter(torch.empty(())) if cfg.placement == "rezero" else None  # ReZero's a
        self.branch_scale = cfg.branch_scale

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """What a pre-norm branch reads: N(x), or x itself without an input norm (OLMo 2)."""
        return x if self.norm is None else self.norm(x)

    def write(self, h: torch.Tensor) -> torch.Tensor:
        f = self.branch(h)  # (B, T, C)
        if self.branch_norm is not None:
            f = self.branch_norm(f)
        if self.layer_scale is not None:  # CaiT's LayerScale: a learned per-channel gain on the write
            return (self.branch_scale * self.layer_scale) * f
        return f if self.branch_scale == 1.0 else self.branch_scale * f


def narrowed(x: torch.Tensor, compute: torch.dtype | None) -> torch.Tensor:
    """What a sublayer reads: the stream in the compute dtype (the stream itself without one)."""
    return x if compute is None else x.to(compute)


class Layer(nn.Module):
    """One layer: its sublayers in order, each its own update, or all in one update when parallel.
    forward returns the stream state after each update and each update's write w (before a ReZero gate)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.sublayers = nn.ModuleDict({kind: Sublayer(cfg, kind) for kind in cfg.sublayers})
        self.updates = cfg.updates  # ((attention,), (mlp,)) or ((attention, mlp),) when parallel
        self.owner = {kind: cfg.norm_owner(kind) for kind in cfg.sublayers}
        self.placement = cfg.placement
        self.skip = cfg.skip  # s: 1, deepnorm's alpha, or skip_scale
        # The dtype sublayers compute in when it is not the stream's (fp32_residual: bfloat16 sublayers on a
        # float32 stream, torch/modes.py); None: the stream's own.
        self.compute: torch.dtype | None = None

    def narrow(self, x: torch.Tensor) -> torch.Tensor:
        return narrowed(x, self.compute)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        states, writes = [], []
        for kinds in self.updates:
            x, w = self.pre(kinds, x) if self.placement == "pre" else self.update(self.sublayers[kinds[0]], x)
            states.append(x)
            writes.append(w)
        return states, writes

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.skip == 1.0 else self.skip * x  # the skip path s x

    def pre(self, kinds: tuple[str, ...], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = s x + sum_k w_k(N_k(x)): one sublayer, or a parallel layer's together (GPT-J, PaLM)."""
        owners = dict.fromkeys(self.owner[k] for k in kinds)  # a shared norm (GPT-J) runs once
        h = {owner: self.sublayers[owner].normed(self.narrow(x)) for owner in owners}  # each (B, T, C)
        writes = [self.sublayers[k].write(h[self.owner[k]]).to(x.dtype) for k in kinds]
        w = sum(writes[1:], writes[0])
        return self.scaled(x) + w, w

    def update(self, sub: Sublayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # every placement but pre feeds the raw stream to the branch
        w = sub.write(self.narrow(x)).to(x.dtype)  # (B, T, C)
        if self.placement in ("post", "deepnorm"):
            return sub.norm(self.narrow(self.scaled(x) + w)).to(x.dtype), w  # N(s x + w(x)); deepnorm's s is alpha
        if self.placement == "rezero":
            return self.scaled(x) + sub.gate * w, w  # s x + a w(x), no norm
        return w, w  # plain: no skip


class FinalNorm(nn.Module):
    """The norm after the stack (GPT-2's ln_f); its tensors sit in the last layer's record as final.*."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class Stack(nn.Module):
    """depth layers, then the optional final norm. forward returns every stream state x_0 .. x_U, every
    update's write and the final norm's output (None without one)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.depth))
        self.final = FinalNorm(cfg) if cfg.final_norm else None
        self.compute: torch.dtype | None = None  # as Layer.compute

    def forward(self, x: torch.Tensor, call: Callable = lambda module, x: module(x)
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
        """`call(module, x)` runs each layer and the final norm: torch.compile'd per block in compile mode."""
        states, writes = [x], []
        for layer in self.layers:
            layer_states, layer_writes = call(layer, states[-1])  # e.g. pre: x = x + branch(norm(x)), per sublayer
            states += layer_states
            writes += layer_writes
        if self.final is None:
            return states, writes, None
        return states, writes, call(self.final, narrowed(states[-1], self.compute)).to(x.dtype)

    def compute_in(self, dtype: torch.dtype) -> Stack:
        """Every sublayer and the final norm compute in `dtype`, the stream stays in its own (fp32_residual)."""
        self.compute = dtype
        for layer in self.layers:
            layer.compute = dtype
        return self


def output(states: list[torch.Tensor], final: torch.Tensor | None) -> torch.Tensor:
    """What the stack's cotangent is on (StackTrace.output): the final norm's output, else x_U."""
    return states[-1] if final is None else final


# --- the parameter table <-> module parameters ---

_LINEAR = re.compile(r"([wb])_?([a-z]+)")  # wq, bq, w_up, b_down: a Linear's weight or bias


def _local_path(short: str) -> tuple[str, bool]:
    """A short table name -> (its path inside the owning module, transposed?)."""
    linear = _LINEAR.fullmatch(short)
    if linear:  # w<X> / w_<X> -> <X>_proj.weight, stored (out, in) by nn.Linear
        return f"{linear[2]}_proj.{'weight' if linear[1] == 'w' else 'bias'}", linear[1] == "w"
    if short.endswith(("_weight", "_bias")):  # norm_weight -> norm.weight, q_norm_weight -> q_norm.weight
        module, _, attr = short.rpartition("_")
        return f"{module}.{attr}", False
    return short, False  # layer_scale, gate: parameters of the sublayer itself


def parameter_path(layer: int, name: str, spec: ParamSpec) -> tuple[str, bool]:
    """Tensor `name` of layer `layer`'s record -> (the Stack's parameter holding it, stored transposed?).

    Rows every sublayer has (ANY: norm, layer_scale, gate) live on the Sublayer, a branch's own rows in its
    branch module, and the final norm's rows on the Stack's `final`."""
    kind, short = name.split(".", 1)
    local, transposed = _local_path(short)
    if spec.kind == "final":
        return f"final.{local}", transposed
    owner = "" if spec.kind == ANY else "branch."
    return f"layers.{layer}.sublayers.{kind}.{owner}{local}", transposed


def _paths(cfg: BlockConfig, params: Sequence[LayerParams]):
    """(layer, tensor name, module path, transposed?) for every tensor of every record, in record order."""
    for layer, p in enumerate(params):
        specs = dict(layer_specs(cfg, last=layer == len(params) - 1))
        for name, _ in p.items():
            yield (layer, name, *parameter_path(layer, name, specs[name]))


def build_stack(cfg: BlockConfig, params: Sequence[LayerParams], dtype: torch.dtype, device: str) -> Stack:
    """A Stack whose parameters are exactly the tensors of params, cast to dtype on device (requiring grad).

    The records are checked against the table first (a ValueError naming the tensor and its expected shape).
    The Stack is built on the meta device and loaded with assign=True, so no random init runs (the global
    RNG is untouched) and nothing is copied twice; strict loading catches a module that disagrees with the
    table (a bug here, not in the caller's records).
    """
    check_params(cfg, params)
    with torch.device("meta"):
        stack = Stack(cfg)
    state = {}
    for layer, name, path, transposed in _paths(cfg, params):
        t = torch.as_tensor(np.asarray(params[layer][name]), dtype=torch.float64, device=device).to(dtype)  # exact
        state[path] = t.T.contiguous() if transposed else t
    stack.load_state_dict(state, strict=True, assign=True)
    return stack


def grads_as_params(cfg: BlockConfig, params: Sequence[LayerParams], stack: Stack,
                    grads: dict[str, torch.Tensor | None]) -> tuple[LayerParams, ...]:
    """Per-module-parameter gradients (None where unused) as one LayerParams per layer with the records'
    names, weights back to (in, out), float64; zeros for a tensor that never reached the output (the norm of
    a rezero or plain sublayer)."""
    named = dict(stack.named_parameters())
    out: list[dict[str, np.ndarray]] = [{} for _ in params]
    for layer, name, path, transposed in _paths(cfg, params):
        g = grads[path]
        g = torch.zeros_like(named[path]) if g is None else g
        out[layer][name] = (g.T if transposed else g).detach().to("cpu", torch.float64).numpy()
    return tuple(LayerParams(tensors) for tensors in out)


# --- add + norm, unfused: what a fused kernel replaces ---

def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 eps: float, residual_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused composition a fused kernel replaces: the sum rounded once to residual_dtype, normalised
    (residual arrives in the wider of x's dtype and residual_dtype, which is where the norm computes),
    out in x's dtype. Returns (out, new_residual)."""
    new_residual = (x.to(residual.dtype) + residual).to(residual_dtype)  # (..., C)
    s = new_residual.to(residual.dtype)  # a no-op except for float64 x with a float32 residual
    h = F.rms_norm(s, weight.shape, weight.to(s.dtype), eps)
    if bias is not None:
        h = h + bias.to(s.dtype)
    return h.to(x.dtype), new_residual


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float, residual_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """As add_rms_norm, with LayerNorm (separate functions so torch.compile caches each on its own code)."""
    new_residual = (x.to(residual.dtype) + residual).to(residual_dtype)
    s = new_residual.to(residual.dtype)
    h = F.layer_norm(s, weight.shape, weight.to(s.dtype), None if bias is None else bias.to(s.dtype), eps)
    return h.to(x.dtype), new_residual


ADD_NORMS = {"rmsnorm": add_rms_norm, "layernorm": add_layer_norm}
