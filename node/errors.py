"""API errors: `{"error_code": 40401, "message": "..."}` with the HTTP status in the first three digits.

| code  | meaning |
| ----- | ------- |
| 40001 | malformed request (bad JSON, bad query parameter) |
| 40401 | unknown topic |
| 40402 | unknown partition |
| 40403 | not leader or not available (retriable: refresh metadata) |
| 40404 | unknown path |
| 40405 | unknown group member (removed, or the coordinator moved): join again |
| 40406 | unknown group (no members and no committed offsets) |
| 40501 | method not allowed |
| 40601 | unsupported Accept type |
| 40901 | already exists |
| 40902 | invalid producer epoch (fenced) |
| 40906 | stale member epoch (fenced): join again |
| 40907 | group not empty (delete, offset reset, or a commit without a member) |
| 40908 | not the partition's owner in the group (commit) |
| 41301 | request too large (body over max_request_bytes, batch over max.message.bytes) |
| 41501 | unsupported Content-Type |
| 41601 | offset out of range (the body carries the valid range) |
| 42201 | invalid request (a field with a wrong type or value; the message names it) |
| 42202 | corrupt record batch (checksum mismatch) |
| 42203 | out-of-order sequence (idempotent producer) |
| 42204 | unknown producer id (no state for the producer here and the batch does not start at sequence 0) |
| 50001 | internal error |
| 50002 | storage error (the log could not be read or written) |
| 50301 | not enough replicas (retriable) |
| 50302 | node not ready (retriable) |
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, error_code: int, message: str, **extra: Any):
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.extra = extra

    @property
    def status(self) -> int:
        return self.error_code // 100

    def body(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message, **self.extra}


def refuse_unknown_fields(fields, allowed, subject: str | None = None) -> None:
    """ApiError 42201 naming the fields of `fields` that are not `allowed` (`subject`: whose they are)."""
    unknown = set(fields) - set(allowed)
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ApiError(
            42201, f"{subject} has unknown field(s): {names}" if subject else f"unknown field(s): {names}"
        )
