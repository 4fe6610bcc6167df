"""Errors that name the record and the field, so a user can find the bad input at once."""

from __future__ import annotations


class SvrdError(Exception):
    """Base class for errors the pipeline reports to users (no traceback needed)."""


class RecordError(SvrdError):
    """A record failed validation: names the pid and the field."""

    def __init__(self, pid: str | None, field: str, reason: str):
        self.pid = pid
        self.field = field
        self.reason = reason
        super().__init__(f"pid {pid}: field '{field}': {reason}")

    def as_reject(self) -> dict:
        return {"pid": self.pid, "field": self.field, "reason": self.reason}


class LeakageError(SvrdError):
    """A test pid reached a stage that must never see it."""
