"""A model whose replicas all ended while the supervisor wants one is restarting, not unknown."""

from typing import Any

import requests

from launcher.db import session_factory, utcnow
from launcher.deploy import change_target


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
