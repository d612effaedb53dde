"""Choosing the Slurm client: the command-line tools (default) or the pyslurm adapter."""

from __future__ import annotations

import os
from collections.abc import Mapping

from launcher.slurm.client import SlurmClient
from launcher.slurm.parse import SlurmError
from launcher.slurm.pyslurm_adapter import PySlurmClient

__all__ = ["open_slurm"]


def open_slurm(env: Mapping[str, str] | None = None) -> SlurmClient:
    """The client LLM_LAUNCH_SLURM_ADAPTER names: `cli` (default) or `pyslurm`."""
    adapter = os.environ.get("LLM_LAUNCH_SLURM_ADAPTER", "cli")
    if adapter == "pyslurm":
        return PySlurmClient(env=env)  # imports pyslurm only now: it is optional
    if adapter != "cli":
        raise SlurmError(f"LLM_LAUNCH_SLURM_ADAPTER={adapter!r}: expected 'cli' or 'pyslurm'")
    return SlurmClient(env=env)
