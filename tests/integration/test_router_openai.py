"""The official openai SDK (sync, async, streaming) against the real router and fake backends."""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import SECRET, Stack


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.router.base_url, api_key=stack.key, max_retries=0)


def test_chat_completion_comes_back_with_unknown_fields_and_usage(stack: Stack) -> None:
    answer = client(stack).chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert answer.model_extra is not None and answer.model_extra["x_fake_unknown"] == {"kept": True}
    assert answer.usage is not None and answer.usage.completion_tokens == 5


def test_backend_gets_its_secret_never_the_client_key(stack: Stack) -> None:
    client(stack).chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    received = [r for b in stack.chat for r in b.received]
    assert len(received) == 1
    assert received[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert stack.key not in str(received[0].headers)


def test_streaming_chat_yields_every_chunk(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in pieces) == "tok0 tok1 tok2 tok3 tok4 "


def test_streaming_with_include_usage_gives_the_usage_chunk(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].choices == []


def test_completions_and_embeddings(stack: Stack) -> None:
    c = client(stack)
    text = c.completions.create(model="fake-chat", prompt="once upon a time")
    assert text.choices[0].text.startswith("tok0")
    vectors = c.embeddings.create(model="fake-embed", input=["a b c", "d e"])
    assert [len(d.embedding) for d in vectors.data] == [4096, 4096]
    assert vectors.usage.prompt_tokens == 5


def test_transcription(stack: Stack) -> None:
    result = client(stack).audio.transcriptions.create(
        model="fake-whisper", file=("clip.wav", b"RIFF....WAVEfake-audio-bytes", "audio/wav")
    )
    assert result.text == "hello from the fake whisper"


async def test_async_client_chat_and_stream(stack: Stack) -> None:
    c = openai.AsyncOpenAI(base_url=stack.router.base_url, api_key=stack.key, max_retries=0)
    answer = await c.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content.startswith("tok0")
    stream = await c.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    contents = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(x or "" for x in contents) == "tok0 tok1 tok2 tok3 tok4 "
    await c.close()


def test_models_lists_known_models_with_status(stack: Stack) -> None:
    models = {m.id: m for m in client(stack).models.list()}
    assert set(models) == {"fake-chat", "fake-embed", "fake-whisper"}
    assert all(m.model_extra and m.model_extra["status"] == "ready" for m in models.values())


def test_models_retrieve_gives_the_lists_entry_and_one_404_for_unknown_and_forbidden(stack: Stack) -> None:
    listed = {m.id: m for m in client(stack).models.list()}
    for name in listed:
        assert client(stack).models.retrieve(name) == listed[name]
    only_chat = stack.registry.add_key("carol", models=["fake-chat"])
    limited = openai.OpenAI(base_url=stack.router.base_url, api_key=only_chat, max_retries=0)
    wait_until = time.monotonic() + 5  # the router picks the new key up on its next registry read
    while time.monotonic() < wait_until:
        try:
            assert limited.models.retrieve("fake-chat").id == "fake-chat"
            break
        except openai.AuthenticationError:
            time.sleep(0.05)
    messages = []
    for name in ("fake-embed", "no-such-model"):  # forbidden to this key, unknown to everyone
        with pytest.raises(openai.NotFoundError) as caught:
            limited.models.retrieve(name)
        assert caught.value.code == "model_not_found"
        messages.append(caught.value.message.replace(name, "NAME"))
    assert messages[0] == messages[1]  # nothing tells a forbidden name from an unknown one


def test_wrong_key_is_an_authentication_error(stack: Stack) -> None:
    bad = openai.OpenAI(base_url=stack.router.base_url, api_key="sk-llm-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "invalid_api_key"
