"""The few click objects the CLI needs that typer does not export, for every supported typer.

typer 0.26 vendored click as the private ``typer._click`` and stopped depending on click; older
releases run on click itself. Only this module knows: a typer release that moves these names
breaks it here (and ``make lint``), not in every command.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks against the installed typer, which vendors click
    from typer._click import Command
    from typer._click.core import ParameterSource
    from typer._click.exceptions import ClickException, MissingParameter
else:
    try:
        from typer._click import Command
        from typer._click.core import ParameterSource
        from typer._click.exceptions import ClickException, MissingParameter
    except ImportError:  # typer < 0.26: the click that typer itself imports
        from click import ClickException, Command, MissingParameter
        from click.core import ParameterSource

__all__ = ["ClickException", "Command", "MissingParameter", "ParameterSource"]
