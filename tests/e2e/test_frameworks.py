"""LangChain and LlamaIndex against the demo, set up as the user guide says ("Use it from your
tools"): invoke, stream, embed."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from tests.e2e.conftest import DemoStack

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

CHAT, EMBED = "qwen3.5-122b-nonthinking", "qwen3-embedding-8B"


def test_langchain_chat_invoke_stream_and_embeddings(demo_stack: DemoStack) -> None:
    llm = ChatOpenAI(model=CHAT, base_url=demo_stack.base_url, api_key=demo_stack.key,  # type: ignore[arg-type]
                     max_tokens=16, max_retries=0)
    assert llm.invoke("Say hello.").content
    pieces = [chunk.content for chunk in llm.stream("Count to three.")]
    assert len(pieces) > 1 and "".join(str(p) for p in pieces)
    embeddings = OpenAIEmbeddings(model=EMBED, base_url=demo_stack.base_url, api_key=demo_stack.key,  # type: ignore[arg-type]
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["The cat sat on the mat.", "Stock markets fell."])
    assert [len(v) for v in vectors] == [384, 384] and len(embeddings.embed_query("a cat")) == 384


def test_llamaindex_openailike_complete_chat_and_stream(demo_stack: DemoStack) -> None:
    llm = OpenAILike(model=CHAT, api_base=demo_stack.base_url, api_key=demo_stack.key, is_chat_model=True,
                     max_tokens=16, max_retries=0)
    assert llm.complete("Say hello.").text
    assert llm.chat([ChatMessage(role="user", content="Name a colour.")]).message.content
    deltas = [r.delta for r in llm.stream_complete("Count to three.")]
    assert len(deltas) > 1 and "".join(d or "" for d in deltas)
