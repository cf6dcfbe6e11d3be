"""Errors meant for users: each names the file, plugin or setting at fault and the fix.

The CLI prints an :class:`AnybindError` as one line (no traceback) and exits non-zero.
"""

from __future__ import annotations


class AnybindError(Exception):
    """Base class of every error the CLI reports without a traceback."""

    exit_code = 1


class PluginError(AnybindError):
    """A plugin is missing, broken, or conflicts with another one."""


class RegistryError(AnybindError):
    """registry.yaml is unreadable or malformed."""


class InputError(AnybindError):
    """A user's file or manifest row cannot be used; the message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(AnybindError):
    """A model directory is missing, incomplete, or of the wrong kind."""


class DecoderError(AnybindError):
    """A decoder directory, or the conditioning handed to it, does not fit."""


class TowerUnavailableWarning(UserWarning):
    """A bound model's tower whose modality plugin is not installed: the rest of the model works."""
