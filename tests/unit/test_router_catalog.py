"""Catalog semantics in the router: defaults merge, max_tokens limit, served names, reservations."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import orjson
import pytest

from launcher.core.catalog import catalog_from_dict
from router.api.defaults import apply_route, check_max_tokens, merge_defaults, reservation
from router.errors import RouterError
from router.upstream.names import Names

NONTHINKING = {"temperature": 0.7, "top_p": 0.8, "presence_penalty": 1.5,
               "chat_template_kwargs": {"enable_thinking": False}}


@pytest.mark.parametrize(("client", "defaults", "expected"), [
    # nothing left out: nothing changes (None tells the caller to keep the client's bytes)
    ({"temperature": 0.2}, {"temperature": 0.7}, None),
    ({}, {}, None),
    # missing fields are filled, given ones win
    ({"temperature": 0.2}, {"temperature": 0.7, "top_p": 0.8}, {"temperature": 0.2, "top_p": 0.8}),
    ({"messages": []}, NONTHINKING, {"messages": [], **NONTHINKING}),
    # an explicit null is the client's choice too
    ({"top_p": None}, {"top_p": 0.8}, None),
    # objects merge one level deep, the client's keys winning
    ({"chat_template_kwargs": {"foo": 1}}, {"chat_template_kwargs": {"enable_thinking": False}},
     {"chat_template_kwargs": {"foo": 1, "enable_thinking": False}}),
    ({"chat_template_kwargs": {"enable_thinking": True}}, {"chat_template_kwargs": {"enable_thinking": False}},
     None),
    # a client value that is not an object replaces the default object whole
    ({"chat_template_kwargs": None}, {"chat_template_kwargs": {"enable_thinking": False}}, None),
])
def test_merge_defaults(client: dict[str, Any], defaults: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert merge_defaults(client, MappingProxyType(defaults)) == expected


def test_merged_defaults_are_copies_not_shared_between_requests() -> None:
    defaults = MappingProxyType({"chat_template_kwargs": {"enable_thinking": False}, "stop": ["x"]})
    first = merge_defaults({}, defaults)
    assert first is not None
    first["chat_template_kwargs"]["enable_thinking"] = True
    first["stop"].append("y")
    assert merge_defaults({}, defaults) == {"chat_template_kwargs": {"enable_thinking": False}, "stop": ["x"]}


@pytest.mark.parametrize(("doc", "refused"), [
    ({}, False),
    ({"max_tokens": 100}, False),
    ({"max_tokens": 101}, True),
    ({"max_completion_tokens": 5000}, True),
    ({"max_tokens": "lots"}, False),  # not a number: the backend's own validation answers
    ({"max_tokens": True}, False),
])
def test_max_tokens_above_the_limit_is_a_400_naming_it(doc: dict[str, Any], refused: bool) -> None:
    if not refused:
        check_max_tokens(doc, 100, "m")
        return
    with pytest.raises(RouterError) as caught:
        check_max_tokens(doc, 100, "m")
    err = caught.value
    assert (err.status, err.param) == (400, "max_tokens")
    assert "at most 100" in err.message


def test_no_limit_allows_anything() -> None:
    check_max_tokens({"max_tokens": 10**9}, None, "m")


CATALOG = {"models": {
    "qwen-entry": {
        "engine": "vllm", "weights": "/w", "served_name": "qwen", "max_tokens": 100,
        "names": {"qwen": {"defaults": {"temperature": 0.6}}, "qwen-nonthinking": {"defaults": NONTHINKING}},
    },
    "plain": {"engine": "vllm", "weights": "/w"},
}}


@pytest.fixture
def names() -> Names:
    return Names(catalog_from_dict(CATALOG, "catalog.toml", {}))


def test_names_map_public_names_to_their_entry(names: Names) -> None:
    assert names.routes["qwen-nonthinking"].pool == "qwen-entry"
    assert names.routes["qwen-nonthinking"].served_name == "qwen"
    assert names.pool_key("qwen") == "qwen-entry" and names.pool_key("elsewhere") == "elsewhere"
    assert names.served_name("qwen-entry") == "qwen" and names.served_name("manual") == "manual"
    assert names.hidden("qwen-entry") and not names.hidden("plain") and not names.hidden("qwen")


def test_no_catalog_means_no_routes() -> None:
    names = Names()
    assert names.routes == {} and names.pool_key("m") == "m" and names.served_name("m") == "m"


def test_apply_route_keeps_the_clients_bytes_when_nothing_changes(names: Names) -> None:
    body = b'{"model": "qwen",  "temperature": 0.1}'
    out, doc = apply_route(body, orjson.loads(body), names.routes["qwen"])
    assert out is body and doc == {"model": "qwen", "temperature": 0.1}


def test_apply_route_rewrites_model_and_adds_defaults(names: Names) -> None:
    body = b'{"model":"qwen-nonthinking","temperature":0.1,"messages":[]}'
    out, doc = apply_route(body, orjson.loads(body), names.routes["qwen-nonthinking"])
    assert orjson.loads(out) == doc == {"model": "qwen", "messages": [], **NONTHINKING, "temperature": 0.1}


@pytest.mark.parametrize(("endpoint", "kept"), [
    ("responses", {"temperature", "top_p"}), ("messages", {"temperature", "top_p"}), ("count_tokens", set()),
])
def test_the_responses_and_messages_apis_get_only_the_defaults_they_have_a_parameter_for(
        names: Names, endpoint: str, kept: set[str]) -> None:
    body = b'{"model":"qwen-nonthinking","input":"hi"}'
    _, doc = apply_route(body, orjson.loads(body), names.routes["qwen-nonthinking"], endpoint)
    assert doc == {"model": "qwen", "input": "hi", **{k: v for k, v in NONTHINKING.items() if k in kept}}
    assert "chat_template_kwargs" not in doc  # not a parameter of these APIs


def test_apply_route_rewrites_only_the_model_name(names: Names) -> None:
    body = b'{"model":"plain","n":1}'
    out, _ = apply_route(body, orjson.loads(body), names.routes["plain"])
    assert out == body  # served name == public name, no defaults


def test_apply_route_checks_the_limit(names: Names) -> None:
    with pytest.raises(RouterError, match="at most 100"):
        apply_route(b"{}", {"model": "qwen", "max_tokens": 1000}, names.routes["qwen"])


@pytest.mark.parametrize(("asked", "model_max", "cap", "reserved"), [
    (50, 100, 4096, 50),  # asked: what the request asks (already checked against the limit)
    (0, 100, 4096, 100),  # absent: up to the model's limit ...
    (0, 131072, 4096, 4096),  # ... capped by router.default_reserve_tokens
    (0, None, 4096, 4096),
])
def test_reservation(asked: int, model_max: int | None, cap: int, reserved: int) -> None:
    assert reservation(asked, model_max, cap) == reserved
