"""Nights logged to MLflow: ``klrank run --mlflow-experiment NAME``, ``Evaluation.publish``.

Each published night is one parent run of the experiment, named after its run date, with the
run's options as params, tags saying what and where it published, and the published files as
artifacts. Under it, one nested run per model, named after the model, with the same params and,
as metrics, the model's numeric columns of the report's ``ALL`` slice under the report's column
names: MLflow's compare view then shows each night's models side by side.

When it is logged: from the staging folder (:func:`klrank.io.publishing.staging`), once every
published file but the manifest is written and before the folder replaces the night. The
manifest is then written with the outcome (its ``"mlflow"`` record) and logged last, so MLflow
holds the very bytes that are published, and the night is still published whole or not at all.
The runs stay ``RUNNING`` until the folder has replaced the night, then :func:`finishing` marks
them ``FINISHED``, or ``FAILED`` if the night could not be published; a signal that stops the
run leaves them as they are rather than wait on the server. A failure to reach or to write to
MLflow is a warning (the ``mlflow.failed`` event) and never fails the night: it is published all
the same, its manifest saying ``"status": "failed"`` and why.

The server and its credentials are MLflow's own configuration: ``MLFLOW_TRACKING_URI`` (which
must be set), ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, and its
retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, 7 by default: about 4 minutes before an
unreachable server counts as failed). No credential reaches the manifest, a tag or a message.

MLflow's client (``pip install 'klrank[mlflow]'``, the ``mlflow-skinny`` package) is imported
only here, and only when a run logs to MLflow.
"""

import contextlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from klrank._version import __version__
from klrank.io import writing
from klrank.pipeline.aggregate import ALL_ROWS, SLICE
from klrank.pipeline.errors import UsageError
from klrank.pipeline.layout import MODEL
from klrank.pipeline.text import one_line
from klrank.runtime import events
from klrank.schemas.outputs import MANIFEST_FILE, REPORT_FILE

if TYPE_CHECKING:
    from mlflow import MlflowClient

INSTALL_HINT = "logging to MLflow needs its client: pip install 'klrank[mlflow]'"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# MLflow's limits on a param's and a tag's value (mlflow.utils.validation).
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
# The environment variables whose values are secrets, kept out of every message.
SECRET_ENVS = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
)
# The loggers MLflow's client reports its retries through, muted while klrank calls it.
QUIET_LOGGERS = ("mlflow", "urllib3")
LOGGED, FAILED = "logged", "failed"


def params(options: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The run's options (``manifest.json``'s ``options``) as MLflow params.

    A nested table becomes one param per entry, ``gates.max_mean_kl``; a string is its own
    value, anything else its JSON (``null``, ``true``, ``0.05``, ``["region"]``).

    Notes
    -----
    MLflow refuses a param longer than 6,000 characters (a long ``classes`` list, say): such a
    value is cut to 5,999 characters and ends with ``…``.

    >>> params({"base": "2", "slice_by": ["region"], "gates": {"alpha": 0.05}})
    {'base': '2', 'slice_by': '["region"]', 'gates.alpha': '0.05'}
    """
    flat: dict[str, str] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= params(value, f"{name}.")
        else:
            flat[name] = _cut(
                value if isinstance(value, str) else json.dumps(value), MAX_PARAM_LENGTH
            )
    return flat


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def model_metrics(report: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Each model's numeric columns of the report's ``ALL`` slice, by column name.

    Notes
    -----
    A null (a value undefined for the model: ``p_value_vs_best`` of the best, ``p_best``
    without a bootstrap) is left out: MLflow has no null metric. An infinite value is logged as
    it is; MLflow's database stores keep ±inf as ±1.7976931348623157e308, the largest float.
    Counts (``rank``, ``n_rows``, ...) become floats, as every MLflow metric is.
    """
    numeric = [name for name, dtype in report.schema.items() if dtype.is_numeric()]
    rows = report.filter(pl.col(SLICE) == ALL_ROWS).select(MODEL, *numeric)
    return {
        str(row[MODEL]): {k: float(v) for k, v in row.items() if k != MODEL and v is not None}
        for row in rows.iter_rows(named=True)
    }


_USERINFO = re.compile(r"(?<=//)[^/@\s]*@")


def redacted(text: str) -> str:
    """``text`` without the credentials of any URL in it, or the values of :data:`SECRET_ENVS`.

    >>> redacted("failed: https://me:s3cret@mlflow.example.com/api")
    'failed: https://mlflow.example.com/api'
    """
    text = _USERINFO.sub("", text)
    for name in SECRET_ENVS:
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text


def public_uri(uri: str) -> str:
    """The tracking URI as the manifest records it: no credentials, query or fragment.

    >>> public_uri("https://me:s3cret@mlflow.example.com:8443/?token=x")
    'https://mlflow.example.com:8443/'
    """
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep MLflow's client off klrank's streams while it runs.

    It prints links to each run it ends on stdout, where ``--json`` promises one JSON document,
    and logs its retries on stderr, where ``--log-format json`` promises JSON lines; the outcome
    is klrank's own event.
    """
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _client_errors() -> tuple[type[BaseException], ...]:
    """What a failure to reach or to write to MLflow raises; anything else is a bug, not caught."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, OSError)


@dataclass
class Tracker:
    """One night's runs in one MLflow experiment: made by :func:`connect`, used once."""

    experiment: str
    tracking_uri: str
    client: "MlflowClient"
    run_ids: list[str] = field(default_factory=list)  # the parent's first, then each model's

    def log(self, folder: Path, target: Path | str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Log the night staged in ``folder`` and write its manifest, which records the outcome.

        ``folder`` holds every published file but the manifest; ``manifest`` is the one to
        write, without its ``"mlflow"`` record; ``target`` is where the night is published.
        Returns the manifest written. A failure to log is a warning, recorded in the manifest.
        """
        record: dict[str, Any] = {
            "experiment": self.experiment,
            "tracking_uri": public_uri(self.tracking_uri),
            "status": LOGGED,
        }
        started = time.perf_counter()
        try:
            with _quiet():
                record |= self._log_runs(folder, target, manifest)
        except _client_errors() as error:
            return self._failed(folder, manifest, record, error)
        logged = manifest | {"mlflow": record}
        writing.write_json(logged, folder / MANIFEST_FILE)
        try:
            with _quiet():
                self.client.log_artifact(self.run_ids[0], str(folder / MANIFEST_FILE))
        except _client_errors() as error:
            return self._failed(folder, manifest, record, error)
        events.emit(
            "mlflow.logged",
            experiment=self.experiment,
            run_id=record["run_id"],
            models=len(record["model_runs"]),
            seconds=round(time.perf_counter() - started, 4),
        )
        return logged

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException as error:  # another night made it meanwhile
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            raise MlflowException(f"experiment {self.experiment!r} exists and cannot be found")
        return str(found.experiment_id)

    def _log_runs(
        self, folder: Path, target: Path | str, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        """The parent run, its params, tags and artifacts, then a nested run per model."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        experiment_id = self._experiment_id()
        run_date = manifest["options"]["run_date"]
        logged = [Param(k, v) for k, v in params(manifest["options"]).items()]
        tags = {
            "klrank.run_date": run_date or "",
            "klrank.status": manifest["status"],
            "klrank.target": _cut(str(target), MAX_TAG_LENGTH),
            "klrank.version": __version__,
            "klrank.unit": manifest["unit"],
        }
        parent = client.create_run(
            experiment_id,
            tags=tags,
            run_name=run_date or str(target).rstrip("/").rsplit("/", 1)[-1],
        )
        parent_id = parent.info.run_id
        self.run_ids.append(parent_id)
        client.log_batch(parent_id, params=logged)
        for name in manifest["outputs"]:
            path = folder / name
            if name == MANIFEST_FILE:
                continue  # written with this outcome, then logged last
            if path.is_dir():  # the Ray engine's rows.parquet/ holds one file per part
                client.log_artifacts(parent_id, str(path), name)
            else:
                client.log_artifact(parent_id, str(path))
        now = int(time.time() * 1000)
        model_runs = {}
        for model, metrics in model_metrics(pl.read_parquet(folder / REPORT_FILE)).items():
            child_tags = tags | {"mlflow.parentRunId": parent_id, "klrank.model": model}
            child = client.create_run(experiment_id, tags=child_tags, run_name=model)
            model_runs[model] = child.info.run_id
            self.run_ids.append(child.info.run_id)
            client.log_batch(
                child.info.run_id,
                metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                params=logged,
                tags=[RunTag("klrank.rank", str(int(metrics["rank"])))],
            )
        return {"experiment_id": experiment_id, "run_id": parent_id, "model_runs": model_runs}

    def _failed(
        self,
        folder: Path,
        manifest: dict[str, Any],
        record: dict[str, Any],
        error: BaseException,
    ) -> dict[str, Any]:
        """Record and warn that logging failed; mark what was logged of the night FAILED."""
        message = redacted(one_line(f"{type(error).__name__}: {error}"))
        record |= {"status": FAILED, "message": message}
        record.setdefault("run_id", self.run_ids[0] if self.run_ids else None)
        self._end("FAILED")
        self.run_ids.clear()  # nothing left for finish() to end
        failed = manifest | {"mlflow": record}
        writing.write_json(failed, folder / MANIFEST_FILE)
        events.emit(
            "mlflow.failed",
            logging.WARNING,
            experiment=self.experiment,
            message=message,
            note="the night is published all the same; its manifest records the failure",
        )
        return failed

    def _end(self, status: str) -> bool:
        """End every run of the night with ``status``; False where MLflow could not be told."""
        try:
            with _quiet():
                for run_id in self.run_ids:
                    self.client.set_terminated(run_id, status)
        except _client_errors():
            return False
        return True

    def finish(self, published: bool) -> None:
        """End the night's runs: ``FINISHED`` once it is published, else ``FAILED``."""
        if not self.run_ids:
            return
        if not self._end("FINISHED" if published else "FAILED"):
            events.emit(
                "mlflow.unfinished",
                logging.WARNING,
                experiment=self.experiment,
                run_id=self.run_ids[0],
                note="the night's MLflow runs could not be ended and still say RUNNING",
            )


def connect(experiment: str) -> Tracker:
    """A tracker for ``experiment`` at ``MLFLOW_TRACKING_URI``; no request is sent yet.

    Raises
    ------
    UsageError
        MLflow's client is not installed, ``MLFLOW_TRACKING_URI`` is not set, or it names a
        store that the client cannot use.
    """
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    uri = os.environ.get(TRACKING_URI_ENV, "")
    if not uri:
        raise UsageError(
            f"logging to MLflow needs {TRACKING_URI_ENV}, the tracking server's URL "
            "(MLflow's own variable), e.g. http://127.0.0.1:5000"
        )
    try:
        with _quiet():
            client = MlflowClient(uri)
    except MlflowException as error:
        raise UsageError(
            f"{TRACKING_URI_ENV}={redacted(one_line(uri))} is not a store MLflow's client can use: "
            f"{redacted(one_line(str(error)))}"
        ) from None
    return Tracker(experiment, uri, client)


@contextlib.contextmanager
def finishing(tracker: Tracker | None) -> Iterator[None]:
    """End the tracker's runs after the block, which publishes the night.

    ``FINISHED`` if the block returned, ``FAILED`` if it raised an error; a signal
    (:class:`klrank.pipeline.errors.Interrupted`) leaves them as they are, so that a stopped run
    does not wait on the server.
    """
    if tracker is None:
        yield
        return
    try:
        yield
    except Exception:
        tracker.finish(published=False)
        raise
    tracker.finish(published=True)
