"""Airflow DAG ``klrank_nightly``: run ``klrank run --run-date {{ ds }}`` every night.

Deploy this file and ``klrank_task.py`` together into the DAGs folder. Settings are Airflow
Variables, read when the task runs (an environment variable ``AIRFLOW_VAR_<NAME>`` sets one too):

- ``klrank_command`` (default ``klrank``): how to start klrank, as shell words, e.g.
  ``/srv/klrank/.venv/bin/klrank`` (klrank lives in its own environment, not Airflow's);
- ``klrank_labels``, ``klrank_predictions`` (defaults ``/data/labels``, ``/data/predictions``);
- ``klrank_out`` (default ``/data/klrank``): the report goes to ``OUT/run_date={{ ds }}/``;
- ``klrank_options`` (default empty): more options, e.g. ``--slice-by region``.

Exit codes 1 (invalid data), 2 (usage error) and 3 (a regression gate failed, report published)
fail the task at once; anything else non-zero fails the try and Airflow retries it (see
``klrank_task.judge``).

What the task hands on, for a night whose report was published (exit 0 or 3):

- **XCom** ``return_value`` of ``klrank_run``: the night's summary (``klrank_task.xcom_summary``),
  ``{"status", "run_date", "report_uri", "unit", "rank_by", "models": [{"rank", "model",
  "mean_kl", "ci95_low", "ci95_high", "n_rows", "n_infinite"}, ...], "failed_gates": [...],
  "klrank_version"}``, taken from the manifest klrank published. It is pushed on exit 3 too,
  before the task fails, so a failure callback or an ``all_done`` task can say which gate failed.
- **Asset** ``klrank_nightly_report`` (the task's outlet): updated when the night succeeds (a
  failed gate fails the task, and no event is emitted). The event's ``extra`` is
  ``{"run_date", "report_uri", "status"}``. A downstream DAG runs after each good night with
  ``schedule=Asset("klrank_nightly_report")`` and finds the report in
  ``triggering_asset_events``. The Asset's URI is its name: where the reports lie is a Variable,
  read when the task runs, while an outlet is fixed when the file is parsed.
"""

import datetime as dt
from typing import Any

from airflow.providers.standard.hooks.subprocess import SubprocessHook
from airflow.sdk import DAG, Asset, BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from klrank_task import (
    REPORT_ASSET_NAME,
    Outcome,
    judge,
    klrank_argv,
    read_manifest,
    xcom_summary,
)

SCHEDULE = "30 2 * * *"  # nightly at 02:30 UTC; {{ ds }} is then that day's date
GATE_FAILED = 3  # klrank's exit code for a failed gate: the report is published
RETRIES = 2  # after [core] default_task_retry_delay (300 s unless configured)
EXECUTION_TIMEOUT = dt.timedelta(hours=4)  # on timeout klrank gets SIGTERM, and the try is retried
# Name only (its URI is the name): downstream DAGs declare the same Asset("klrank_nightly_report").
REPORT_ASSET = Asset(REPORT_ASSET_NAME)


def _variable(name: str, default: str) -> str:
    # Rendered when the task runs, not when the scheduler parses this file.
    return f"{{{{ var.value.get('{name}', '{default}') }}}}"


class KlrankRunOperator(BaseOperator):
    """Run ``klrank run`` for one night and turn its exit code into the task's outcome."""

    template_fields = ("command", "labels", "predictions", "out", "run_date", "options")

    def __init__(
        self,
        *,
        command: str,
        labels: str,
        predictions: str,
        out: str,
        run_date: str,
        options: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.command = command
        self.labels = labels
        self.predictions = predictions
        self.out = out
        self.run_date = run_date
        self.options = options
        self._hook = SubprocessHook()

    def execute(self, context: Context) -> dict[str, Any]:
        """Run klrank, streaming its output to the task log; raise unless it exited 0.

        Returns the night's summary (:func:`klrank_task.xcom_summary`), which Airflow pushes to
        XCom, and records the night in the outlet Asset's event.
        """
        try:
            argv = klrank_argv(
                self.command, self.labels, self.predictions, self.out, self.run_date, self.options
            )
            # The hook logs every line klrank prints (stderr merged into stdout).
            result = self._hook.run_command(argv)
        except (ValueError, OSError) as error:
            # A misconfigured command or path: retrying cannot help.
            raise AirflowFailException(f"cannot run klrank: {error}") from error
        verdict = judge(result.exit_code)
        if verdict.outcome is Outcome.RETRY:
            raise AirflowException(verdict.reason)
        if verdict.outcome is Outcome.FAIL:
            if result.exit_code == GATE_FAILED:  # published: the failed gates are worth reading
                self._push_gate_failure(context)
            raise AirflowFailException(verdict.reason)
        try:
            summary = xcom_summary(read_manifest(self.out, self.run_date), self.out, self.run_date)
        except (OSError, ValueError, KeyError) as error:
            # klrank said it published; a manifest that cannot be read may be a storage hiccup.
            raise AirflowException(f"klrank published, but its manifest: {error!r}") from error
        context["outlet_events"][REPORT_ASSET].extra = {
            key: summary[key] for key in ("run_date", "report_uri", "status")
        }
        self.log.info("%s: %s", verdict.reason, summary["report_uri"])
        return summary

    def _push_gate_failure(self, context: Context) -> None:
        """Push the summary of a night whose gate failed, before the task fails."""
        try:
            summary = xcom_summary(read_manifest(self.out, self.run_date), self.out, self.run_date)
        except (OSError, ValueError, KeyError) as error:
            self.log.warning("no summary for XCom: the manifest: %r", error)
            return
        context["ti"].xcom_push("return_value", summary)

    def on_kill(self) -> None:
        """SIGTERM klrank (a timeout, or the task was stopped): a killed run publishes nothing."""
        self._hook.send_sigterm()  # type: ignore[no-untyped-call]  # unannotated in Airflow


with DAG(
    dag_id="klrank_nightly",
    description="Rank the models by KL divergence, one report per night",
    schedule=SCHEDULE,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": RETRIES,
        "execution_timeout": EXECUTION_TIMEOUT,
    },
    doc_md=__doc__,
    tags=["klrank"],
):
    KlrankRunOperator(
        task_id="klrank_run",
        outlets=[REPORT_ASSET],
        command=_variable("klrank_command", "klrank"),
        labels=_variable("klrank_labels", "/data/labels"),
        predictions=_variable("klrank_predictions", "/data/predictions"),
        out=_variable("klrank_out", "/data/klrank"),
        run_date="{{ ds }}",
        options=_variable("klrank_options", ""),
    )
