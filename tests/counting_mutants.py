"""A mutant that counts its calls (RESCONF_TEST_CALLS: a file it appends a line to per stack_forward), so a test
can see how often a failing case ran: once per example and once to report it when failing fast, many times more
while shrinking (tests/test_fail_fast.py)."""
from __future__ import annotations

import os

from tests.mutants import SkipDropped


class CountingSkipDropped(SkipDropped):
    def _stack_forward(self, cfg, params, x, dtype):
        with open(os.environ["RESCONF_TEST_CALLS"], "a") as f:
            f.write("call\n")
        return super()._stack_forward(cfg, params, x, dtype)
