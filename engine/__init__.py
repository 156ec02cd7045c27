"""Genesis Lab's headless core: profiles, genetics, workers and the generation loop.

Never imports ``textual``: the same engine serves the TUI, headless runs and attached TUIs.
"""

__version__ = "0.1.0"
