"""resconf backends: the adapter API, the float64 oracle, and adapters for frameworks and kernels.

Importing this package imports no framework; `load_backend(name)` imports one on demand.
"""
from resconf.backends.base import DEVICES, Backend, Capabilities, DeviceUnavailable, FusedGrads, StackGrads, StackTrace
from resconf.backends.config import BlockConfig
from resconf.backends.params import BlockParams, draw_params
from resconf.backends.registry import BackendUnavailable, installed_builtins, load_backend

__all__ = ["DEVICES", "Backend", "BackendUnavailable", "BlockConfig", "DeviceUnavailable", "BlockParams", "Capabilities", "FusedGrads",
           "StackGrads", "StackTrace", "draw_params", "installed_builtins", "load_backend"]
