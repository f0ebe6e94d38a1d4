"""The CLI imports pandera without pandas (klrank.runtime.imports), and still validates.

Each test runs the real console script in a subprocess: the test process itself has long
imported pandas (and pandera with it).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

from cli_helpers import expect, inputs, klrank, prob_predictions, set_value, soft_labels


def imported_modules(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m klrank ARGS``; its result and the modules it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "klrank", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return done, names


def test_the_environment_has_pandas_for_these_tests_to_mean_anything() -> None:
    assert importlib.util.find_spec("pandas") is not None


def test_valid_inputs_pass_without_pandas_being_imported(tmp_path: Path) -> None:
    done, modules = imported_modules(
        "validate", *inputs(tmp_path, soft_labels(), prob_predictions())
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pandera.api.polars.container" in modules
    # A failed attempt shows as "pandas" alone; pandas imported shows its submodules.
    assert not {m for m in modules if m.startswith("pandas.")}


def test_invalid_rows_are_still_found_and_named(tmp_path: Path) -> None:
    labels = set_value(soft_labels(), "prob_a", -0.5, id=3)
    result = klrank("validate", *inputs(tmp_path, labels, prob_predictions()))
    expect(result, 1)
    assert "prob_a" in result.stderr + result.stdout
    assert "in_range" in result.stderr + result.stdout


def test_pandas_stays_importable_after_the_cli_has_started() -> None:
    code = (
        "from klrank.runtime import imports; imports.import_pandera_without_pandas(); "
        "import pandera.polars, pandas; print(pandas.DataFrame({'a': [1]}).shape)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "(1, 1)"
