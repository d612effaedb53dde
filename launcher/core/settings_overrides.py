"""Settings changed from the command line: SECTION.NAME=VALUE pairs, checked like the file."""

from __future__ import annotations

import dataclasses
import tomllib
from typing import Any, Sequence

from launcher.core.settings import Settings, SettingsError, settings_from_dict


def with_overrides(settings: Settings, pairs: Sequence[str], default_section: str = "") -> Settings:
    """SETTINGS with SECTION.NAME=VALUE pairs applied and checked like the file.

    VALUE is TOML (30, true, "x", [1, 2]); anything that is not TOML is taken as a string.
    """
    data = _as_toml(settings)
    for item in pairs:
        name, sep, text = item.partition("=")
        path = [p for p in name.strip().split(".") if p]
        if not sep or not path:
            raise SettingsError(f"command line: expected SECTION.NAME=VALUE, got {item!r}")
        if len(path) == 1 and default_section:
            path.insert(0, default_section)
        table = data
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise SettingsError(f"command line: {'.'.join(path)}: {part} is not a section")
        table[path[-1]] = _toml_value(text.strip())
    return settings_from_dict(data, source="command line")


def _as_toml(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = _lists(dataclasses.asdict(settings))
    data.pop("source")
    return data


def _lists(value: Any) -> Any:
    if isinstance(value, dict):  # TOML has no null: an unset limit is left out
        return {k: _lists(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
