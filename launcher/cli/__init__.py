"""The `llm-launch` command: a root group whose subcommands load on first use."""

from __future__ import annotations

import importlib

import click
from sqlalchemy.exc import OperationalError

from launcher.cli.context import CliContext
from launcher.cli.errors import cli_errors

# name -> "module:attribute"; modules load only when their command runs, so `keys list`
# never imports aiohttp and a missing optional part cannot break the others.
COMMANDS = {
    "db": "launcher.cli.db_cmd:db",
    "keys": "launcher.cli.keys_cmd:keys",
    "backends": "launcher.cli.backends_cmd:backends",
    "router": "launcher.cli.router_cmd:router",
    "usage": "launcher.cli.usage_cmd:usage",
    "models": "launcher.cli.cluster_cmd:models",
    "render": "launcher.cli.cluster_cmd:render",
    "up": "launcher.cli.cluster_cmd:up",
    "down": "launcher.cli.cluster_cmd:down",
    "status": "launcher.cli.status_cmd:status",
    "logs": "launcher.cli.cluster_cmd:logs",
    "register": "launcher.cli.register_cmd:register",
    "tokens": "launcher.cli.register_cmd:tokens",
    "supervise": "launcher.cli.supervise_cmd:supervise",
}


class LazyGroup(click.Group):
    """A group that imports each subcommand's module only when it is needed."""

    def invoke(self, ctx: click.Context) -> object:
        """Run the subcommand; a database that cannot be written (disk full, read-only) is one line, no traceback."""
        with cli_errors(OperationalError, message=_unwritable):
            return super().invoke(ctx)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        command = getattr(module, attribute)
        assert isinstance(command, click.Command)
        return command


def _unwritable(exc: OperationalError) -> str:
    reason = str(exc.orig or exc).splitlines()[0]
    return f"the registry cannot be written: {reason}"


@click.group(cls=LazyGroup)
@click.option("--db", "db", envvar="LLM_LAUNCH_DB", help="Registry: a file path or a SQLAlchemy URL.")
@click.option(
    "--config", "config", envvar="LLM_LAUNCH_CONFIG", type=click.Path(dir_okay=False),
    help="Settings file (TOML).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.NAME=VALUE",
    help="Override a setting of the file, e.g. --set cluster.partition=gpu (repeatable).",
)
@click.version_option(package_name="llm-launch")
@click.pass_context
def main(ctx: click.Context, db: str | None, config: str | None, overrides: tuple[str, ...]) -> None:
    """Run an OpenAI-compatible LLM API on a Slurm cluster."""
    ctx.obj = CliContext(db_option=db, config_option=config, overrides=overrides)
