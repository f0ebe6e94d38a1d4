"""Helpers of the CLI tests: run the ``klrank`` command and build tiny inputs.

Two ways to run it, with the same :class:`Result`: :func:`invoke` runs the command in this
process through :func:`klrank.cli.run_cli` (options, messages, exit codes and files: ~50 ms),
and :func:`klrank` starts the installed console script in a subprocess exactly as a scheduler
would (~1 s, mostly Python start-up and imports), for what only a real process shows: signals,
locks held by another process, resource limits, the environment read at import, the exit of
``main()``. Both remove every ``KLRANK_*`` variable of the test environment, so that only what
a test passes is seen.
"""

import os
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from klrank.cli import run_cli
from klrank.runtime.events import LOGGER
from typer.testing import CliRunner  # noqa: TID251 (the CLI's own test harness)

KLRANK = Path(sys.executable).with_name("klrank")
TIMEOUT_S = 60

CLASSES = ("a", "b", "c")
MODELS = ("m", "n")
# Soft truth of ids 1..4, one row per id; a true 0 is allowed (0·log 0 = 0).
TRUTH = {1: (0.2, 0.3, 0.5), 2: (0.5, 0.25, 0.25), 3: (0.1, 0.1, 0.8), 4: (0.6, 0.4, 0.0)}
HARD_TRUTH = {1: "c", 2: "a", 3: "c", 4: "a"}
# Model m predicts the truth smoothed a little, model n the same distribution for every row.
PREDICTED = {
    "m": {1: (0.25, 0.3, 0.45), 2: (0.5, 0.25, 0.25), 3: (0.1, 0.15, 0.75), 4: (0.5, 0.4, 0.1)},
    "n": dict.fromkeys(TRUTH, (0.3, 0.3, 0.4)),
}
LOGITS = {"m": (0.0, 1.0, 2.0), "n": (1.0, 0.5, -0.5)}

FAILURE_COLUMNS = ["dataset", "check", "column", "row", "id", "model", "value"]
PUBLISHED_FILES = {
    "report.parquet",
    "rows.parquet",
    "class_contributions.parquet",
    "quantiles.parquet",
    "worst_rows.parquet",
    "report.html",
    "summary.md",
    "manifest.json",
    "_SUCCESS",
}


@dataclass(frozen=True)
class Result:
    """What one ``klrank`` invocation did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"klrank {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLRANK_")}
    # Wide, colourless output, so that Typer's error boxes do not break words across lines.
    env |= {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "PYTHONHASHSEED": "0"}
    return env | dict(extra or {})


@dataclass
class Running:
    """A started ``klrank`` command; ``wait`` for its result."""

    args: tuple[str, ...]
    process: subprocess.Popen[str]

    def wait(self) -> Result:
        """Wait for the command to end and return what it did."""
        try:
            stdout, stderr = self.process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        return Result(self.args, self.process.returncode, stdout, stderr)


def start(
    *args: str | Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Running:
    """Start ``klrank ARGS`` without waiting: independent commands then run side by side."""
    strings = tuple(str(a) for a in args)
    process = subprocess.Popen(
        [str(KLRANK), *strings],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(env),
        cwd=cwd,
    )
    return Running(strings, process)


def klrank(
    *args: str | Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Result:
    """Run ``klrank ARGS`` and wait for it."""
    return start(*args, env=env, cwd=cwd).wait()


def klrank_together(*commands: Sequence[str | Path]) -> list[Result]:
    """Run several independent ``klrank`` commands at the same time (each starts in ~1 s)."""
    running = [start(*args) for args in commands]
    return [r.wait() for r in running]


EXIT_INTERNAL = 70  # what main() exits with when an exception escapes run_cli (--debug)


@contextmanager
def _logging_kept() -> Iterator[None]:
    """Undo what a command's ``--log-format``/``--quiet`` did to klrank's logger.

    The handler it installs writes to that command's captured stderr; left in place, later
    library calls in this process would log there. (The text/JSON choice it also keeps is set
    again by every command before it writes anything.)
    """
    handlers, level, propagate = list(LOGGER.handlers), LOGGER.level, LOGGER.propagate
    try:
        yield
    finally:
        LOGGER.handlers[:] = handlers
        LOGGER.setLevel(level)
        LOGGER.propagate = propagate


def invoke(
    *args: str | Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Result:
    """Run ``klrank ARGS`` in this process and return what it did, as :func:`klrank` would.

    It goes through :func:`klrank.cli.run_cli`, the whole command but for ``main()``'s signal
    handlers and ``os._exit``: stdout and stderr are captured (neither is a terminal), the
    environment is the test's without ``KLRANK_*`` plus ``env``, and an exception that escapes
    (``--debug``) is printed and exits 70, as ``main()`` does.
    """
    strings = tuple(str(a) for a in args)
    environment: dict[str, str | None] = {k: None for k in os.environ if k.startswith("KLRANK_")}
    environment |= {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    environment |= dict(env or {})
    argv, here = sys.argv, Path.cwd()
    runner = CliRunner()
    with _logging_kept(), runner.isolation(env=environment) as (stdout, stderr, _):
        sys.argv = ["klrank", *strings]
        try:
            if cwd is not None:
                os.chdir(cwd)
            code = run_cli()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except Exception:
            traceback.print_exc()
            code = EXIT_INTERNAL
        finally:
            sys.argv = argv
            os.chdir(here)
            sys.stdout.flush()
            sys.stderr.flush()
        out, err = stdout.getvalue(), stderr.getvalue()
    return Result(strings, code, out.decode(), err.decode())


def expect(result: Result, code: int) -> None:
    """Assert the exit code, and that no Python traceback leaked to the user."""
    assert result.returncode == code, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert "Traceback" not in result.stdout, str(result)


def soft_labels() -> pl.DataFrame:
    """Soft labels of ids 1..4 over classes a, b, c, plus a column klrank does not use."""
    return pl.DataFrame(
        {
            "id": list(TRUTH),
            "region": ["eu", "us", "eu", "us"],
            **{f"prob_{c}": [p[k] for p in TRUTH.values()] for k, c in enumerate(CLASSES)},
        }
    )


def hard_labels() -> pl.DataFrame:
    """Hard labels (class names) of ids 1..4."""
    return pl.DataFrame({"id": list(HARD_TRUTH), "label": list(HARD_TRUTH.values())})


def prob_predictions(models: Sequence[str] = MODELS, model_column: bool = True) -> pl.DataFrame:
    """Probability predictions of every model for ids 1..4, model by model."""
    rows = [(m, i, q) for m in models for i, q in PREDICTED[m].items()]
    return pl.DataFrame(
        {
            **({"model": [m for m, _, _ in rows]} if model_column else {}),
            "id": [i for _, i, _ in rows],
            **{f"prob_{c}": [q[k] for _, _, q in rows] for k, c in enumerate(CLASSES)},
        }
    )


def logit_predictions() -> pl.DataFrame:
    """Logit predictions (``logit_<class>``) of every model for ids 1..4."""
    rows = [(m, i, LOGITS[m]) for m in MODELS for i in TRUTH]
    return pl.DataFrame(
        {
            "model": [m for m, _, _ in rows],
            "id": [i for _, i, _ in rows],
            **{f"logit_{c}": [z[k] for _, _, z in rows] for k, c in enumerate(CLASSES)},
        }
    )


def set_value(frame: pl.DataFrame, column: str, value: object, **where: object) -> pl.DataFrame:
    """``frame`` with ``column`` set to ``value`` on the rows matching every ``where`` equality."""
    condition = pl.all_horizontal([pl.col(k) == v for k, v in where.items()])
    dtype = frame.schema[column]
    return frame.with_columns(
        pl.when(condition).then(pl.lit(value, dtype=dtype)).otherwise(pl.col(column)).alias(column)
    )


def write(frame: pl.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` as Parquet, creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def inputs(tmp_path: Path, labels: pl.DataFrame, predictions: pl.DataFrame) -> list[str | Path]:
    """``--labels L --predictions P`` for the two frames, written as Parquet under ``tmp_path``."""
    return [
        "--labels",
        write(labels, tmp_path / "labels.parquet"),
        "--predictions",
        write(predictions, tmp_path / "predictions.parquet"),
    ]


def write_hive(predictions: pl.DataFrame, root: Path) -> Path:
    """Write predictions as ``root/model=<name>/part-0.parquet`` without a model column."""
    for (model,), part in predictions.group_by("model"):
        write(part.drop("model"), root / f"model={model}" / "part-0.parquet")
    return root


def corrupt_first_page(path: Path) -> None:
    """Overwrite the header of the first data page of ``path``, leaving its footer readable."""
    offset = pq.read_metadata(path).row_group(0).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def snapshot(root: Path, skip: Sequence[str] = ()) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under ``root``, hidden ones included."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
        if p.relative_to(root).parts[0] not in skip
    }


def many_rows(root: Path, n: int = 200_000) -> list[str | Path]:
    """``--labels L --predictions P`` of ``n`` soft-label rows and 2 models (a run of 1-2 s).

    Model m's probabilities vary from row to row, so that rows.parquet does not compress away.
    """
    ids = pl.int_range(0, n, eager=True).alias("id")
    labels = pl.DataFrame([ids]).with_columns(
        prob_a=pl.lit(0.2), prob_b=pl.lit(0.3), prob_c=pl.lit(0.5)
    )
    predictions = pl.concat(
        [
            pl.DataFrame([ids]).with_columns(
                model=pl.lit(m), prob_a=pl.int_range(0, n) % 7 / 100 + a, prob_b=pl.lit(0.3)
            )
            for m, a in (("m", 0.1), ("n", 0.05))
        ]
    ).with_columns(prob_c=1.0 - pl.col("prob_a") - pl.col("prob_b"))
    return inputs(root, labels, predictions)
