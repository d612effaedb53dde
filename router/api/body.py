"""Reading what the client sent: only as much parsing as routing needs, bytes kept otherwise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from router.errors import RouterError

INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


@dataclass(frozen=True)
class JsonRequest:
    """The fields of a JSON body the router acts on."""

    model: str
    stream: bool
    client_wants_usage: bool
    max_tokens: int
    n: int = 1  # choices asked for
    best_of: int = 1  # sequences generated per prompt (completions); 1 when absent


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 in the envelope."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = _parse_slow(body)  # orjson refuses some valid JSON, e.g. integers past 64 bits
    if not isinstance(doc, dict):
        raise RouterError(400, "The request body must be a JSON object", code="invalid_json")
    return doc


def _parse_slow(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RouterError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # nesting deeper than both parsers go: refuse it, do not crash
        raise RouterError(400, "The request body is nested too deeply", code="invalid_json") from None


def inspect(doc: dict[str, Any]) -> JsonRequest:
    """The routing fields of DOC; a missing or empty model is a 400."""
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise RouterError(400, "You must provide a model parameter", param="model", code="missing_model")
    options = doc.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    asked = doc.get("max_completion_tokens", doc.get("max_tokens", doc.get("max_output_tokens")))
    max_tokens = _positive(asked, 0)  # max_output_tokens: the Responses API's name
    return JsonRequest(model, doc.get("stream") is True, wants_usage, max_tokens,
                       _positive(doc.get("n"), 1), _positive(doc.get("best_of"), 1))


def _positive(value: Any, otherwise: int) -> int:
    # Anything but a positive integer is the backend's to refuse; the router assumes OTHERWISE.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else otherwise


def with_include_usage(body: bytes, doc: dict[str, Any]) -> bytes:
    """BODY asking the backend for the usage chunk; spliced in when possible, so nothing else moves."""
    if "stream_options" not in doc:
        brace = body.find(b"{")
        return body[:brace + 1] + INCLUDE_USAGE + body[brace + 1:]
    options = doc["stream_options"]
    changed = {**doc, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
    return orjson.dumps(changed)


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """The value of text field NAME in a multipart/form-data BODY, without copying the file parts."""
    span = form_part(body, content_type, name)
    return body[span[0]:span[1]].decode("utf-8", "replace").strip() if span is not None else None


def form_part(body: bytes, content_type: str, name: str) -> tuple[int, int] | None:
    """Where the content of part NAME of a multipart/form-data BODY starts and ends; None if absent."""
    boundary = _boundary(content_type)
    if boundary is None:
        return None
    delimiter = b"--" + boundary
    wanted = f'name="{name}"'.encode()
    start = body.find(delimiter)
    while start >= 0:
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0:
            return None
        end = body.find(b"\r\n" + delimiter, head_end)
        if end < 0:
            return None
        if _names(body[start:head_end], wanted):
            return head_end + 4, end
        start = end + 2
    return None


def _names(head: bytes, wanted: bytes) -> bool:
    at = head.find(wanted)
    # `filename="model"` contains `name="model"`: the match must start a parameter.
    while at >= 0 and head[at - 1:at] not in (b" ", b";", b"\t"):
        at = head.find(wanted, at + 1)
    return at >= 0


def _boundary(content_type: str) -> bytes | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode()
    return None
