"""The frozen options of a run, as the job layer receives them from the CLI (or from Python)."""

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from klrank.io import storage
from klrank.io.buckets import LEASE_TTL_S
from klrank.pipeline.aggregate import DEFAULT_QUANTILES as DEFAULT_QUANTILES
from klrank.pipeline.aggregate import RANK_METRICS
from klrank.pipeline.divergence import LOG_BASES
from klrank.pipeline.errors import UsageError
from klrank.pipeline.gates import Gates
from klrank.pipeline.layout import DEFAULT_BATCH_BYTES
from klrank.schemas.outputs import FAILURES_FILE, FAILURES_FOLDER, RUN_DATE_KEY

TruthOption = Literal["auto", "hard", "soft"]
# Replicates of the Poisson bootstrap of the ranking (p_best, rank_low, rank_high) by default.
DEFAULT_BOOTSTRAP = 200
Engine = Literal["local", "ray"]


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """The probabilities of ``quantiles.parquet`` as floats, or a UsageError saying what is wrong.

    At least one, each a number in [0, 1] (0 is the minimum, 1 the maximum), none twice.
    """
    if isinstance(quantiles, str | bytes) or not quantiles:
        raise UsageError(
            f"--quantiles must list at least one probability in [0, 1], got {quantiles!r}"
        )
    checked = []
    for q in quantiles:
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 1:
            raise UsageError(f"--quantiles must be probabilities in [0, 1], got {q!r}")
        checked.append(float(q) + 0.0)  # -0.0 as 0.0
    twice = sorted({q for q in checked if checked.count(q) > 1})
    if twice:
        raise UsageError(f"--quantiles names {', '.join(map(repr, twice))} twice")
    return tuple(checked)


def parse_quantiles(text: str) -> tuple[float, ...]:
    """``--quantiles`` as given on the command line: comma-separated probabilities in [0, 1].

    A TOML array in a config file (``quantiles = [0.5, 0.99]``) reaches the option as its
    text, ``"[0.5, 0.99]"``: the brackets are accepted too.

    >>> parse_quantiles("0.5, 0.99,1")
    (0.5, 0.99, 1.0)
    """
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    values = []
    for item in inner.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(
                "--quantiles must be comma-separated probabilities in [0, 1] (e.g. 0.5,0.9,0.99), "
                f"got {item.strip()!r} in {text!r}"
            ) from None
        values.append(value)
    return check_quantiles(values)


@dataclass(frozen=True)
class InputOptions:
    """Where the inputs are and how their columns are named."""

    labels: str
    predictions: str
    id_col: str = "id"
    label_col: str = "label"
    model_col: str = "model"
    prob_prefix: str = "prob_"
    logit_prefix: str = "logit_"
    truth: TruthOption = "auto"
    tolerance: float = 1e-6
    slice_by: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # names of array positions; default "0".."K-1"
    weight_col: str | None = None  # a labels column of row weights
    cluster_by: str | None = None  # a labels column of cluster keys (cluster-robust errors)
    batch_bytes: int = DEFAULT_BATCH_BYTES  # rows a batch: one N × K Float64 array this big

    def __post_init__(self) -> None:
        storage.check_input(self.labels, "--labels")
        storage.check_input(self.predictions, "--predictions")
        if len(set(self.classes)) != len(self.classes):
            raise UsageError(f"--classes names a class twice: {list(self.classes)}")
        if not self.tolerance >= 0:
            raise UsageError(f"--tolerance must be >= 0, got {self.tolerance}")
        if self.batch_bytes < 1:
            raise UsageError(f"--batch-bytes must be >= 1, got {self.batch_bytes}")
        if self.truth not in ("auto", "hard", "soft"):
            raise UsageError(f"--truth must be auto, hard or soft, got {self.truth!r}")


@dataclass(frozen=True)
class RunOptions:
    """Everything ``klrank run`` needs: the inputs, the measures' options and where to publish."""

    inputs: InputOptions
    out: Path | str  # a local folder, or an s3:// URL (klrank.io.buckets)
    base: str = "2"
    epsilon: float = 0.0
    rank_by: str = "mean_kl"
    run_date: dt.date | None = None
    write_rows: bool = True
    failures: Path | str | None = None
    baseline: str | None = None  # "auto", a report.parquet or a run folder
    gates: Gates = Gates()
    lock_timeout: float = 600.0  # seconds to wait for another run of the same partition
    write_html: bool = True
    worst: int = 20  # rows of worst_rows.parquet per model; 0 writes no file
    engine: Engine = "local"
    ray_address: str | None = None  # engine "ray": a cluster to join; None starts a local one
    partitions: int | None = None  # engine "ray": parts the rows are split into; None: automatic
    bootstrap: int = DEFAULT_BOOTSTRAP  # Poisson bootstrap replicates of the ranking; 0: none
    seed: int = 0  # of the bootstrap's weights
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES  # probabilities of quantiles.parquet
    mlflow_experiment: str | None = None  # log the night there (klrank.tracking); not recorded
    lease_ttl: float = LEASE_TTL_S  # s3:// --out: a lease not renewed for this long is a dead run's

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", storage.output_location(self.out, "--out"))
        if self.failures is not None:
            failures = storage.output_location(self.failures, "--failures")
            object.__setattr__(self, "failures", failures)
        if not self.lease_ttl > 0:
            raise UsageError(f"--lease-ttl must be > 0, got {self.lease_ttl}")
        if self.engine not in ("local", "ray"):
            raise UsageError(f"--engine must be local or ray, got {self.engine!r}")
        if self.engine == "local" and (self.ray_address or self.partitions is not None):
            raise UsageError("--ray-address and --partitions need --engine ray")
        if self.partitions is not None and self.partitions < 1:
            raise UsageError(f"--partitions must be >= 1, got {self.partitions}")
        if self.baseline == "auto" and self.run_date is None:
            raise UsageError("--baseline auto needs --run-date (it picks the latest earlier night)")
        if self.gates.max_regression_pct is not None and self.baseline is None:
            raise UsageError("--max-regression needs --baseline (auto or a path)")
        if not self.lock_timeout >= 0:
            raise UsageError(f"--lock-timeout must be >= 0, got {self.lock_timeout}")
        if self.base not in LOG_BASES:
            raise UsageError(f"--base must be one of {', '.join(LOG_BASES)}, got {self.base!r}")
        if not (0.0 <= self.epsilon < 1.0):
            raise UsageError(f"--epsilon must be in [0, 1), got {self.epsilon}")
        if self.mlflow_experiment is not None and not self.mlflow_experiment.strip():
            raise UsageError("--mlflow-experiment must name an experiment, got an empty name")
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be >= 0, got {self.bootstrap}")
        if self.worst < 0:
            raise UsageError(f"--worst must be >= 0, got {self.worst}")
        object.__setattr__(self, "quantiles", check_quantiles(self.quantiles))
        if self.rank_by not in RANK_METRICS:
            raise UsageError(
                f"--rank-by must be one of {', '.join(RANK_METRICS)}, got {self.rank_by!r}"
            )

    @property
    def target(self) -> Path | str:
        """The directory (or ``s3://`` prefix) the report is published to."""
        if self.run_date is None:
            return self.out
        partition = f"{RUN_DATE_KEY}={self.run_date.isoformat()}"
        return f"{self.out}/{partition}" if isinstance(self.out, str) else self.out / partition

    @property
    def failures_path(self) -> Path | str:
        """Where the full failure cases go when validation fails: never among the report's files.

        ``OUT/_failures/`` (under ``run_date=...`` with a run date): outside every dated
        partition; without a run date, a ``_failures`` folder in the output directory, which
        Parquet readers skip.
        """
        if self.failures is not None:
            return self.failures
        partition = [] if self.run_date is None else [f"{RUN_DATE_KEY}={self.run_date.isoformat()}"]
        if isinstance(self.out, str):
            return "/".join((self.out, FAILURES_FOLDER, *partition, FAILURES_FILE))
        return self.out.joinpath(FAILURES_FOLDER, *partition, FAILURES_FILE)

    def recorded(self) -> dict[str, Any]:
        """The options as recorded in the report's metadata and the manifest (JSON-ready)."""
        options = asdict(self.inputs) | {
            "base": self.base,
            "epsilon": self.epsilon,
            "rank_by": self.rank_by,
            "run_date": self.run_date.isoformat() if self.run_date else None,
            "write_rows": self.write_rows,
            "baseline": self.baseline,
            "gates": self.gates.recorded(),
            "write_html": self.write_html,
            "worst": self.worst,
            "engine": self.engine,
            "partitions": self.partitions,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "quantiles": list(self.quantiles),
        }
        options["slice_by"] = list(self.inputs.slice_by)
        options["classes"] = list(self.inputs.classes)
        return options
