"""User-facing errors. Each carries the process exit code the CLI maps it to."""

from __future__ import annotations


class CausalClipError(Exception):
    """Base class: a problem the user can fix, reported in one clear message (no traceback)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class UsageError(CausalClipError):
    """Bad command-line values (ranges, formats, combinations)."""


class BackboneError(CausalClipError):
    """A backbone spec could not be resolved to weights."""


class CheckpointError(CausalClipError):
    """A checkpoint is missing, unreadable, or does not fit the backbone."""


class DataError(CausalClipError):
    """A dataset tree or manifest could not be understood."""


class ImageError(CausalClipError):
    """One image could not be decoded. Never fatal for a scan: it becomes an error record."""
