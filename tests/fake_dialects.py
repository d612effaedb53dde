"""The fake backend's Responses API and Anthropic Messages API, shaped like vLLM's answers.

JSON and SSE; usage counts input words and `chunks` output tokens (plus `reasoning_tokens` on the
Responses API), or `config.usage` as given. `die_mid_stream` cuts a stream after
`fail_after_chunks` deltas.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

# The FakeBackend that mounts these (typed loosely: tests.fake_backend imports this module).
FakeBackend = Any


def mount(app: web.Application, backend: FakeBackend) -> None:
    """Add POST /v1/responses, /v1/messages and /v1/messages/count_tokens to APP."""

    async def responses(request: web.Request) -> web.StreamResponse:
        return await _serve(backend, request, _response_events, _response)

    async def messages(request: web.Request) -> web.StreamResponse:
        return await _serve(backend, request, _message_events, _message)

    async def count_tokens(request: web.Request) -> web.StreamResponse:
        body = await backend._record(request)
        if (denied := backend._denied(request)) is not None:
            return denied
        return backend._send_json({"input_tokens": _input_tokens(json.loads(body))})

    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)


def _input_tokens(doc: dict[str, Any]) -> int:
    return len(json.dumps([doc.get("system"), doc.get("instructions"), doc.get("input"), doc.get("messages")]).split())


def _usage(backend: FakeBackend, doc: dict[str, Any], reasoning: bool) -> Any:
    if (given := backend.given_usage()) is not None:
        return given
    usage: dict[str, Any] = {"input_tokens": _input_tokens(doc), "output_tokens": backend._tokens(doc)}
    if reasoning:
        usage["output_tokens_details"] = {"reasoning_tokens": backend.config.reasoning_tokens}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    return usage


def _response(backend: FakeBackend, doc: dict[str, Any]) -> dict[str, Any]:
    text = "".join(f"tok{i} " for i in range(backend._tokens(doc)))
    return {"id": "resp_fake", "object": "response", "created_at": 1, "model": doc.get("model"),
            "status": "completed", "output": [{"type": "message", "id": "msg_fake", "role": "assistant",
                                               "status": "completed",
                                               "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": _usage(backend, doc, reasoning=True)}


def _message(backend: FakeBackend, doc: dict[str, Any]) -> dict[str, Any]:
    text = "".join(f"tok{i} " for i in range(backend._tokens(doc)))
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": doc.get("model"),
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": _usage(backend, doc, reasoning=False)}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _response_events(backend: FakeBackend, doc: dict[str, Any]) -> tuple[list[bytes], list[bytes], bytes]:
    """(events before the deltas, one event per token, the event with the usage)."""
    started = {**_response(backend, doc), "status": "in_progress", "output": [], "usage": None}
    head = [_event("response.created", {"type": "response.created", "response": started})]
    deltas = [_event("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_fake",
                                                    "output_index": 0, "content_index": 0, "delta": f"tok{i} "})
              for i in range(backend._tokens(doc))]
    done = _event("response.completed", {"type": "response.completed", "response": _response(backend, doc)})
    return head, deltas, done


def _message_events(backend: FakeBackend, doc: dict[str, Any]) -> tuple[list[bytes], list[bytes], bytes]:
    usage = _usage(backend, doc, reasoning=False)
    start_usage = ({"input_tokens": usage.get("input_tokens"), "output_tokens": 1} if isinstance(usage, dict)
                   else usage)
    started = {**_message(backend, doc), "content": [], "stop_reason": None, "usage": start_usage}
    head = [_event("message_start", {"type": "message_start", "message": started}),
            _event("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})]
    deltas = [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": f"tok{i} "}})
              for i in range(backend._tokens(doc))]
    end_usage = {"output_tokens": usage.get("output_tokens")} if isinstance(usage, dict) else usage
    done = (_event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                          "stop_sequence": None}, "usage": end_usage})
            + _event("message_stop", {"type": "message_stop"}))
    return head, deltas, done


async def _serve(backend: FakeBackend, request: web.Request, events: Any, answer: Any) -> web.StreamResponse:
    body = await backend._record(request)
    if (denied := backend._denied(request)) is not None:
        return denied
    doc = json.loads(body)
    await asyncio.sleep(backend.config.latency_ms / 1000)
    if not doc.get("stream"):
        return backend._send_json(answer(backend, doc))
    head, deltas, done = events(backend, doc)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    sent = bytearray()
    try:
        for chunk in head:
            await backend._write(response, chunk, sent)
        for i, chunk in enumerate(deltas):
            if backend.config.failure == "die_mid_stream" and i == backend.config.fail_after_chunks:
                await backend._fail_mid_stream(request)
            await backend._write(response, chunk, sent)
            if backend.config.chunk_delay_ms:
                await asyncio.sleep(backend.config.chunk_delay_ms / 1000)
        backend.usage_events.append(done)
        await backend._write(response, done, sent)
    except Exception:  # the die_mid_stream failure ends the stream here, like a crashed server
        return response
    finally:
        backend.sent.append(bytes(sent))
    await response.write_eof()
    return response
