"""Two gaps of Triton 3.9's interpreter (TRITON_INTERPRET=1) that stop Liger-Kernel's kernels from running
on the CPU, bridged only while a call into Liger runs. Nothing here changes Liger's code, or what its kernels
compute when Triton compiles them for a GPU: each bridge makes the interpreter do what the compiler does.

1. Float arguments. Compiled Triton types a Python float argument as an fp32 scalar
   (triton.runtime.jit.mangle_type(1e-5) == "fp32"); the interpreter's `_implicit_cvt` wraps int and bool
   arguments as scalar tl.tensors but passes a float through as a Python float, so a kernel that treats it
   as a tensor (Liger: `eps.to(tl.float32)`, `offset.to(tl.float32)`) raises
   AttributeError("'float' object has no attribute 'to'"). Bridge: a float becomes an fp32 scalar tensor.
2. libdevice stubs. `from triton.language.extra.libdevice import rsqrt` binds a stub whose body is `...`;
   the compiler resolves it to the target's libdevice (`__nv_rsqrtf` on CUDA), the interpreter calls it as
   Python: it returns None, and the None surfaces one line later as TypeError("cannot convert None of type
   <class 'NoneType'> to tensor") at the tl.store of the result (triton-lang/triton#8825). Bridge: while
   the context is active, a stub bound in the kernel module's globals points at tl.math's function of the
   same name, which the interpreter implements with NumPy (rsqrt: 1 / sqrt in float32).

Not bridged (so the `liger` backend claims no bfloat16 on the CPU): the interpreter stores bfloat16 as
uint16 and applies NumPy's arithmetic to the storage, so bf16 + bf16 adds bit patterns (1 + 2^-8 gives
6.6e35), and its float32 -> bfloat16 cast truncates instead of rounding to nearest even. Emulating bfloat16
arithmetic would put our code, not Liger's, under test.

A third precondition is not a gap we can bridge per call: triton.jit decides interpret-or-compile when a
function is decorated, so TRITON_INTERPRET=1 must be set before `triton` itself is imported, or Triton's
own jitted helpers that Liger calls (tl.sum) are compiled ones, which an interpreted kernel cannot call
(RuntimeError "Cannot call @triton.jit'd outside of the scope of a kernel"). `check_interpreted` says so.
"""
from __future__ import annotations

import contextlib
import os
from types import ModuleType
from typing import Iterator

import numpy as np
import triton.language as tl
from triton.runtime import interpreter
from triton.runtime.interpreter import InterpretedFunction

LIBDEVICE_STUBS = "triton.language.extra.libdevice"


def active() -> bool:
    """Whether this process interprets Triton kernels (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_interpreted(kernel, who: str) -> None:
    """ValueError with the fix unless `kernel` and Triton's own helpers (tl.sum) are both interpreted."""
    if not active():
        raise ValueError(f"{who} on device 'cpu' runs Triton's interpreter: set TRITON_INTERPRET=1 in the environment "
                         f"before triton is first imported, or use device 'cuda'")
    if not isinstance(kernel, InterpretedFunction) or not isinstance(tl.sum, InterpretedFunction):
        raise ValueError(f"{who} on device 'cpu': TRITON_INTERPRET=1 is set, but triton (or liger_kernel) was "
                         f"imported before it was, so their kernels are compiled ones that the interpreter cannot "
                         f"call; set TRITON_INTERPRET=1 in the environment before the process starts")


def _float_as_fp32(convert):
    def implicit_cvt(arg):
        if isinstance(arg, float):  # bool and int are wrapped by `convert` itself
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return convert(arg)
    implicit_cvt.bridged = True
    return implicit_cvt


def _math(name: str):
    """tl.math.<name> looked up at call time: inside a kernel run the interpreter has patched it there."""
    def call(*args, **kwargs):
        return getattr(tl.math, name)(*args, **kwargs)
    call.__name__ = name
    return call


@contextlib.contextmanager
def bridged(*kernel_modules: ModuleType) -> Iterator[None]:
    """Run Liger's kernels defined in `kernel_modules` under the interpreter (see the module docstring);
    everything patched is put back on exit. A no-op when the interpreter is not active."""
    if not active() or getattr(interpreter._implicit_cvt, "bridged", False):
        yield
        return
    saved = [(interpreter, "_implicit_cvt", interpreter._implicit_cvt)]
    for module in kernel_modules:
        for name, value in list(vars(module).items()):
            if callable(value) and getattr(value, "__module__", "") == LIBDEVICE_STUBS:
                replacement = getattr(tl.math, name, None)
                if replacement is None:
                    raise NotImplementedError(f"{module.__name__}.{name}: a libdevice function that Triton's "
                                              f"interpreter has no tl.math counterpart for")
                saved.append((module, name, value))
    try:
        interpreter._implicit_cvt = _float_as_fp32(interpreter._implicit_cvt)
        for module, name, _ in saved[1:]:
            setattr(module, name, _math(name))
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
