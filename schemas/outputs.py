"""What klrank publishes, declared once: the file names, their columns and the nightly key.

A report folder (``OUT/`` or ``OUT/run_date=YYYY-MM-DD/``) holds the files of ``OUTPUT_FILES``
that the run's options ask for, listed in its manifest's ``outputs``, and ``_SUCCESS`` last.
The columns of ``report.parquet`` are :data:`klrank.schemas.report.REPORT_COLUMNS`; the other
files' columns are below. Changing any of them is a change of a published contract: it gets a
CHANGELOG entry.
"""

RUN_DATE_KEY = "run_date"  # nightly partitions: OUT/run_date=YYYY-MM-DD/

REPORT_FILE = "report.parquet"
ROWS_FILE = "rows.parquet"
CONTRIBUTIONS_FILE = "class_contributions.parquet"
WORST_FILE = "worst_rows.parquet"
QUANTILES_FILE = "quantiles.parquet"
HTML_FILE = "report.html"
SUMMARY_FILE = "summary.md"
MANIFEST_FILE = "manifest.json"
SUCCESS_FILE = "_SUCCESS"
# In the order a manifest lists them; rows, worst rows and the page only when asked for.
OUTPUT_FILES = (
    REPORT_FILE,
    ROWS_FILE,
    CONTRIBUTIONS_FILE,
    QUANTILES_FILE,
    WORST_FILE,
    HTML_FILE,
    SUMMARY_FILE,
    MANIFEST_FILE,
)
HISTORY_CHART = "history.html"  # klrank history --chart, beside the nights by default

# Failure cases of a run that found invalid data: OUT/_failures[/run_date=...]/failures.parquet.
FAILURES_FOLDER = "_failures"
FAILURES_FILE = "failures.parquet"
FAILURES_MARKER = "klrank.failures"  # footer metadata key of a failure-cases file
FAILURE_COLUMNS = ("dataset", "check", "column", "row", "id", "model", "value")

# rows.parquet: one row per (label row, model), then the --slice-by columns.
MEASURE_COLUMNS = ("kl", "reverse_kl", "js", "cross_entropy", "entropy", "top1_match")
ROW_COLUMNS = ("id", "model", *MEASURE_COLUMNS)
# With soft truth and the token that came next (a label column): after the measures, in
# rows.parquet and worst_rows.parquet. nll = -log q(token) in the run's unit, delta_p =
# q(token) - p(token).
TOKEN_COLUMNS = ("nll", "delta_p")
# worst_rows.parquet adds these to the row columns; a slice column may not take their names.
WORST_ROW_COLUMNS = ("rank", "row")
# class_contributions.parquet: per (slice, model, class), in the report's row order.
CONTRIBUTION_COLUMNS = ("slice", "model", "class", "contribution", "mean_p", "mean_q", "unit")
# quantiles.parquet: per (slice, model, measure, quantile) one value, in the report's row order;
# the measures are those of QUANTILE_MEASURES the row frames carry (kl always).
QUANTILE_COLUMNS = ("slice", "model", "measure", "quantile", "value")
QUANTILE_MEASURES = ("kl", "delta_p")
