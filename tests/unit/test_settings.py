"""Settings files: values read, defaults kept, mistakes named by file and key."""

from pathlib import Path

import pytest

from launcher.core.db import resolve_db_url
from launcher.core.settings import KeyLimits, SettingsError, load_settings
from launcher.core.settings_overrides import with_overrides


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


def test_command_line_overrides_any_setting_and_are_checked(tmp_path: Path) -> None:
    base = load_settings(write(tmp_path, "[cluster]\npartition = \"cpu\"\n[key_defaults]\nrpm = 60\n"))
    changed = with_overrides(base, ["cluster.partition=gpu", "cluster.port_range=[30000, 30010]",
                                    "key_defaults.tpm=9000", "router.port=9001"])
    assert changed.cluster.partition == "gpu" and changed.cluster.port_range == (30000, 30010)
    assert changed.key_defaults == KeyLimits(rpm=60, tpm=9000) and changed.router.port == 9001
    assert with_overrides(base, ["stall_timeout_s=5"], default_section="router").router.stall_timeout_s == 5
    for bad, message in [("router.prot=1", "unknown setting 'prot'"), ("cluster.partition", "SECTION.NAME=VALUE"),
                         ("router.port=abc", "expected a number")]:
        with pytest.raises(SettingsError, match=message):
            with_overrides(base, [bad])


def test_global_set_reaches_the_commands(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from launcher.cli import main

    args = ["--db", str(tmp_path / "r.db"), "--set", "key_defaults.rpm=7", "keys", "create", "eve", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and '"rpm": 7' in result.output
    bad = CliRunner().invoke(main, ["--db", str(tmp_path / "r.db"), "--set", "key_defaults.rpm=-1", "keys", "list"])
    assert bad.exit_code == 1 and "must not be negative" in bad.output
