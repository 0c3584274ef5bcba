"""`python -m resconf`: the `resconf` command. This folder is the `resconf` package itself (pyproject.toml
maps it); with no __init__.py, `resconf` stays a namespace over resconf.backends, .conformance, .reports."""
import sys

from resconf.conformance.cli import main

sys.exit(main())
