"""The commands in-process (run_cli with sys.argv, as the console script calls it): what each
option hands to the job layer, and how each error becomes an exit code and a JSON summary.

The job layer (klrank.run.run, validate, klrank.nightly.history) is replaced where a test is
about the CLI's translation only; tests/cli/test_cli.py keeps one real process per command and exit code.
"""

import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from klrank import __version__
from klrank import cli as klrank_cli
from klrank.cli import history_command, run_cli, run_command, validate_command
from klrank.config import InputOptions, RunOptions
from klrank.pipeline.errors import (
    EngineError,
    Interrupted,
    InvalidDataError,
    KlrankError,
    LockBusyError,
    StorageError,
    UsageError,
)
from klrank.pipeline.gates import GateResult
from klrank.run import RunSummary
from klrank.runtime import events, logs


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def summary(self) -> dict[str, Any]:
        """The one JSON object of --json on stdout."""
        document: dict[str, Any] = json.loads(self.stdout)
        return document


Cli = Callable[..., Result]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    for name in list(os.environ):  # only what a test passes
        if name.startswith("KLRANK_") or name == "RAY_ADDRESS":
            monkeypatch.delenv(name)

    def invoke(*args: str | Path) -> Result:
        monkeypatch.setattr(sys, "argv", ["klrank", *map(str, args)])
        code = run_cli()
        out, err = capsys.readouterr()
        return Result(int(code), out, err)

    yield invoke
    # The commands send events to the captured stderr: leave the logger as a library user has it.
    logs.configure("text", False, sys.stderr)
    for handler in list(events.LOGGER.handlers):
        events.LOGGER.removeHandler(handler)
    events.LOGGER.setLevel(logging.NOTSET)
    events.LOGGER.propagate = True


INPUTS = ("--labels", "L.parquet", "--predictions", "P")


def _capture(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """Replace ``module.name`` with a stub that records its argument, then stops the command."""
    seen: list[Any] = []

    def stub(*args: Any) -> Any:
        seen.append(args[0])
        raise UsageError("stub: stopped after the hand-off")

    monkeypatch.setattr(module, name, stub)
    return seen


def test_run_hands_every_option_to_run_options(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, run_command, "run")
    result = cli(
        "run",
        *("--labels", "lab", "--predictions", "pred", "--out", "reports"),
        *("--id-col", "key", "--label-col", "y", "--model-col", "who"),
        *("--prob-prefix", "p_", "--logit-prefix", "z_", "--truth", "soft"),
        *("--tolerance", "0.01", "--slice-by", "region", "--slice-by", "site"),
        *("--classes", " cat, dog ,bird", "--base", "e", "--epsilon", "0.001"),
        *("--rank-by", "mean_cross_entropy", "--run-date", "2026-11-25", "--no-rows"),
        *("--failures", "bad.parquet", "--baseline", "auto", "--max-mean-kl", "0.5"),
        *("--max-regression", "10", "--alpha", "0.01", "--expect-best", "m"),
        *("--no-html", "--worst", "7", "--engine", "ray", "--ray-address", "10.0.0.1:6379"),
        *("--partitions", "3", "--lock-timeout", "5", "--mlflow-experiment", "nightly"),
    )
    assert result.code == 2 and "stub: stopped after the hand-off" in result.stderr
    [options] = seen
    assert isinstance(options, RunOptions)
    assert options.inputs == InputOptions(
        labels="lab",
        predictions="pred",
        id_col="key",
        label_col="y",
        model_col="who",
        prob_prefix="p_",
        logit_prefix="z_",
        truth="soft",
        tolerance=0.01,
        slice_by=("region", "site"),
        classes=("cat", "dog", "bird"),
    )
    assert (options.out, options.base, options.epsilon) == (Path("reports"), "e", 0.001)
    assert options.rank_by == "mean_cross_entropy"
    assert options.run_date == dt.date(2026, 11, 25)
    assert (options.write_rows, options.write_html, options.worst) == (False, False, 7)
    assert (options.failures, options.baseline) == (Path("bad.parquet"), "auto")
    gates = options.gates
    assert (gates.max_mean_kl, gates.max_regression_pct, gates.alpha) == (0.5, 10.0, 0.01)
    assert gates.expect_best == "m"
    assert (options.engine, options.ray_address, options.partitions) == ("ray", "10.0.0.1:6379", 3)
    assert options.lock_timeout == 5.0
    assert options.mlflow_experiment == "nightly"


def test_run_defaults_and_a_ray_address_only_for_the_ray_engine(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _capture(monkeypatch, run_command, "run")
    # RAY_ADDRESS is often set for other jobs on the machine: the local engine ignores it.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cli("run", *INPUTS, "--out", "o").code == 2
    [options] = seen
    assert options == RunOptions(
        inputs=InputOptions(labels="L.parquet", predictions="P"), out=Path("o")
    )


def test_validate_hands_the_inputs_and_the_failures_path(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Any, ...]] = []

    def stub(*args: Any) -> Any:
        seen.append(args)
        raise UsageError("stub")

    monkeypatch.setattr(validate_command, "validate", stub)
    assert cli("validate", *INPUTS, "--id-col", "key", "--failures", "f.parquet").code == 2
    [(options, failures, _timings)] = seen
    assert options == InputOptions(labels="L.parquet", predictions="P", id_col="key")
    assert failures == Path("f.parquet")


def test_history_hands_the_root_slice_and_chart(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, history_command, "history")
    assert cli("history", "nights", "--slice", "region=eu", "--chart", "c.html").code == 2
    [options] = seen
    assert (options.root, options.slice, options.chart) == (
        Path("nights"),
        "region=eu",
        Path("c.html"),
    )


def _raise(error: BaseException) -> Callable[..., Any]:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise error

    return stub


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (InvalidDataError("validation failed: 1 failed check", pl.DataFrame()), 1, "invalid_data"),
        (UsageError("no such file: 'L.parquet'"), 2, "usage_error"),
        (EngineError("the Ray cluster is unreachable"), 69, "engine_failed"),
        (KlrankError("an error without a code of its own"), 70, "error"),
        (StorageError("cannot write '/out': No space left on device (ENOSPC)"), 74, "io_error"),
        (LockBusyError("another run holds the partition"), 75, "locked"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_each_error_exits_with_its_code_and_one_json_summary(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    error: KlrankError,
    code: int,
    status: str,
) -> None:
    module = run_command if command == "run" else validate_command
    monkeypatch.setattr(module, command, _raise(error))
    args = [command, *INPUTS, *(["--out", "o"] if command == "run" else [])]
    result = cli(*args, "--json")
    assert result.code == code
    assert result.summary() == {"status": status, "exit_code": code, "message": str(error)}
    assert result.stderr.endswith(f"klrank: {error}\n")
    # Without --json stdout stays empty: nothing there for a pipe to mistake for a result.
    assert cli(*args) == Result(code, "", f"klrank: {error}\n")


def test_an_os_error_is_the_machine_not_a_bug(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        history_command, "history", _raise(PermissionError(13, "Permission denied", "/n/x"))
    )
    result = cli("history", "/n", "--json")
    message = "cannot use '/n/x': Permission denied (EACCES)"
    assert (result.code, result.summary()["status"], result.summary()["message"]) == (
        74,
        "io_error",
        message,
    )
    with pytest.raises(PermissionError):  # --debug: the traceback, not a translation
        cli("history", "/n", "--debug")


def test_a_bug_exits_70_in_one_line_and_debug_lets_it_through(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_command, "run", _raise(ZeroDivisionError("a\nb")))
    result = cli("run", *INPUTS, "--out", "o", "--json")
    message = "internal error: ZeroDivisionError: a\\nb (rerun with --debug for the traceback)"
    assert result.code == 70
    assert result.summary() == {"status": "internal_error", "exit_code": 70, "message": message}
    with pytest.raises(ZeroDivisionError):
        cli("run", *INPUTS, "--out", "o", "--debug")


def test_a_panic_in_polars_is_a_bug_that_exits_70(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polars raises it as a BaseException: it went past every handler, a traceback and exit 1.
    monkeypatch.setattr(run_command, "run", _raise(pl.exceptions.PanicException("boom")))
    result = cli("run", *INPUTS, "--out", "o", "--json")
    message = "internal error: PanicException: boom (rerun with --debug for the traceback)"
    assert result.code == 70
    assert result.summary() == {"status": "internal_error", "exit_code": 70, "message": message}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_exits_128_plus_its_number(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, signum: int, code: int
) -> None:
    monkeypatch.setattr(run_command, "run", _raise(Interrupted(signum)))
    result = cli("run", *INPUTS, "--out", "o", "--json")
    name = signal.Signals(signum).name
    message = f"stopped by {name} before the run finished; its temporary files were removed"
    assert result.code == code
    assert result.summary() == {"status": "interrupted", "exit_code": code, "message": message}
    # While the options are parsed, before any command runs.
    monkeypatch.setattr(klrank_cli, "app", _raise(Interrupted(signum)))
    assert cli("run") == Result(code, "", f"klrank: {message}\n")


def _summary(gates: tuple[GateResult, ...]) -> RunSummary:
    manifest = {"status": "gate_failed" if gates else "success"}
    return RunSummary(Path("o"), pl.DataFrame(), "the table\n", manifest, gates)


def test_a_failed_gate_exits_3_after_publishing(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = GateResult("expect_best", "failed", "m", "'m' ranks 2, not 1")
    monkeypatch.setattr(run_command, "run", lambda options: _summary((gate,)))
    result = cli("run", *INPUTS, "--out", "o", "--json", "--quiet")
    assert result.code == 3
    assert result.summary() == {"status": "gate_failed", "target": "o", "exit_code": 3}
    assert result.stderr == "klrank: gate failed: 'm' ranks 2, not 1\n"  # even with --quiet
    passed = GateResult("expect_best", "passed", "m", "'m' ranks 1")
    monkeypatch.setattr(run_command, "run", lambda options: _summary((passed,)))
    assert cli("run", *INPUTS, "--out", "o") == Result(0, "the table\n", "klrank: published o\n")


@pytest.mark.parametrize("how", ["--json", "KLRANK_JSON"])
def test_an_option_the_parser_rejects_exits_2_with_a_json_summary(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "KLRANK_JSON":
        monkeypatch.setenv("KLRANK_JSON", "1")
    result = cli("run", *INPUTS, "--out", "o", "--base", "3", *([how] if how == "--json" else []))
    assert result.code == 2
    summary = result.summary()
    assert (summary["status"], summary["exit_code"]) == ("usage_error", 2)
    assert "'3'" in summary["message"] and "--base" in result.stderr


def test_a_missing_required_option_exits_2(cli: Cli) -> None:
    result = cli("run", "--labels", "L.parquet", "--out", "o")
    assert result.code == 2 and "--predictions" in result.stderr and result.stdout == ""


def test_version(cli: Cli) -> None:
    # It crashed on typer 0.15.4 while the CLI imported typer._click outside klrank.cli._compat.
    assert cli("--version") == Result(0, f"klrank {__version__}\n", "")


@pytest.mark.parametrize("command", ["run", "validate", "history", "config", "config show"])
def test_every_command_has_help(cli: Cli, command: str) -> None:
    result = cli(*command.split(), "--help")
    assert result.code == 0 and "Usage: klrank " + command in result.stdout


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("run", "pip install 'klrank[ray]'"),
        ("run", "columns [default: 0..K-1]."),
        ("config show", "options to show [default: every one]."),
    ],
)
def test_brackets_in_help_are_shown_not_read_as_markup(cli: Cli, command: str, shown: str) -> None:
    # Rich read "[ray]" and "[default: ...]" as markup tags and dropped them from the help.
    result = cli(*command.split(), "--help")
    assert shown in " ".join(result.stdout.replace("│", " ").split())
