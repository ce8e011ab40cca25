"""The ``headatlas`` command line. Each command group lives in its own module of this package."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="headatlas",
    help="Map every attention head of a decoder-only LLM to its function.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _register_commands() -> None:
    # Each module adds its commands to ``app`` at import.
    from . import compare  # noqa: F401
    from . import info  # noqa: F401
    from . import methods  # noqa: F401
    from . import probe  # noqa: F401
    from . import scan  # noqa: F401
    from . import specificity  # noqa: F401
    from . import sweep  # noqa: F401


_register_commands()
