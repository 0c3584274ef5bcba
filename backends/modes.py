"""Execution modes: how a backend runs a case, a case axis beside dtype (docs/spec.md, "Execution modes").

Every property runs once per mode the backend claims (Capabilities.modes) among those `resconf check --mode`
selects; `eager` is the default and today's meaning. A mode's numerical contract, where it rounds, is
written here as data the emulated baseline runs (backends/oracle/emulated.Arithmetic), so its error budget
comes from the same rounding (conformance/budgets.py), never from a tolerance of its own.
The case's dtype stays the dtype of the parameters, the inputs and the stream the backend returns.
"""
from __future__ import annotations

from dataclasses import dataclass

from resconf.backends.dtypes import claims

# The oracle's operations (backends/oracle/numpy_ops.py) that torch.autocast runs in its low dtype on the
# CPU and on CUDA (linear -> addmm/matmul, attention -> scaled_dot_product_attention), with their VJPs.
AUTOCAST_OPS = frozenset({"linear", "linear_vjp", "attention", "attention_vjp"})
BLOCKS_ONLY = ("blocks",)  # catalogue.BLOCKS: a mode that changes matmuls or the stream, not a fused add+norm
BLOCKS_AND_FUSED = ("blocks", "fused")
EVERY_DOMAIN = ("blocks", "fused", "tensor_parallel")


@dataclass(frozen=True)
class Mode:
    name: str
    contract: str  # where it rounds, one line (docs/spec.md restates it)
    dtypes: frozenset[str] | None = None  # the case dtypes it changes anything for; None: every dtype
    devices: tuple[str, ...] = ("cpu", "cuda")
    device_reason: str = ""  # why it runs on `devices` only
    domains: tuple[str, ...] = BLOCKS_AND_FUSED  # catalogue domains whose properties run in it
    low: str | None = None  # the dtype `low_ops` read and write (values of `low` kept in the case dtype)
    low_ops: frozenset[str] | None = None  # None with `low`: every operation
    matmul_operands: dict[str, str] | None = None  # device -> the format matmul operands round to ("tf32")
    parameters: str | None = None  # the dtype parameters are held in and their gradients rounded to, if not the case's

    def arithmetic_fields(self, device: str) -> dict:
        """The emulated baseline's Arithmetic fields beyond dtype and order that make it round as this mode
        does on `device` (backends/oracle/emulated.py)."""
        operands = (self.matmul_operands or {}).get(device)
        return {"low": self.low, "low_ops": self.low_ops, "matmul_operands": operands}


MODES = {m.name: m for m in (
    Mode("eager", "the framework's own kernels in the case dtype, one rounding per operation",
         domains=EVERY_DOMAIN),
    Mode("compile", "the whole block and stack compiled (torch.compile, forward and backward): the eager "
         "contract; fusion may drop roundings, never add a rounding to a narrower dtype"),
    Mode("default_precision", "matmuls at the framework's default precision (JAX without precision=HIGHEST): "
         "float32 operands rounded to TF32 on CUDA (XLA's default there), full float32 on the CPU",
         domains=BLOCKS_ONLY, matmul_operands={"cuda": "tf32"}),
    Mode("autocast", "float32 parameters and stream; linear layers and attention (autocast's lower-precision "
         "list) read bfloat16-rounded operands, accumulate in float32 and write bfloat16; everything else "
         "computes in its inputs' dtype", dtypes=claims("float32"), domains=BLOCKS_ONLY, low="bfloat16",
         low_ops=AUTOCAST_OPS),
    Mode("fp32_residual", "the stream and its adds in float32; each sublayer (its norm, branch and write) "
         "reads the stream rounded to bfloat16 and computes in bfloat16 with bfloat16 parameters (Megatron's "
         "fp32_residual_connection, flash-attn's residual_in_fp32)", dtypes=claims("float32"),
         domains=BLOCKS_ONLY, low="bfloat16", parameters="bfloat16"),
    Mode("mixed", "JAX's mixed policy: float32 parameters and stream, every sublayer operation computed in "
         "bfloat16 (parameters and inputs rounded to bfloat16 on the way in, so their gradients come back "
         "bfloat16-rounded; outputs bfloat16)", dtypes=claims("float32"), domains=BLOCKS_ONLY, low="bfloat16",
         parameters="bfloat16"),
    Mode("tf32", "torch matmuls with TF32 on (torch.backends.cuda.matmul.allow_tf32): float32 operands "
         "rounded to TF32 (10 significand bits), float32 accumulation", dtypes=claims("float32"),
         devices=("cuda",), device_reason="TF32 is a format of NVIDIA tensor cores (Ampere and later)",
         domains=BLOCKS_ONLY, matmul_operands={"cuda": "tf32"}),
    Mode("cuda_graph", "forward and backward captured once into a CUDA graph and replayed: the eager "
         "contract", devices=("cuda",), device_reason="a CUDA graph replays captured CUDA kernel launches",
         domains=BLOCKS_ONLY),
)}
DEFAULT_MODE = "eager"
ALL = "all"  # `resconf check --mode all`: every mode each backend claims


def check_mode(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; expected one of {', '.join(MODES)} (or {ALL!r})")
    return MODES[name]


def why_not(name: str, claimed: frozenset[str], backend: str, device: str, dtype: str, domains: tuple[str, ...]
            ) -> str | None:
    """None when a case in `dtype` of a property over `domains` runs in mode `name`, else the skip reason."""
    mode = check_mode(name)
    if device not in mode.devices:
        return f"mode {name} runs on {', '.join(mode.devices)} only, not on {device}: {mode.device_reason}"
    if name not in claimed:
        return f"{backend} on {device} does not claim mode {name}"
    if mode.dtypes is not None and dtype not in mode.dtypes:
        return f"mode {name} applies to {', '.join(sorted(mode.dtypes))} cases only, not {dtype}"
    if domains and not set(domains) & set(mode.domains):
        return f"mode {name} is not applied to {'/'.join(domains)} properties (it applies to {', '.join(mode.domains)})"
    return None
