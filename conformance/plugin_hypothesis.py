"""Hypothesis for the suite: its files under .resconf/, the chosen profile, --resconf-max-examples and
--resconf-shrink."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance import profiles
from resconf.conformance import recorder as recording
from resconf.conformance.home import HOME
from resconf.conformance.plugin_active import active


def pytest_configure(config: pytest.Config) -> None:
    if not active(config):
        return
    # Hypothesis' files (its constants cache, the nightly example database) go under .resconf/ in the folder
    # the user ran from, as all resconf writes; a user's own HYPOTHESIS_STORAGE_DIRECTORY wins for the cache.
    hypothesis_home = config.invocation_params.dir / HOME / "hypothesis"
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        set_hypothesis_home_dir(hypothesis_home)
    profiles.register(hypothesis_home / "examples")
    profile = config.getoption("--resconf-profile")
    settings.load_profile(profile)
    max_examples = config.getoption("--resconf-max-examples")
    if max_examples is not None:
        if max_examples < 1:
            raise pytest.UsageError(f"--max-examples must be at least 1, got {max_examples}")
        settings.register_profile("resconf-override", settings(settings.default, max_examples=max_examples))
        settings.load_profile("resconf-override")
    if config.getoption("--resconf-shrink"):
        settings.register_profile("resconf-shrink", profiles.shrinking(settings.default))
        settings.load_profile("resconf-shrink")
    hh.STRUCTURE_PER_EXAMPLE = profile in profiles.STRUCTURE_DRAWN
    recording.LAZY_BASELINE = profile != "calibrate"
