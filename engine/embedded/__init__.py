"""The embedded default: two tiny Llama checkpoints and a synthetic clinical corpus shipped in ``assets/``.

Everything under ``assets/`` is produced by ``python -m engine.embedded.build`` (deterministic from
``--seed``); nothing there is edited by hand.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
STUDENT_DIR = ASSETS_DIR / "models" / "student"
TEACHER_DIR = ASSETS_DIR / "models" / "teacher"
DATA_DIR = ASSETS_DIR / "data"
BUILD_INFO = ASSETS_DIR / "BUILD_INFO.json"

__all__ = ["ASSETS_DIR", "BUILD_INFO", "DATA_DIR", "STUDENT_DIR", "TEACHER_DIR"]
