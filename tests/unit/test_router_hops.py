"""The hop marker: which values count as routers, when a request has looped, what goes upstream."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from router.hops import HOP, MAX_HOPS, hops, looped, new_hop_id, outgoing

OWN = "llmr-00112233445566aa"
OTHER = "llmr-ffeeddccbbaa9988"


def headers(*values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict([(HOP, v) for v in values] + [("x-other", OWN)]))


def test_ids_are_fresh_and_well_formed() -> None:
    first, second = new_hop_id(), new_hop_id()
    assert first != second and hops(headers(first, second)) == [first, second]


def test_only_well_formed_router_ids_count() -> None:
    assert hops(headers(f" {OTHER} ,junk, LLMR-00112233445566AA", "llmr-1", OWN + "0")) == [OTHER]
    assert not looped(headers("anything at all", OWN.upper()), OWN)
    assert not looped(CIMultiDictProxy(CIMultiDict({"x-other": OWN})), OWN)  # another header is no marker


def test_own_id_anywhere_in_the_chain_is_a_loop() -> None:
    assert looped(headers(f"{OTHER}, {OWN}"), OWN)
    assert looped(headers(OTHER, OWN), OWN)
    assert not looped(headers(OTHER), OWN)


def test_too_long_a_chain_is_refused() -> None:
    chain = [f"llmr-{i:016x}" for i in range(MAX_HOPS)]
    assert looped(headers(", ".join(chain)), OWN)
    assert not looped(headers(", ".join(chain[:-1])), OWN)


def test_outgoing_lists_the_routers_passed_then_this_one() -> None:
    assert outgoing(CIMultiDictProxy(CIMultiDict()), OWN) == OWN
    assert outgoing(headers(f"junk, {OTHER}"), OWN) == f"{OTHER}, {OWN}"
