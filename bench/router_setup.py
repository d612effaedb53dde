"""Registries for the router under test: its key and backend made with the CLI, bulk ones in SQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.targets import llm_launch

# Every limit set, far above what the benchmark sends: each one is checked on every request.
LIMIT_FLAGS = ["--rpm", "1000000000", "--tpm", "1000000000000", "--max-parallel", "1000000",
               "--daily-tokens", "100000000000000", "--monthly-tokens", "1000000000000000"]
CHAT_MODEL = "bench-chat"
EMBED_MODEL = "bench-embed"


def router_available() -> bool:
    """Whether the router and its CLI command are part of this checkout."""
    try:
        import router.app  # noqa: F401
        import launcher.cli.router_cmd  # noqa: F401
    except ImportError:
        return False
    return True


def write_config(path: Path) -> Path:
    """A settings file with the router's defaults (accounting on, as shipped)."""
    path.write_text("[router]\naccounting = true\n")
    return path


def cli(db: Path, config: Path, *args: str) -> str:
    """Run `llm-launch --db DB --config CONFIG ARGS` and return its stdout."""
    argv = [*llm_launch(), "--db", str(db), "--config", str(config), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


def make_registry(db: Path, config: Path, backend_url: str, secret: str) -> str:
    """A registry with one limited key and one chat and one embeddings backend; returns the key."""
    out = cli(db, config, "keys", "create", "bench", "--account", "bench", *LIMIT_FLAGS, "--json")
    key: str = json.loads(out)["key"]
    cli(db, config, "backends", "add", CHAT_MODEL, backend_url, "--secret", secret)
    cli(db, config, "backends", "add", EMBED_MODEL, backend_url, "--kind", "embeddings",
        "--secret", secret)
    return key


def add_keys(db: Path, count: int) -> None:
    """COUNT more keys in one transaction, hashed and limited like the real ones."""
    from launcher.core.db import open_engine, session_factory, utcnow
    from launcher.core.keys import DISPLAY_PREFIX_LEN, generate_key, hash_key
    from launcher.core.schema import ApiKey

    engine = open_engine(f"sqlite:///{db}")
    now = utcnow()
    with session_factory(engine)() as session:
        for i in range(count):
            key = generate_key()
            session.add(ApiKey(name=f"bulk-{i}", prefix=key[:DISPLAY_PREFIX_LEN],
                               key_hash=hash_key(key), account="bench", rpm=1000, tpm=1000000,
                               max_parallel=10, created_at=now, updated_at=now))
        session.commit()
    engine.dispose()


def add_backends(db: Path, count: int, backend_url: str, secret: str) -> None:
    """COUNT more ready chat backends of other models, all at BACKEND_URL."""
    from launcher.core.db import open_engine, session_factory
    from launcher.core.deployments import add_backend

    engine = open_engine(f"sqlite:///{db}")
    with session_factory(engine)() as session:
        for i in range(count):
            model = CHAT_MODEL if i % 2 == 0 else f"bench-other-{i}"
            add_backend(session, model, backend_url, secret=secret)
    engine.dispose()
