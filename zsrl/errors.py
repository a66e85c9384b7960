"""The errors zsrl raises for bad input, each a :class:`UserError`.

The CLI prints a :class:`UserError` as one paragraph without a traceback and exits with
status 2 (:class:`Interrupted`: 128 + the signal). Every message says what is wrong and
what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (a path, a config, a dataset) or their machine."""


class StorageError(UserError):
    """A file that cannot be written or read (disk full, permissions, read-only disk)."""


class LockedError(UserError):
    """Another live process is writing the directory."""


class DatasetError(UserError):
    """A dataset directory that cannot be used."""


class CheckpointError(UserError):
    """A model or training checkpoint that cannot be loaded."""


class RegistryError(UserError, LookupError):
    """An agent or domain name that cannot be resolved."""


class UnknownTaskError(UserError, KeyError):
    """A task or goal name the domain does not define."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class TrainingDiverged(UserError):
    """A non-finite loss or parameter; the message names it and the step."""


class Interrupted(UserError):
    """Training stopped on request after saving a checkpoint; exits 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
