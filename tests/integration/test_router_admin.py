"""Admin surfaces of the router: /internal/status needs the admin token."""

from typing import Any

import requests


def test_internal_status_needs_the_admin_token(make_backend: Any, make_router: Any, registry: Any) -> None:
    backend = make_backend(models=["m1"])
    record = registry.add_backend("m1", backend.url, secret=None)
    url = f"{make_router(admin_token='adm-123').url}/internal/status"
    assert requests.get(url, timeout=10).status_code == 401
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    ok = requests.get(url, headers={"Authorization": "Bearer adm-123"}, timeout=10)
    assert ok.status_code == 200
    rows = ok.json()["deployments"]
    assert [(r["id"], r["model"], r["in_flight"], r["routable"]) for r in rows] == [(record.id, "m1", 0, True)]


def test_internal_status_is_off_without_an_admin_token(make_router: Any) -> None:
    response = requests.get(f"{make_router().url}/internal/status", headers={"Authorization": "Bearer x"}, timeout=10)
    assert response.status_code == 403 and "router.admin_token" in response.json()["error"]["message"]
