"""asv plugin (asv.conf.json "plugins"): an `existing` environment (`--python=same`, `--environment
existing:same`) is named by its Python version, `existing-py3.11`, where asv names it by the interpreter's
path (`existing-py_work_main_.venv_bin_python`). Results files are `<commit>-<environment>.json` and asv
compares and plots by environment name, so a path in it split one machine's history by checkout folder and
kept two machines' results apart. asv has no setting for this name; this replaces its property.
"""
from __future__ import annotations

from functools import lru_cache

from asv import environment, util


@lru_cache(maxsize=None)
def _python_version(executable: str) -> str:
    return util.check_output([executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).strip()


def _name(self) -> str:
    return environment.get_env_name(self.tool_name, _python_version(self._executable), {}, self._tagged_env_vars)


environment.ExistingEnvironment.name = property(_name)
