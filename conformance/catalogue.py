"""The property catalogue as data: every property ID the suite implements, its family, a one-line statement,
what a backend must offer for it to run, the tests that check it and the mutants that prove it can fail.

Everything that knows the suite's vocabulary reads this table: docs/spec.md (tests/test_catalogue.py holds
the document to it), the terminal summary's and the report's family order and names, the report's links and
statements, and tests/test_mutants.py (a property without a mutant fails it). Adding a property: its test in
conformance/, its row here, its mutant in tests/mutants.py, its row in docs/spec.md.
"""
from __future__ import annotations

from dataclasses import dataclass

# What a backend must offer for a property's cases to run (backends/base.Capabilities: blocks, fused_kinds,
# tensor_parallel); a backend offering none of a property's domains has its cases skipped, with the reason.
BLOCKS, FUSED, TENSOR_PARALLEL = "blocks", "fused", "tensor_parallel"


@dataclass(frozen=True)
class Family:
    code: str  # the ID prefix: "ID"
    heading: str  # docs/spec.md's section "## ID: identity at zero"
    name: str  # how the summary and the report name it


@dataclass(frozen=True)
class Property:
    id: str  # "ID-1": stable, result tables key on it
    statement: str  # one line, plain text; docs/spec.md's statement starts with it
    domains: tuple[str, ...]  # BLOCKS, FUSED, TENSOR_PARALLEL
    tests: tuple[str, ...]  # "module.function" in conformance/, each marked @pytest.mark.property(id)
    mutants: tuple[str, ...]  # classes of tests/mutants.py, tp_mutants.py, mode_mutants.py or opcheck_mutants.py

    @property
    def family(self) -> str:
        return self.id.split("-", 1)[0]


FAMILIES = (  # the catalogue's order: docs/spec.md's, the summary's and the report's
    Family("ID", "identity at zero", "identity at zero"),
    Family("GR", "the gradient keeps the identity path", "gradient"),
    Family("VG", "variance of the residual stream", "variance growth"),
    Family("XB", "agreement between backends", "cross-backend agreement with the oracle"),
    Family("BI", "bad input", "bad input"),
    Family("TP", "tensor-parallel residual", "tensor parallel"),
)
# rows `resconf check` writes itself (docs/results.md); they sort after the catalogue's families
HARNESS_FAMILIES = (
    Family("RUN", "", "the backend could not run (a row written by resconf check, docs/results.md)"),
    Family("GUARD", "", "the run covered less than the backend claims (a row written by resconf check, "
                        "docs/results.md)"),
)

_B, _BF = (BLOCKS,), (BLOCKS, FUSED)

PROPERTIES = (
    Property("ID-1", "a pre or rezero block with zero init (output projection 0) or rezero init (a = 0) returns x "
             "bitwise", _B, ("test_identity.test_identity_block", "test_identity.test_identity_subnormal"),
             ("SkipDropped", "ResidualAddedTwice", "ResidualScaled", "GateIgnored", "RezeroInitTiny",
              "DropsResidualWhenCompiling")),
    Property("ID-2", "a stack of L such blocks, L in {2, 8, 32, 128}, is bitwise the identity at every state", _B,
             ("test_identity.test_identity_stack",), ("SkipDropped", "ResidualAddedTwice", "ResidualScaled")),
    Property("ID-3", "at zero branch the input VJP is bitwise g; for rezero, dL/da_l = <g, F_l(x)>", _B,
             ("test_identity.test_identity_gradient",), ("SkipDetached", "GateIgnored")),
    Property("ID-4", "negative control: at zero branch post gives N(x), deepnorm N(alpha x), plain exactly 0", _B,
             ("test_identity.test_negative_control",), ("PostAsPre", "WrongEps", "PlainWithSkip")),
    Property("GR-1", "per sublayer, from the last to the first: pre/rezero g <- s g + J_write^T g; post "
             "g <- s J_N^T g + J_F^T J_N^T g", _B, ("test_gradient.test_gradient_decomposition",),
             ("SkipDetached", "PostAsPre", "GradientScaled")),
    Property("GR-2", "pre stack: prod(1 - rho_l) <= ||grad x_0||/||g|| <= prod(1 + rho_l), rho_l = ||J_l||_2 at "
             "the oracle's trajectory", _B, ("test_gradient.test_gradient_bounds",),
             ("SkipDropped", "SkipDetached", "PlainWithSkip")),
    Property("GR-3", "recorded curve: ||grad x_0||/||g|| at depth 1..128, residual against plain on the same "
             "weights; band: each point within its gradient budget of the oracle's curve, and plain below residual "
             "from depth 2; theory gate: the residual curve's log(ratio^2) within Z sds of the pre-LN analogue of "
             "(1 + beta^2)^L; on the gpt2, llama and encoder presets, log(ratio^2) within Z sds of its expectation over the "
             "output projections' draw", _B,
             ("test_gradient.test_gradient_depth_sweep", "test_gradient.test_gradient_ratio_on_presets"),
             ("PlainWithSkip", "AttentionGradientScaled")),
    Property("GR-4", "a backend's float64 VJP agrees with central finite differences of its own forward", _B,
             ("test_gradient.test_vjp_finite_differences",), ("SkipDetached", "GradientScaled")),
    Property("VG-1", "pre stack: x_L == x_0 + sum_l F_l up to summation rounding", _B,
             ("test_variance.test_stream_is_sum_of_writes",), ("SkipDropped", "ResidualAddedTwice", "ResidualScaled",
                                                               "RoundsStreamToBfloat16")),
    Property("VG-2", "uncorrelated growth, the seeds' example: unit-variance x_0, 192 writes of variance 0.01, "
             "Var(x_L) ~= 2.92; on the layer presets, Var(x_U) - Var(x_0) = the writes' expected variances", _B,
             ("test_variance.test_uncorrelated_growth", "test_variance.test_uncorrelated_growth_on_presets"),
             ("ResidualAddedTwice", "ResidualScaled")),
    Property("VG-3", "GPT-2 init (output std 0.02/sqrt(L) for L one-sublayer layers): Var(x_L) - Var(x_0) = "
             "v(0.02) for every L in {6, 12, 24, 48, 96}", _B,
             ("test_variance.test_gpt2_scaling", "test_variance.test_gpt2_init_on_presets"),
             ("Gpt2ScaleLinear", "Gpt2DepthCountedTwice", "Gpt2HalfWriteVariance", "BidirectionalWhenCausal",
              "WritesNothing")),
    Property("VG-4", "every state of a post stack has per-token mean 0 and variance s2/(s2 + eps)", _B,
             ("test_variance.test_post_normalises",), ("PostAsPre", "WrongEps", "Float16Variance")),
    Property("VG-5", "deleting a layer from a pre stack changes its output by about that layer's write, "
             "||F_k|| / ||x_L||; from a plain stack by O(1)", _B, ("test_ablation.test_layer_ablation",),
             ("SkipDropped", "PlainWithSkip")),
    Property("XB-1", "the stack's output (x_U, and the final norm when there is one), every state and every write "
             "match the oracle", _B,
             ("test_agreement.test_forward_matches_oracle", "test_agreement.test_forward_offset_mean",
              "test_agreement.test_long_sequence_forward", "test_agreement.test_realistic_forward"),
             ("Float32Outputs", "WrongGelu", "FastVariance", "BlockwiseSoftmaxNoRescale", "RopeOnValues",
              "QkNormAfterRope", "GqaWrongGroup", "SwigluGateUpSwapped", "BidirectionalWhenCausal",
              "LayerScaleIgnored", "ParallelNormsSwapped", "SandwichPostNormMissing", "RopeHalfSplitWhenInterleaved",
              "CrossAttentionReadsStream", "DropsResidualWhenCompiling", "RoundsStreamToBfloat16")),
    Property("XB-2", "VJPs w.r.t. x_0 and every parameter of every block match the oracle", _B,
             ("test_agreement.test_vjp_matches_oracle", "test_agreement.test_long_sequence_vjp",
              "test_agreement.test_realistic_vjp"),
             ("WrongGelu", "Bfloat16WeightGradient", "RopeOnValues", "QkNormAfterRope", "GqaWrongGroup",
              "SwigluGateUpSwapped", "LayerScaleIgnored", "KeyBiasGradientFromValue", "Float32Outputs",
              "RopeHalfSplitWhenInterleaved", "CrossAttentionReadsStream", "RoundsStreamToBfloat16")),
    Property("XB-3", "fused_add_norm(x, residual, weight, bias, eps, kind) = (norm(x + residual) weight (+ bias), "
             "x + residual)", (FUSED,), ("test_fused.test_fused_add_norm",), ("FusedStaleResidual",)),
    Property("XB-4", "the same call twice is bitwise identical", _BF,
             ("test_agreement.test_deterministic", "test_fused.test_fused_deterministic"),
             ("NonDeterministic", "RacyWeightGradient")),
    Property("XB-5", "strided and transposed-view inputs give the same result as contiguous ones", _B,
             ("test_agreement.test_layout_does_not_matter",), ("LayoutSensitive",)),
    Property("XB-6", "in a 64-layer pre stack in bfloat16, float16 or float32, each update's rounding error adds up "
             "over depth as independent roundings do, in the stream and in each write's scale; the growth exponent "
             "is recorded", _B, ("test_error_growth.test_error_growth",), ("InverseRmsBfloat16", "StreamTruncated")),
    Property("XB-7", "forward and VJP, of blocks and of fused add+norm, leave every input, parameter and cotangent "
             "bitwise as it was, and return none of them (no output shares memory with an input)", _BF,
             ("test_aliasing.test_block_calls_leave_inputs_alone", "test_aliasing.test_fused_calls_leave_inputs_alone"),
             ("CotangentOverwritten", "FusedResidualInPlace")),
    Property("XB-8", "torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch static and "
             "dynamic) passes on every torch op a backend's fused add+norm runs", (FUSED,),
             ("test_opcheck.test_fused_ops_pass_opcheck",), ("FakeResidualInComputeDtype",)),
    Property("BI-1", "a branch writing d_model + 3 features, a (1, C) residual, a weight of C + 1 values: an error "
             "whose message names the offending shape and the expected one", _BF,
             ("test_bad_input.test_block_shape_mismatch", "test_bad_input.test_fused_shape_mismatch"),
             ("FusedSilentBroadcast",)),
    Property("BI-2", "an unknown dtype is an error naming it; with residual_in_fp32 a float32 residual added to a "
             "bfloat16/float16 x stays float32 (no silent downcast)", _BF,
             ("test_bad_input.test_dtype_errors_and_no_silent_downcast",), ("FusedSilentDowncast",)),
    Property("BI-3", "non-finite values surface, never replaced", _BF,
             ("test_bad_input.test_nan_and_inf_locality", "test_bad_input.test_nan_in_a_weight_surfaces",
              "test_fused.test_fused_non_finite_stays_in_its_row"),
             ("NanToZero", "NanReplacedAfterNorm", "FusedNanToZero", "BidirectionalWhenCausal")),
    Property("BI-4", "an empty batch or sequence gives empty results of the right shape, forward and backward, "
             "blocks and fused", _BF, ("test_bad_input.test_empty_input",), ("EmptyCrashes",)),
    Property("BI-5", "|x| swept by powers of two up to the dtype's maximum: the overflow threshold (largest "
             "magnitude with a finite output) is recorded, not gated", _B,
             ("test_bad_input.test_large_magnitudes",), ("NormStatisticsInFloat16",)),
    Property("TP-1", "on P ranks, every stream state, every write, d x_0 and the gradient of every parameter (the "
             "ranks' shards put back to full shape) match the single-device oracle", (TENSOR_PARALLEL,),
             ("test_tensor_parallel.test_tensor_parallel_matches_oracle",),
             ("ResidualOnEveryRank", "BiasOnEveryRank", "NormOnChannelShard", "SequenceScatterMismatch",
              "RankHangs", "RankCrashes")),
    Property("TP-2", "on P ranks with zero output projections every update writes exactly its output bias",
             (TENSOR_PARALLEL,), ("test_tensor_parallel.test_tensor_parallel_identity_at_zero",),
             ("ResidualOnEveryRank", "BiasOnEveryRank", "RankHangs", "RankCrashes")),
)

BY_ID = {p.id: p for p in PROPERTIES}
FAMILY_ORDER = tuple(f.code for f in FAMILIES + HARNESS_FAMILIES)
FAMILY_NAMES = {f.code: f.name for f in FAMILIES + HARNESS_FAMILIES}


def property_order(property_id: str) -> tuple[int, str, int, str]:
    """Sort key: the catalogue's family order (an unknown family after the harness' rows), then the number."""
    family, _, number = property_id.partition("-")
    rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    return rank, family, int(number) if number.isdigit() else 0, number


def caught_by(mutants) -> dict[type, set[str]]:
    """mutant class -> the IDs of the properties whose row names it: each must flag it (tests/test_mutants.py)."""
    return {m: {p.id for p in PROPERTIES if m.__name__ in p.mutants} for m in mutants}
