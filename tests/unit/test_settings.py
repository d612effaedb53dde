"""Settings files: values read, defaults kept, mistakes named by file and key."""

from pathlib import Path

import pytest

from launcher.db import resolve_db_url
from launcher.settings import KeyLimits, SettingsError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_values_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
database = "/srv/llm/registry.db"
[router]
port = 9000
stall_timeout_s = 12.5
[cluster]
partition = "gpu"
port_range = [30000, 30100]
[cluster.engines.vllm]
setup = ["module load cuda/12.4", "source /opt/vllm/bin/activate"]
[key_defaults]
rpm = 60
[tiers.student]
rpm = 10
daily_tokens = 100000
""")
    settings = load_settings(path)
    assert settings.router.port == 9000
    assert settings.router.stall_timeout_s == 12.5
    assert settings.router.host == "127.0.0.1"
    assert settings.cluster.port_range == (30000, 30100)
    assert settings.cluster.engines["vllm"].setup[0] == "module load cuda/12.4"
    assert settings.key_defaults == KeyLimits(rpm=60)
    assert settings.tiers["student"].daily_tokens == 100000
    assert settings.database == "/srv/llm/registry.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[router]\nprot = 1\n", "[router]: unknown setting 'prot'"),
        ("[router]\nport = 'x'\n", "[router] port: expected a number"),
        ("[key_defaults]\nrpm = -1\n", "rpm: must not be negative"),
        ("[cluster]\npartition = 3\n", "partition: expected a string"),
        ("colour = 1\n", "unknown setting(s): colour"),
        ("[router\n", "not valid TOML"),
    ],
)
def test_mistakes_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_an_error_only_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("LLM_LAUNCH_CONFIG", raising=False)
    assert load_settings().router.port == 8000
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_database_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("LLM_LAUNCH_DB", raising=False)
    assert resolve_db_url(None) == f"sqlite:///{tmp_path}/data/llm-launch/registry.db"
    assert resolve_db_url(None, str(tmp_path / "s.db")) == f"sqlite:///{tmp_path}/s.db"
    monkeypatch.setenv("LLM_LAUNCH_DB", "postgresql://db.example/llm")
    assert resolve_db_url(None, "ignored.db") == "postgresql://db.example/llm"
    assert resolve_db_url(str(tmp_path / "cli.db"), "x") == f"sqlite:///{tmp_path}/cli.db"
