"""What the nightly Airflow task runs, and how it judges klrank's exit code.

Pure standard library, so that it is unit tested without Airflow and deployed beside
``klrank_nightly.py`` in the DAGs folder (which Airflow puts on ``sys.path``).
"""

import enum
import json
import shlex
import signal
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

REPORT_ASSET_NAME = "klrank_nightly_report"
"""The Asset a successful night updates: ``schedule=Asset("klrank_nightly_report")`` downstream."""
# What klrank publishes in OUT/run_date=D/ (klrank.schemas.outputs, not importable here).
REPORT_FILE, MANIFEST_FILE = "report.parquet", "manifest.json"


class Outcome(enum.Enum):
    """What the task does with an exit code."""

    SUCCESS = "success"
    FAIL = "fail"
    """Fail now, without the remaining retries: running again cannot help."""
    RETRY = "retry"
    """Fail this try; Airflow retries while retries are left."""


@dataclass(frozen=True)
class Verdict:
    """An outcome and the one-line reason the task log shows for it."""

    outcome: Outcome
    reason: str


_FIX_THEN_CLEAR = "retrying cannot help: fix it, then clear the task to run this night again"
_BY_CODE = {
    0: Verdict(Outcome.SUCCESS, "klrank published the report"),
    1: Verdict(
        Outcome.FAIL,
        "klrank exit 1: the input data failed validation and nothing was published; the log above "
        f"lists the failed checks and where the failure cases were written; {_FIX_THEN_CLEAR}",
    ),
    2: Verdict(
        Outcome.FAIL,
        "klrank exit 2: usage error (bad option, missing or unreadable path, corrupt Parquet); "
        + _FIX_THEN_CLEAR,
    ),
    3: Verdict(
        Outcome.FAIL,
        "klrank exit 3: a regression gate failed; the report WAS published, and this task fails "
        "so that someone looks at it",
    ),
    75: Verdict(
        Outcome.RETRY,
        "klrank exit 75: another run still held this night's output partition after "
        "--lock-timeout; retried later",
    ),
    74: Verdict(
        Outcome.RETRY,
        "klrank exit 74: the machine refused an I/O step (no space, read-only, permission, a "
        "name too long); nothing was published; retried in case the storage recovers, and the "
        "log names the path and the cause",
    ),
    69: Verdict(
        Outcome.RETRY,
        "klrank exit 69: the Ray engine failed (cluster unreachable, a task's worker kept "
        "dying); nothing was published; retried later",
    ),
    70: Verdict(
        Outcome.RETRY,
        "klrank exit 70: internal error (a bug in klrank); retried in case it is transient, "
        "rerun with --debug for the traceback",
    ),
}


def judge(exit_code: int) -> Verdict:
    """The outcome of the task for klrank's exit code.

    Parameters
    ----------
    exit_code
        ``Popen.returncode``: klrank's exit status, or minus the signal that killed it.

    Returns
    -------
    Verdict
        ``SUCCESS`` for 0; ``FAIL`` (no retry) for 1 invalid data, 2 usage error and 3 a failed
        regression gate; ``RETRY`` for 69 the Ray engine failed, 70 internal error, 74 an I/O error
        of the machine, 75 another run held the partition's lock, for a run killed by a signal (negative
        code, or 128 + signal from a shell: SIGINT 130, SIGKILL 137, SIGTERM 143), and for any
        other code, since retries are bounded and an unknown failure may be transient.

    Examples
    --------
    >>> judge(1).outcome
    <Outcome.FAIL: 'fail'>
    >>> judge(-15).reason
    'klrank was killed by SIGTERM; retried'
    """
    if exit_code in _BY_CODE:
        return _BY_CODE[exit_code]
    try:
        # Popen reports a death by signal N as -N; a shell in between reports 128 + N.
        killed_by = signal.Signals(-exit_code if exit_code < 0 else exit_code - 128)
    except ValueError:
        return Verdict(Outcome.RETRY, f"klrank exit {exit_code}: unexpected exit code; retried")
    return Verdict(Outcome.RETRY, f"klrank was killed by {killed_by.name}; retried")


def klrank_argv(
    command: str, labels: str, predictions: str, out: str, run_date: str, options: str = ""
) -> list[str]:
    """The ``klrank run`` command line of one night.

    Parameters
    ----------
    command
        How to start klrank, as shell words (``/srv/klrank/.venv/bin/klrank``).
    labels, predictions, out
        Absolute paths, passed to ``--labels``, ``--predictions`` and ``--out``.
    run_date
        ``YYYY-MM-DD``; the report goes to ``OUT/run_date=YYYY-MM-DD/``.
    options
        More options as shell words (``--slice-by region --no-rows``), or empty.

    Raises
    ------
    ValueError
        ``command`` is empty or a path is relative (the task runs in a temporary folder).

    Examples
    --------
    >>> klrank_argv("klrank", "/d/labels", "/d/predictions", "/d/out", "2026-11-25")[-4:]
    ['/d/out', '--run-date', '2026-11-25', '--json']
    """
    words = shlex.split(command)
    if not words:
        raise ValueError("the klrank command is empty")
    paths = {"labels": labels, "predictions": predictions, "out": out}
    relative = [
        f"{name}={path!r}" for name, path in paths.items() if not PurePosixPath(path).is_absolute()
    ]
    if relative:
        raise ValueError(f"paths must be absolute: {', '.join(relative)}")
    return [
        *words,
        "run",
        *shlex.split(options),
        "--labels",
        labels,
        "--predictions",
        predictions,
        "--out",
        out,
        "--run-date",
        run_date,
        "--json",
    ]


def night_folder(out: str, run_date: str) -> PurePosixPath:
    """Where klrank publishes the night ``run_date`` under ``out``: ``OUT/run_date=D``."""
    return PurePosixPath(out) / f"run_date={run_date}"


def report_uri(out: str, run_date: str) -> str:
    """The URI of the night's ``report.parquet`` (``out`` is absolute, see :func:`klrank_argv`).

    Percent-encoded but for ``/`` and the ``=`` of the hive key, which RFC 3986 allows in a path
    (``PurePath.as_uri`` would write ``%3D``).

    >>> report_uri("/d/out", "2026-11-25")
    'file:///d/out/run_date=2026-11-25/report.parquet'
    >>> report_uri("/d/my reports", "2026-11-25")
    'file:///d/my%20reports/run_date=2026-11-25/report.parquet'
    """
    return "file://" + urllib.parse.quote(str(night_folder(out, run_date) / REPORT_FILE), safe="/=")


def read_manifest(out: str, run_date: str) -> dict[str, Any]:
    """The night's ``manifest.json``: what ``klrank run --json`` printed, as klrank published it.

    Read from the published folder rather than from the task log, where stderr is merged.
    """
    document: dict[str, Any] = json.loads(
        Path(night_folder(out, run_date), MANIFEST_FILE).read_text(encoding="utf-8")
    )
    return document


def xcom_summary(manifest: Mapping[str, Any], out: str, run_date: str) -> dict[str, Any]:
    """The night's summary for XCom, from its manifest (JSON-ready).

    Returns
    -------
    dict
        ``status`` (``success`` or ``gate_failed``), ``run_date``, ``report_uri``, ``unit``,
        ``rank_by``, ``models`` (the ``ALL`` slice in rank order: ``rank``, ``model``,
        ``mean_kl``, ``ci95_low``, ``ci95_high``, ``n_rows``, ``n_infinite``; null for an
        infinite value), ``failed_gates`` (the manifest's records of the gates that failed:
        ``gate``, ``model``, ``message``, ...) and ``klrank_version``.

    Examples
    --------
    >>> manifest = {"status": "success", "unit": "bits", "options": {"rank_by": "mean_kl"},
    ...     "ranking": [{"rank": 1, "model": "m", "mean_kl": 0.5}], "gates": [],
    ...     "klrank_version": "0.1.0"}
    >>> xcom_summary(manifest, "/d/out", "2026-11-25")["report_uri"]
    'file:///d/out/run_date=2026-11-25/report.parquet'
    """
    return {
        "status": manifest["status"],
        "run_date": run_date,
        "report_uri": report_uri(out, run_date),
        "unit": manifest["unit"],
        "rank_by": manifest["options"]["rank_by"],
        "models": list(manifest["ranking"]),
        "failed_gates": [dict(g) for g in manifest["gates"] if g["outcome"] == "failed"],
        "klrank_version": manifest["klrank_version"],
    }
