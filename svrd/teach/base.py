"""What every teacher backend shares: the unit of work and the error it raises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from svrd.errors import SvrdError


@dataclass(frozen=True)
class Job:
    """One candidate to generate: sample `sample` of problem `rec` (keyed by pid)."""

    pid: str
    sample: int
    rec: dict
    prompt: str


# Backends call deliver(job, text) once per job, as soon as its answer arrives; the runner
# commits it to the cache before anything else happens.
Deliver = Callable[[Job, str], None]


class TeacherError(SvrdError):
    """The teacher could not answer (request refused, retries spent): names the pid."""

    def __init__(self, pid: str | None, reason: str):
        self.pid = pid
        self.reason = reason
        super().__init__(f"teacher failed on pid {pid}: {reason}")
