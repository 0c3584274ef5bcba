"""The pytest plugin: backend selection, profiles, expected failures and the results recorder.

Registered as a `pytest11` entry point, so it loads in every pytest session of an environment that has
resconf installed; it acts only when the session runs the suite (its folder or `--pyargs
resconf.conformance` among the arguments, or a `--resconf-backend` given). `resconf check` is a thin front over
this; `pytest --pyargs resconf.conformance --resconf-backend torch` works from any folder as well.

This module only names the plugin's parts, one job each; pytest registers each once, under its module name
(`pytest_plugins` of a registered plugin), so a hook defined there is never registered twice.
"""
pytest_plugins = (
    "resconf.conformance.plugin_options",  # the --resconf-* options
    "resconf.conformance.plugin_active",  # whether this session runs the suite; the markers
    "resconf.conformance.plugin_hypothesis",  # hypothesis' home, the profile, --resconf-max-examples
    "resconf.conformance.plugin_backends",  # loading the backends; the backend, subject, oracle fixtures
    "resconf.conformance.plugin_collection",  # backend and dtype parameters; JUnit properties
    "resconf.conformance.plugin_xfails",  # expected-failure entries applied, stale ones refused
    "resconf.conformance.plugin_worker",  # resconf check's worker: its shard, its events for the guard
    "resconf.conformance.plugin_rows",  # one result row per case
    "resconf.conformance.plugin_timeout",  # the per-test timer, raising what hypothesis lets through
    "resconf.conformance.plugin_phases",  # RESCONF_PHASE_TIMES: where a worker's time goes (docs/scaling.md)
)
