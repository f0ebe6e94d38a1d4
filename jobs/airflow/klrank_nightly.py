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
"""

import datetime as dt
from typing import Any

from airflow.providers.standard.hooks.subprocess import SubprocessHook
from airflow.sdk import DAG, BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from klrank_task import Outcome, judge, klrank_argv

SCHEDULE = "30 2 * * *"  # nightly at 02:30 UTC; {{ ds }} is then that day's date
RETRIES = 2  # after [core] default_task_retry_delay (300 s unless configured)
EXECUTION_TIMEOUT = dt.timedelta(hours=4)  # on timeout klrank gets SIGTERM, and the try is retried


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

    def execute(self, context: Context) -> None:
        """Run klrank, streaming its output to the task log; raise unless it exited 0."""
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
        if verdict.outcome is Outcome.FAIL:
            raise AirflowFailException(verdict.reason)
        if verdict.outcome is Outcome.RETRY:
            raise AirflowException(verdict.reason)
        self.log.info("%s: %s/run_date=%s", verdict.reason, self.out, self.run_date)

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
        command=_variable("klrank_command", "klrank"),
        labels=_variable("klrank_labels", "/data/labels"),
        predictions=_variable("klrank_predictions", "/data/predictions"),
        out=_variable("klrank_out", "/data/klrank"),
        run_date="{{ ds }}",
        options=_variable("klrank_options", ""),
    )
