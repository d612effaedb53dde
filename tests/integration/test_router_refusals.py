"""Refusals a client can act on: a model being restarted is a 503, errors carry the key's limits."""

import time
from typing import Any

import requests

from launcher.core.db import session_factory, utcnow
from launcher.core.targets import change_target
from launcher.core.settings import KeyLimits


def test_wanted_model_without_replicas_is_503_with_retry_after(make_router: Any, registry: Any) -> None:
    key = registry.add_key("alice")
    with session_factory(registry.engine)() as session:
        change_target(session, "own-model", now=utcnow(), absolute=1)
    router = make_router(retry_after_s=9)
    headers = {"Authorization": f"Bearer {key}"}
    body: dict[str, Any] = {"model": "own-model", "messages": [{"role": "user", "content": "hi"}]}
    answer = requests.post(f"{router.base_url}/chat/completions", json=body, headers=headers, timeout=10)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "9"
    assert answer.json()["error"]["code"] == "model_restarting"
    body["model"] = "never-heard-of"
    unknown = requests.post(f"{router.base_url}/chat/completions", json=body, headers=headers, timeout=10)
    assert unknown.status_code == 404


def test_errors_to_a_known_key_carry_its_rate_limit_headers(stack: Any) -> None:
    limits = KeyLimits(rpm=5, tpm=1000)
    narrow = stack.registry.add_key("narrow", models=["fake-chat"], limits=limits)
    wide = stack.registry.add_key("wide", limits=limits)
    time.sleep(0.3)  # the router's next registry refresh
    for key, model, status in ((narrow, "fake-embed", 403), (wide, "no-such-model", 404)):
        answer = requests.post(f"{stack.router.base_url}/embeddings", json={"model": model, "input": "x"},
                               headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert answer.status_code == status
        assert answer.headers["x-ratelimit-limit-requests"] == "5"
        assert answer.headers["x-ratelimit-remaining-requests"] == "5"  # a refused request costs nothing
        assert answer.headers["x-ratelimit-limit-tokens"] == "1000"


def test_a_model_the_supervisor_gave_up_on_is_offline(make_router: Any, registry: Any) -> None:
    from launcher.core.schema import ModelTarget

    key = registry.add_key("bob")
    with session_factory(registry.engine)() as session:
        change_target(session, "broken", now=utcnow(), absolute=1)
        target = session.get(ModelTarget, "broken")
        assert target is not None
        target.stopped_reason, target.updated_at = "stopped after 3 quick failures", utcnow()
        session.commit()
    router = make_router()
    answer = requests.post(f"{router.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "broken", "messages": []}, timeout=10)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_offline"
