"""Request bodies: routing fields, the usage splice, multipart fields, and the 400s."""

from __future__ import annotations

import json

import pytest
import requests

from router.api.body import form_field, inspect, parse_json, with_include_usage
from router.errors import RouterError


@pytest.mark.parametrize(("doc", "model", "stream", "wants", "max_tokens"), [
    ({"model": "m"}, "m", False, False, 0),
    ({"model": "m", "stream": True, "max_tokens": 50}, "m", True, False, 50),
    ({"model": "m", "stream": True, "stream_options": {"include_usage": True}}, "m", True, True, 0),
    ({"model": "m", "stream": "yes", "max_completion_tokens": 9, "max_tokens": 3}, "m", False, False, 9),
    ({"model": "m", "max_tokens": True}, "m", False, False, 0),
])
def test_inspect(doc: dict[str, object], model: str, stream: bool, wants: bool, max_tokens: int) -> None:
    fields = inspect(doc)
    assert (fields.model, fields.stream, fields.client_wants_usage, fields.max_tokens) == (model, stream, wants, max_tokens)


@pytest.mark.parametrize("body", [b"{", b"[]", b'"model"', b"\xff\xfe"])
def test_parse_json_rejects_non_objects(body: bytes) -> None:
    with pytest.raises(RouterError) as caught:
        parse_json(body)
    assert caught.value.status == 400


def test_parse_json_accepts_big_integers() -> None:
    assert parse_json(b'{"model": "m", "seed": 123456789012345678901234567890}')["seed"] > 2**64


@pytest.mark.parametrize("body", [
    b'{"model":"m","stream":true}',
    b'  {\n  "model": "m", "stream": true}',
    b'{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}',
    b'{"model":"m","stream":true,"stream_options":null}',
])
def test_include_usage_is_added_and_nothing_else_changes(body: bytes) -> None:
    doc = json.loads(body)
    changed = json.loads(with_include_usage(body, doc))
    assert changed["stream_options"]["include_usage"] is True
    changed["stream_options"].pop("include_usage")
    original_options = doc.pop("stream_options", None) or {}
    original_options.pop("include_usage", None)
    assert changed.pop("stream_options") == original_options
    assert changed == doc


def test_splice_keeps_the_original_bytes_after_the_brace() -> None:
    body = b'{"model": "m",   "stream": true}'
    assert with_include_usage(body, json.loads(body)).endswith(body[1:])


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    prepared = requests.Request("POST", "http://x/", data=fields, files=files).prepare()
    assert isinstance(prepared.body, bytes)
    return prepared.body, prepared.headers["Content-Type"]


def test_form_field_finds_the_model_after_a_file() -> None:
    body, content_type = multipart({"model": "whisper-large-v3", "language": "de"},
                                   {"file": ('model"x.wav', b'name="model"\r\n\r\nfake')})
    assert form_field(body, content_type, "model") == "whisper-large-v3"
    assert form_field(body, content_type, "language") == "de"
    assert form_field(body, content_type, "prompt") is None


def test_filename_model_is_not_the_model_field() -> None:
    body, content_type = multipart({}, {"file": ("model", b"audio")})
    assert form_field(body, content_type, "model") is None


@pytest.mark.parametrize("content_type", ["multipart/form-data", "application/json", ""])
def test_form_field_without_boundary(content_type: str) -> None:
    assert form_field(b"--x\r\n", content_type, "model") is None
