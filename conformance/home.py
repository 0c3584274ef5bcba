"""Where resconf writes in the folder it runs from: one dot-folder, `.resconf/` (results, summaries, logs,
reports, durations, Hypothesis' files). A dot-folder, as .pytest_cache, so that a flat-layout project's
`pip install -e .` never takes it for a package."""
from pathlib import Path

HOME = Path(".resconf")
