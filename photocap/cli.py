"""photocap's command line: a thin Typer layer over the library.

Each command parses its flags, makes one library call, and renders the result with rich.
Library errors (:class:`photocap.errors.PhotocapError`) become one clear line on stderr and
exit code 2 (usage/setup) here, at the edge, never deeper. torch is imported lazily inside the
commands so that ``photocap --help`` stays instant.

Exit codes: 0 every photo succeeded; 1 at least one photo failed; 2 usage or setup error.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from photocap.errors import PhotocapError

app = typer.Typer(
    name="photocap",
    help="Caption a photo library with a CNN+LSTM model; write captions to XMP, EXIF and a "
    "searchable SQLite index.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def cli_errors(func: F) -> F:
    """Turn library errors into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PhotocapError as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
