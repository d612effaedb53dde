"""Polling for a condition in tests, with a failure that says what never happened."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.1) -> Any:
    """CHECK's first truthy value within TIMEOUT_S, else fail naming WHAT."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
