"""Operating ``klrank run`` as a scheduler does: logs, progress, locks, signals and cron.

Logs and messages run the command in this process (:func:`invoke`); locks, signals, progress
on a terminal and cron run the real console script in subprocesses. Where two runs must
overlap, the test makes the overlap certain rather than likely: it holds the partition's lock
itself, or stops the first run (SIGSTOP) once its staging folder exists, and it waits for
events, never for time.
"""

import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from cli_helpers import (
    KLRANK,
    TIMEOUT_S,
    Running,
    expect,
    inputs,
    invoke,
    klrank,
    prob_predictions,
    set_value,
    snapshot,
    soft_labels,
    start,
)
from klrank.io.targets import STAGING_PREFIX
from klrank.runtime.lock import lock_path

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
RUN_DATE = "2026-01-02"
BIG_ROWS = 1_000_000  # enough that a run is still measuring well after its staging folder exists


def _small(root: Path) -> list[str | Path]:
    return inputs(root, soft_labels(), prob_predictions())


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> list[str | Path]:
    """1M label rows, 3 classes, 2 models in label order: a run takes a second or more."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(7)

    def distributions() -> np.ndarray:
        weights = rng.random((BIG_ROWS, 3)) + 0.01
        return weights / weights.sum(axis=1, keepdims=True)

    def frame(p: np.ndarray, **extra: Any) -> pl.DataFrame:
        columns = {f"prob_{c}": p[:, k] for k, c in enumerate("abc")}
        return pl.DataFrame({**extra, "id": np.arange(BIG_ROWS), **columns})

    predictions = pl.concat(frame(distributions(), model=[m] * BIG_ROWS) for m in ("m", "n"))
    return inputs(root, frame(distributions()), predictions)


@pytest.fixture(autouse=True)
def _no_process_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Kill whatever a failed test left running (a stopped run, a cron command)."""
    started: list[subprocess.Popen[Any]] = []
    popen = subprocess.Popen

    def tracked(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        process = popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(subprocess, "Popen", tracked)
    yield
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _staging(folder: Path) -> list[Path]:
    # A run stages beside --out (folder is --out's parent), outside the reports tree.
    return sorted(folder.glob(f"{STAGING_PREFIX}*"))


def _wait_for_staging(running: Running, folder: Path) -> None:
    """Poll until the run has created its staging folder (it then holds the lock)."""
    while not _staging(folder):
        assert running.process.poll() is None, str(running.wait())
        time.sleep(0.001)


def _next_event(running: Running, event: str) -> dict[str, Any]:
    """Read the run's JSON log lines from stderr until ``event``."""
    assert running.process.stderr is not None
    for line in running.process.stderr:
        record: dict[str, Any] = json.loads(line)
        if record["event"] == event:
            return record
    raise AssertionError(f"no {event!r} event; {running.wait()}")


@contextmanager
def _holding_lock(target: Path) -> Iterator[None]:
    """Hold the partition lock of ``target`` from the test process, as another run would."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines()]


# ---------------------------------------------------------------------------------------------
# Logs on stderr


def test_json_logs_are_one_object_a_line_with_the_run_events(tmp_path: Path) -> None:
    result = invoke("run", *_small(tmp_path), "--out", tmp_path / "out", "--log-format", "json")
    expect(result, 0)
    assert result.stdout.startswith("# klrank: models ranked by mean_kl")  # stdout unchanged
    records = _json_lines(result.stderr)  # every line parses
    events = {r["event"]: r for r in records}
    assert list(events) == [
        "run.started",
        "inputs.scanned",
        "lock.acquired",
        "validation.done",
        "evaluation.done",
        "published",
    ]
    for record in records:
        assert list(record)[:3] == ["timestamp", "level", "event"]
        assert record["level"] == "info"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    assert events["run.started"]["options"]["labels"].endswith("labels.parquet")
    assert events["inputs.scanned"]["labels"]["rows"] == 4
    assert events["inputs.scanned"]["predictions"] == {
        "path": str(tmp_path / "predictions.parquet"),
        "files": 1,
        "rows": 8,
    }
    assert events["evaluation.done"]["rows"] == 8
    assert events["evaluation.done"]["seconds"] >= 0
    assert events["validation.done"]["seconds"] >= 0
    assert events["published"]["target"] == str(tmp_path / "out")
    assert events["published"]["seconds"] >= events["evaluation.done"]["seconds"]


def test_json_logs_of_a_failed_run_name_the_checks_and_stay_json(tmp_path: Path) -> None:
    labels = set_value(set_value(soft_labels(), "prob_a", -0.1, id=3), "prob_b", 0.3, id=3)
    given = inputs(tmp_path, labels, prob_predictions())
    result = invoke("run", *given, "--out", tmp_path / "out", "--log-format", "json")
    expect(result, 1)
    records = _json_lines(result.stderr)
    failed = [r for r in records if r["event"] == "validation.failed"]
    assert failed and failed[0]["level"] == "error"
    assert failed[0]["checks"] == ["in_range(0.0, 1.0)"]
    assert records[-1]["event"] == "failed"
    assert records[-1]["exit_code"] == 1
    assert "id=3" in records[-1]["message"]


def test_text_logs_by_default(tmp_path: Path) -> None:
    result = invoke("validate", *_small(tmp_path))
    expect(result, 0)
    scanned = [line for line in result.stderr.splitlines() if " inputs.scanned " in line]
    assert len(scanned) == 1
    assert '"rows":8' in scanned[0] and " info " in scanned[0]


def test_quiet_run_writes_nothing_to_stderr_but_errors(tmp_path: Path) -> None:
    result = invoke("run", *_small(tmp_path / "in"), "--out", tmp_path / "out", "--quiet")
    expect(result, 0)
    assert result.stderr == ""
    assert result.stdout.startswith("# klrank")
    failed = invoke("run", *_small(tmp_path / "in"), "--out", tmp_path / "out", "-q", "--base", "3")
    expect(failed, 2)
    assert "--base" in failed.stderr


def _stderr_on_a_terminal(*args: str | Path) -> tuple[int, str]:
    """Run klrank with stderr on a pseudo-terminal; return the exit code and what it showed."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLRANK_")}
    process = subprocess.Popen(
        [str(KLRANK), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env | {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"},
    )
    os.close(terminal)
    shown = b""
    while True:  # read as it comes, so a full terminal buffer never blocks the run
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=TIMEOUT_S), shown.decode()


def test_progress_is_drawn_on_a_terminal(tmp_path: Path) -> None:
    code, shown = _stderr_on_a_terminal("run", *_small(tmp_path), "--out", tmp_path / "out")
    assert code == 0, shown
    assert "\rklrank: batches 1/1 (100%)" in shown.replace("\x1b[K", "")


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    result = invoke("run", *_small(tmp_path), "--out", tmp_path / "out")
    expect(result, 0)
    assert "batches" not in result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr


def test_no_progress_on_a_terminal_when_quiet(tmp_path: Path) -> None:
    code, shown = _stderr_on_a_terminal("run", *_small(tmp_path), "--out", tmp_path / "o", "-q")
    assert code == 0, shown
    assert shown == ""


def test_json_logs_on_a_terminal_have_no_progress_line(tmp_path: Path) -> None:
    # Regression: the progress line was drawn in JSON mode too, breaking "one JSON object a line".
    code, shown = _stderr_on_a_terminal(
        "run", *_small(tmp_path), "--out", tmp_path / "o", "--log-format", "json"
    )
    assert code == 0, shown
    lines = [line for line in shown.replace("\r\n", "\n").split("\n") if line]
    assert lines and all(json.loads(line)["event"] for line in lines), shown


# ---------------------------------------------------------------------------------------------
# One run per output partition


def test_busy_partition_fails_at_once_with_exit_75(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _holding_lock(out / f"run_date={RUN_DATE}"):
        result = klrank(
            "run", *_small(tmp_path), "--out", out, "--run-date", RUN_DATE, "--lock-timeout", "0"
        )
    expect(result, 75)
    message = result.stderr.splitlines()[-1]
    assert message.startswith("klrank: another run (pid ")
    assert f"{os.getpid()}" in message and "--lock-timeout" in message
    assert f".run_date={RUN_DATE}.klrank.lock" in message
    assert not (out / f"run_date={RUN_DATE}").exists()
    assert _staging(out.parent) == []


def test_other_partitions_are_not_locked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _holding_lock(out / "run_date=2026-01-01"):
        result = invoke(
            "run", *_small(tmp_path), "--out", out, "--run-date", RUN_DATE, "--lock-timeout", "0"
        )
    expect(result, 0)


def test_second_run_fails_while_a_real_run_holds_the_partition(
    tmp_path: Path, big: list[str | Path]
) -> None:
    out = tmp_path / "out"
    expect(invoke("run", *_small(tmp_path), "--out", out, "--run-date", RUN_DATE), 0)
    first = start("run", *big, "--out", out, "--run-date", RUN_DATE, "--no-rows")
    _wait_for_staging(first, out.parent)
    os.kill(first.process.pid, signal.SIGSTOP)  # it holds the lock for as long as the test wants
    try:
        before = snapshot(out)
        second = invoke(
            "run", *_small(tmp_path), "--out", out, "--run-date", RUN_DATE, "--lock-timeout", "0"
        )
        expect(second, 75)
        assert f"pid {first.process.pid}" in second.stderr
        assert snapshot(out) == before
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    expect(first.wait(), 0)
    report = pl.read_parquet(out / f"run_date={RUN_DATE}" / "report.parquet")
    assert report.get_column("n_rows").to_list() == [BIG_ROWS, BIG_ROWS]


def test_second_run_waits_for_the_first_then_publishes(
    tmp_path: Path, big: list[str | Path]
) -> None:
    out = tmp_path / "out"
    first = start("run", *big, "--out", out, "--run-date", RUN_DATE, "--no-rows")
    _wait_for_staging(first, out.parent)
    os.kill(first.process.pid, signal.SIGSTOP)
    try:
        second = start(
            "run", *_small(tmp_path), "--out", out, "--run-date", RUN_DATE, "--log-format", "json"
        )
        waiting = _next_event(second, "lock.waiting")
        assert waiting["holder"] == str(first.process.pid)
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    expect(first.wait(), 0)
    acquired = _next_event(second, "lock.acquired")
    assert acquired["waited"] is True
    expect(second.wait(), 0)
    # The second run published after the first: its report (4 rows a model) is the one left.
    report = pl.read_parquet(out / f"run_date={RUN_DATE}" / "report.parquet")
    assert report.get_column("n_rows").to_list() == [4, 4]


def test_lock_of_a_killed_run_does_not_block_the_next(
    tmp_path: Path, big: list[str | Path]
) -> None:
    out = tmp_path / "out"
    first = start("run", *big, "--out", out, "--run-date", RUN_DATE)
    _wait_for_staging(first, out.parent)
    first.process.kill()  # SIGKILL: no cleanup at all
    assert first.wait().returncode == -signal.SIGKILL
    assert lock_path(out / f"run_date={RUN_DATE}").exists()  # left behind
    result = invoke(
        "run", *_small(tmp_path), "--out", out, "--run-date", RUN_DATE, "--lock-timeout", "0"
    )
    expect(result, 0)
    assert (out / f"run_date={RUN_DATE}" / "_SUCCESS").exists()


# ---------------------------------------------------------------------------------------------
# SIGTERM and SIGINT


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_mid_run_keeps_previous_report_and_removes_staging(
    tmp_path: Path, big: list[str | Path], signum: signal.Signals, code: int
) -> None:
    out = tmp_path / "out"
    expect(invoke("run", *_small(tmp_path), "--out", out, "--run-date", RUN_DATE), 0)
    before = snapshot(out)
    running = start("run", *big, "--out", out, "--run-date", RUN_DATE, "--json")
    _wait_for_staging(running, out.parent)
    os.kill(running.process.pid, signum)
    result = running.wait()
    expect(result, code)
    assert result.stderr.splitlines()[-1] == (
        f"klrank: stopped by {signum.name} before the run finished; "
        "its temporary files were removed"
    )
    assert json.loads(result.stdout) | {"message": ""} == {
        "status": "interrupted",
        "exit_code": code,
        "message": "",
    }
    assert _staging(out.parent) == []
    assert snapshot(out) == before  # the previous report, byte for byte, and nothing else


def test_sigterm_while_waiting_for_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _holding_lock(out):
        running = start("run", *_small(tmp_path), "--out", out, "--log-format", "json")
        _next_event(running, "lock.waiting")
        running.process.terminate()
        result = running.wait()
    expect(result, 143)
    assert _json_lines(result.stderr)[-1]["status"] == "interrupted"
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# The manual's cron line (docs/operations.md), run for real (without cron)


def _cron_line() -> str:
    text = OPERATIONS.read_text(encoding="utf-8")
    block = re.search(r"<!-- cron-line -->\n```cron\n(.+?)\n```\n<!-- /cron-line -->", text)
    assert block, "docs/operations.md lost its cron-line markers"
    return block.group(1)


def test_readme_cron_line_runs_once_when_started_twice(tmp_path: Path) -> None:
    line = _cron_line()
    schedule, command = line.split(None, 5)[:5], line.split(None, 5)[5]
    assert len(schedule) == 5
    home = "/srv/klrank"
    assert home in command
    # What cron itself does to the command: an unescaped % would end it; \% is a literal %.
    command = command.replace("\\%", "%").replace(home, str(tmp_path))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "klrank").symlink_to(KLRANK)
    labels, predictions = _small(tmp_path / "data")[1::2]
    (tmp_path / "klrank.toml").write_text(
        f'labels = "{labels}"\npredictions = "{predictions}"\n[run]\nout = "reports"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLRANK_")}
    log = tmp_path / "klrank.log"

    def cron() -> "subprocess.Popen[bytes]":  # a string: the fixture swaps Popen for a function
        return subprocess.Popen(["sh", "-c", command], env=env, stdin=subprocess.DEVNULL)

    assert cron().wait(timeout=TIMEOUT_S) == 0, log.read_text()
    (partition,) = (tmp_path / "reports").glob("run_date=*")  # $(date +%F), whatever the day
    before = snapshot(tmp_path / "reports")

    # Night two: the first run is held (the test holds its partition lock) until the second
    # has been started and has given up.
    with _holding_lock(partition):
        first = cron()
        while '"lock.waiting"' not in log.read_text():
            assert first.poll() is None, log.read_text()
            time.sleep(0.01)
        second = cron()
        assert second.wait(timeout=TIMEOUT_S) != 0
        assert snapshot(tmp_path / "reports") == before  # the second run touched nothing
    assert first.wait(timeout=TIMEOUT_S) == 0, log.read_text()
    after = snapshot(tmp_path / "reports")
    manifest = str(partition.relative_to(tmp_path / "reports") / "manifest.json")
    assert after[manifest] != before[manifest]  # the first run published again
    # Every line of the log is JSON: the events on stderr and the --json summary on stdout.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r.get("event") for r in records].count("published") == 2  # nights one and two
    assert [r.get("status") for r in records].count("success") == 2
