"""Errors the user can act on: each carries one readable paragraph and never shows a traceback."""

from __future__ import annotations


class GenesisError(Exception):
    """An error caused by input or environment, reported to the user as one paragraph (exit 2)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ProfileError(GenesisError):
    """A profile that does not parse or does not validate."""


class DataError(GenesisError):
    """A data file that is missing, empty or malformed."""


class ModelError(GenesisError):
    """A model that cannot be loaded as the profile asks (missing weights, no device, no 4-bit support)."""


class RunDirError(GenesisError):
    """A run directory that is missing, incomplete or corrupt."""
