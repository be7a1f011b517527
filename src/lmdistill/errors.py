"""Errors a user can fix. The CLI prints them as one line each (no traceback) and exits with code 2."""

from __future__ import annotations


class LmdistillError(ValueError):
    """Bad input: the message names the key, file, column or shape, and what to do."""


class ConfigError(LmdistillError):
    """One or more config problems; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class DataError(LmdistillError):
    """A data file, column, label or split that cannot be used."""


class ModelError(LmdistillError):
    """A model path, architecture or layer choice that cannot be used."""


class ExportError(LmdistillError):
    """A model folder, architecture, output folder or int8 runtime that cannot be used for export."""
