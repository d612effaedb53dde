"""The proxied /v1 paths and the endpoint kind of each: the handlers mount them, metrics label by them."""

from __future__ import annotations

JSON_ENDPOINTS = {
    "/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
    # OpenAI's Responses API and Anthropic's Messages API, both served by vLLM itself
    "/v1/responses": "responses", "/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens",
    # vLLM's paths for both (Jina/Cohere-style rerank; score pairs text_1 with text_2)
    "/v1/rerank": "rerank", "/rerank": "rerank", "/v2/rerank": "rerank", "/v1/score": "score", "/score": "score",
}
AUDIO_ENDPOINTS = {"/v1/audio/transcriptions": "transcriptions", "/v1/audio/translations": "translations"}
STREAM_USAGE = frozenset({"chat", "completions"})  # endpoints that know stream_options
GENERATING = frozenset({"chat", "completions", "responses", "messages"})  # endpoints that reserve output tokens
