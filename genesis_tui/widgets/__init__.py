"""The TUI's widgets, one per file; each pane takes engine events through ``apply(events)``."""
