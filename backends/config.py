"""What a residual layer is: the configuration every backend must be able to express (SPEC.md).

A stack is `depth` layers. A layer is an ordered list of residual sublayers (`sublayers`, e.g. attention
then mlp), each with its own norm N and its own residual write of its branch F. Each sublayer applies the
placement, with s the skip scalar and w = branch_scale * layer_scale * F the write:
    pre       s x + w(N(x))
    post      N(s x + w(x))
    rezero    s x + a * w(x)         (a is a learnable scalar, the sublayer's `gate`)
    deepnorm  N(alpha x + w(x))      alpha = (2 depth)^(1/4) (DeepNet, counting layers), or skip_scale
    plain     w(x)                   (no skip: the control that must FAIL identity properties)
A `parallel` layer (GPT-J, PaLM; pre only) updates the stream once: x + sum_k w_k(N_k(x)), with one norm
shared by every branch or one each. An optional final norm follows the stack.
Where the norms sit besides the placement: `branch_norm` normalises the branch's output before it is
written, w = scale * N_out(F(.)), so pre becomes Gemma 2/3's sandwich x + N_out(F(N(x))); and pre with
`input_norm=False` drops N, which with `branch_norm` is OLMo 2's reordered norm x + N_out(F(x)).

A decoder layer of an encoder-decoder (the original Transformer, BART, T5, Whisper) has a third sublayer,
`cross_attention`, between self-attention and the mlp: its queries come from the stream, its keys and values
from the encoder's output, the memory (S, C), with no mask, no RoPE and no QK-norm (the memory's positions are
another sequence's); heads, grouping and biases as self-attention's. The memory is a tensor of the
cross-attention's own parameter record (`cross_attention.memory`), not a second input beside x: the branch
then reads it as it reads its weights, so the stack keeps the signature f(cfg, params, x) that every backend
and the adapter API have, the placements apply to it unchanged, and XB-2 compares its gradient like any
parameter's (the decoder's gradient w.r.t. the encoder's output, which training needs). A backend that does
not claim the feature is skipped; a real module's adapter passes each layer's record's memory as that layer's
encoder_hidden_states. Every layer's record holds the same memory (one encoder output, params.draw_params),
shared by the batch: (S, C) broadcast over B, as beam search expands it; its gradient in layer l's record is
layer l's part, and their sum the encoder's.

Depth is counted in layers. The stream is updated `n_updates` times (once per sublayer, once per parallel
layer) and receives `n_writes` branch outputs (one per sublayer), which is what GPT-2's init scales by.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from resconf.backends.dtypes import DTYPES  # noqa: F401  re-exported: the dtype names live with their records

PLACEMENTS = ("pre", "post", "rezero", "deepnorm", "plain")
NORMS = ("layernorm", "rmsnorm")
BRANCHES = ("mlp", "attention", "linear")
CROSS_ATTENTION = "cross_attention"  # a sublayer of decoder layers only: never a single-sublayer block's branch
SUBLAYERS = BRANCHES + (CROSS_ATTENTION,)
ATTENTIONS = ("attention", CROSS_ATTENTION)
INITS = ("standard", "gpt2", "zero", "rezero", "deepnorm")
QK_NORM_SCOPES = ("head", "projection")
GELUS = ("tanh", "exact")
ACTIVATIONS = ("gelu", "relu", "silu")
FUSED_KINDS = ("rmsnorm", "layernorm")
# Layer-model features beyond a single pre/post/... sublayer with biases, GELU and causal MHA. A backend
# claims the ones it expresses (Capabilities.features); the suite skips configurations that need others.
FEATURES = ("sublayers", "parallel", "final_norm", "relu", "silu", "gated", "no_bias", "no_norm_bias",
            "bidirectional", "gqa", "rope", "qk_norm", "layer_scale", "skip_scale", "branch_scale",
            "branch_norm", "no_input_norm", "qk_norm_projection", "partial_rope", "interleaved_rope",
            "attention_bias", "cross_attention")


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {choices}")


@dataclass(frozen=True)
class BlockConfig:
    """One residual layer, repeated `depth` times to make a stack (depth = L, counted in layers)."""

    placement: str = "pre"
    norm: str = "layernorm"
    branch: str = "mlp"  # the one sublayer of a single-sublayer layer; see `sublayers`
    init: str = "standard"
    depth: int = 1
    d_model: int = 16
    n_heads: int = 2
    mlp_ratio: int = 4
    gelu: str = "tanh"  # which GELU when activation == "gelu"
    eps: float = 1e-5
    # --- the layer's shape ---
    sublayers: tuple[str, ...] | None = None  # ordered residual sublayers (SUBLAYERS); None means (branch,)
    parallel: bool = False  # every sublayer reads the same x and writes in one update (pre only)
    shared_norm: bool = True  # parallel only: one norm feeds every branch (GPT-J) or one norm each
    final_norm: bool = False  # a norm after the stack (its parameters sit in the last layer's record)
    input_norm: bool = True  # pre only: False drops the norm before the branch (OLMo 2: x + N_out(F(x)))
    branch_norm: bool = False  # a norm on the branch's output, inside the write (Gemma 2/3 sandwich, OLMo 2)
    memory_len: int = 6  # S, the memory's tokens when a sublayer is cross_attention (apart from the suite's T)
    # --- branch features ---
    activation: str = "gelu"
    gated: bool = False  # mlp: act(x W_gate) * (x W_up), SwiGLU with silu, GeGLU with gelu
    d_ff: int | None = None  # mlp hidden width; None means mlp_ratio * d_model
    bias: bool = True  # biases on every linear (but attention's when attention_bias is set)
    attention_bias: bool | None = None  # biases on q, k, v and out; None follows `bias` (GPT-J: none, MLP: yes)
    norm_bias: bool = True  # layernorm's bias (rmsnorm never has one)
    causal: bool = True  # attention mask: causal, else bidirectional
    n_kv_heads: int | None = None  # None means n_heads (MHA); 1 is multi-query; else grouped-query
    rope: bool = False  # rotary embeddings on q and k, half-split convention (GPT-NeoX, Llama)
    rope_base: float = 10000.0
    rope_dim: int | None = None  # rotate only the first rope_dim dims of each head (GPT-J 64 of 256); None: all
    rope_interleaved: bool = False  # pair dims (0, 1), (2, 3), ... (GPT-J's rotate_every_two), not (i, i + n/2)
    qk_norm: bool = False  # RMSNorm on q and k before RoPE
    qk_norm_scope: str = "head"  # over each head (Qwen 3, Gemma 3) or over the whole projection (OLMo 2)
    layer_scale: float | None = None  # per-channel gain on each write, drawn at this value (CaiT)
    skip_scale: float | None = None  # the skip scalar s (He et al.'s lambda); deepnorm's free alpha
    init_beta: float | None = None  # deepnorm init's gain beta; None: (8N)^(-1/4) (deepnet_constants: enc-dec)
    branch_scale: float = 1.0  # a constant on every write
    # --- the model this stack belongs to ---
    model_depth: int | None = None  # layers of the whole model when the stack is a slice of it; None: depth.
    # DeepNet's alpha and beta and GPT-2's 1/sqrt(2N) follow the model's depth, not the slice's.

    def __post_init__(self) -> None:
        _check_choice("placement", self.placement, PLACEMENTS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("branch", self.branch, BRANCHES)
        _check_choice("init", self.init, INITS)
        _check_choice("gelu", self.gelu, GELUS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("qk_norm_scope", self.qk_norm_scope, QK_NORM_SCOPES)
        if self.sublayers is None:
            object.__setattr__(self, "sublayers", (self.branch,))
        object.__setattr__(self, "sublayers", tuple(self.sublayers))
        for kind in self.sublayers:
            _check_choice("sublayer", kind, SUBLAYERS)
        if not self.sublayers or len(set(self.sublayers)) != len(self.sublayers):
            raise ValueError(f"sublayers={self.sublayers} must name each of {SUBLAYERS} at most once, at least one")
        if self.memory_len < 1:
            raise ValueError(f"memory_len={self.memory_len} must be >= 1 (the memory's tokens)")
        if self.parallel and (len(self.sublayers) < 2 or self.placement != "pre"):
            raise ValueError(f"parallel=True needs placement='pre' and two or more sublayers, "
                             f"got placement={self.placement!r}, sublayers={self.sublayers}")
        if self.depth < 1:
            raise ValueError(f"depth={self.depth} must be >= 1")
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a positive multiple of n_heads={self.n_heads}")
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.rope and self.head_dim % 2:
            raise ValueError(f"rope=True needs an even head dimension, got d_model/n_heads={self.head_dim}")
        if self.rope_dim is not None and not (self.rope and 2 <= self.rope_dim <= self.head_dim
                                              and self.rope_dim % 2 == 0):
            raise ValueError(f"rope_dim={self.rope_dim} needs rope=True and an even value in [2, "
                             f"head_dim={self.head_dim}]")
        if self.rope_interleaved and not self.rope:
            raise ValueError("rope_interleaved=True needs rope=True")
        if self.qk_norm_scope != "head" and not self.qk_norm:
            raise ValueError(f"qk_norm_scope={self.qk_norm_scope!r} needs qk_norm=True")
        if not self.input_norm and (self.placement != "pre" or self.parallel):
            raise ValueError(f"input_norm=False is a sequential pre-norm layer without its first norm; got "
                             f"placement={self.placement!r}, parallel={self.parallel}")
        if self.init_beta is not None and not (self.init == "deepnorm" and self.init_beta > 0):
            raise ValueError(f"init_beta={self.init_beta} is deepnorm init's gain: it needs init='deepnorm' and a "
                             f"value > 0, got init={self.init!r}")
        if self.model_depth is not None and self.model_depth < self.depth:
            raise ValueError(f"model_depth={self.model_depth} must be >= depth={self.depth} (the stack is a "
                             f"slice of the model)")
        if not self.rope_base > 1.0:
            raise ValueError(f"rope_base={self.rope_base} must be > 1")
        if self.d_hidden < 1:
            raise ValueError(f"d_ff={self.d_ff} must be >= 1")
        if not self.eps > 0:
            raise ValueError(f"eps={self.eps} must be > 0")
        for name in ("layer_scale", "skip_scale", "branch_scale"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}={value} must be finite")

    # --- derived sizes ---
    @property
    def d_hidden(self) -> int:
        return self.d_ff if self.d_ff is not None else self.mlp_ratio * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def has_norm_bias(self) -> bool:
        return self.norm == "layernorm" and self.norm_bias

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that RoPE rotates (the first ones; the rest pass through)."""
        return self.head_dim if self.rope_dim is None else self.rope_dim

    def has_bias(self, kind: str) -> bool:
        """Whether the linears of sublayer `kind` have biases."""
        return self.bias if kind not in ATTENTIONS or self.attention_bias is None else self.attention_bias

    # --- depth counting ---
    @property
    def n_writes(self) -> int:
        """Branch outputs added to the stream: one per sublayer of every layer (nanoGPT's 2 * n_layer)."""
        return self.depth * len(self.sublayers)

    @property
    def n_updates(self) -> int:
        """Stream states after x_0: one per sublayer, one per parallel layer (the trace's length)."""
        return self.depth * (1 if self.parallel else len(self.sublayers))

    @property
    def updates(self) -> tuple[tuple[str, ...], ...]:
        """The sublayers of one layer grouped by update: ((attention,), (mlp,)) or ((attention, mlp),)."""
        return (self.sublayers,) if self.parallel else tuple((kind,) for kind in self.sublayers)

    # --- constants ---
    @property
    def init_depth(self) -> int:
        """N, the layers of the whole model, which the init constants follow: model_depth, else depth."""
        return self.depth if self.model_depth is None else self.model_depth

    @property
    def model_writes(self) -> int:
        """Branch outputs the whole model adds to the stream: GPT-2's init scales by 1/sqrt of this."""
        return self.init_depth * len(self.sublayers)

    @property
    def deepnorm_alpha(self) -> float:
        """DeepNet's skip scale for an encoder of N = init_depth layers: (2N)^(1/4)."""
        return (2.0 * self.init_depth) ** 0.25

    @property
    def deepnorm_beta(self) -> float:
        """DeepNet's init gain on FFN, value and output projections: init_beta, else (8N)^(-1/4), N = init_depth."""
        return (8.0 * self.init_depth) ** -0.25 if self.init_beta is None else self.init_beta

    @property
    def skip(self) -> float:
        """The scalar on the skip path: skip_scale when set, else alpha for deepnorm and 1 otherwise."""
        if self.skip_scale is not None:
            return self.skip_scale
        return self.deepnorm_alpha if self.placement == "deepnorm" else 1.0

    @property
    def features(self) -> frozenset[str]:
        """The FEATURES this configuration uses."""
        used = {"sublayers": len(self.sublayers) > 1 and not self.parallel, "parallel": self.parallel,
                "final_norm": self.final_norm, "relu": self.activation == "relu", "silu": self.activation == "silu",
                "gated": self.gated, "no_bias": not self.bias, "no_norm_bias": self.norm == "layernorm" and not self.norm_bias,
                "bidirectional": not self.causal, "gqa": self.kv_heads != self.n_heads, "rope": self.rope,
                "qk_norm": self.qk_norm and self.qk_norm_scope == "head", "layer_scale": self.layer_scale is not None,
                "skip_scale": self.skip_scale is not None, "branch_scale": self.branch_scale != 1.0,
                "branch_norm": self.branch_norm, "no_input_norm": not self.input_norm,
                "qk_norm_projection": self.qk_norm and self.qk_norm_scope == "projection",
                "partial_rope": self.rope and self.rotary_dim < self.head_dim,
                "interleaved_rope": self.rope and self.rope_interleaved,
                "attention_bias": "attention" in self.sublayers and self.has_bias("attention") != self.bias,
                "cross_attention": CROSS_ATTENTION in self.sublayers}
        return frozenset(name for name, on in used.items() if on)

    def norm_owner(self, kind: str) -> str:
        """Whose norm feeds sublayer `kind`: its own, or the first sublayer's in a shared-norm parallel layer."""
        return self.sublayers[0] if self.parallel and self.shared_norm else kind

    def describe(self) -> str:
        """Stable short text used in result rows and rerun lines; layer-model fields only when not default."""
        text = (f"placement={self.placement},norm={self.norm},branch={self.branch},init={self.init},"
                f"depth={self.depth},d_model={self.d_model},gelu={self.gelu},eps={self.eps:g}")
        defaults = BlockConfig()
        fixed = ("placement", "norm", "branch", "init", "depth", "d_model", "gelu", "eps")
        for f in (f for f in fields(self) if f.name not in fixed):
            value = getattr(self, f.name)
            if f.name == "sublayers":
                if value != (self.branch,):
                    text += f",sublayers={'+'.join(value)}"
            elif value != getattr(defaults, f.name):
                text += f",{f.name}={value:g}" if isinstance(value, float) else f",{f.name}={value}"
        return text


def deepnet_constants(part: str, encoder_layers: int, decoder_layers: int) -> tuple[float, float]:
    """DeepNet's (alpha, beta) for one part of an encoder-decoder of N encoder and M decoder layers (Wang et al.
    2022, table 1): encoder 0.81 (N^4 M)^(1/16) and 0.87 (N^4 M)^(-1/16), decoder (3M)^(1/4) and (12M)^(-1/4).
    A stack of that part takes them as skip_scale and init_beta (the encoder-only constants are the default)."""
    n, m = encoder_layers, decoder_layers
    if part not in ("encoder", "decoder") or n < 1 or m < 1:
        raise ValueError(f"deepnet_constants({part!r}, {n}, {m}): expected part 'encoder' or 'decoder' and "
                         f"layer counts >= 1")
    if part == "encoder":
        return 0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16)
    return (3.0 * m) ** 0.25, (12.0 * m) ** -0.25
