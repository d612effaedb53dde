"""Fuzzing the running router: schemathesis over its own /openapi.json, plus hand-made hostile input.

The backend behind it accepts anything, so any 5xx is the router's own doing. Every answer must
be the OpenAI envelope when it is an error, carry no stack trace, and the router must log no
unexpected error. LLM_LAUNCH_FUZZ_EXAMPLES sets the examples per operation and mode (default 40).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from launcher.core.db import open_engine, session_factory
from launcher.core.keys import create_key
from launcher.core.deployments import add_backend
from launcher.core.settings import KeyLimits, RouterSettings, Settings
from router.app import create_app
from router.serve import start
from tests.conftest import SECRET, TEST_ROUTER, LoopThread
from tests.fake_backend import FakeBackend, FakeConfig

EXAMPLES = int(os.environ.get("LLM_LAUNCH_FUZZ_EXAMPLES", "40"))
MODELS = {"fake-chat": "chat", "fake-embed": "embeddings", "fake-whisper": "transcription"}
ADMIN = "admin-token-for-fuzzing"
TRACE_MARKS = ("Traceback (most recent call last)", 'File "', "aiohttp/web_", "site-packages")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class TolerantBackend(FakeBackend):
    """The fake backend, but an embeddings request without `input` is a 400 like vLLM's, not a crash."""

    async def _embeddings(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        if "input" not in doc:
            return web.json_response({"error": {"message": "input is required", "type": "invalid_request_error",
                                                "param": "input", "code": None}}, status=400)
        return await super()._embeddings(request)


# The router's log: its own loggers, aiohttp's (which logs what escapes the app, e.g. parser
# errors) and asyncio's (exceptions in callbacks and tasks nobody awaited).
LOGGERS = ("router", "aiohttp", "asyncio")


class ErrorLog(logging.Handler):
    """Collects records of LOGGERS that are errors or carry a traceback (an unexpected exception)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []  # since the last check
        self.seen: list[logging.LogRecord] = []  # over the whole run

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info or record.stack_info:
            self.records.append(record)
            self.seen.append(record)


@dataclass
class Target:
    url: str
    key: str
    errors: ErrorLog
    tried: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def target(servers: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{folder / 'registry.db'}"
    engine = open_engine(url)
    backend = TolerantBackend(FakeConfig(models=list(MODELS), secret=SECRET))
    servers.run(backend.start())
    with session_factory(engine)() as session:
        for model, kind in MODELS.items():
            add_backend(session, model, backend.url, kind=kind, secret=SECRET)
        key, _ = create_key(session, "fuzzer", limits=KeyLimits())
    overrides: dict[str, Any] = {**TEST_ROUTER, "admin_token": ADMIN}
    router_settings = replace(RouterSettings(), **overrides)
    app = create_app(Settings(database=url, router=router_settings), engine)
    runner, port = servers.run(start(app, "127.0.0.1", 0, 1.0))
    errors = ErrorLog()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).addHandler(errors)
        logging.getLogger(name).setLevel(logging.DEBUG)  # aiohttp logs some tracebacks at debug level
    handle = Target(f"http://127.0.0.1:{port}", key, errors)
    try:
        yield handle
    finally:
        for name, level in levels.items():
            logging.getLogger(name).removeHandler(errors)
            logging.getLogger(name).setLevel(level)
        servers.run(runner.cleanup())
        servers.run(backend.stop())
        engine.dispose()
        print(f"\nfuzz: {sum(handle.tried.values())} cases tried; per operation {dict(handle.tried)}; "
              f"statuses {dict(sorted(handle.statuses.items()))}")


def assert_sane(response: requests.Response | schemathesis.Response, what: str) -> None:
    """No 5xx, no stack trace, the envelope on errors, an x-request-id always."""
    text = response.content.decode("utf-8", "replace")
    assert response.status_code < 500, f"{what}: {response.status_code} {text[:300]}"
    assert not any(mark in text for mark in TRACE_MARKS), f"{what}: stack trace in body: {text[:300]}"
    assert response.headers.get("x-request-id"), f"{what}: no x-request-id"
    if response.status_code >= 400:
        error = json.loads(response.content or b"null")["error"]
        assert set(error) == {"message", "type", "param", "code"}, f"{what}: not the envelope: {text[:300]}"
        assert isinstance(error["message"], str) and error["message"]


def assert_no_router_errors(target: Target) -> None:
    """The router logged no error and no traceback since the last call."""
    records, target.errors.records = target.errors.records, []
    assert not records, [f"{r.getMessage()}: {r.exc_info[1]!r}" if r.exc_info else r.getMessage() for r in records]


def fuzz_schema(target: Target) -> schemathesis.BaseSchema:
    """The router's served description, with model names that exist offered next to random ones."""
    document = requests.get(target.url + "/openapi.json", timeout=10).json()
    patched = copy.deepcopy(document)
    for name in ("ChatRequest", "CompletionRequest", "EmbeddingRequest", "AudioRequest"):
        props = patched["components"]["schemas"][name]["properties"]
        props["model"] = {"anyOf": [{"enum": list(MODELS)}, props["model"]]}
    return schemathesis.openapi.from_dict(patched)


def _auth(target: Target, operation: Any) -> dict[str, str]:
    security = operation.definition.raw.get("security") or []
    if {"apiKey": []} in security:
        return {"Authorization": f"Bearer {target.key}"}
    if {"adminToken": []} in security:
        return {"Authorization": f"Bearer {ADMIN}"}
    return {}


OPERATION_IDS = ["createChatCompletion", "createCompletion", "createEmbedding", "createTranscription",
                 "createTranslation", "listModels", "getMe", "health", "register", "deregister",
                 "metrics", "internalStatus", "openapi"]


# Operations without a request body have nothing to negate: they are fuzzed with valid input only.
WITH_BODY = ["createChatCompletion", "createCompletion", "createEmbedding", "createTranscription",
             "createTranslation", "register", "deregister"]
CASES = [(op, GenerationMode.POSITIVE) for op in OPERATION_IDS] + [(op, GenerationMode.NEGATIVE) for op in WITH_BODY]


@pytest.mark.parametrize(("operation_id", "mode"), CASES, ids=[f"{op}-{m.name.lower()}" for op, m in CASES])
def test_schemathesis_operation(target: Target, operation_id: str, mode: GenerationMode) -> None:
    schema = fuzz_schema(target)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    found = [op for op in operations if op.definition.raw["operationId"] == operation_id]
    assert found, f"{operation_id} is missing from the router's OpenAPI description"
    operation = found[0]
    assert mode is GenerationMode.POSITIVE or "requestBody" in operation.definition.raw, operation_id
    session = requests.Session()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=target.url, session=session, headers=_auth(target, operation), timeout=30)
        target.tried[operation_id] += 1
        target.statuses[response.status_code] += 1
        what = f"{operation_id} {mode.value}"
        assert_sane(response, what)
        case.validate_response(response, checks=CHECKS if mode is GenerationMode.POSITIVE else CHECKS[:2])

    run()
    assert_no_router_errors(target)


# --- hand-made hostile input ------------------------------------------------------------------

def _post(target: Target, path: str, body: bytes, content_type: str = "application/json",
          **headers: str) -> requests.Response:
    sent = {"Authorization": f"Bearer {target.key}", "Content-Type": content_type, **headers}
    target.tried["hand-made"] += 1
    return requests.post(target.url + path, data=body, headers=sent, timeout=60)


HOSTILE_JSON = {
    "deeply nested arrays": b'{"model": "fake-chat", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deeply nested objects": b'{"model": "fake-chat", "x": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    "truncated": b'{"model": "fake-chat", "messages": [',
    "not an object": b'["model", "fake-chat"]',
    "bare string": b'"hello"',
    "empty body": b"",
    "nul bytes": b'{"model": "fake-\x00chat"}',
    "invalid utf-8": b'{"model": "\xff\xfe"}',
    "lone surrogate": b'{"model": "\\ud800"}',
    "model wrong type": b'{"model": 42, "messages": []}',
    "model null": b'{"model": null}',
    "model object": b'{"model": {"$ne": 1}}',
    "huge integer": b'{"model": "fake-chat", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}",
    "huge integer in a stream": (b'{"model": "fake-chat", "stream": true, "stream_options": {}, '
                                 b'"messages": [], "seed": 123456789012345678901234567890}'),
    "NaN and Infinity": b'{"model": "fake-chat", "messages": [], "temperature": NaN, "top_p": Infinity}',
    "duplicate keys": b'{"model": "nope", "model": "fake-chat", "messages": []}',
    "stream not a bool": b'{"model": "fake-chat", "stream": "yes", "messages": []}',
    "stream_options wrong type": b'{"model": "fake-chat", "stream": true, "stream_options": 7, "messages": []}',
    "max_tokens negative": b'{"model": "fake-chat", "max_tokens": -5, "messages": []}',
    "max_tokens bool": b'{"model": "fake-chat", "max_tokens": true, "messages": []}',
    "utf-16 body": '{"model": "fake-chat", "messages": []}'.encode("utf-16"),
    "bom": b'\xef\xbb\xbf{"model": "fake-chat", "messages": []}',
}


@pytest.mark.parametrize("name", list(HOSTILE_JSON))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_hostile_json(target: Target, path: str, name: str) -> None:
    response = _post(target, path, HOSTILE_JSON[name])
    assert_sane(response, f"{path} {name}")
    assert_no_router_errors(target)


def test_body_over_the_limit_is_413_in_the_envelope(target: Target) -> None:
    body = b'{"model": "fake-chat", "messages": [], "pad": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    response = _post(target, "/v1/chat/completions", body)
    assert response.status_code == 413
    assert_sane(response, "9 MiB JSON")
    assert_no_router_errors(target)


BOUNDARY = "fuzzboundary"
MULTIPART = {
    "no boundary": ("multipart/form-data", b"--x\r\n\r\n"),
    "empty boundary": ("multipart/form-data; boundary=", b"----\r\n"),
    "never closed": (f"multipart/form-data; boundary={BOUNDARY}",
                     f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake-whisper'.encode()),
    "no model": (f"multipart/form-data; boundary={BOUNDARY}",
                 f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="model"\r\n\r\nRIFF\r\n'
                 f"--{BOUNDARY}--\r\n".encode()),
    "headers without blank line": (f"multipart/form-data; boundary={BOUNDARY}",
                                   f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"'.encode()),
    "binary garbage": (f"multipart/form-data; boundary={BOUNDARY}", bytes(range(256)) * 64),
    "json instead of a form": ("application/json", b'{"model": "fake-whisper"}'),
    "no content type": ("", b"model=fake-whisper"),
    "urlencoded": ("application/x-www-form-urlencoded", b"model=fake-whisper&file=abc"),
    "unknown model in a good form": (f"multipart/form-data; boundary={BOUNDARY}",
                                     f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
                                     f"\u00e9\u0000\r\n--{BOUNDARY}--\r\n".encode()),
}


@pytest.mark.parametrize("name", list(MULTIPART))
@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_broken_multipart(target: Target, path: str, name: str) -> None:
    content_type, body = MULTIPART[name]
    response = _post(target, path, body, content_type)
    assert_sane(response, f"{path} {name}")
    assert response.status_code in (400, 404)
    assert_no_router_errors(target)


ODD_HEADERS: dict[str, dict[str, str]] = {
    "lower-case bearer": {"Authorization": "bearer {key}"},
    "no scheme": {"Authorization": "{key}"},
    "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
    "bearer only": {"Authorization": "Bearer"},
    "bearer and spaces": {"Authorization": "Bearer     "},
    "very long key": {"Authorization": "Bearer " + "k" * 7000},
    "latin-1 key": {"Authorization": "Bearer cl\u00e9"},
    "gzip encoding": {"Content-Encoding": "gzip"},
    "unknown encoding": {"Content-Encoding": "x-unheard-of"},
    "charset latin-1": {"Content-Type": "application/json; charset=latin-1"},
    "weird content type": {"Content-Type": "text/plain"},
    "long request id": {"x-request-id": "r" * 4000},
    "odd request id": {"x-request-id": "\u00e9\t\u00ff"},
    "expect 100": {"Expect": "100-continue"},
    "many headers": {f"x-h{i}": "v" for i in range(90)},
}


@pytest.mark.parametrize("name", list(ODD_HEADERS))
def test_odd_headers(target: Target, name: str) -> None:
    body = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {k: v.replace("{key}", target.key) for k, v in ODD_HEADERS[name].items()}
    response = _raw_post(target, "/v1/chat/completions", body, headers)
    status, head, payload = response
    assert status < 500, f"{name}: {status} {payload[:300]!r}"
    assert b"Traceback" not in payload and b"x-request-id" in head.lower()
    if status >= 400:
        assert set(json.loads(payload)["error"]) == {"message", "type", "param", "code"}
    assert_no_router_errors(target)


def _raw_post(target: Target, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, bytes]:
    """A request written byte by byte (latin-1 headers, as the wire carries them); one read of the answer."""
    host, port = target.url.removeprefix("http://").split(":")
    sent = {"Host": host, "Authorization": f"Bearer {target.key}", "Content-Type": "application/json",
            "Content-Length": str(len(body)), "Connection": "close", **headers}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n"
    target.tried["hand-made"] += 1
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode("latin-1", "replace") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    while data.startswith(b"HTTP/1.1 100 "):  # the interim answer to Expect: 100-continue
        data = data.partition(b"\r\n\r\n")[2]
    if b"\r\n\r\n" not in data:
        return 0, b"", data
    top, _, payload = data.partition(b"\r\n\r\n")
    if b"chunked" in top.lower():
        payload = _unchunk(payload)
    return int(top.split(b" ", 2)[1]), top, payload


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


@settings(max_examples=EXAMPLES * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(doc=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
), model=st.sampled_from([*MODELS, "", "x" * 300, "../../etc/passwd", "fake-chat\r\nX-Injected: 1"]),
   path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]))
def test_random_json_documents(target: Target, doc: Any, model: str, path: str) -> None:
    body = {"model": model, "payload": doc} if not isinstance(doc, dict) else {**doc, "model": model}
    response = _post(target, path, json.dumps(body).encode())
    assert_sane(response, f"{path} random document")
    assert "X-Injected" not in response.headers
    assert_no_router_errors(target)


REGISTRATIONS = {
    "deployment id past 64 bits": {"token": "t", "url": "http://h:1", "deployment_id": 2**70},
    "deployment id as a long digit string": {"token": "t", "url": "http://h:1", "deployment_id": "9" * 40},
    "negative deployment id": {"token": "t", "url": "http://h:1", "deployment_id": -1},
    "job id object": {"token": "t", "url": "http://h:1", "job_id": {"a": 1}},
    "token not a string": {"token": 5, "url": "http://h:1"},
    "url not http": {"token": "t", "url": "file:///etc/passwd"},
    "nul in token": {"token": "t\u0000", "url": "http://h:1"},
    "lone surrogate token": {"token": "\ud800", "url": "http://h:1"},
    "huge token": {"token": "t" * 100_000, "url": "http://h:1"},
}


@pytest.mark.parametrize("name", list(REGISTRATIONS))
@pytest.mark.parametrize("path", ["/internal/register", "/internal/deregister"])
def test_hostile_registration(target: Target, path: str, name: str) -> None:
    body = json.dumps(REGISTRATIONS[name]).encode()
    response = _post(target, path, body)
    assert_sane(response, f"{path} {name}")
    assert response.status_code in (400, 401, 403)
    assert_no_router_errors(target)


def test_served_description_matches_the_app_and_docs(target: Target) -> None:
    """GET /openapi.json needs no key, describes every mounted route, and docs/openapi.json is current."""
    from router.api.openapi import OPERATIONS, openapi_spec

    served = requests.get(target.url + "/openapi.json", timeout=10)
    assert served.status_code == 200
    described = {(m, p) for p, ops in served.json()["paths"].items() for m in ops}
    app = create_app(Settings(database="sqlite://"), open_engine("sqlite://"))
    from router.api.openapi import mounted_operations

    routes = {(m, p) for m, p in mounted_operations(app) if m != "head"}
    assert routes <= set(OPERATIONS), f"routes missing from router/api/openapi.py: {routes - set(OPERATIONS)}"
    assert described == routes
    docs = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    assert json.loads(docs.read_text()) == openapi_spec(), "regenerate: python -m router.api.openapi > docs/openapi.json"


def test_the_router_log_holds_no_traceback_after_the_run(target: Target) -> None:
    """Last in this file: nothing the fuzzing above sent left an error or a traceback in the log."""
    requests.get(target.url + "/health", timeout=10)  # anything logged late by the last case is in by now
    seen = target.errors.seen
    assert not seen, [f"{r.name}: {r.getMessage()}: {r.exc_info[1]!r}" if r.exc_info else r.getMessage() for r in seen]
