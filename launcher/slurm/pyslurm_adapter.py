"""Optional adapter: submit, query and cancel through pyslurm instead of the command-line tools.

pyslurm only builds against one Slurm release (PyPI has 25.11; Debian 12 ships Slurm 22.05),
so the CLI client stays the default. Select this one with LLM_LAUNCH_SLURM_ADAPTER=pyslurm where a
matching pyslurm is installed. Node, reservation and time-limit operations keep using the CLI.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from launcher.slurm.client import SlurmClient
from launcher.slurm.parse import JobInfo, SlurmError, one_line

UNAVAILABLE = "PyPI's pyslurm needs Slurm 25.11; install the pyslurm release that matches this cluster"


def import_pyslurm() -> ModuleType:
    """The pyslurm module, or SlurmError saying why it cannot be used."""
    try:
        return importlib.import_module("pyslurm")
    except ImportError as exc:
        raise SlurmError(f"pyslurm is not importable ({exc}); {UNAVAILABLE}") from None


class PySlurmClient(SlurmClient):
    """SlurmClient whose submit, jobs and cancel go through libslurm (one RPC per call)."""

    def __init__(self, *, timeout_s: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        super().__init__(timeout_s=timeout_s, env=env)
        self._pyslurm = import_pyslurm()

    def submit(self, script: str, *, args: Sequence[str] = ()) -> str:
        """Submit SCRIPT with its #SBATCH lines; extra sbatch ARGS are not supported here."""
        if args:
            raise SlurmError(f"the pyslurm adapter takes options only as #SBATCH lines, not {list(args)}")
        self.commands_run += 1
        try:
            description = self._pyslurm.JobSubmitDescription(script=script)
            description.load_sbatch_options()
            return str(description.submit())
        except self._pyslurm.RPCError as exc:
            raise SlurmError(f"sbatch failed: {one_line(str(exc))}") from None

    def jobs(self, job_ids: Collection[str] | None = None) -> dict[str, JobInfo]:
        """Every job slurmctld holds (one RPC), filtered to JOB_IDS when given."""
        self.commands_run += 1
        try:
            loaded = self._pyslurm.Jobs.load()
        except self._pyslurm.RPCError as exc:
            raise SlurmError(f"Slurm is not reachable: {one_line(str(exc))}") from None
        wanted = set(job_ids) if job_ids is not None else None
        infos = (job_info(job) for job in loaded.values())
        return {i.job_id: i for i in infos if wanted is None or i.job_id in wanted}

    def cancel(self, job_id: str, *, signal: str | None = None, batch_only: bool = False) -> None:
        """Cancel the job, or send it SIGNAL (to the batch shell only with BATCH_ONLY)."""
        self.commands_run += 1
        try:
            job = self._pyslurm.Job(int(job_id))
            if signal is None:
                job.cancel()
            else:
                job.send_signal(_signal_name(signal), steps="batch" if batch_only else "all")
        except self._pyslurm.RPCError as exc:
            if "Invalid job id" not in str(exc) and "already completing" not in str(exc):
                raise SlurmError(f"scancel failed: {one_line(str(exc))}") from None


def job_info(job: Any) -> JobInfo:
    """A pyslurm Job as the JobInfo the CLI parser makes."""
    limit = getattr(job, "time_limit", None)
    state = str(job.state)
    return JobInfo(
        job_id=str(job.id), name=str(getattr(job, "name", "") or ""), state=state,
        reason=_reason(getattr(job, "state_reason", None)), node=getattr(job, "batch_host", None) or None,
        submit_time=_utc(getattr(job, "submit_time", None)), start_time=_utc(getattr(job, "start_time", None)),
        end_time=_utc(getattr(job, "end_time", None)),
        time_limit_s=int(limit) * 60 if isinstance(limit, int) else None,
        exit_code=getattr(job, "exit_code", None) if state not in ("PENDING", "RUNNING") else None,
        comment=_reason(getattr(job, "comment", None)),
    )


def _reason(value: object) -> str | None:
    return None if value in (None, "", "None") else str(value)


def _utc(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return None


def _signal_name(signal: str) -> str:
    # pyslurm 22.5 wants "SIGUSR1"; our callers say "USR1" as scancel does.
    return signal if signal.startswith("SIG") or signal.isdigit() else f"SIG{signal}"
