"""The registry finds backends by name and imports no framework until one is asked for."""
from __future__ import annotations

import subprocess
import sys

import pytest

from resconf.backends.base import DeviceUnavailable
from resconf.backends.registry import BackendUnavailable, load_backend


def test_importing_backends_imports_no_framework():
    code = ("import sys, resconf.backends, resconf.backends.registry, resconf.conformance.check; "
            "print(sorted(m for m in ('torch', 'jax', 'triton', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing backends pulled in {out.strip()}"


def test_unknown_backend_names_the_installed_ones():
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'nosuch'; installed: numpy"):
        load_backend("nosuch")


def test_bad_module_path_says_what_failed():
    with pytest.raises(BackendUnavailable, match="cannot import 'no_such_module'"):
        load_backend("no_such_module:Backend")
    with pytest.raises(BackendUnavailable, match="has no attribute 'Nope'"):
        load_backend("resconf.backends.oracle.numpy_ref:Nope")


def test_device_not_offered_is_a_clear_error():
    with pytest.raises(DeviceUnavailable, match="backend 'numpy' runs on cpu, not on cuda"):
        load_backend("numpy", device="cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'; expected one of cpu, cuda"):
        load_backend("numpy", device="tpu")
