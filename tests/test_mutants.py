"""Every property can fail: each deliberately broken backend in tests/mutants.py is flagged by the
property IDs the catalogue (conformance/catalogue.py) lists it under, and every property of the catalogue
names at least one mutant. One pytest run covers the mutants that show in float64 (smoke profile); a mutant
that shows in another dtype only runs apart, on the cases named in SELECTION.

A plain `pytest` runs each mutant only on the cases of the properties that must flag it (tests/mutant_pairs.py);
(under smoke's gate, conformance/gate.py, so a mutant caught there is caught by a user's gated ci run);
`pytest -m heavy` runs every mutant through every selected case, the gate off."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from resconf.conformance import catalogue
from resconf.conformance.catalogue import PROPERTIES
from tests import mutant_pairs
from tests.mutants import EXPECTED, SELECTION

ROOT = Path(__file__).resolve().parents[1]
TORCH = importlib.util.find_spec("torch") is not None
TRITON = TORCH and importlib.util.find_spec("triton") is not None
if TORCH:
    from tests.mode_mutants import MUTANTS as MODE_MUTANTS
else:
    MODE_MUTANTS = ()
# the opcheck mutants run Triton under its interpreter, which must be on before triton is imported: here
# they are only named (importing them would import triton); their runs set TRITON_INTERPRET=1
OPCHECK_MUTANTS = ("FakeResidualInComputeDtype",) if TRITON else ()
# the long-sequence, preset and encoder-decoder cases run only for the mutants that need them (SELECTION)
FLOAT64 = "(float64 or silent_downcast) and not long_sequence and not preset and not encdec"


def _failed_properties(mutants: list, selection: str, rows: Path, targeted: bool,
                       module: str = "tests.mutants", mode: str | None = None,
                       extra_env: dict[str, str] | None = None) -> dict[str, set[str]]:
    names = [m if isinstance(m, str) else m.__name__ for m in mutants]
    backends = [arg for name in names for arg in ("--resconf-backend", f"{module}:{name}")]
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-p", "no:cacheprovider", "-q",
           "--resconf-profile", "smoke", "-k", selection, "-W", "ignore::RuntimeWarning",
           "--resconf-results-jsonl", str(rows),
           *backends, *(["--resconf-mode", mode] if mode else []),
           *([] if targeted else ["--resconf-cover", "all"])]  # targeted: under the gate a user's ci run has
    # ROOT first (tests.mutants), then the caller's path: a worktree's import shim keeps resolving `resconf`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **(extra_env or {})}
    if targeted:
        cmd += ["-p", "tests.mutant_pairs"]
        env[mutant_pairs.ENV] = json.dumps({name: sorted(flagged_by(name)) for name in names})
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 1, f"the mutant run should fail (status 1), got {proc.returncode}:\n{proc.stdout[-3000:]}"
    failed = defaultdict(set)
    for line in rows.read_text().splitlines():
        row = json.loads(line)
        if row["outcome"] == "failed":
            failed[row["backend"].rsplit(":", 1)[-1]].add(row["property"])
    return failed


@pytest.fixture(scope="module", params=["targeted", pytest.param("exhaustive", marks=pytest.mark.heavy)])
def failed_properties(request, tmp_path_factory) -> dict[str, set[str]]:
    folder = tmp_path_factory.mktemp("mutants")
    targeted = request.param == "targeted"
    failed = _failed_properties([m for m in EXPECTED if m not in SELECTION], FLOAT64, folder / "rows.jsonl", targeted)
    for number, selection in enumerate(sorted(set(SELECTION.values()))):  # one run per selection
        mutants = [m for m, s in SELECTION.items() if s == selection]
        failed.update(_failed_properties(mutants, selection, folder / f"selection-{number}.jsonl", targeted))
    return failed


def flagged_by(mutant_name: str) -> set[str]:
    """The property IDs the catalogue says must flag this mutant."""
    return {p.id for p in PROPERTIES if mutant_name in p.mutants}


@pytest.mark.parametrize("mutant", list(EXPECTED), ids=lambda m: m.__name__)
def test_mutant_is_caught(mutant, failed_properties):
    missing = flagged_by(mutant.__name__) - failed_properties[mutant.__name__]
    assert not missing, (f"{mutant.__name__} ({mutant.__doc__.strip()}) was not flagged by {sorted(missing)}; "
                         f"flagged by {sorted(failed_properties[mutant.__name__])}")


@pytest.mark.skipif(not TORCH, reason="the mode mutants are torch backends")
@pytest.mark.parametrize("mutant", MODE_MUTANTS, ids=lambda m: m.__name__)
def test_mode_mutant_is_caught(mutant, tmp_path):
    """A backend broken in one execution mode only (tests/mode_mutants.py) is flagged, run in that mode."""
    from tests import mode_mutants
    failed = _failed_properties([mutant], mode_mutants.SELECTION[mutant], tmp_path / "rows.jsonl", targeted=True,
                                module="tests.mode_mutants", mode=mode_mutants.MODES[mutant])
    missing = flagged_by(mutant.__name__) - failed[mutant.__name__]
    assert not missing, (f"{mutant.__name__} ({mutant.__doc__.strip()}) was not flagged in mode "
                         f"{mode_mutants.MODES[mutant]} by {sorted(missing)}; "
                         f"flagged by {sorted(failed[mutant.__name__])}")


@pytest.mark.skipif(not TRITON, reason="the opcheck mutants are Triton backends")
@pytest.mark.parametrize("mutant", OPCHECK_MUTANTS)
def test_opcheck_mutant_is_caught(mutant, tmp_path):
    """A fused op with a wrong fake kernel (tests/opcheck_mutants.py) is flagged, its kernels interpreted."""
    from tests.opcheck_mutants import SELECTION
    selection = next(s for m, s in SELECTION.items() if m.__name__ == mutant)
    failed = _failed_properties([mutant], selection, tmp_path / "rows.jsonl", targeted=True,
                                module="tests.opcheck_mutants", extra_env={"TRITON_INTERPRET": "1"})
    missing = flagged_by(mutant) - failed[mutant]
    assert not missing, f"{mutant} was not flagged by {sorted(missing)}; flagged by {sorted(failed[mutant])}"


def test_every_property_has_a_mutant():
    """Each property of the catalogue is proven sensitive by at least one mutant: a new property without one
    fails here."""
    without = [p.id for p in PROPERTIES if not p.mutants]
    assert not without, f"properties without a mutant in conformance/catalogue.py: {without}; expected at least one"


def test_every_mutant_is_named_by_the_catalogue_and_every_named_mutant_exists():
    """EXPECTED is the catalogue's (catalogue.caught_by): a mutant no row names would prove nothing, and a row
    naming a mutant that no mutant file defines would be a claim never run."""
    mutants = list(EXPECTED) + list(MODE_MUTANTS)
    unnamed_opcheck = [name for name in OPCHECK_MUTANTS if not flagged_by(name)]
    assert not unnamed_opcheck, f"opcheck mutants no row of conformance/catalogue.py names: {unnamed_opcheck}"
    if importlib.util.find_spec("torch"):
        from tests.tp_mutants import EXPECTED as TP_EXPECTED
        mutants += list(TP_EXPECTED)
    unnamed = [m.__name__ for m in mutants if not catalogue.caught_by([m])[m]]
    assert not unnamed, f"mutants no row of conformance/catalogue.py names: {unnamed}; expected each under a property"
    if importlib.util.find_spec("torch"):
        unknown = {name for p in PROPERTIES for name in p.mutants} - {m.__name__ for m in mutants} - set(OPCHECK_MUTANTS)
        assert not unknown, f"conformance/catalogue.py names mutants that no mutant file defines: {sorted(unknown)}"
