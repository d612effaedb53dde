"""One way for every command to turn an expected error into a one-line CLI error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click

E = TypeVar("E", bound=BaseException)


@contextmanager
def cli_errors(*kinds: type[E], message: Callable[[E], str] = str) -> Iterator[None]:
    """Raise the KINDS of error raised inside as click.ClickException(message(exc)).

    `from None`: the user sees the one line, not the traceback of the error behind it.
    """
    try:
        yield
    except kinds as exc:
        raise click.ClickException(message(exc)) from None
