"""klrank's one table of exit codes (ExitCode), the codes its errors carry, and the Airflow task's
own copy of the table (jobs/airflow/klrank_task.py runs without klrank installed, so it cannot
import ExitCode), kept in step here.
"""

import signal

import polars as pl
import pytest
from klrank.airflow.klrank_task import Outcome, judge
from klrank.pipeline import errors
from klrank.pipeline.errors import ExitCode

# The documented codes (README's exit-code table): a user's cron line and DAG depend on them.
DOCUMENTED = {
    "OK": 0,
    "INVALID_DATA": 1,
    "USAGE": 2,
    "GATE_FAILED": 3,
    "ENGINE": 69,
    "INTERNAL": 70,
    "STORAGE": 74,
    "LOCK_BUSY": 75,
    "SIGINT": 128 + signal.SIGINT,
    "SIGTERM": 128 + signal.SIGTERM,
}
# What a scheduler should do with each (README): only what a rerun cannot fix fails for good.
POLICY = {
    0: Outcome.SUCCESS,
    1: Outcome.FAIL,
    2: Outcome.FAIL,
    3: Outcome.FAIL,
    69: Outcome.RETRY,
    70: Outcome.RETRY,
    74: Outcome.RETRY,
    75: Outcome.RETRY,
    130: Outcome.RETRY,
    143: Outcome.RETRY,
}


def test_the_exit_codes_are_the_documented_ones() -> None:
    assert {code.name: int(code) for code in ExitCode} == DOCUMENTED


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda code: code.name)
def test_the_airflow_task_knows_every_exit_code_with_its_retry_policy(code: ExitCode) -> None:
    verdict = judge(int(code))
    assert verdict.outcome is POLICY[int(code)]
    assert "unexpected" not in verdict.reason
    if code in (ExitCode.SIGINT, ExitCode.SIGTERM):
        assert verdict.reason == f"klrank was killed by {code.name}; retried"
    elif code is not ExitCode.OK:
        assert verdict.reason.startswith(f"klrank exit {int(code)}: ")


def test_the_airflow_task_knows_no_code_klrank_does_not_return() -> None:
    # Every other status is either a signal's (128 + N, through a shell) or unexpected.
    codes = set(ExitCode)
    for status in range(256):
        if status in codes:
            continue
        reason = judge(status).reason
        try:
            signal.Signals(status - 128)
        except ValueError:
            assert reason == f"klrank exit {status}: unexpected exit code; retried"
        else:
            assert reason.startswith("klrank was killed by SIG")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.UsageError("no such file"), 2),
        (errors.InvalidDataError("2 failed checks", pl.DataFrame()), 1),
        (errors.LockBusyError("held"), 75),
        (errors.StorageError("cannot write"), 74),
        (errors.EngineError("cluster gone"), 69),
        (errors.KlrankError("a new error without a code of its own"), 70),
        (errors.Interrupted(signal.SIGINT), 130),
        (errors.Interrupted(signal.SIGTERM), 143),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_each_error_carries_its_exit_code(
    error: errors.KlrankError | errors.Interrupted, code: int
) -> None:
    assert error.exit_code == code


def test_each_error_class_says_what_it_means_in_its_first_docstring_line() -> None:
    classes = [errors.KlrankError, *errors.KlrankError.__subclasses__(), errors.Interrupted]
    assert len(classes) >= 6
    for cls in classes:
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        assert summary.endswith("."), cls
        assert isinstance(getattr(cls, "exit_code", None), ExitCode | property), cls
