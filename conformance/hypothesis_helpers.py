"""Hypothesis strategies for the suite (imported as `hh`).

Shapes and depths come from small fixed buckets: a backend that compiles (JAX's jit, torch.compile)
sees the same few shapes again and again instead of one recompile per example. Values, seeds and
configurations are drawn freely.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from resconf.backends.base import Backend
from resconf.backends.config import GELUS, BlockConfig
from resconf.backends.dtypes import DTYPES, max_finite, numpy_dtype, round_to, smallest_normal, unit_roundoff
from resconf.backends.params import LayerParams, draw_params
from resconf.backends.presets import ENCODER_DECODER, PRESETS, preset

SHAPES = ((2, 4, 16), (1, 7, 8), (3, 5, 32))  # (B, T, C)
JACOBIAN_SHAPES = ((1, 3, 8), (2, 2, 8))  # dense Jacobians: N = B*T*C stays small
DEPTHS = (2, 8, 32, 128)
seeds = st.integers(0, 2**32 - 1)
scales = st.sampled_from((1e-2, 1.0, 1e2))


# Structure (shape, depth, norm, branch, GELU, layer preset) decides what a compiling backend must compile. The
# `ci` and `smoke` profiles fix it per test case, rotating through the combinations across cases, so every
# example of a case reuses one compiled program and only values, seeds and magnitudes are drawn; `dev`
# and `nightly` draw the structure per example too. The plugin sets this from the profile.
STRUCTURE_PER_EXAMPLE = True

# A structure-drawing property runs twice per dtype: on single-sublayer blocks (every norm x branch x GELU) and
# on the layer presets (GPT-2, Llama, GPT-J, encoder, modern; backends/presets.py). In the fixed profiles the
# dtypes of a case take consecutive presets, so every property meets (nearly) every preset in `ci`.
LAYERS = ("block", "preset")
# The two parts of an encoder-decoder (the decoder's cross-attention, DeepNet's encoder-decoder constants) are kept
# out of the presets' rotation, which a new preset would shift for every case; the XB properties run them as a
# layer kind of their own.
ENCDEC = "encdec"


def _structure_combos(backend: Backend, placement: str, init: str, shapes, depths, branches, norms):
    caps = backend.capabilities
    norms = tuple(n for n in sorted(caps.norms) if norms is None or n in norms)
    branches = tuple(b for b in sorted(caps.branches) if branches is None or b in branches)
    combos = [(shape, BlockConfig(placement=placement, init=init, depth=depth, d_model=shape[-1], norm=norm,
                                  branch=branch, gelu=gelu))
              for shape in shapes for depth in depths for norm in norms for branch in branches for gelu in GELUS
              if branch == "mlp" or gelu == GELUS[0]]  # GELU matters only in the mlp
    claimed = [(shape, cfg) for shape, cfg in combos if caps.supports(cfg)]
    if combos and not claimed:  # a real module of fixed structure: its layers are the presets'
        pytest.skip(f"{backend.name} {caps.why_not(combos[0][1])}: no single-sublayer block at "
                    f"placement={placement}; its layers run in the layer=preset cases")
    return claimed


def _preset_combos(backend: Backend, placement: str, init: str, shapes, depths, norms, names=PRESETS):
    """[(preset name, [(shape, config), ...]), ...] for every preset the backend can run at this placement."""
    found = []
    for name in names:
        combos = [(shape, preset(name, placement=placement, init=init, depth=depth, d_model=shape[-1]))
                  for shape in shapes for depth in depths]
        combos = [(shape, cfg) for shape, cfg in combos
                  if backend.capabilities.supports(cfg) and (norms is None or cfg.norm in norms)]
        if combos:
            found.append((name, combos))
    return found


def _combos(backend, placement, init, shapes, depths, branches, norms, layer):
    if layer == "block":
        return _structure_combos(backend, placement, init, shapes, depths, branches, norms)
    presets = _preset_combos(backend, placement, init, shapes, depths, norms,
                             ENCODER_DECODER if layer == ENCDEC else PRESETS)
    if not presets:
        pytest.skip(f"{backend.name} does not claim what any {layer} layer needs at placement={placement} "
                    f"(it claims features {sorted(backend.capabilities.features)}, "
                    f"norms {sorted(backend.capabilities.norms)})")
    return presets


def fixed_structure(backend: Backend, case: int, placement: str, init: str, shapes=SHAPES, depths=(1,),
                    branches: tuple[str, ...] | None = None, norms: tuple[str, ...] | None = None,
                    layer: str = "block") -> tuple[tuple[int, int, int], BlockConfig]:
    """The (shape, config) this case gets in the fixed-structure profiles, rotating across cases."""
    combos = _combos(backend, placement, init, shapes, depths, branches, norms, layer)
    if not combos:
        raise ValueError(f"{backend.name} claims no norm/branch among norms={norms}, branches={branches}; "
                         f"the test should have skipped (conformance.requirements)")
    if layer == "block":
        return combos[rotation(case, len(combos))]
    _, preset_combos = combos[rotation(case, len(combos))]
    return preset_combos[(case // len(DTYPES)) % len(preset_combos)]


def rotation(case: int, count: int) -> int:
    """Which of `count` structures a case takes: the dtypes of a family (plugin_collection.case_number) take
    consecutive ones, so a property's cases meet (nearly) every structure; conformance/gate.py reads it too."""
    family, dtype_index = divmod(case, len(DTYPES))
    return (family + dtype_index) % count


def structures(backend: Backend, case: int, placement: str, init: str, shapes=SHAPES, depths=(1,),
               branches: tuple[str, ...] | None = None, norms: tuple[str, ...] | None = None, layer: str = "block"
               ) -> st.SearchStrategy[tuple[tuple[int, int, int], BlockConfig]]:
    """(shape, config) pairs the backend claims, placement and init fixed by the test; `layer` is "block"
    (one sublayer of each branch), "preset" (the layers people ship) or ENCDEC (an encoder-decoder's parts)."""
    if layer not in LAYERS + (ENCDEC,):
        raise ValueError(f"layer={layer!r} is not one of {LAYERS + (ENCDEC,)}")
    if STRUCTURE_PER_EXAMPLE:
        combos = _combos(backend, placement, init, shapes, depths, branches, norms, layer)
        if layer != "block":
            combos = [c for _, preset_combos in combos for c in preset_combos]
        return st.sampled_from(combos)
    return st.just(fixed_structure(backend, case, placement, init, shapes, depths, branches, norms, layer))


def with_final_norm(backend: Backend, cfg: BlockConfig) -> BlockConfig:
    """cfg ending in a final norm, as the layers people ship do, when the backend claims one."""
    final = dataclasses.replace(cfg, final_norm=True)
    return final if backend.capabilities.supports(final) else cfg


def first_layer(backend: Backend) -> str:
    """The `layer` kind a whole-backend check (bad input) uses: single-sublayer blocks when the backend has
    them, else the presets (a real module of fixed structure)."""
    caps = backend.capabilities
    block = BlockConfig(placement=sorted(caps.placements)[0], norm=sorted(caps.norms)[0],
                        branch=sorted(caps.branches)[0])
    return "block" if caps.supports(block) else "preset"


def identity_domain(dtype: str, d_model: int) -> float:
    """Largest |x| for which no norm statistic can overflow: the sum of C squares stays below the
    dtype's maximum with a factor 4 to spare, so a NaN from overflow is not blamed on the skip."""
    return math.sqrt(max_finite(dtype) / d_model) / 2.0


def drawn_in(dtype: str) -> np.dtype:
    """The NumPy float Hypothesis draws `dtype`'s values in: the dtype itself where NumPy has it (float16, 32,
    64), else float32 (an ml_dtypes type such as bfloat16; the draws are then rounded to the dtype)."""
    own = numpy_dtype(dtype)
    return own if own.kind == "f" else np.dtype(np.float32)


def finite_arrays(dtype: str, shape: tuple[int, ...], bound: float, subnormals: bool = False
                  ) -> st.SearchStrategy[np.ndarray]:
    """Adversarial finite arrays representable in `dtype` (as float64), |x| <= bound: zeros of both
    signs, tiny and huge normals, and subnormals only when asked (a separate case, so a backend that
    flushes them can carry an expected failure for that case alone)."""
    element_dtype = drawn_in(dtype)
    width, tiny = element_dtype.itemsize * 8, smallest_normal(dtype)
    bound = float(np.nextafter(element_dtype.type(bound), 0))  # representable, never above the domain
    elements = st.floats(-bound, bound, width=width, allow_nan=False, allow_subnormal=subnormals)
    if subnormals:
        elements = st.floats(-tiny, tiny, width=width, allow_subnormal=True, exclude_min=True, exclude_max=True)
    return hnp.arrays(element_dtype, shape, elements=elements).map(lambda a: round_to(a, dtype))


def normal_input(seed: int, shape: tuple[int, ...], scale: float, dtype: str) -> np.ndarray:
    """Seeded N(0, scale^2) input rounded to dtype."""
    return round_to(np.random.default_rng(seed).normal(0.0, scale, shape), dtype)


def offset_input(seed: int, shape: tuple[int, ...], scale: float, offset: float, dtype: str) -> np.ndarray:
    """Seeded tokens with a large common mean, as real residual streams carry (massive activations):
    x = m_t + N(0, scale^2) with m_t = +-offset * scale (sign random per token), rounded to dtype. A norm
    that takes Var = E[x^2] - E[x]^2 loses ~log10(offset^2) digits to cancellation; a two-pass one does not."""
    rng = np.random.default_rng(seed)
    sign = rng.choice((-1.0, 1.0), size=shape[:-1] + (1,))  # (B, T, 1)
    return round_to(sign * offset * scale + rng.normal(0.0, scale, shape), dtype)


def params_for(backend: Backend, cfg: BlockConfig, seed: int, dtype: str, perturb: bool = False
               ) -> tuple[LayerParams, ...]:
    """The backend's own initializer when it offers one (then it is under test too), else the suite's;
    rounded to dtype so backend and oracle compute the same function."""
    try:
        params = backend.init_params(cfg, seed)
    except NotImplementedError:
        params = draw_params(cfg, seed, perturb=perturb)
    return tuple(p.map(lambda t: round_to(t, dtype)) for p in params)


def resolvable(ref: np.ndarray, dtype: str, scale: float | None = None) -> bool:
    """Whether the dtype can hold `ref` to its relative precision: its RMS (or, where its error is measured
    against a `scale`, a norm, the RMS that norm stands for) at least the smallest normal number divided by
    the unit roundoff (below that, subnormals and underflow swamp relative error)."""
    if scale is not None:
        rms = scale / math.sqrt(max(ref.size, 1))
    else:
        rms = float(np.sqrt(np.mean(np.square(ref)))) if ref.size else 0.0
    return rms >= smallest_normal(dtype) / unit_roundoff(dtype)
