"""A benchmarked kernel's conformance beside its speed: the outcomes of the properties that check what the
benchmark times, from the conformance rows shown for the same backend, device and dtype. A fast kernel that is
wrong, or never checked, should not read as a win."""
from __future__ import annotations

from collections import Counter

from resconf.conformance.results import ResultRow

from .document import Cell
from .outcomes import cell_status, cell_text

# What each kind of benchmarked op is checked by (docs/spec.md); an op not matched reads the backend's
# results as a whole.
OP_PROPERTIES = (
    (("add_rmsnorm", "add_layernorm"), ("XB-3",)),  # fused add+norm: forward, residual and gradients
    (("stack",), ("XB-1", "XB-2")),  # a whole stack (pre_ln_mlp_stack_...): forward and VJPs against the oracle
)


def properties_for(op: str) -> tuple[str, ...]:
    for names, props in OP_PROPERTIES:
        if any(name in op for name in names):
            return props
    return ()


def kernel_status(op: str, backend: str, device: str, dtype: str, rows: list[ResultRow]) -> Cell:
    if backend == "-":
        return Cell("-")  # copy and add: plain NumPy/torch references, not a backend under test
    mine = [r for r in rows if (r.backend, r.device) == (backend, device)]
    if not mine:
        return Cell("no conformance results")
    props = properties_for(op)
    label = ", ".join(props) if props else "all properties"
    checked = [r for r in mine if (r.property in props or not props) and r.dtype in (dtype, "-")]
    if not checked:
        return Cell(f"no {label} results in {dtype}")
    counts = Counter(r.outcome for r in checked)
    return Cell(f"{label}: {cell_text(counts)}", cell_status(counts))
