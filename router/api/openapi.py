"""`GET /openapi.json`: an OpenAPI 3.1 description of the router's API, for fuzzers and client generators.

The description lists only the operations the app really mounts (an app built by hand may lack
/metrics or registration), so it never promises a path that answers 404. `docs/openapi.json`
is generated from the same function: `python -m router.api.openapi > docs/openapi.json`.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
from aiohttp import web

Schema = dict[str, Any]
OPENAPI_BYTES = web.AppKey("llm_launch_openapi", bytes)
BEARER: list[Any] = [{"apiKey": []}]
ERROR_TEXT = {
    400: "Bad request: the body is not valid JSON, a required field is missing, or the form is broken",
    401: "Missing, malformed, unknown, revoked or expired credential",
    403: "The key may not use this model (or the token may not register it)",
    404: "Unknown model or path", 405: "Method not allowed on this path",
    409: "The URL is already registered by another live server", 413: "Request body too large", 429: "A rate limit or budget of the key is used up (see Retry-After)",
    502: "The backend failed, or rejected the router's credentials", 503: "No ready backend for the model (see Retry-After)",
    504: "The backend sent nothing for the stall timeout",
}
PROXIED = (400, 401, 403, 404, 413, 429, 502, 503, 504)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _responses(ok: Schema, *errors: int) -> Schema:
    out: Schema = {"200": {"description": "Success", "content": ok}}
    for status in errors:
        out[str(status)] = {"description": ERROR_TEXT[status], "content": _json(_ref("Error"))}
    return out


def _op(op_id: str, summary: str, responses: Schema, *, body: Schema | None = None,
        security: list[Any] | None = None, params: list[Schema] | None = None) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "responses": responses,
                  "security": BEARER if security is None else security}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


def _object(required: list[str], **props: Schema) -> Schema:
    """An object schema; unknown fields are allowed because the router passes them to the backend."""
    return {"type": "object", "required": required, "properties": props, "additionalProperties": True}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
MODEL = {"type": "string", "minLength": 1, "description": "A model name from GET /v1/models"}
SAMPLING: Schema = {
    "stream": BOOL, "stream_options": _object([], include_usage=BOOL),
    "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1},
    "temperature": NUM, "top_p": NUM, "presence_penalty": NUM, "n": INT, "stop": {},
}
MESSAGE = _object(["role"], role=STR, content={"description": "A string or a list of content parts"})
SCHEMAS: Schema = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": STR, "type": STR, "param": {"type": ["string", "null"]},
                           "code": {"type": ["string", "null"]}},
        }},
    },
    "ChatRequest": _object(["model", "messages"], model=MODEL,
                           messages={"type": "array", "items": MESSAGE}, **SAMPLING),
    "CompletionRequest": _object(["model", "prompt"], model=MODEL, prompt={}, **SAMPLING),
    "EmbeddingRequest": _object(["model", "input"], model=MODEL, input={},
                                encoding_format={"type": "string", "enum": ["float", "base64"]},
                                dimensions=INT),
    "ResponseRequest": _object(["model", "input"], model=MODEL, input={}, instructions=STR, stream=BOOL,
                               max_output_tokens={"type": "integer", "minimum": 1}, temperature=NUM, top_p=NUM),
    "MessageRequest": _object(["model", "messages", "max_tokens"], model=MODEL,
                              messages={"type": "array", "items": MESSAGE}, system={}, stream=BOOL,
                              max_tokens={"type": "integer", "minimum": 1}, temperature=NUM),
    "CountTokensRequest": _object(["model", "messages"], model=MODEL, messages={"type": "array", "items": MESSAGE},
                                  system={}),
    "RerankRequest": _object(["model", "query", "documents"], model=MODEL, query=STR,
                             documents={"type": "array", "items": {}}, top_n=INT),
    "ScoreRequest": _object(["model", "text_1", "text_2"], model=MODEL, text_1={}, text_2={}),
    "AudioRequest": {
        "type": "object", "required": ["file", "model"],
        "properties": {"file": {"type": "string", "format": "binary"}, "model": MODEL, "language": STR,
                       "prompt": STR, "response_format": STR, "temperature": NUM},
    },
    "Completion": _object(["object"], id=STR, object=STR, model=STR, choices={"type": "array"},
                          usage={"type": "object"}),
    "Embeddings": _object(["data"], object=STR, data={"type": "array"}, usage={"type": "object"}),
    "Transcription": _object(["text"], text=STR),
    "ModelList": _object(["object", "data"], object={"const": "list"}, data={"type": "array", "items": _object(
        ["id", "object"], id=STR, object=STR, created=INT, owned_by=STR,
        status={"type": "string", "enum": ["ready", "loading", "offline"]})}),
    "Registration": _object(["token"], token={"type": "string", "minLength": 1}, url=STR,
                            deployment_id={"type": ["integer", "string"]}, job_id=STR, node=STR, model=STR,
                            kind=STR, secret=STR, reason=STR, owner=STR),
}
STREAM = {"text/event-stream": {"schema": {"type": "string"}}}
CHAT_OUT = {**_json(_ref("Completion")), **STREAM}
AUDIO_OUT = {**_json(_ref("Transcription")), "text/plain": {"schema": STR}}
ANY_OUT = _json({"type": "object"})

# (method, path) -> operation; the order is the order of the document.
OPERATIONS: dict[tuple[str, str], Schema] = {
    ("post", "/v1/chat/completions"): _op("createChatCompletion", "Chat completion (JSON or SSE stream)",
                                          _responses(CHAT_OUT, *PROXIED), body=_json(_ref("ChatRequest"))),
    ("post", "/v1/completions"): _op("createCompletion", "Text completion (JSON or SSE stream)",
                                     _responses(CHAT_OUT, *PROXIED), body=_json(_ref("CompletionRequest"))),
    ("post", "/v1/embeddings"): _op("createEmbedding", "Embeddings",
                                    _responses(_json(_ref("Embeddings")), *PROXIED),
                                    body=_json(_ref("EmbeddingRequest"))),
    ("post", "/v1/responses"): _op("createResponse", "OpenAI Responses API (JSON or SSE events), served by vLLM",
                                   _responses(CHAT_OUT, *PROXIED), body=_json(_ref("ResponseRequest"))),
    ("post", "/v1/messages"): _op(
        "createMessage", "Anthropic Messages API (JSON or SSE events; key also as x-api-key; errors in "
                         "Anthropic's shape), served by vLLM", _responses(CHAT_OUT, *PROXIED),
        body=_json(_ref("MessageRequest"))),
    ("post", "/v1/messages/count_tokens"): _op(
        "countMessageTokens", "Anthropic's token count of a Messages request (no tokens charged)",
        _responses(ANY_OUT, *PROXIED), body=_json(_ref("CountTokensRequest"))),
    **{(method, path): _op(op_id, "Not offered: responses are not stored (404 responses_not_stored)",
                           _responses(ANY_OUT, 401, 404),
                           params=[{"name": "response_id", "in": "path", "required": True, "schema": STR}])
       for method, path, op_id in (("get", "/v1/responses/{response_id}", "getResponse"),
                                   ("delete", "/v1/responses/{response_id}", "deleteResponse"),
                                   ("post", "/v1/responses/{response_id}/cancel", "cancelResponse"),
                                   ("get", "/v1/responses/{response_id}/input_items", "listInputItems"))},
    **{("post", path): _op(f"rerank{suffix}", "Documents ordered by relevance to a query (rerank models)",
                           _responses(ANY_OUT, *PROXIED), body=_json(_ref("RerankRequest")))
       for path, suffix in (("/v1/rerank", ""), ("/rerank", "NoVersion"), ("/v2/rerank", "V2"))},
    **{("post", path): _op(f"score{suffix}", "Relevance scores of text pairs (rerank models)",
                           _responses(ANY_OUT, *PROXIED), body=_json(_ref("ScoreRequest")))
       for path, suffix in (("/v1/score", ""), ("/score", "NoVersion"))},
    ("post", "/v1/audio/transcriptions"): _op(
        "createTranscription", "Speech to text (multipart upload, forwarded byte for byte)",
        _responses(AUDIO_OUT, *PROXIED), body={"multipart/form-data": {"schema": _ref("AudioRequest")}}),
    ("post", "/v1/audio/translations"): _op(
        "createTranslation", "Speech to English text (multipart upload, forwarded byte for byte)",
        _responses(AUDIO_OUT, *PROXIED), body={"multipart/form-data": {"schema": _ref("AudioRequest")}}),
    ("get", "/v1/models"): _op("listModels", "The models this key may use, with their status",
                               _responses(_json(_ref("ModelList")), 401)),
    ("get", "/v1/models/{model}"): _op(
        "retrieveModel", "One model of the list (404 for a name this key may not use, as for an unknown one)",
        _responses(ANY_OUT, 401, 404), params=[{"name": "model", "in": "path", "required": True, "schema": STR}]),
    ("get", "/v1/me"): _op("getMe", "The key's own limits, remaining windows and usage (free)",
                           _responses(ANY_OUT, 401)),
    ("get", "/health"): _op("health", "The router is up (no key)", _responses(ANY_OUT), security=[]),
    ("post", "/internal/register"): _op(
        "register", "A model server announces itself with its registration token (a user's server is "
                    "checked first: its model list, with its secret, at the URL)",
        _responses(ANY_OUT, 400, 401, 403, 409), body=_json(_ref("Registration")), security=[]),
    ("post", "/internal/deregister"): _op(
        "deregister", "A model server stops being routed to (it names its deployment_id or job_id)",
        _responses(ANY_OUT, 400, 401, 403), body=_json(_ref("Registration")), security=[]),
    ("get", "/metrics"): _op("metrics", "Prometheus metrics (admin credential)",
                             _responses({"text/plain": {"schema": STR}}, 401), security=[{"adminToken": []}]),
    ("get", "/internal/status"): _op("internalStatus", "Every backend's state, health and load (admin credential)",
                                     _responses(ANY_OUT, 401, 403), security=[{"adminToken": []}]),
    ("get", "/openapi.json"): _op("openapi", "This description", _responses(ANY_OUT), security=[]),
}


def openapi_spec(mounted: set[tuple[str, str]] | None = None) -> Schema:
    """The OpenAPI document; MOUNTED (method, path) pairs limit it to what an app serves."""
    paths: Schema = {}
    for (method, path), op in OPERATIONS.items():
        if mounted is None or (method, path) in mounted:
            paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-launch router", "version": "1",
                 "description": "OpenAI-compatible API in front of Slurm-hosted model servers. Errors the "
                                "router produces use the OpenAI envelope; backend answers pass through."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "A personal API key"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "router.admin_token"},
        }},
    }


def mounted_operations(app: web.Application) -> set[tuple[str, str]]:
    """The (method, path) pairs APP routes, lower-case methods, fixed paths only."""
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        found.add((route.method.lower(), path))
    return found


def add_routes(app: web.Application) -> None:
    """Mount GET /openapi.json (no key); the document is built once, when the app starts."""
    async def build(app: web.Application) -> None:
        app[OPENAPI_BYTES] = orjson.dumps(openapi_spec(mounted_operations(app)), option=orjson.OPT_INDENT_2)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=request.app[OPENAPI_BYTES], content_type="application/json")

    app.router.add_get("/openapi.json", serve)
    app.on_startup.append(build)


def main() -> None:
    """Print the document for a router with every route mounted (how docs/openapi.json is made)."""
    sys.stdout.write(orjson.dumps(openapi_spec(), option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
