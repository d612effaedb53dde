"""Settings for router and launcher: one TOML file, loaded once at the edge and passed in."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from launcher.core.maintenance import parse_windows


class SettingsError(Exception):
    """A settings file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str = ""
    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 300.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_json_body_bytes: int = 8 * 1024 * 1024
    # Client connections: a request's headers must be complete within header_timeout_s of its first
    # byte (of the connection's opening), a body may fall silent for body_timeout_s, an idle
    # keep-alive connection is closed after keepalive_timeout_s; past max_connections open ones a
    # new connection gets 503. A backend's non-stream answer over max_response_bytes is a 502.
    header_timeout_s: float = 20.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 4096
    max_response_bytes: int = 64 * 1024 * 1024
    health_interval_s: float = 10.0
    health_timeout_s: float = 5.0
    # A server a user registered with no Slurm job the supervisor sees, failing its probes this long, is removed.
    unbacked_down_s: float = 600.0
    retry_after_s: int = 10
    grace_period_s: float = 30.0
    registry_refresh_s: float = 1.0
    ledger_flush_s: float = 1.0
    # While the database is unavailable, unwritten usage waits in memory up to ledger_max_rows
    # rows, then in a spill file under ledger_spill_dir ("": default_state_dir()/ledger-spill).
    ledger_max_rows: int = 50_000
    ledger_spill_dir: str = ""
    request_log: bool = True
    log_format: str = "text"  # "text" or "json" (JSON lines: no key, no text)
    # Output tokens per choice a quota reserves for a request without max_tokens, on any name
    # (capped by the catalog model's limit); docs/reliability.md states what the reservations promise.
    default_reserve_tokens: int = 4096
    per_request_usage: bool = False
    usage_retention_days: int = 30
    supervise: bool = False
    # Scale from zero (catalog `on_demand = true`): a request for a model with no replica waits
    # this long for the one it triggers, then gets 503 with Retry-After; an on-demand model
    # without requests for on_demand_idle_s is drained and its target returns to 0.
    on_demand_wait_s: float = 60.0
    on_demand_idle_s: float = 1800.0
    # Quotas and the usage ledger; off only for benchmarks and development.
    accounting: bool = True
    # Shared mode: the limiter's counters and reservations in Redis ("redis://host:port/db"), so any
    # number of routers enforce one set of limits; "" keeps them in this process (embedded mode).
    redis_url: str = ""
    redis_fail_open: bool = False
    # A stopping router answers /health with 503 for stop_delay_s before it stops accepting.
    stop_delay_s: float = 0.0
    # Worker processes serving one host:port (SO_REUSEPORT); more than 1 needs shared mode or no accounting.
    workers: int = 1


@dataclass(frozen=True)
class EngineEnv:
    """How a job prepares its environment for one engine (module loads, venv, container)."""

    setup: tuple[str, ...] = ()
    prefix: str = ""


@dataclass(frozen=True)
class ClusterSettings:
    partition: str = ""
    account: str = ""
    qos: str = ""
    default_time: str = "04:00:00"
    # Per GPU when a catalog entry sets no `cpus`/`mem`: enough for a real vLLM job (tokenizer,
    # scheduler, weights loaded through host memory); the CPU demo lowers them in its settings.
    cpus_per_gpu: int = 8
    mem_per_gpu: str = "64G"
    router_url: str = "http://127.0.0.1:8000"
    log_dir: str = "~/.local/share/llm-launch/logs"
    port_range: tuple[int, int] = (20000, 29999)
    catalog: str = ""
    start_deadline_s: int = 900
    reconcile_interval_s: float = 2.0
    # A job that fails before it is ready, or within quick_failure_s of being ready, is a quick
    # failure: the next try waits backoff_base_s * 2**(n-1) (at most backoff_max_s), and after
    # max_quick_failures in a row the supervisor stops starting the model and says why.
    quick_failure_s: float = 300.0
    max_quick_failures: int = 3
    backoff_base_s: float = 30.0
    backoff_max_s: float = 900.0
    # Slurm's warning (#SBATCH --signal=B:USR1@signal_lead_s, sent up to 60 s early): the job
    # logs it and keeps serving; the supervisor drains it once its successor serves, or at the
    # last safe moment (drain_threshold_s + 10 s before its end), whichever comes first.
    signal_lead_s: int = 120
    # Successors: a ready job's successor is submitted successor lead seconds before its end:
    # signal_lead_s + Slurm's 60 s signal resolution + the model's start-up (the
    # successor_lead_percentile of its last successor_lead_history submit-to-ready times, queue
    # waits included) + the margin, never under the floor (0: none); and not before the job has
    # served a quarter of its time limit.
    successor_lead_floor_s: float = 0.0
    successor_lead_margin_s: float = 120.0
    successor_lead_percentile: float = 90.0
    successor_lead_history: int = 20
    # A successor still waiting when its predecessor has this little time left is reported
    # (router metric); `status` and the supervisor call a successor LATE once it is not ready
    # when its learned start-up (plus the margin) predicted.
    successor_late_s: float = 300.0
    # Routing near a job's end: no new request to a replica with less time left than
    # drain_threshold_s, nor one whose worst case (max_tokens at the model's measured decode
    # rate, at most max_request_duration_s) outlasts it while another replica has the time.
    drain_threshold_s: float = 60.0
    max_request_duration_s: float = 900.0
    # Planned maintenance, each "START/END" in ISO 8601 (UTC unless an offset is given), e.g.
    # "2025-06-03T08:00Z/2025-06-03T18:00Z": no successor runs into one, and requests during it
    # get a 503 naming its end. maintenance_from_slurm adds Slurm's MAINT reservations.
    maintenance_windows: tuple[str, ...] = ()
    maintenance_from_slurm: bool = False
    extra_sbatch_args: tuple[str, ...] = ()
    engines: Mapping[str, EngineEnv] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyLimits:
    """Limits of one API key; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_audio_seconds: int | None = None


@dataclass(frozen=True)
class Settings:
    database: str = ""
    router: RouterSettings = field(default_factory=RouterSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    key_defaults: KeyLimits = field(default_factory=KeyLimits)
    tiers: Mapping[str, KeyLimits] = field(default_factory=dict)
    source: str = ""


T = TypeVar("T")


def default_config_path() -> Path:
    """Where the settings file is looked for when neither --config nor LLM_LAUNCH_CONFIG is given."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llm-launch" / "settings.toml"


def default_state_dir() -> Path:
    """Where llm-launch keeps local state that must survive a restart (XDG_STATE_HOME)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llm-launch"


def spill_dir(router: RouterSettings) -> Path:
    """The folder of the ledger's spill files."""
    chosen = router.ledger_spill_dir
    return Path(chosen).expanduser() if chosen else default_state_dir() / "ledger-spill"


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load settings from PATH, else LLM_LAUNCH_CONFIG, else the default file if it exists."""
    chosen = path or os.environ.get("LLM_LAUNCH_CONFIG")
    if not chosen:
        default = default_config_path()
        if not default.exists():
            return Settings()
        chosen = default
    file = Path(chosen).expanduser()
    return settings_from_dict(read_toml(file, "settings file", SettingsError), source=str(file))


def read_toml(file: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """FILE parsed as TOML; a missing or broken file raises ERROR naming the file (WHAT it is)."""
    try:
        return tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise error(f"{file}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{file}: not valid TOML: {exc}") from None


def settings_from_dict(data: Mapping[str, Any], source: str = "<settings>") -> Settings:
    """Build Settings from parsed TOML, rejecting unknown keys and wrong types by name."""
    top = dict(data)
    cluster_data = dict(top.pop("cluster", {}))
    engines = {
        name: _build(EngineEnv, value, f"{source}: [cluster.engines.{name}]")
        for name, value in dict(cluster_data.pop("engines", {})).items()
    }
    tiers = {
        name: _build(KeyLimits, value, f"{source}: [tiers.{name}]")
        for name, value in dict(top.pop("tiers", {})).items()
    }
    settings = Settings(
        database=str(top.pop("database", "")),
        router=_build(RouterSettings, top.pop("router", {}), f"{source}: [router]"),
        cluster=dataclasses.replace(
            _build(ClusterSettings, cluster_data, f"{source}: [cluster]"), engines=engines
        ),
        key_defaults=_build(KeyLimits, top.pop("key_defaults", {}), f"{source}: [key_defaults]"),
        tiers=tiers,
        source=source,
    )
    if top:
        raise SettingsError(f"{source}: unknown setting(s): {', '.join(sorted(top))}")
    try:
        parse_windows(settings.cluster.maintenance_windows)
    except ValueError as exc:
        raise SettingsError(f"{source}: [cluster] maintenance_windows: {exc}") from None
    return settings


def _build(cls: type[T], values: Any, where: str) -> T:
    if not isinstance(values, Mapping):
        raise SettingsError(f"{where}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise SettingsError(f"{where}: unknown setting '{key}'")
        kwargs[key] = _coerce(value, fields[key], f"{where} {key}")
    return cls(**kwargs)


def _coerce(value: Any, spec: dataclasses.Field[Any], where: str) -> Any:
    default = spec.default if spec.default is not dataclasses.MISSING else None
    if isinstance(default, tuple) or spec.type in ("tuple[str, ...]", "tuple[int, int]"):
        if not isinstance(value, list):
            raise SettingsError(f"{where}: expected a list")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: expected true or false")
        return value
    if isinstance(default, (int, float)) or "int" in str(spec.type):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        if value < 0:
            raise SettingsError(f"{where}: must not be negative, got {value}")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise SettingsError(f"{where}: expected a string, got {value!r}")
    return value
