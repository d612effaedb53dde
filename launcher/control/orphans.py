"""Submissions a supervisor did not live to record: found by their mark in Slurm, and adopted.

Before sbatch, a deployment row is written as a pending intent without a job id, and the job
carries the row's mark in its Slurm comment. A supervisor killed between the two (sbatch done,
job id not yet written) leaves an intent that still counts as a replica, so its successor never
submits a duplicate; the successor then looks the mark up in Slurm and adopts the job: the row
already holds the job's secret and registration token, so the job registers as if nothing had
happened, and no model start is wasted. An intent whose mark no job carries after the grace
time was never submitted: it is marked gone and the model's replica is submitted again.

Only marked jobs are touched: users' own jobs under catalog names carry no mark and are never
adopted or cancelled.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine

from launcher.core.db import session_factory
from launcher.core.deployments import DeploymentRecord, compare_and_set, set_job_id
from launcher.engines.table import EXTERNAL
from launcher.slurm.client import SlurmClient, SlurmError

LOG = logging.getLogger("llm_launch.supervisor")
_PREFIX = "llm-launch-deployment"
# An intent younger than this may belong to an sbatch still running (its timeout is 30 s).
ORPHAN_GRACE_S = 60.0


def job_mark(deployment_id: int, secret: str) -> str:
    """The comment of deployment DEPLOYMENT_ID's job. Anyone can read comments: the secret shows
    only as a hash prefix, there to keep two registries' #5 apart."""
    return f"{_PREFIX}-{deployment_id}-{hashlib.sha256(secret.encode()).hexdigest()[:16]}"


def mark_script(script: str, mark: str) -> str:
    """SCRIPT with an #SBATCH --comment line right after its first (#!) line."""
    first, _, rest = script.partition("\n")
    return f"{first}\n#SBATCH --comment={mark}\n{rest}"


def intents(rows: Sequence[DeploymentRecord]) -> list[DeploymentRecord]:
    """Pending rows without a job: submissions in flight, or left behind by a dead supervisor."""
    return [r for r in rows if r.state == "pending" and r.job_id is None and r.engine != EXTERNAL]


def resolve_orphans(engine: Engine, slurm: SlurmClient, rows: Sequence[DeploymentRecord],
                    now: datetime, grace_s: float) -> int:
    """Adopt the jobs of INTENTS found in Slurm; drop the ones older than GRACE_S with no job.

    Costs one squeue, and only when there are intents. Returns how many rows changed.
    """
    pending = intents(rows)
    if not pending:
        return 0
    try:
        marked = {job.comment: job.job_id for job in slurm.jobs().values() if job.comment}
    except SlurmError as exc:
        LOG.warning("cannot look for unrecorded jobs, trying next pass: %s", exc)
        return 0
    changed = 0
    with session_factory(engine)() as session:
        for row in pending:
            job_id = marked.get(job_mark(row.id, row.secret or ""))
            if job_id is not None:
                if set_job_id(session, row.id, job_id, now):
                    changed += 1
                    LOG.warning("%s: adopted job %s of deployment #%d, submitted by a supervisor that "
                                "stopped before recording it", row.model, job_id, row.id)
                continue
            if row.submitted_at is not None and now - row.submitted_at < timedelta(seconds=grace_s):
                continue  # its sbatch may still be running (another process's `up`)
            why = "its submission was interrupted: no Slurm job carries its mark"
            if compare_and_set(session, row.id, "pending", {"state": "gone", "reason": why, "gone_at": now}, now):
                changed += 1
                LOG.warning("%s: deployment #%d gone: %s", row.model, row.id, why)
        session.commit()
    return changed
