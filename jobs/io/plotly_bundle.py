"""plotly.js, read from the installed ``plotly`` package for the pages to inline."""

import importlib.util
from pathlib import Path


def plotly_js() -> str:
    """The plotly.js bundle that ships inside the installed ``plotly`` package.

    Found with :func:`importlib.util.find_spec`, which locates the package without running its
    ``__init__``.
    """
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the page needs plotly.js from the plotly package: pip install plotly"
        )
    for folder in spec.submodule_search_locations:
        bundle = Path(folder) / "package_data" / "plotly.min.js"
        if bundle.is_file():
            # Not read_text: it scans the 4.8 MB for line endings to translate (twice as slow).
            return bundle.read_bytes().decode("utf-8")
    raise FileNotFoundError(
        f"no package_data/plotly.min.js in {list(spec.submodule_search_locations)}"
    )
