"""Polling for a condition in tests, with a failure that says what never happened."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.1) -> T:
    """CHECK's first truthy value within TIMEOUT_S, else fail naming WHAT."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
