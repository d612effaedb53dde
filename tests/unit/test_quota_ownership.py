"""In the embedded mode one router process owns a registry's limits; a second one refuses to start and says why."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.core.db import open_engine
from launcher.core.settings import RouterSettings, Settings
from router.accounting.seam import NoAccounting
from router.accounting.factory import make_accounting
from router.accounting.metered import LimitsAccounting
from router.accounting.ownership import LimitsOwnershipError
from router.accounting.shared import SharedAccounting

HOLD = textwrap.dedent("""
    import sys
    from launcher.core.db import open_engine
    from router.accounting.ownership import OwnershipLock
    lock = OwnershipLock.for_engine(open_engine(sys.argv[1]))
    lock.acquire()
    print("held", flush=True)
    sys.stdin.read()
""")


def accounting(url: str) -> LimitsAccounting:
    result = make_accounting(Settings(), open_engine(url))
    assert isinstance(result, LimitsAccounting)
    return result


async def test_second_router_process_on_the_same_registry_refuses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    open_engine(url)
    other = subprocess.Popen([sys.executable, "-c", HOLD, url], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        with pytest.raises(LimitsOwnershipError, match=f"pid {other.pid}.*exact only when one"):
            await accounting(url).start()
    finally:
        other.communicate("")
    mine = accounting(url)
    await mine.start()  # the other process is gone: its lock went with it
    await mine.close()


async def test_ownership_is_released_on_close_so_a_restart_works(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    first = accounting(url)
    await first.start()
    with pytest.raises(LimitsOwnershipError):
        await accounting(url).start()
    await first.close()
    second = accounting(url)
    await second.start()
    await second.close()


async def test_a_postgresql_registry_has_one_owner_and_shared_mode_none(pg_url: str, redis_url: str) -> None:
    first = accounting(pg_url)
    await first.start()
    with pytest.raises(LimitsOwnershipError, match="redis_url"):
        await accounting(pg_url).start()
    shared = make_accounting(Settings(router=RouterSettings(redis_url=redis_url)), open_engine(pg_url))
    assert isinstance(shared, SharedAccounting)  # counters in Redis: no owner to wait for
    await shared.start()
    await shared.close()
    await first.close()
    second = accounting(pg_url)  # the session that held the lock is gone
    await second.start()
    await second.close()


def test_accounting_off_means_no_limits_and_no_lock(tmp_path: Path) -> None:
    settings = Settings(router=RouterSettings(accounting=False))
    assert isinstance(make_accounting(settings, open_engine(f"sqlite:///{tmp_path / 'r.db'}")),
                      NoAccounting)
