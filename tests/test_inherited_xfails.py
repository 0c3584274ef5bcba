"""An adapter that wraps a framework (`inherits_xfails = "torch"`) gets that framework's reasoned expected
failures (conformance/xfails/torch.toml): each still an expected failure with its reason, marked inherited,
not strict (the adapter may not hit the deviation) and never stale (it may not claim the feature)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from resconf.backends.oracle.numpy_ref import NumpyReference
from resconf.conformance import plugin_rows, plugin_xfails, xfails
from resconf.conformance.plugin_active import ACTIVE

TORCH_FILE = xfails.parse(xfails.BUILTIN_DIR / "torch.toml", backend="torch")
# torch's bfloat16 layernorm-backward deviation: the entry a torch-based adapter had to copy by hand
LAYERNORM_BACKWARD = next(e for e in TORCH_FILE if e.property == "XB-2" and e.dtype == "bfloat16")


class TorchWrapper(NumpyReference):
    name = "torch_wrapper"
    inherits_xfails = "torch"


class OwnKernels(NumpyReference):
    name = "own_kernels"


class Item:
    """What xfails.apply reads of a collected case, and the markers it gets."""

    def __init__(self, backend: str, prop: str, test: str, **params: str) -> None:
        self.name = f"{test}[{backend}]"
        self.callspec = SimpleNamespace(params={"backend_name": backend, **params})
        self.prop, self.markers = prop, []

    def get_closest_marker(self, name: str):
        return SimpleNamespace(args=(self.prop,)) if name == "property" else None

    def add_marker(self, marker) -> None:
        self.markers.append(marker)


def layernorm_backward_case(backend: str) -> Item:
    return Item(backend, "XB-2", LAYERNORM_BACKWARD.test, dtype="bfloat16", norm="layernorm")


def collect(monkeypatch, *backends) -> list[Item]:
    """The plugin's collection hook over one layernorm-backward case per backend, the backends loaded."""
    monkeypatch.setattr(plugin_xfails, "LOADED", {b.name: b() for b in backends})
    monkeypatch.setattr(plugin_xfails, "NAME_OF", {f"tests:{b.__name__}": b.name for b in backends})
    config = SimpleNamespace(stash=pytest.Stash(), getoption=lambda name: {
        "--resconf-skip-xfails": False, "keyword": "", "markexpr": "", "--resconf-xfails": [],
        "--resconf-mode": []}[name])
    config.stash[ACTIVE] = True
    items = [layernorm_backward_case(b.name) for b in backends]
    plugin_xfails.pytest_collection_modifyitems(None, config, items)  # no stale-entry error: none are strict
    return items


def test_an_adapter_that_wraps_torch_gets_torchs_entries_marked_inherited(monkeypatch):
    [item] = collect(monkeypatch, TorchWrapper)
    [marker] = item.markers
    assert marker.kwargs == {"reason": f"inherited from torch: {LAYERNORM_BACKWARD.reason}", "strict": False}


def test_an_adapter_without_it_gets_none(monkeypatch):
    wrapper, own = collect(monkeypatch, TorchWrapper, OwnKernels)
    assert len(wrapper.markers) == 1 and own.markers == []


def test_every_torch_entry_is_inherited_by_name_and_none_is_stale():
    entries = xfails.for_session({"pkg:TorchWrapper": "torch_wrapper"}, [], {"torch_wrapper": "torch"})
    assert [(e.property, e.test, e.dtype, e.config) for e in entries] == [
        (e.property, e.test, e.dtype, e.config) for e in TORCH_FILE]
    assert {e.backend for e in entries} == {"torch_wrapper"} and not any(e.strict for e in entries)
    unmatched = xfails.apply(entries, [], lambda i: i.callspec.params, lambda i: i.prop, lambda n: frozenset({n}))
    assert unmatched == []  # an adapter may claim none of torch's deviating features


def test_its_own_entries_stay_strict_and_come_first(tmp_path):
    own = tmp_path / "mine.toml"
    own.write_text(f'[[xfail]]\nproperty = "XB-2"\ntest = "{LAYERNORM_BACKWARD.test}"\nreason = "mine"\n')
    entries = xfails.for_session({"torch_wrapper": "torch_wrapper"}, [own], {"torch_wrapper": "torch"})
    assert entries[0].reason == "mine" and entries[0].strict
    item = layernorm_backward_case("torch_wrapper")
    xfails.apply(entries, [item], lambda i: i.callspec.params, lambda i: i.prop, lambda n: frozenset({n}))
    assert [m.kwargs for m in item.markers] == [{"reason": "mine", "strict": True}]


def test_a_framework_without_a_file_is_one_line_naming_the_choices():
    with pytest.raises(pytest.UsageError, match=r"^backend 'w': inherits_xfails = 'tensorflow' names no "
                                                r"built-in expected-failure file; expected one of: .*\btorch\b"):
        xfails.for_session({"w": "w"}, [], {"w": "tensorflow"})


def report(outcome: str, reason: str) -> SimpleNamespace:
    """pytest's report of a case under a non-strict xfail: skipped when it failed, passed when it passed."""
    return SimpleNamespace(outcome=outcome, skipped=outcome == "skipped", failed=False, wasxfail=reason,
                           longrepr=None)


@pytest.mark.parametrize("outcome, reason, row_outcome, message", [
    ("skipped", "inherited from torch: r", "xfailed", "expected failure: inherited from torch: r"),
    ("passed", "inherited from torch: r", "passed",
     "passed; this inherited expected failure did not occur: inherited from torch: r"),
    # a non-strict entry of its own (a deviation some draws or machines show): a pass is allowed, said so
    ("passed", "mine", "passed", "passed; this expected failure is not strict and did not occur here: mine"),
])
def test_an_inherited_entry_that_does_not_occur_is_a_pass_not_an_unexpected_result(outcome, reason, row_outcome,
                                                                                      message):
    assert plugin_rows._outcome(report(outcome, reason)) == row_outcome
    assert plugin_rows._first_line(report(outcome, reason)) == message
