"""Benchmark klrank against a read floor, DuckDB and pandas+scipy doing the same job.

Usage (``make bench ARGS="..."`` passes the same options)::

    .venv/bin/python benchmarks/run.py                      # tiny and 2m, 3 repetitions
    .venv/bin/python benchmarks/run.py --sizes 20m --repeat 1 --timeout 1800 --out bench.md

Data sets are generated once under ``benchmarks/data/`` (see ``bench_data.py``). For each size
the contenders run as subprocesses, round-robin within each repetition so drift in machine load
hits all of them alike, after one untimed read of the inputs that warms the page cache. Wall
time (interpreter start-up included: every contender is a Python process), CPU time and peak RSS
(the child's own ``ru_maxrss`` from ``os.wait4``) are taken by the small launcher ``measure.py``,
whose docstring says why the harness cannot take them itself. After the first repetition the
mean KL per model of DuckDB and pandas+scipy must agree with klrank's ``report.parquet`` to
``--rtol``, or the run stops with exit code 1.

The language-model sizes (``lm-tiny``, ``lm1k``, ``lm32k``, ``lm128k``: base logits as truth with the next
token, candidates' logits) have contenders of their own: the read floor, klrank on that layout
(``--truth soft --base e``; a klrank that cannot read logits as truth is shown as not run),
klrank with the base given as probabilities (``klrank prob truth``, which every klrank reads),
and ``llamacpp_numpy.py``, llama.cpp's ``--kl-divergence`` statistics in numpy. Their mean KL
per model, in nats, must agree in the same way::

    .venv/bin/python benchmarks/run.py --sizes lm32k,lm128k --repeat 1
    .venv/bin/python benchmarks/run.py --sizes lm32k --lm-rows 500 --repeat 1
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import bench_data
import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable

READ_FLOOR, KLRANK, DUCKDB, PANDAS = "read floor", "klrank", "duckdb", "pandas+scipy"
# klrank run --engine ray, starting a local Ray instance on this machine as a user's run would.
KLRANK_RAY = "klrank ray"
# klrank without its bootstrap (--bootstrap 0): what the default --bootstrap 200 costs.
KLRANK_NO_BOOTSTRAP = "klrank --bootstrap 0"
# klrank with every optional part of its work off: no bootstrap, rows.parquet, report.html or
# worst rows. What the report's own measures, checks and tests cost, beside DuckDB's job.
KLRANK_CORE = "klrank core only"
CORE_OPTIONS = ("--bootstrap", "0", "--no-rows", "--no-html", "--worst", "0")
# The language-model case: klrank with the base as probabilities (labels-prob.parquet), which a
# klrank that cannot read logits as truth also runs; and llama.cpp's statistics in numpy.
KLRANK_PROB = "klrank prob truth"
LLAMACPP = "llama.cpp numpy"
# klrank where pandas is installed too, as in most users' environments (pandera imports pandas
# whenever it can): --klrank-with-pandas, by default the klrank of the harness's environment.
KLRANK_WITH_PANDAS = "klrank with pandas"
TABULAR_CONTENDERS = (
    READ_FLOOR,
    KLRANK,
    KLRANK_WITH_PANDAS,
    KLRANK_NO_BOOTSTRAP,
    KLRANK_CORE,
    KLRANK_RAY,
    DUCKDB,
    PANDAS,
)
CONTENDERS = (*TABULAR_CONTENDERS, KLRANK_PROB, LLAMACPP)
LM_CONTENDERS = (READ_FLOOR, KLRANK, KLRANK_PROB, LLAMACPP)
# The contenders that publish a report.parquet with `model` and `mean_kl` to check against klrank.
CHECKED = (
    KLRANK_WITH_PANDAS,
    KLRANK_NO_BOOTSTRAP,
    KLRANK_CORE,
    KLRANK_RAY,
    DUCKDB,
    PANDAS,
    KLRANK_PROB,
    LLAMACPP,
)
KLRANKS = (KLRANK, KLRANK_WITH_PANDAS, KLRANK_NO_BOOTSTRAP, KLRANK_CORE, KLRANK_RAY, KLRANK_PROB)
# klrank's answer (exit 2) when the labels hold logits and it cannot read them as truth.
NO_LOGIT_TRUTH = "no distribution columns found in labels"
# "<size>-array" runs the array-layout copy of a size that has one (a `prob` Array column).
ARRAY_SUFFIX = "-array"


class BenchmarkError(Exception):
    """A contender failed or disagreed with klrank; the message says which and why."""


class ContenderFailed(BenchmarkError):
    """A contender exited with an error; ``returncode`` and the end of its ``log`` say how."""

    def __init__(self, message: str, returncode: int, log: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log = log


@dataclass(frozen=True)
class Options:
    """What to run, parsed from the command line."""

    sizes: list[str]
    contenders: list[str]
    repeat: int
    data_dir: Path
    klrank: str
    klrank_with_pandas: str
    rtol: float
    timeout_s: int
    out: Path | None
    lm_rows: int | None = None  # tokens of every language-model size, instead of its own


@dataclass(frozen=True)
class Run:
    """One timed subprocess."""

    seconds: float
    cpu_seconds: float  # user + system: steadier than wall time on a busy machine
    peak_rss_mib: float
    timed_out: bool


@dataclass
class Result:
    """Every run of one contender on one data set."""

    contender: str
    runs: list[Run] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)  # klrank's timings_s per run
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)  # what the first run reported, for the table

    @property
    def median_s(self) -> float:
        """Median wall time."""
        return statistics.median(r.seconds for r in self.runs)

    @property
    def min_s(self) -> float:
        """Fastest wall time."""
        return min(r.seconds for r in self.runs)

    @property
    def cpu_s(self) -> float:
        """Median CPU time (user + system)."""
        return statistics.median(r.cpu_seconds for r in self.runs)

    @property
    def peak_rss_mib(self) -> float:
        """Largest peak RSS over the runs."""
        return max(r.peak_rss_mib for r in self.runs)


def default_klrank() -> str:
    """The ``klrank`` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(PYTHON).with_name("klrank")
    return str(beside) if beside.exists() else shutil.which("klrank") or "klrank"


def is_lm(spec: bench_data.DataSet | bench_data.LmDataSet) -> bool:
    """Whether ``spec`` is a language-model set (base logits and next tokens as truth)."""
    return isinstance(spec, bench_data.LmDataSet)


def command(
    contender: str,
    folder: Path,
    out: Path,
    klrank: str,
    lm: bool = False,
    klrank_with_pandas: str | None = None,
) -> list[str]:
    """The command line of ``contender`` on the data set in ``folder``, writing under ``out``.

    ``lm``: the data set is a language-model set (``bench_data.LmDataSet``).
    """
    labels = bench_data.prob_labels_path(folder) if contender == KLRANK_PROB else None
    inputs = [
        "--labels",
        str(labels or bench_data.labels_path(folder)),
        "--predictions",
        str(bench_data.predictions_path(folder)),
    ]
    if lm and contender in (KLRANK, KLRANK_PROB):
        # llama.cpp's unit; --truth soft, lest a klrank that reads no logits take `label` alone.
        return [klrank, "run", *inputs, "--out", str(out), "--truth", "soft", "--base", "e"]
    if contender == LLAMACPP:
        return [PYTHON, str(HERE / "llamacpp_numpy.py"), *inputs, "--out", str(out)]
    if contender == READ_FLOOR:
        return [PYTHON, str(HERE / "read_floor.py"), *inputs]
    if contender == KLRANK:
        return [klrank, "run", *inputs, "--out", str(out)]
    if contender == KLRANK_WITH_PANDAS:
        return [klrank_with_pandas or klrank, "run", *inputs, "--out", str(out)]
    if contender == KLRANK_RAY:
        return [klrank, "run", *inputs, "--out", str(out), "--engine", "ray"]
    if contender == KLRANK_NO_BOOTSTRAP:
        return [klrank, "run", *inputs, "--out", str(out), "--bootstrap", "0"]
    if contender == KLRANK_CORE:
        return [klrank, "run", *inputs, "--out", str(out), *CORE_OPTIONS]
    script = {DUCKDB: "duckdb_job.py", PANDAS: "pandas_job.py"}[contender]
    return [PYTHON, str(HERE / script), *inputs, "--out", str(out)]


def timed(argv: Sequence[str], log: Path, timeout_s: int = 0) -> Run:
    """Run ``argv`` under the measure.py launcher, its output to ``log``; raise if it fails.

    A run killed after ``timeout_s`` seconds (0: never) comes back with ``timed_out`` set.
    """
    record = log.with_suffix(".json")
    record.unlink(missing_ok=True)
    launcher = [PYTHON, str(HERE / "measure.py"), str(record), str(log), str(timeout_s), "--"]
    launched = subprocess.run([*launcher, *argv])
    measured = json.loads(record.read_text()) if record.exists() else {}
    if measured.get("timed_out"):
        return Run(timeout_s, 0.0, 0.0, timed_out=True)
    if launched.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise ContenderFailed(
            f"{' '.join(argv)}\nexited {launched.returncode}:\n{tail}", launched.returncode, tail
        )
    kib = measured["peak_rss_kib"]
    return Run(measured["seconds"], measured["cpu_seconds"], kib / 1024, timed_out=False)


def mean_kl(report: Path, contender: str) -> dict[str, float]:
    """Model -> mean KL over all rows from a contender's report.parquet."""
    frame = pl.read_parquet(report)
    if contender in KLRANKS:
        frame = frame.filter(pl.col("slice") == "ALL")
    return dict(frame.select("model", "mean_kl").iter_rows())


def compare(reference: dict[str, float], other: dict[str, float], rtol: float) -> float:
    """The largest relative difference of ``other`` from ``reference``; raise above ``rtol``."""
    if set(reference) != set(other):
        raise BenchmarkError(f"models differ: klrank {sorted(reference)}, other {sorted(other)}")
    worst = 0.0
    for model, expected in reference.items():
        actual = other[model]
        if actual == expected:  # also +inf == +inf
            continue
        difference = abs(actual - expected) / max(abs(expected), abs(actual))
        if not difference <= rtol:  # NaN fails too
            raise BenchmarkError(
                f"model {model}: mean KL {actual!r} differs from klrank's {expected!r} "
                f"by {difference:.3g} relative (> {rtol:g})"
            )
        worst = max(worst, difference)
    return worst


def bench(
    spec: bench_data.DataSet | bench_data.LmDataSet,
    folder: Path,
    options: Options,
    progress: Callable[[str], None],
) -> tuple[list[Result], list[str]]:
    """Time every contender on one data set; return the results and the agreement notes."""
    lm = is_lm(spec)
    of_case = LM_CONTENDERS if lm else TABULAR_CONTENDERS
    results = {c: Result(c) for c in options.contenders if c in of_case}
    if PANDAS in results and isinstance(spec, bench_data.DataSet) and not spec.run_pandas:
        results[PANDAS].skipped = "skipped: would take many minutes or exceed memory at this size"
    if folder.name.endswith(ARRAY_SUFFIX):
        for name in set(results) & {DUCKDB, PANDAS}:
            results[name].skipped = "skipped: the job is written for one column per class"
    agreement: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"klrank-bench-{spec.name}-") as scratch:
        work = Path(scratch)
        warm = [READ_FLOOR, *([KLRANK_PROB] if KLRANK_PROB in results else [])]
        for contender in warm:  # the read floor's inputs, and the other labels file
            labels = bench_data.prob_labels_path(folder) if contender == KLRANK_PROB else None
            argv = command(READ_FLOOR, folder, work, options.klrank)
            if labels is not None:
                argv[argv.index("--labels") + 1] = str(labels)
            timed(argv, work / "warm.log")
        for rep in range(options.repeat):
            reports: dict[str, dict[str, float]] = {}
            for result in results.values():
                if result.skipped:  # not run at this size, or timed out in an earlier repetition
                    continue
                report = run_once(result, folder, work, options, lm=lm)
                done = result.skipped or (
                    f"{result.runs[-1].seconds:.2f} s, {result.runs[-1].cpu_seconds:.2f} s CPU, "
                    f"{result.runs[-1].peak_rss_mib:.0f} MiB"
                )
                progress(f"{spec.name} {rep + 1}/{options.repeat} {result.contender}: {done}")
                if report is not None:
                    reports[result.contender] = report
            if rep == 0:  # once is enough, and a disagreement stops the run early
                agreement = check_agreement(reports, options.rtol)
    return list(results.values()), agreement


def run_once(
    result: Result, folder: Path, work: Path, options: Options, lm: bool = False
) -> dict[str, float] | None:
    """Run ``result.contender`` once and record it; its mean KL per model where it has one."""
    out = work / "out"
    try:
        argv = command(
            result.contender, folder, out, options.klrank, lm, options.klrank_with_pandas
        )
        try:
            run = timed(argv, work / "contender.log", options.timeout_s)
        except ContenderFailed as failed:
            if not (lm and result.contender == KLRANK and unsupported(failed)):
                raise
            result.skipped = (
                f"not run: this klrank cannot read logits as truth (exit 2: {NO_LOGIT_TRUTH})"
            )
            return None
        if run.timed_out:
            result.skipped = f"timed out after {options.timeout_s} s"
            return None
        result.runs.append(run)
        if result.contender == KLRANK:
            manifest = json.loads((out / "manifest.json").read_text())
            result.phases.append(manifest.get("timings_s", {}))
        if result.contender == LLAMACPP and not result.notes:
            result.notes = llamacpp_notes(out / "report.parquet")
        if result.contender in (KLRANK, *CHECKED):
            return mean_kl(out / "report.parquet", result.contender)
        return None
    finally:
        shutil.rmtree(out, ignore_errors=True)


def unsupported(failed: ContenderFailed) -> bool:
    """Whether klrank failed as one that cannot read logits as truth does (a usage error)."""
    return failed.returncode == 2 and NO_LOGIT_TRUTH in failed.log


def llamacpp_notes(report: Path) -> list[str]:
    """One line per model of llama.cpp's headline statistics from the numpy contender."""
    lines = []
    for row in pl.read_parquet(report).iter_rows(named=True):
        lines.append(
            f"llama.cpp numpy, model {row['model']} ({row['n']:,} tokens): mean KLD "
            f"{row['mean_kl']:.6f} ± {row['mean_kl_se']:.6f} nats (99 %: {row['kl_q99']:.6f}), "
            f"same top p {100 * row['same_top_p']:.2f} ± {100 * row['same_top_p_se']:.2f} %, "
            f"RMS Δp {100 * row['rms_delta_p']:.3f} ± {100 * row['rms_delta_p_se']:.3f} %, "
            f"ln(PPL(Q)/PPL(base)) {row['ln_ppl_ratio']:.6f} ± {row['ln_ppl_ratio_se']:.6f}"
        )
    return lines


def check_agreement(reports: dict[str, dict[str, float]], rtol: float) -> list[str]:
    """Compare the checked contenders' mean KL per model with klrank's; raise on disagreement.

    The reference is ``klrank``, else (a language-model set, with a klrank that cannot read
    logits as truth) ``klrank prob truth``.
    """
    reference = next((c for c in (KLRANK, KLRANK_PROB) if c in reports), None)
    others = [c for c in CHECKED if c in reports and c != reference]
    if reference is None or not others:
        return ["agreement: not checked (needs klrank and another contender with a mean KL)"]
    notes = []
    for contender in others:
        try:
            worst = compare(reports[reference], reports[contender], rtol)
        except BenchmarkError as error:
            raise BenchmarkError(f"{contender} disagrees with {reference}: {error}") from None
        notes.append(
            f"{contender} mean KL per model agrees with {reference}'s report.parquet "
            f"(largest relative difference {worst:.1e}, tolerance {rtol:g})"
        )
    return notes


def _ratio(value: float, base: Result | None) -> str:
    return f"{value / base.median_s:.2f}" if base is not None and base.runs else "–"


def validation_share(klrank: Result) -> str:
    """A line saying how much of klrank's wall time went to validation.

    That is the ``validate`` phase (the row checks, inside ``evaluate``) plus, where the manifest
    has it, ``validate_structure`` (columns and dtypes, inside ``scan``).
    """
    if not klrank.phases:
        return ""
    names = list(dict.fromkeys(name for phases in klrank.phases for name in phases))
    medians = {n: statistics.median(p.get(n, 0.0) for p in klrank.phases) for n in names}
    # Phases may nest (one can time a block inside another), so shares are of the wall time.
    breakdown = ", ".join(f"{n} {s:.2f}" for n, s in medians.items())
    if "validate" not in medians:
        return f"klrank phases (median s): {breakdown}; no `validate` phase in its manifest"
    validate = medians["validate"] + medians.get("validate_structure", 0.0)
    return (
        f"klrank validation: {validate:.2f} s median = {validate / klrank.median_s:.0%} of its "
        f"wall time (manifest `timings_s`, median s: {breakdown})"
    )


def _mib(paths: Sequence[Path]) -> str:
    mib = sum(p.stat().st_size for p in paths) / 2**20
    return f"{mib:,.0f}" if mib >= 10 else f"{mib:.2f}"


def table(
    spec: bench_data.DataSet | bench_data.LmDataSet,
    folder: Path,
    results: list[Result],
    agreement: list[str],
) -> str:
    """The Markdown section of one data set."""
    by_name = {r.contender: r for r in results}
    baseline = LLAMACPP if is_lm(spec) else DUCKDB
    duck, floor = by_name.get(baseline), by_name.get(READ_FLOOR)
    parquet = sorted(folder.rglob("*.parquet"))
    if is_lm(spec):
        prob = bench_data.prob_labels_path(folder)
        title = (
            f"### {folder.name}: N={spec.n_rows:,} tokens, vocabulary K={spec.n_classes:,}, "
            f"M={spec.n_models} candidates, Float32 logits ({_mib([p for p in parquet if p != prob])} "
            f"MiB of Parquet; the base as Float64 probabilities for `klrank prob truth`: "
            f"{_mib([prob])} MiB more)"
        )
    else:
        title = (
            f"### {folder.name}: N={spec.n_rows:,} rows, K={spec.n_classes} classes, "
            f"M={spec.n_models} models ({_mib(parquet)} MiB of Parquet)"
        )
    lines = [
        title,
        "",
        f"| contender | median s | min s | × {baseline} | × read floor | CPU s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.contender} | {r.skipped} | | | | | |")
            continue
        lines.append(
            f"| {r.contender} | {r.median_s:.2f} | {r.min_s:.2f} | {_ratio(r.median_s, duck)} "
            f"| {_ratio(r.median_s, floor)} | {r.cpu_s:.2f} | {r.peak_rss_mib:,.0f} |"
        )
    notes = [validation_share(by_name[KLRANK])] if KLRANK in by_name else []
    plain = by_name.get(KLRANK_NO_BOOTSTRAP)
    if KLRANK in by_name and plain is not None and plain.runs and by_name[KLRANK].runs:
        with_bootstrap = by_name[KLRANK]
        notes.append(
            "the bootstrap's cost: klrank (its default --bootstrap 200) takes "
            f"{with_bootstrap.median_s / plain.median_s:.2f} × the wall time and "
            f"{with_bootstrap.cpu_s / plain.cpu_s:.2f} × the CPU time of klrank --bootstrap 0"
        )
    if KLRANK_RAY in by_name and not by_name[KLRANK_RAY].skipped:
        notes.append(
            "klrank ray: `--engine ray`, starting a local Ray instance on this machine each run "
            "(its start and stop included); CPU s and peak RSS are those of the klrank process "
            "and the Ray processes it waited for"
        )
    if is_lm(spec):
        notes.append(
            "klrank and klrank prob truth: `--truth soft --base e` (nats, llama.cpp's unit); "
            "klrank reads the base logits of labels.parquet, klrank prob truth the same base as "
            "probabilities from labels-prob.parquet"
        )
        notes.extend(by_name[LLAMACPP].notes if LLAMACPP in by_name else [])
        values = spec.n_rows * spec.n_classes * (spec.n_models + 1)
        costs = [
            f"{r.contender} {r.median_s / values * 1e9:.1f} ns ({r.cpu_s / values * 1e9:.1f} ns CPU)"
            for r in results
            if r.runs
        ]
        notes.append(
            f"cost per value (median wall s / the {values:,} values N × K × (M + 1) of the "
            f"inputs): {', '.join(costs)}"
        )
    return "\n".join([*lines, "", *(f"- {n}" for n in [*notes, *agreement] if n)])


def machine(options: Options) -> str:
    """Markdown lines describing the machine, the software and the klrank commit."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().split()
        ram = f"{int(meminfo[meminfo.index('MemTotal:') + 1]) / 2**20:.1f} GiB RAM"
    except (OSError, ValueError):
        ram = "unknown RAM"
    packages = ("polars", "duckdb", "pandas", "scipy", "numpy", "pyarrow")
    runtime = ("klrank", "polars", "pyarrow", "pandera")
    return "\n".join(
        [
            "## klrank benchmark",
            "",
            f"- machine: {cpu}, {os.cpu_count()} cores, {ram}; {platform.platform()}",
            f"- software: Python {platform.python_version()}, "
            + ", ".join(f"{p} {_version(p)}" for p in packages)
            + " (the harness and the other contenders)",
            "- klrank's environment: " + _versions_of(options.klrank, runtime),
            f"- {KLRANK_WITH_PANDAS}: `{options.klrank_with_pandas}`, whose environment has "
            + _versions_of(options.klrank_with_pandas, ("klrank", "pandas", "pandera")),
            f"- klrank: `{options.klrank}`"
            + (f", source {_git_commit()}" if _from_this_checkout(options.klrank) else ""),
            f"- load average when it started: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"- median and min of {options.repeat} repetition(s); wall time includes interpreter "
            "start-up; CPU s is the median user + system time; peak RSS is each child's own",
        ]
    )


def _from_this_checkout(klrank: str) -> bool:
    """Whether ``klrank`` is this checkout's, from .venv or the .venv-user of ``make bench``."""
    found = shutil.which(klrank)
    if found is None:
        return False
    environment = Path(found).resolve().parent.parent
    return environment in {(REPO / ".venv").resolve(), (REPO / ".venv-user").resolve()}


def _versions_of(klrank: str, packages: Sequence[str]) -> str:
    """The versions of ``packages`` in the environment ``klrank`` runs in, as one line."""
    found = shutil.which(klrank)
    python = Path(found).resolve().parent / "python" if found else None
    if python is None or not python.exists():
        return "unknown (no python beside the klrank script)"
    code = (
        "import importlib.metadata as m, sys\n"
        "for p in sys.argv[1:]:\n"
        "    try: print(p, m.version(p))\n"
        "    except m.PackageNotFoundError: print(p, 'not installed')\n"
    )
    done = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True)
    if done.returncode != 0:
        return "unknown (its python failed)"
    return ", ".join(done.stdout.split("\n")[:-1])


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "pipeline", "jobs", "schemas")
    return f"{commit}{' with uncommitted changes' if dirty else ''}"


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="tiny,2m",
        help=f"comma-separated data sets from {', '.join(bench_data.SIZES)}, wide-array; the lm* "
        "sizes are the language-model case (default: tiny,2m)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default: 3)")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, from: {', '.join(CONTENDERS)} (default: all)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=HERE / "data", help="data set cache (default: %(default)s)"
    )
    parser.add_argument(
        "--klrank",
        default=default_klrank(),
        help="klrank executable, e.g. one installed from another commit (default: %(default)s)",
    )
    parser.add_argument(
        "--klrank-with-pandas",
        default=default_klrank(),
        help=f"the klrank of an environment that has pandas, for {KLRANK_WITH_PANDAS!r} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=0,
        help="kill a contender after this many seconds and show it as timed out (default: never)",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    parser.add_argument(
        "--rtol", type=float, default=1e-9, help="mean KL agreement tolerance (default: 1e-9)"
    )
    parser.add_argument(
        "--lm-rows",
        type=int,
        help="tokens N of every language-model size (lm-tiny, lm1k, lm32k, lm128k), instead of "
        "its own (300, 128,000, 2,000, 1,000)",
    )
    args = parser.parse_args(argv)
    if args.lm_rows is not None and args.lm_rows < 1:
        parser.error("--lm-rows must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.timeout < 0:
        parser.error("--timeout must be 0 (never) or more")
    chosen = _split(parser, "--contenders", args.contenders, CONTENDERS)
    return Options(
        sizes=_split(
            parser,
            "--sizes",
            args.sizes,
            [
                *bench_data.SIZES,
                *(
                    n + ARRAY_SUFFIX
                    for n, s in bench_data.SIZES.items()
                    if isinstance(s, bench_data.DataSet) and s.array_variant
                ),
            ],
        ),
        contenders=[c for c in CONTENDERS if c in chosen],  # the table reads best in this order
        repeat=args.repeat,
        data_dir=args.data_dir,
        klrank=args.klrank,
        klrank_with_pandas=args.klrank_with_pandas,
        rtol=args.rtol,
        timeout_s=args.timeout,
        out=args.out,
        lm_rows=args.lm_rows,
    )


def _split(
    parser: argparse.ArgumentParser, option: str, value: str, known: Sequence[str]
) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        parser.error(f"{option}: unknown {unknown or value!r}; choose from {', '.join(known)}")
    return chosen


def _ray_token() -> None:
    """Token authentication for the local Ray instances, with a token of this run's own.

    Ray 2.59 and later turn token authentication on for local clusters; an explicit token
    (``RAY_AUTH_TOKEN``) works whatever the default of the installed version is.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 if a contender failed or disagreed."""
    options = parse_args(argv)
    if KLRANK_RAY in options.contenders:
        _ray_token()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    sections = [machine(options)]
    try:
        for name in options.sizes:
            spec = bench_data.SIZES[name.removesuffix(ARRAY_SUFFIX)]
            if isinstance(spec, bench_data.LmDataSet) and options.lm_rows is not None:
                spec = replace(spec, n_rows=options.lm_rows)
            folder = bench_data.ensure(spec, options.data_dir, progress)
            if name.endswith(ARRAY_SUFFIX):
                folder = folder.with_name(name)
            results, agreement = bench(spec, folder, options, progress)
            sections.append(table(spec, folder, results, agreement))
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    markdown = "\n\n".join(sections) + "\n"
    print(markdown, end="")
    if options.out is not None:
        options.out.write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
