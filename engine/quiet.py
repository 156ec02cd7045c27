"""Third-party warnings that say nothing to a Genesis Lab user, silenced one by one: each filter
names its logger and the first words of its message, never a whole logger or a level.

Installed when ``engine`` is imported, so in every process the lab starts (the CLI, the TUI's
engine, each worker, each Ray actor) before anything imports bitsandbytes.
"""

from __future__ import annotations

import logging

# (logger, the message's first words)
SILENCED = (
    # bitsandbytes (0.50) on a CPU with AVX512-BF16 looks, as it is imported (PEFT imports it),
    # for an optional faster 4-bit CPU kernel on the Hugging Face Hub through the `kernels`
    # package; offline, or online without reaching the Hub ("Kernel repository
    # 'kernels-community/quantization-bitsandbytes' could not verify publisher trust status"), it
    # logs this and uses its own CPU code, so every process printed it at every start.
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
    ),
    # … and `kernels`, offline, says first that it skips that kernel's publisher check.
    (
        "kernels._internals.hf_hub",
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
    ),
)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.start))


def install() -> None:
    """Add the filters (once per process)."""
    for name, start in SILENCED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.start == start for f in logger.filters):
            logger.addFilter(_DropMessage(start))
