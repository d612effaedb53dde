"""Usage values from backends, checked where they enter: counts within bounds, or rejected.

A backend's usage is untrusted input: a string, a list, a negative or a 1e308 count would credit a
key, break the client's answer or poison the ledger. A rejected usage carries its reason and is
charged as the request's reservation (router.accounting.metered), never as the backend's number.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from router.accounting.seam import Usage

log = logging.getLogger(__name__)

# Far above any context window, yet small enough that a day of sums stays exact in every column.
MAX_REQUEST_TOKENS = 10**9  # per count (prompt, completion, reasoning) and request
MAX_AUDIO_SECONDS = 3 * 86400.0  # three days of audio in one request
SHOWN_CHARS = 60  # of a rejected value, in the reason
WARNED_BACKENDS = 1024  # backends remembered as warned about (then all forgotten at once)


def rejected(reason: str) -> Usage:
    """A usage that could not be trusted: no counts, charged as the reservation."""
    return Usage(estimated=True, rejected=reason)


def token_usage(usage: dict[str, Any]) -> Usage:
    """Usage from a parsed token `usage` object; a missing or null count is 0."""
    if "prompt_tokens" not in usage and "completion_tokens" not in usage:
        if "input_tokens" in usage or "output_tokens" in usage:
            usage = _renamed(usage)
        elif "total_tokens" in usage:
            usage = {"prompt_tokens": usage["total_tokens"]}  # rerank answers count input tokens only
    details = usage.get("completion_tokens_details")
    if details is not None and not isinstance(details, dict):
        return rejected(f"completion_tokens_details={_show(details)}")
    values = (("prompt_tokens", usage.get("prompt_tokens")),
              ("completion_tokens", usage.get("completion_tokens")),
              ("reasoning_tokens", details.get("reasoning_tokens") if details else None))
    counts = []
    for name, value in values:
        count = _count(value)
        if count is None:
            return rejected(f"{name}={_show(value)}")
        counts.append(count)
    return Usage(prompt_tokens=counts[0], completion_tokens=counts[1], reasoning_tokens=counts[2])


def _renamed(usage: dict[str, Any]) -> dict[str, Any]:
    """The Responses API's and Anthropic's names in chat's: input is prompt, output is completion.

    Anthropic counts cached input apart (cache_creation_input_tokens, cache_read_input_tokens):
    it is input all the same. A bad part stays as it is, so that the check below names it.
    """
    parts = [usage.get(name) for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
    counts = [_count(part) for part in parts]
    prompt = sum(c for c in counts if c is not None) if None not in counts else parts[counts.index(None)]
    return {"prompt_tokens": prompt, "completion_tokens": usage.get("output_tokens"),
            "completion_tokens_details": usage.get("output_tokens_details")}


def audio_usage(seconds: Any, name: str = "seconds") -> Usage:
    """Usage of SECONDS of audio (null counts as 0); rejected unless a number within bounds."""
    if seconds is None:
        return Usage()
    if _number(seconds) and 0 <= seconds <= MAX_AUDIO_SECONDS:
        return Usage(audio_seconds=float(seconds))
    return rejected(f"{name}={_show(seconds)}")


class RejectionLog:
    """Logs a rejected usage once per backend: a broken server would otherwise log every request."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def note(self, usage: Usage, backend_url: str, model: str) -> None:
        """Warn about USAGE if it was rejected and BACKEND_URL has not been warned about yet."""
        if not usage.rejected or backend_url in self._warned:
            return
        if len(self._warned) >= WARNED_BACKENDS:
            self._warned.clear()
        self._warned.add(backend_url)
        log.warning("backend %s (model %s) reported invalid usage (%s); such requests are charged their "
                    "reservation instead; further invalid usage from this backend is not logged",
                    backend_url, model, usage.rejected)


def _count(value: Any) -> int | None:
    """VALUE as a token count (null is 0), or None when it is no whole number within bounds."""
    if value is None:
        return 0
    if not _number(value) or not 0 <= value <= MAX_REQUEST_TOKENS or value != int(value):
        return None
    return int(value)


def _number(value: Any) -> bool:
    # JSON true/false are Python ints; NaN and infinities are no quantity.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"
