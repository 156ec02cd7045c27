"""Genesis Lab's headless core: profiles, genetics, workers and the generation loop.

Never imports ``textual``: the same engine serves the TUI, headless runs and attached TUIs.
"""

from engine import quiet as _quiet

__version__ = "0.1.0"

_quiet.install()
