"""The references of a drawn case, computed once: the oracle's result and the baseline's draws depend on
the case (configuration, parameters, inputs, dtype), not on the backend under test. Every backend, part
and later run that draws the same case reads them back instead of computing them again.

Content-addressed: a call's key is a digest of its method and arguments (their bytes, not their names),
under a digest of the code that computes a reference (the oracle, the baseline, the Backend API they run
on) and the numerical libraries' versions, so an edit of the oracle or a new NumPy starts afresh; an edit of
a property or an adapter changes only which calls are made, and their keys say so. Files are written whole
and then renamed into place, so workers sharing the folder never read a partial entry; a damaged entry is
computed again. Results come back bitwise equal (pickled float64 arrays), so the verdicts are those of an
uncached run. Pickles: share the folder only between runs you trust, as JAX's compile cache (executables).

    oracle = Cached(load_backend("numpy"), "oracle", store)     # store: a Store, or None for no cache
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import platform
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

SUITE_ROOT = Path(__file__).resolve().parents[1]  # backends/ and conformance/ beside each other
# What computes a reference: the oracle and its controls, the Backend API and its records, the baseline's draws,
# the theory bands computed from the oracle's stream (GR-3 on the presets).
REFERENCE_CODE = ("backends/oracle/*.py", "backends/*.py", "conformance/baseline.py", "conformance/reference_cache.py",
                  "conformance/stream_theory.py", "conformance/gradient_band.py")
# Digest folders kept, this one included: a numpy + torch + jax ci run stores about 200 MB, so an older
# version's entries (which can never hit again) are removed, bar one (a user switching between two checkouts).
KEEP_VERSIONS = 2


class Uncacheable(TypeError):
    """An argument with no canonical bytes: the call is computed, not cached."""


def canonical(value: Any, out: list[bytes]) -> None:
    """Append bytes that determine `value` exactly: equal bytes, equal arguments."""
    if value is None or isinstance(value, (bool, int, float, str)):
        out.append(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(value)
        out.append(f"array:{a.dtype.str}:{a.shape};".encode())
        out.append(a.tobytes())
    elif isinstance(value, (tuple, list)):
        out.append(f"{type(value).__name__}:{len(value)};".encode())
        for item in value:
            canonical(item, out)
    elif isinstance(value, Mapping):
        items = list(value.items())
        out.append(f"dict:{len(items)};".encode())
        for key, item in items:
            canonical(key, out)
            canonical(item, out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out.append(f"{type(value).__module__}.{type(value).__qualname__};".encode())
        for field in dataclasses.fields(value):
            canonical(getattr(value, field.name), out)
    else:
        raise Uncacheable(f"{type(value).__name__} has no canonical bytes")


def suite_digest() -> str:
    """The code that computes a reference (REFERENCE_CODE) and the versions its maths runs on."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("numpy", "ml_dtypes"):
        try:
            h.update(f"{name}={version(name)};".encode())
        except PackageNotFoundError:
            h.update(f"{name}=-;".encode())
    h.update(f"python={platform.python_version()};machine={platform.machine()};".encode())
    for path in sorted(p for pattern in REFERENCE_CODE for p in SUITE_ROOT.glob(pattern)):
        h.update(str(path.relative_to(SUITE_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class Store:
    """One folder of entries, `<root>/<suite digest>/<key[:2]>/<key>.pkl`."""

    def __init__(self, root: Path) -> None:
        self.folder = root / suite_digest()
        self.hits = self.misses = 0
        if not self.folder.exists():
            _prune(root, keep=KEEP_VERSIONS - 1)

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        path = self.folder / key[:2] / f"{key}.pkl"
        try:
            value = pickle.loads(path.read_bytes())
            self.hits += 1
            return value
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001  a damaged entry (a full disk, a killed writer's leftover): recompute
            pass
        self.misses += 1
        value = compute()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(tmp, path)  # atomic: a reader sees the whole entry or none
        except OSError:  # a cache that cannot be written costs time, never a result
            tmp.unlink(missing_ok=True)
        return value


def _prune(root: Path, keep: int) -> None:
    """Leave the `keep` most recently used digests' folders (this one is made next); the older ones' entries can
    never hit again."""
    if not root.is_dir():
        return
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def call_key(role: str, method: str, args: tuple, kwargs: dict) -> str:
    parts: list[bytes] = [f"{role}.{method};".encode()]
    canonical((args, dict(sorted(kwargs.items()))), parts)
    return hashlib.blake2b(b"".join(parts), digest_size=20).hexdigest()


def cached_call(store: Store | None, role: str, method: str, compute: Callable[[], Any], args: tuple,
                kwargs: dict) -> Any:
    """compute(), or the result an earlier identical call stored."""
    if store is None:
        return compute()
    try:
        key = call_key(role, method, args, kwargs)
    except Uncacheable:
        return compute()
    return store.get_or_compute(key, compute)


API = frozenset({"stack_forward", "stack_vjp", "tp_stack_forward", "tp_stack_vjp", "fused_add_norm",
                 "fused_add_norm_vjp"})  # the Backend methods that compute; anything else passes through


class Cached:
    """`target` (the oracle) with every Backend API call answered from `store` when it was made before."""

    def __init__(self, target: Any, role: str, store: Store | None) -> None:
        self._target, self._role, self._store = target, role, store

    def __getattr__(self, attr: str):
        value = getattr(self._target, attr)
        if attr not in API:
            return value
        return lambda *args, **kwargs: cached_call(self._store, self._role, attr, lambda: value(*args, **kwargs),
                                                   args, kwargs)

    def __repr__(self) -> str:
        return repr(self._target)
