"""The one table of engines and kinds: adding an engine touches this table and a template.

A leaf module (it imports nothing from the project), so launcher.core, launcher.slurm and the
router can all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DEFAULT_SECRET_ENV", "ENGINES", "EXTERNAL", "KINDS", "KIND_ENDPOINTS", "EngineSpec", "command_engines"]

# What a server does; it also decides how the router health-checks it.
KINDS = ("chat", "embeddings", "transcription", "rerank")
# The router endpoints (named as in router/api/paths.py) a server of each kind answers; the
# router refuses the others for that model instead of forwarding them to a server that cannot.
KIND_ENDPOINTS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "chat": ("chat", "completions", "responses", "messages", "count_tokens"),
    "embeddings": ("embeddings",),
    "transcription": ("transcriptions", "translations"),
    "rerank": ("rerank", "score"),  # cross-encoders; an embeddings entry with capability "rerank" too
})
# Where a job's server finds the bearer secret it must require (argv is public, env is not).
DEFAULT_SECRET_ENV = "LLM_LAUNCH_BACKEND_SECRET"
# The engine recorded for servers registered by hand (`backends add`, `register`): no template.
EXTERNAL = "external"


@dataclass(frozen=True)
class EngineSpec:
    """One engine the launcher can start as a Slurm job."""

    name: str
    template: str  # the sbatch template under slurm_templates/
    default_kind: str = "chat"
    kinds: tuple[str, ...] = KINDS  # the kinds a catalog entry of this engine may have
    needs_command: bool = False  # the catalog entry gives the server's argv (`command`)
    secret_env: str = DEFAULT_SECRET_ENV
    probes_health: bool = False  # the router checks /health as well as /v1/models


# In catalog order: error messages list them as written here.
ENGINES: Mapping[str, EngineSpec] = MappingProxyType({spec.name: spec for spec in (
    # vLLM reads its --api-key from VLLM_API_KEY; its /health says the engine is alive.
    EngineSpec("vllm", "vllm.sbatch.j2", secret_env="VLLM_API_KEY", probes_health=True),
    EngineSpec("whisper", "whisper.sbatch.j2", default_kind="transcription", kinds=("transcription",),
               probes_health=True),
    EngineSpec("command", "command.sbatch.j2", needs_command=True),
)})


def command_engines() -> tuple[str, ...]:
    """The engines whose catalog entries give a `command`."""
    return tuple(name for name, spec in ENGINES.items() if spec.needs_command)
