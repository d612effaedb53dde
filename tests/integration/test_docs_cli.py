"""The docs and the CLI agree: every `llm-launch` command shown in docs/*.md and README.md parses
(read-only ones really run against a temporary registry), every command and option of the CLI is
in docs/cli.md, docs/settings.example.toml loads and covers every setting, the admin guide's
settings tables state the real defaults, and its systemd units start commands that exist."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from launcher.core.catalog import CatalogEntry, catalog_from_dict, packaged_catalog
from launcher.cli import main
from launcher.slurm.render import JobSecrets, JobSpec, render_script
from launcher.core.settings import ClusterSettings, EngineEnv, KeyLimits, RouterSettings, load_settings
from launcher.core.settings import settings_from_dict
from tests.haproxy import documented_router_settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
ADMIN = ROOT / "docs" / "admin-guide.md"
CLI_MD = ROOT / "docs" / "cli.md"
EXAMPLE = ROOT / "docs" / "settings.example.toml"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_LANGS = {"bash", "sh", "shell", "console"}  # untagged blocks are diagrams
CONTROL = {";", "&&", "||", "|", "&", ">", ">>", "<", "(", ")"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Commands that change nothing outside a fresh registry: the docs test runs them for real.
READ_ONLY = {("models",), ("render",), ("usage",), ("status",), ("keys", "list"), ("backends", "list"),
             ("tokens", "list"), ("db", "current"), ("db", "upgrade")}


@dataclasses.dataclass(frozen=True)
class Shown:
    """One `llm-launch` command line shown in a doc: its argv after `llm-launch`, and its env."""

    where: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def blocks(path: Path, langs: set[str]) -> Iterator[str]:
    """The fenced code blocks of PATH whose language is in LANGS."""
    for match in FENCE.finditer(path.read_text()):
        if match.group(1) in langs:
            yield match.group(2)


def tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return list(lexer)


def commands_in(line: str, env: dict[str, str], where: str) -> Iterator[Shown]:
    """`llm-launch` invocations in one shell line, in command position or inside a quoted string."""
    words = tokens(line)
    start = True
    for i, word in enumerate(words):
        if word in CONTROL:
            start = True
            continue
        if "llm-launch " in word:  # e.g. trap 'llm-launch register ... --deregister' EXIT
            yield from commands_in(word, env, where)
        if not start:
            continue
        head = command_head(words, i)
        start = False
        if head is not None and os.path.basename(words[head]) == "llm-launch":
            inline = dict(w.split("=", 1) for w in words[i:head] if ASSIGNMENT.match(w))
            end = next((j for j in range(head + 1, len(words)) if words[j] in CONTROL), len(words))
            yield Shown(where, tuple(words[head + 1:end]), tuple({**env, **inline}.items()))


def command_head(words: list[str], i: int) -> int | None:
    """Index of the program a simple command runs, past VAR=x assignments and `sudo -u USER ...`."""
    while i < len(words) and ASSIGNMENT.match(words[i]):
        i += 1
    if i < len(words) and words[i] == "sudo":
        i += 1
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] in ("-u", "-g") else 1
    return i if i < len(words) and words[i] not in CONTROL else None


def shown_commands() -> list[Shown]:
    """Every `llm-launch` command in the shell blocks of the docs, with the exports before it."""
    found: list[Shown] = []
    for path in DOCS:
        untagged = ["\n".join(line for line in block.splitlines() if line.startswith("llm-launch "))
                    for block in blocks(path, {""})]
        for number, block in enumerate([*blocks(path, SHELL_LANGS), *untagged]):
            env: dict[str, str] = {}
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith("export ") and ASSIGNMENT.match(line[7:]):
                    name, value = tokens(line[7:])[0].split("=", 1)
                    env[name] = value
                found += commands_in(line, env, f"{path.name} block {number + 1}")
    return found


def inline_commands() -> list[Shown]:
    """`llm-launch ...` written as inline code in the prose of the docs."""
    found = []
    for path in DOCS:
        prose = FENCE.sub("", path.read_text())
        for span in re.findall(r"`(llm-launch [^`]+)`", prose):
            found.append(Shown(f"{path.name}: `{span}`", tuple(tokens(span)[1:])))
    return found


def rest_of(ctx: click.Context) -> list[str]:
    return [*getattr(ctx, "_protected_args", []), *ctx.args]


def parse(args: tuple[str, ...], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
          partial: bool = False) -> tuple[str, ...]:
    """Parse ARGS exactly as `llm-launch` would (types, required options) without running it.

    partial: ARGS may stop at a group (`llm-launch --db`, `llm-launch keys`)."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("LLM_LAUNCH_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            ctx = main.make_context("llm-launch", list(args))
            path: tuple[str, ...] = ()
            while isinstance(ctx.command, click.Group) and (rest_of(ctx) or not partial):
                found, command, remaining = ctx.command.resolve_command(ctx, rest_of(ctx))
                assert command is not None and found is not None
                path += (found,)
                ctx = command.make_context(found, remaining, parent=ctx)
            return path
        except click.exceptions.Exit as done:  # --help, --version
            assert done.exit_code == 0
            return ()


def test_docs_show_commands() -> None:
    shown = {" ".join(s.args) for s in shown_commands()}
    assert {"keys list", "router --host 0.0.0.0 --port 8000 --set stall_timeout_s=600"} <= shown
    assert "up qwen3-5-122b --wait --timeout 3600" in shown


@pytest.mark.parametrize("shown", shown_commands(), ids=lambda s: f"{s.where}: {' '.join(s.args)}"[:90])
def test_shown_command_parses(shown: Shown, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        parse(shown.args, dict(shown.env), monkeypatch)
    except click.ClickException as exc:
        pytest.fail(f"{shown.where}: `llm-launch {shlex.join(shown.args)}` does not parse: {exc.format_message()}")


@pytest.mark.parametrize("shown", inline_commands(), ids=lambda s: s.where[:90])
def test_inline_command_exists(shown: Shown, monkeypatch: pytest.MonkeyPatch) -> None:
    words = tuple(w for w in shown.args if w not in ("...", "…"))
    try:  # placeholders (MODEL, ID) are not values: only the command path and option names must exist
        parse((*words, "--help"), {}, monkeypatch, partial=True)
    except click.ClickException as exc:
        pytest.fail(f"{shown.where} names no real command or option: {exc.format_message()}")


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """The example settings with a temporary registry, log folder and catalog copy in place of /etc."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(packaged_catalog("production").read_text())
    text = EXAMPLE.read_text()
    for key, value in (("database", tmp_path / "registry.db"), ("log_dir", tmp_path / "logs"),
                       ("catalog", catalog)):
        text = re.sub(rf"^{key} = .*$", f'{key} = "{value}"', text, count=1, flags=re.M)
    settings = tmp_path / "settings.toml"
    settings.write_text(text)
    return {"/etc/llm-launch/settings.toml": str(settings), "/etc/llm-launch/catalog.toml": str(catalog)}


def test_read_only_commands_run(sandbox: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    ran = set()
    for shown in shown_commands():
        path = parse(shown.args, dict(shown.env), monkeypatch)
        if not any(path == r for r in READ_ONLY) or "--watch" in shown.args:
            continue
        args = [sandbox.get(a, a) for a in shown.args]
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LLM_LAUNCH_")}
        env.update({k: sandbox.get(v, v) for k, v in shown.env})
        env["LLM_LAUNCH_CONFIG"] = sandbox["/etc/llm-launch/settings.toml"]
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, f"{shown.where}: llm-launch {shlex.join(args)}\n{result.output}"
        ran.add(path)
    assert {("models",), ("render",), ("usage",), ("keys", "list")} <= ran


def cli_tree(command: click.Command = main, ctx: click.Context | None = None,
             name: str = "llm-launch") -> Iterator[tuple[click.Context, click.Command]]:
    """Every command and group of the CLI with a context that knows its full path."""
    ctx = click.Context(command, info_name=name, parent=ctx)
    yield ctx, command
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            found = command.get_command(ctx, sub)
            assert found is not None
            yield from cli_tree(found, ctx, sub)


def cli_sections() -> dict[str, str]:
    """docs/cli.md split at its headings `## \\`llm-launch ...\\``."""
    parts = re.split(r"^#{2,3} `(llm-launch[^`]*)`\s*$", CLI_MD.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    sections = cli_sections()
    text = CLI_MD.read_text()
    for ctx, command in cli_tree():
        path = ctx.command_path
        assert path in sections, f"docs/cli.md has no section `{path}`"
        body = sections[path]
        usage = " ".join([path, *command.collect_usage_pieces(ctx)])
        assert f"```text\n{usage}\n```" in body, f"docs/cli.md `{path}`: synopsis should be `{usage}`"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                for flag in param.opts:
                    assert f"`{flag}" in body, f"docs/cli.md `{path}` does not describe {flag}"
                for var in [param.envvar] if isinstance(param.envvar, str) else param.envvar or []:
                    assert f"`{var}`" in text, f"docs/cli.md does not name {var} ({path} {param.opts[0]})"


def test_cli_reference_describes_no_option_that_does_not_exist() -> None:
    sections = cli_sections()
    for ctx, command in cli_tree():
        known = {flag for p in command.params for flag in p.opts} | {"--help"}
        for row in re.findall(r"^\| `(-[^|]*(?:\\\|[^|]*)*)\|", sections[ctx.command_path], re.M):
            for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", row):
                assert flag in known, f"docs/cli.md `{ctx.command_path}` describes {flag}, which it lacks"


def test_settings_example_loads_and_sets_every_setting() -> None:
    settings = load_settings(EXAMPLE)
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data["router"]) == {f.name for f in dataclasses.fields(RouterSettings)}
    assert set(data["cluster"]) == {f.name for f in dataclasses.fields(ClusterSettings)}
    assert set(data["key_defaults"]) == {f.name for f in dataclasses.fields(KeyLimits)}
    assert set(settings.cluster.engines) == {"vllm", "whisper", "command"}
    assert settings.database and settings.tiers


def toml_literal(value: Any) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`"
    return f"`{value!r}`"


def admin_table(heading: str) -> dict[str, str]:
    """Key -> default cell of the table under HEADING in the admin guide."""
    text = ADMIN.read_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", text[start:end if end > 0 else None], re.M)
    return {name: default.strip() for name, default in rows}


@pytest.mark.parametrize(("cls", "heading"), [
    (RouterSettings, "#### `[router]`"), (ClusterSettings, "#### `[cluster]`"),
    (EngineEnv, "#### `[cluster.engines.NAME]`"), (KeyLimits, "#### `[key_defaults]` and `[tiers.NAME]`"),
])
def test_admin_guide_states_every_setting_and_its_default(cls: type, heading: str) -> None:
    table = admin_table(heading)
    defaults = cls()
    for field in dataclasses.fields(cls):
        assert field.name in table, f"admin guide {heading} lacks `{field.name}`"
        assert table[field.name] == toml_literal(getattr(defaults, field.name)), f"{heading} {field.name}"


def test_admin_guide_describes_every_catalog_field() -> None:
    table = admin_table("### Fields of `[models.NAME]`")
    hidden = {"name", "missing_env"}
    assert {f.name for f in dataclasses.fields(CatalogEntry)} - hidden <= set(table)


def test_admin_guide_toml_snippets_are_valid(tmp_path: Path) -> None:
    cluster = load_settings(EXAMPLE).cluster
    for snippet in blocks(ADMIN, {"toml"}):
        data = tomllib.loads(snippet)
        if "models" not in data:
            settings_from_dict(data, source="admin guide")
            continue
        merged = tomllib.loads(packaged_catalog("production").read_text())
        for name, table in data["models"].items():
            merged["models"].setdefault(name, {}).update(table)
        catalog = catalog_from_dict(merged, "admin guide", {"MODELS_DIR": "/m"}, strict_env=True)
        for name in data["models"]:
            script = render_script(catalog.entry(name), cluster, JobSecrets("t", "s"), JobSpec(str(tmp_path)))
            assert "--port" in script


def unit_files() -> list[dict[str, list[str]]]:
    """The systemd units in the admin guide: directive -> values."""
    units = []
    for block in blocks(ADMIN, {"ini"}):
        directives: dict[str, list[str]] = {}
        for line in block.splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                key, value = line.split("=", 1)
                directives.setdefault(key.strip(), []).append(value.strip())
        units.append(directives)
    return units


def test_systemd_units_start_commands_that_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    started = set()
    for unit in unit_files():
        env = dict(v.split("=", 1) for v in unit.get("Environment", []))
        for key in ("ExecStartPre", "ExecStart", "ExecReload", "ExecStop"):
            for line in unit.get(key, []):
                argv = shlex.split(line.lstrip("-@:+!"))
                assert os.path.basename(argv[0]) == "llm-launch", line
                started.add(parse(tuple(argv[1:]), env, monkeypatch))
        assert env.get("LLM_LAUNCH_CONFIG"), "a unit must name its settings file"
        stop = int(unit["TimeoutStopSec"][0])
        # a router behind a load balancer first waits stop_delay_s, then drains
        drain = RouterSettings().grace_period_s + float(documented_router_settings()["stop_delay_s"])  # type: ignore[arg-type]
        assert stop > drain, "systemd would kill the router mid-drain"
    assert {("router",), ("supervise",), ("db", "upgrade")} <= started


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_between_docs_resolve(path: Path) -> None:
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", linked.read_text()), re.M)
            assert anchor in {slug(h) for h in headings}, f"{path.name} links to #{anchor}, no such heading"
