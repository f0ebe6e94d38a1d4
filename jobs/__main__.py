"""``python -m klrank`` and the ``klrank`` console script: the CLI, started lean.

The CLI's modules are imported only after pandera is (:mod:`klrank.runtime.imports`), which is
why this is not simply :func:`klrank.cli.main`.
"""

from typing import NoReturn

from klrank.runtime import imports


def main() -> NoReturn:
    """Run the CLI (``klrank --help``)."""
    imports.import_pandera_without_pandas()
    from klrank.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
