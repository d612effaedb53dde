"""How many usage records per second the ledger absorbs, and what admit + finish cost.

    python -m bench.ledger_throughput [--records 200000] [--keys 1000] [--per-request]

Three figures, each on a fresh SQLite registry in a temporary directory:
- record(): records/s the event-loop side takes (dictionary update, plus a tuple per request
  row when per-request rows are on);
- end to end: records/s from the first record() to the last row committed, flushing every
  `flush_s` in a thread as the router does;
- admit + finish: microseconds of CPU per request for the full quota path of one request.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import datetime
from pathlib import Path

from launcher.core.db import open_engine
from launcher.core.keys import KeyRecord
from launcher.core.settings import KeyLimits
from router.accounting.seam import RequestInfo, Usage
from router.accounting.ledger import Ledger
from router.accounting.metered import LimitsAccounting

MODELS = ("qwen3.5-122b", "qwen3.5-122b-nonthinking", "gemma-4-31B-it", "qwen3-embedding-8B")
USAGE = Usage(prompt_tokens=812, completion_tokens=230, reasoning_tokens=120)


def key(i: int, limits: KeyLimits) -> KeyRecord:
    return KeyRecord(id=i, name=f"user{i}", prefix="sk-llm-xxxxxx", key_hash=str(i), models=None,
                     account=f"proj{i % 50}", tier=None, limits=limits, expires_at=None,
                     revoked_at=None, created_at=datetime(2026, 1, 1))


async def ledger_rates(records: int, keys: int, per_request: bool, flush_s: float) -> tuple[float, float]:
    """(record() calls/s, end-to-end records/s including the database writes)."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(open_engine(f"sqlite:///{Path(tmp) / 'registry.db'}"),
                        flush_s=flush_s, per_request=per_request)
        await ledger.start()
        start, busy = time.perf_counter(), 0.0
        now = time.time()
        for batch in range(0, records, 1000):
            t = time.perf_counter()
            for i in range(batch, min(batch + 1000, records)):
                ledger.record("req", i % keys, "name", "proj", MODELS[i % 4], 200, USAGE, "b", now, now)
            busy += time.perf_counter() - t
            await asyncio.sleep(0)  # let the flush task run, as the router's loop would
        await ledger.close()
        elapsed = time.perf_counter() - start
        assert ledger.pending == 0 and ledger.failed_batches == 0
    return records / busy, records / elapsed


def admit_finish_us(requests: int, keys: int) -> float:
    """CPU microseconds for one admit + finish with every limit set."""
    limits = KeyLimits(rpm=10**9, tpm=10**12, max_parallel=1000, daily_tokens=10**12,
                       monthly_tokens=10**13, daily_audio_seconds=10**6)
    accounting = LimitsAccounting(Ledger(open_engine("sqlite://")))
    infos = [RequestInfo("req", key(i, limits), MODELS[i % 4], "chat", 800, 256) for i in range(keys)]
    now = time.time()
    start = time.process_time()
    for i in range(requests):
        admission = accounting.admit_now(infos[i % keys], now)
        accounting.finish(admission, 200, USAGE, "http://node:8000", now)
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--flush-s", type=float, default=1.0)
    parser.add_argument("--per-request", action="store_true", help="also write per-request rows")
    args = parser.parse_args()
    for per_request in sorted({False, args.per_request}):
        absorbed, end_to_end = asyncio.run(
            ledger_rates(args.records, args.keys, per_request, args.flush_s))
        label = "with per-request rows" if per_request else "aggregates only"
        print(f"ledger ({label}): record() {absorbed:,.0f}/s; "
              f"end to end incl. SQLite writes {end_to_end:,.0f} records/s")
    print(f"admit + finish (all limits set, {args.keys} keys): "
          f"{admit_finish_us(args.records, args.keys):.2f} us CPU per request")


if __name__ == "__main__":
    main()
