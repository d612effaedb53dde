"""The one module that runs Slurm commands: argv lists, timeouts, one-line errors.

Parsing lives in `launcher.slurm.parse` (pure); its records and SlurmError are re-exported here.
`launcher.slurm.connect.open_slurm` picks this client or the pyslurm adapter.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

from launcher.core.maintenance import Window, parse_reservations
from launcher.slurm.parse import (
    JobInfo,
    NodeInfo,
    SlurmError,
    SlurmNoAnswer,
    SlurmReportedError,
    one_line,
    parse_sbatch_output,
    parse_scontrol_show_job_line,
    parse_sinfo_json,
    parse_squeue_json,
)

__all__ = [
    "JobInfo", "NodeInfo", "SlurmClient", "SlurmError", "SlurmNoAnswer", "parse_sbatch_output",
    "parse_scontrol_show_job_line", "parse_sinfo_json", "parse_squeue_json",
]

_T = TypeVar("_T")
_HINT = "is slurmctld running? try scripts/local-slurm start"
# stderr fragments that mean "the controller did not answer", as opposed to "it said no"
_UNREACHABLE = (
    "Unable to contact slurm controller", "Connection refused", "Socket timed out",
    "Zero Bytes were transmitted", "Could not establish a configuration source",
)
# scancel of a job that already ended is what the caller wanted anyway
_ALREADY_GONE = ("already completing or completed", "Invalid job id specified")


class SlurmClient:
    """Runs Slurm's command-line tools; every failure surfaces as SlurmError with one line."""

    def __init__(self, *, timeout_s: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        """env, when given, is the complete environment of each command (as in subprocess)."""
        self.timeout_s = timeout_s
        self.env = dict(env) if env is not None else None
        self.commands_run = 0

    def _run(self, argv: Sequence[str], *, stdin: str | None = None) -> str:
        """Stdout of one Slurm command; counts it in commands_run."""
        self.commands_run += 1
        try:
            done = subprocess.run(
                list(argv), input=stdin, capture_output=True, text=True,
                timeout=self.timeout_s, env=self.env, check=False,
            )
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} not found: Slurm's client tools are not installed "
                             "(apt-get install slurm-client, or scripts/local-slurm start)") from None
        except subprocess.TimeoutExpired:
            raise SlurmNoAnswer(f"Slurm is not reachable: {argv[0]} gave no answer within "
                             f"{self.timeout_s:g} s ({_HINT})") from None
        if done.returncode != 0:
            raise _failure(argv, done.returncode, done.stderr or done.stdout)
        return done.stdout

    def submit(self, script: str, *, args: Sequence[str] = ()) -> str:
        """Submit a batch script (given as text, via stdin); returns the job id."""
        return parse_sbatch_output(self._run(["sbatch", "--parsable", *args], stdin=script))

    def jobs(self, job_ids: Collection[str] | None = None) -> dict[str, JobInfo]:
        """Jobs slurmctld still holds (finished ones too, for MinJobAge), in ONE squeue call.

        Slurm >= 23.02 applies squeue's filters to --json: --states=all keeps the finished jobs
        it would hide, --jobs= leaves out everyone else's (~9 KB of JSON each on 24.11).
        22.05 ignores both in --json, so the filtering happens here too.
        """
        wanted = None if job_ids is None else {str(j) for j in job_ids}
        argv = ["squeue", "--json", "--states=all"]
        if wanted and all(j.isascii() and j.isdigit() for j in wanted):
            argv.append("--jobs=" + ",".join(sorted(wanted, key=int)))
        try:
            jobs = self._parsed(argv, parse_squeue_json)
        except SlurmError as exc:
            # squeue asks for a lone job id by itself, and one slurmctld forgot is an error
            if wanted and len(wanted) == 1 and "Invalid job id" in str(exc):
                return {}
            raise
        if wanted is None:
            return jobs
        return {job_id: job for job_id, job in jobs.items() if job_id in wanted}

    def job(self, job_id: str) -> JobInfo | None:
        """One job by `scontrol show job -o`; None when slurmctld no longer knows it."""
        try:
            line = self._run(["scontrol", "show", "job", "-o", str(job_id)])
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return None
            raise
        tz = datetime.now().astimezone().tzinfo
        return parse_scontrol_show_job_line(line.strip(), tz=tz) if line.strip() and tz else None

    def cancel(self, job_id: str, *, signal: str | None = None, batch_only: bool = False) -> None:
        """scancel (or only signal, with signal=); a job that already ended is no error."""
        argv = ["scancel", *(["--signal", signal] if signal else []),
                *(["--batch"] if batch_only else []), str(job_id)]
        try:
            self._run(argv)
        except SlurmError as exc:
            if not any(text in str(exc) for text in _ALREADY_GONE):
                raise

    def nodes(self) -> list[NodeInfo]:
        """All nodes as sinfo reports them."""
        return self._parsed(["sinfo", "--json"], parse_sinfo_json)

    def set_node_state(self, node: str, state: str, reason: str = "") -> None:
        """scontrol update of a node's state (DOWN and DRAIN need a reason; RESUME does not)."""
        reason_arg = [f"reason={reason}"] if reason else []
        self._run(["scontrol", "update", f"nodename={node}", f"state={state}", *reason_arg])

    def update_time_limit(self, job_id: str, minutes: int) -> None:
        """Set a job's time limit (whole minutes: Slurm's unit); raising it needs admin rights."""
        self._run(["scontrol", "update", f"jobid={job_id}", f"timelimit={int(minutes)}"])

    def reservations(self) -> tuple[Window, ...]:
        """Slurm's MAINT reservations (maintenance windows), by `scontrol show reservation -o`."""
        text = self._run(["scontrol", "show", "reservation", "-o"])
        tz = datetime.now().astimezone().tzinfo
        return parse_reservations(text, tz) if tz else ()

    def ping(self) -> bool:
        """True when slurmctld answers."""
        try:
            return "is UP" in self._run(["scontrol", "ping"])
        except SlurmError:
            return False

    def _parsed(self, argv: Sequence[str], parse: Callable[[str], _T]) -> _T:
        """Run and parse; squeue/sinfo report a lost controller inside JSON, with exit status 0."""
        text = self._run(argv)
        try:
            return parse(text)
        except SlurmReportedError as exc:
            raise SlurmError(f"Slurm is not reachable: {exc} ({_HINT})") from None


def _failure(argv: Sequence[str], returncode: int, stderr: str) -> SlurmError:
    message = one_line(stderr) or f"exit status {returncode}"
    if any(text in message for text in _UNREACHABLE):
        return SlurmError(f"Slurm is not reachable: {argv[0]}: {message} ({_HINT})")
    return SlurmError(f"{argv[0]} failed: {message}")
