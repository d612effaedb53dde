"""The hop marker: every upstream request names the routers it passed, so a loop is refused.

A router adds its instance id to `x-llm-launch-hop` on each request it forwards and refuses (508)
a request whose marker already holds its own id: a backend registered at the router's own
address, or routers that forward to each other in a circle. Only well-formed router ids count,
so no header a client sends by chance can trigger the refusal, and ids a client invents are
dropped rather than forwarded. Routers in front of each other are not a supported topology; a
chain of them still works, and MAX_HOPS bounds it.
"""

from __future__ import annotations

import os
import re

from aiohttp import web
from multidict import CIMultiDictProxy

HOP = "x-llm-launch-hop"
HOP_ID = web.AppKey("llm_launch_hop_id", str)  # this router's id, set by create_app
MAX_HOPS = 8
_ID = re.compile(r"llmr-[0-9a-f]{16}")


def new_hop_id() -> str:
    """A random id for one router process."""
    return "llmr-" + os.urandom(8).hex()


def hops(headers: CIMultiDictProxy[str]) -> list[str]:
    """The router ids in the request's hop markers, in order; anything else is ignored."""
    found: list[str] = []
    for value in headers.getall(HOP, ()):
        found.extend(part.strip() for part in value.split(",") if _ID.fullmatch(part.strip()))
    return found


def looped(headers: CIMultiDictProxy[str], own: str) -> bool:
    """True when the request already passed this router, or too many routers."""
    if HOP not in headers:
        return False
    seen = hops(headers)
    return own in seen or len(seen) >= MAX_HOPS


def outgoing(headers: CIMultiDictProxy[str], own: str) -> str:
    """The marker for the upstream request: the routers passed so far, then this one."""
    if HOP not in headers:
        return own
    return ", ".join([*hops(headers), own])
