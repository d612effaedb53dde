"""A public name's request defaults and limits, applied to the client's JSON body (pure)."""

from __future__ import annotations

import json
from typing import Any, Mapping

import orjson

from router.api.body import JsonRequest
from router.errors import RouterError
from router.upstream.names import Route

LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# The Responses and Messages APIs share only these sampling parameters with chat: a name's other
# defaults (presence_penalty, chat_template_kwargs, ...) are not theirs and are not sent there.
SAME_PARAMETERS = {
    "responses": frozenset({"temperature", "top_p"}),
    "messages": frozenset({"temperature", "top_p", "top_k"}),
    "count_tokens": frozenset(),
}


def merge_defaults(doc: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """DOC with DEFAULTS filling what the client left out; None when nothing was missing.

    Top-level keys the client sent win whole, except objects on both sides (such as
    `chat_template_kwargs`): those merge one level deep, the client's keys winning.
    """
    merged: dict[str, Any] | None = None
    for key, value in defaults.items():
        filled = _fill(doc.get(key, _ABSENT), value)
        if filled is not _UNCHANGED:
            merged = merged if merged is not None else dict(doc)
            merged[key] = filled
    return merged


_ABSENT, _UNCHANGED = object(), object()


def _fill(given: Any, default: Any) -> Any:
    if given is _ABSENT:
        return _copy(default)
    if isinstance(given, dict) and isinstance(default, dict):  # TOML tables load as dicts
        missing = {k: v for k, v in default.items() if k not in given}
        return {**given, **missing} if missing else _UNCHANGED
    return _UNCHANGED


def _copy(value: Any) -> Any:
    # Defaults are shared by every request: hand out copies of mutable values.
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def check_max_tokens(doc: Mapping[str, Any], limit: int | None, model: str) -> None:
    """A 400 naming the maximum when the body asks for more output tokens than LIMIT."""
    if limit is None:
        return
    for field in LIMIT_FIELDS:
        asked = doc.get(field)
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > limit:
            raise RouterError(
                400, f"{field} is too large: {asked}. The model {model!r} allows at most {limit} "
                f"output tokens; ask for {limit} or fewer.", param="max_tokens", code="max_tokens_too_large",
            )


def apply_route(body: bytes, doc: dict[str, Any], route: Route, endpoint: str = "chat") -> tuple[bytes, dict[str, Any]]:
    """The body and document the backend gets: defaults merged, `model` its served name.

    The client's bytes are kept when nothing changes; otherwise the merged document is
    serialized once. Raises the max_tokens 400 before anything is sent. ENDPOINT's API gets the
    defaults it has a parameter for (SAME_PARAMETERS; chat and completions get all).
    """
    defaults: Mapping[str, Any] = route.defaults
    if (same := SAME_PARAMETERS.get(endpoint)) is not None:
        defaults = {k: v for k, v in defaults.items() if k in same}
    merged = merge_defaults(doc, defaults)
    out = merged if merged is not None else doc
    check_max_tokens(out, route.max_tokens, route.name)
    if out.get("model") != route.served_name:
        out = out if merged is not None else dict(doc)
        out["model"] = route.served_name
    elif merged is None:
        return body, doc
    return _dumps(out), out


def _dumps(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # what orjson cannot write (integers past 64 bits) the slow path can
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def reservation(requested: int, route_max: int | None, cap: int) -> int:
    """Output tokens per choice to reserve for quotas: the request's max_tokens, else min(model limit, CAP).

    Every name has this rule: a name outside the catalog has no model limit, so it reserves CAP.
    """
    if requested:
        return requested
    return min(route_max, cap) if route_max is not None else cap


def choices(fields: JsonRequest, endpoint: str) -> int:
    """Sequences the backend generates: `n`, or `best_of` where more (vLLM honours it on completions)."""
    if endpoint == "completions":
        return max(fields.n, fields.best_of)
    return fields.n if endpoint == "chat" else 1
