"""Importing pandera without its pandas API, for the CLI's start-up.

pandera imports pandas whenever pandas is installed (to offer its pandas API), although klrank
validates Polars frames only: in an environment that has pandas, as most have, that is 0.4 to
0.7 s of every run's start-up (``python -X importtime -m klrank --version``). The CLI imports
pandera as a pandas-less install would; pandas itself stays importable, for anything else.
"""

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType


class _NoPandas(importlib.abc.MetaPathFinder):
    """A finder that says pandas is not installed, as Python does when it is not."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            # pandera ignores exactly this message (its pandas API is then left out).
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def import_pandera_without_pandas() -> None:
    """Import ``pandera.polars`` while pandas looks absent, unless either is imported already.

    Polars is imported first, so that it still sees pandas (it only looks for it on import).
    One check is run meanwhile: pandera looks for its pandas backends again on the first
    validation, and remembers what it found.
    """
    if "pandera" in sys.modules or "pandas" in sys.modules:
        return
    import polars as pl

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        import pandera.polars as pa

        schema = pa.DataFrameSchema({"x": pa.Column(pl.Int64, pa.Check.ge(0))})
        schema.validate(pl.DataFrame({"x": [0]}))
    finally:
        sys.meta_path.remove(finder)
