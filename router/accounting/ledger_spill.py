"""The ledger's spill files: usage batches the database could not take, past the in-memory bound.

Files live in a subfolder per registry (a hash of its URL). Each router appends to its own file (`spill-<instance>.jsonl`, one batch per line with its id,
fsynced) and holds an exclusive `flock` on it while it lives. A file nobody holds belongs to a
router that stopped or crashed: the next router to start on the same folder adopts it and writes
its batches. Batch ids make the replay safe to repeat: a batch already written is skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from router.accounting.ledger_db import Batch

log = logging.getLogger(__name__)
PATTERN = "spill-*.jsonl"


def registry_folder(base: Path, engine: Engine) -> Path:
    """The subfolder of BASE for ENGINE's registry: routers adopt only their own registry's files."""
    url = engine.url.render_as_string(hide_password=True)
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


class SpillFiles:
    """This router's spill file plus the orphaned ones it adopted."""

    def __init__(self, directory: Path, instance: str) -> None:
        self.directory = directory
        self._own = directory / f"spill-{instance}.jsonl"
        self._fds: dict[Path, int] = {}  # files we hold the lock of
        self.rows = 0  # rows in the files, not yet known to be written

    def append(self, batches: list[Batch]) -> None:
        """Add BATCHES to this router's file, durably (fsync) before returning."""
        fd = self._hold(self._own, create=True)
        assert fd is not None
        data = "".join(json.dumps(_encode(b), separators=(",", ":")) + "\n" for b in batches)
        os.write(fd, data.encode())
        os.fsync(fd)
        self.rows += sum(b.rows for b in batches)

    def adopt(self) -> int:
        """Take over the files of routers that are gone; returns the rows found in them."""
        if not self.directory.is_dir():
            return 0
        found = 0
        for path in sorted(self.directory.glob(PATTERN)):
            if path in self._fds or self._hold(path, create=False) is None:
                continue
            rows = sum(b.rows for b in _read(path))
            log.warning("usage ledger: adopting %d unwritten rows from %s", rows, path.name)
            found += rows
        self.rows += found
        return found

    def load(self) -> list[Batch]:
        """Every batch in the files held, oldest first."""
        return [batch for path in list(self._fds) for batch in _read(path)]

    def clear(self) -> None:
        """Every batch held is written: delete the files and let their locks go."""
        for path, fd in self._fds.items():
            path.unlink(missing_ok=True)
            os.close(fd)
        self._fds.clear()
        self.rows = 0

    def close(self) -> None:
        """Let the locks go, leaving the files for the next router to adopt."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _hold(self, path: Path, *, create: bool) -> int | None:
        if path in self._fds:
            return self._fds[path]
        if create:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live router's own file
            os.close(fd)
            return None
        self._fds[path] = fd
        return fd


def _encode(batch: Batch) -> dict[str, Any]:
    return {"id": batch.id, "daily": [[*key, *row] for key, row in batch.daily.items()],
            "requests": [list(r) for r in batch.requests]}


def _read(path: Path) -> list[Batch]:
    batches = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            item = json.loads(line)
            daily = {(d[0], d[1], d[2]): list(d[3:]) for d in item["daily"]}
            batches.append(Batch(item["id"], daily, [tuple(r) for r in item["requests"]]))
        except (ValueError, KeyError, IndexError, TypeError):  # a line cut short by a crash mid-write
            log.error("usage ledger: %s line %d is not a batch; skipped", path.name, number)
    return batches
