"""Loads the resconf plugin when pytest is pointed at this folder (`pytest conformance --backend torch`)."""
from conformance.plugin import *  # noqa: F401,F403  (pytest discovers hooks and fixtures by name)
