"""resconf backends: the adapter API, the float64 oracle, and adapters for frameworks and kernels.

Importing this package imports no framework; `load_backend(name)` imports one on demand.
"""
from resconf.backends.base import DEVICES, Backend, Capabilities, DeviceUnavailable, FusedGrads, StackGrads, StackTrace
from resconf.backends.config import FEATURES, BlockConfig
from resconf.backends.dtypes import DTYPES, claims
from resconf.backends.params import BlockParams, LayerParams, check_params, draw_params, layer_shapes
from resconf.backends.registry import BackendUnavailable, installed_builtins, load_backend

__all__ = ["DEVICES", "DTYPES", "FEATURES", "Backend", "BackendUnavailable", "BlockConfig", "BlockParams",
           "Capabilities", "DeviceUnavailable", "FusedGrads", "LayerParams", "StackGrads", "StackTrace", "check_params",
           "claims", "draw_params", "installed_builtins", "layer_shapes", "load_backend"]
