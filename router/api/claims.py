"""What a server sends to `/internal/register` and `/internal/deregister`, parsed, and a refusal."""

from __future__ import annotations

import json
from dataclasses import dataclass


class Refused(Exception):
    """A registration that is refused: HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Claim:
    """What a server sends: who it is, where it listens, and its proof."""

    token: str
    url: str = ""
    deployment_id: int | None = None
    job_id: str | None = None  # the Slurm job it runs in (a launcher job's, or a user's own)
    node: str | None = None
    model: str | None = None
    kind: str = "chat"
    secret: str | None = None
    reason: str | None = None
    owner: str | None = None  # the user whose job runs a server registered with an admin-issued token

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


def parse_claim(body: bytes) -> Claim:
    """The claim in a request body; Refused when it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(400, "body must be JSON", "invalid_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data["token"]:
        raise Refused(401, "a registration token is required", "invalid_token")
    fields = {k: data[k] for k in Claim.__dataclass_fields__ if data.get(k) is not None}
    if "deployment_id" in fields:
        fields["deployment_id"] = _whole(fields["deployment_id"])
    if "job_id" in fields:
        fields["job_id"] = str(fields["job_id"])
    if not all(isinstance(v, str) for k, v in fields.items() if k != "deployment_id"):
        raise Refused(400, "registration fields must be strings", "invalid_request")
    return Claim(**fields)


def _whole(value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    # Bounded to SQLite's 64-bit INTEGER: a larger id names no row, and would crash the lookup.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    raise Refused(400, "deployment_id must be a whole number", "invalid_request")
