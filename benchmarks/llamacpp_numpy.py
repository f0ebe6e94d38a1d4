"""llama.cpp's ``--kl-divergence`` statistics as a careful numpy user would compute them.

The user has the base model's logits and the next tokens (``--labels``: ``id``, ``label``,
``logit`` Array(K)) and each candidate's logits (``--predictions``: hive folders
``model=<name>/`` of files with ``id`` and ``logit``, in the labels' row order). The files are
read chunk by chunk with pyarrow's ``iter_batches``, the labels and every candidate in step, so
that memory holds a few (rows, K) Float64 arrays of at most ``--batch-values`` values, never the
whole N×K. Per token and candidate Q, with P the base::

    kl      = Σ_i p_i (log p_i − log q_i)                  (nats, over the whole vocabulary)
    nll_q   = −log q(token),   nll_p = −log p(token)
    Δp      = q(token) − p(token)
    same    = argmax q == argmax p                           (the first index among ties)

and per candidate, as ``tools/perplexity/perplexity.cpp`` (ggml-org/llama.cpp) does in
``kl_divergence``: the mean and standard error of kl, Δp and Δp² (its ``mean_and_uncertainty``:
SE = sqrt((Σx²/n − mean²)/(n − 1)), 0 when n ≤ 10 or that variance is not positive); PPL(Q) =
exp(mean nll_q) ± PPL·SE(nll_q), PPL(base) the same; ln(PPL(Q)/PPL(base)) = mean nll_q − mean
nll_p ± sqrt(SE_q² + SE_p² − 2·cov), cov = (Σ nll_q·nll_p/n − mean_q·mean_p)/(n − 1) (0 when
n < 10); PPL(Q)/PPL(base) = exp of that ± ratio·SE; PPL(Q) − PPL(base) ± sqrt(SE(PPL_q)² +
SE(PPL_p)² − 2·PPL_q·PPL_p·cov); Cor(ln PPL(Q), ln PPL(base)) = cov/(SE_q·SE_p); RMS Δp =
sqrt(mean Δp²) ± 0.5/RMS·SE(Δp²); same top p = n_same/n ± sqrt(p(1 − p)/(n − 1)); and the
quantiles of kl and Δp by linear interpolation between the sorted values (llama.cpp's
``percentile``, numpy's default ``quantile`` method), with the maximum, median and minimum.

Where this differs from llama.cpp, on purpose (a careful user's choices): log-probabilities
are computed in Float64 from the logits as stored, while llama.cpp stores the base's log-probs
as 16-bit integers over a 16-nat range and leaves out of the KL sum every token with
log p ≤ −16; and the statistics are computed for any n, where llama.cpp prints none below 100
tokens.

Writes ``report.parquet`` (one row per candidate: ``model``, ``n``, ``mean_kl`` in nats and
the other statistics, names below) to ``--out`` and prints llama.cpp's summary per candidate.
Exits 1 if a candidate's ids or row count differ from the labels'.
"""

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# (column suffix, fraction): llama.cpp's order; Δp also has the quartiles.
KL_QUANTILES = (
    ("max", 1.0),
    ("q999", 0.999),
    ("q99", 0.99),
    ("q95", 0.95),
    ("q90", 0.90),
    ("median", 0.5),
    ("q10", 0.10),
    ("q05", 0.05),
    ("q01", 0.01),
    ("q001", 0.001),
    ("min", 0.0),
)
DELTA_P_QUANTILES = (
    *KL_QUANTILES[:5],
    ("q75", 0.75),
    ("median", 0.5),
    ("q25", 0.25),
    *KL_QUANTILES[6:],
)
DEFAULT_BATCH_VALUES = 1 << 22  # 32 MiB a Float64 (rows, K) array
READ_BUFFER_BYTES = 1 << 20


class InputError(Exception):
    """The inputs do not line up: a candidate's ids differ from the labels'."""


@dataclass
class Tokens:
    """Per-token values of one candidate, gathered over the batches."""

    kl: list[np.ndarray] = field(default_factory=list)
    nll_q: list[np.ndarray] = field(default_factory=list)
    nll_p: list[np.ndarray] = field(default_factory=list)
    delta_p: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in Float64, shifted by the row maximum so that no exp overflows."""
    shifted = logits.astype(np.float64)
    shifted -= shifted.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def _matrix(batch: pa.RecordBatch, column: str) -> np.ndarray:
    """A fixed-size list column of a batch as a (rows, K) numpy array (no copy)."""
    values = batch.column(column)
    width = values.type.list_size
    flat: np.ndarray = values.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(values), width)


def _batches(path: Path, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    # pyarrow's default pre_buffer=True keeps every row group read so far in memory (the whole
    # file by the end: 260 MiB of one 250 MiB labels file, measured); without it, and with a
    # read buffer, a row group's column chunk is read as it is decoded.
    file = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    yield from file.iter_batches(batch_size=rows, columns=columns)


def candidates(predictions: Path) -> dict[str, Path]:
    """Model name -> its one Parquet file, from the hive folders ``model=<name>/``."""
    found = {}
    for folder in sorted(predictions.glob("model=*")):
        files = sorted(folder.glob("*.parquet"))
        if len(files) != 1:
            raise InputError(f"{folder}: expected one Parquet file, found {len(files)}")
        found[folder.name.removeprefix("model=")] = files[0]
    if not found:
        raise InputError(f"{predictions}: no model=<name>/ folders")
    return found


def gather(labels: Path, models: dict[str, Path], batch_values: int) -> dict[str, Tokens]:
    """One pass over the labels and every candidate in step: the per-token values."""
    width = pq.ParquetFile(labels).schema_arrow.field("logit").type.list_size
    rows = max(1, batch_values // width)
    streams = {m: _batches(path, ["id", "logit"], rows) for m, path in models.items()}
    tokens = {m: Tokens() for m in models}
    for batch in _batches(labels, ["id", "label", "logit"], rows):
        ids = batch.column("id").to_numpy()
        label = batch.column("label").to_numpy().astype(np.intp)
        at = np.arange(len(ids))
        log_p = log_softmax(_matrix(batch, "logit"))
        p = np.exp(log_p)
        top_p = log_p.argmax(axis=1)
        for model, stream in streams.items():
            other = next(stream, None)
            if other is None or not np.array_equal(other.column("id").to_numpy(), ids):
                raise InputError(f"model {model}: ids differ from the labels' (or fewer rows)")
            log_q = log_softmax(_matrix(other, "logit"))
            seen = tokens[model]
            # Finite logits give finite log p, so p·(log p − log q) is finite (0 where p = 0).
            seen.kl.append(np.einsum("ij,ij->i", p, log_p - log_q))
            seen.nll_q.append(-log_q[at, label])
            seen.nll_p.append(-log_p[at, label])
            seen.delta_p.append(np.exp(log_q[at, label]) - p[at, label])
            seen.same_top.append(log_q.argmax(axis=1) == top_p)
    for model, stream in streams.items():
        if next(stream, None) is not None:
            raise InputError(f"model {model}: more rows than the labels")
    return tokens


def mean_and_uncertainty(x: np.ndarray) -> tuple[float, float]:
    """llama.cpp's mean ± SE: sqrt((Σx²/n − mean²)/(n − 1)), 0 for n ≤ 10 or a variance ≤ 0."""
    n = len(x)
    if n < 1:
        return 0.0, 0.0
    mean = float(np.sum(x)) / n
    variance = float(np.sum(x * x)) / n - mean * mean
    return mean, math.sqrt(variance / (n - 1)) if variance > 0 and n > 10 else 0.0


def covariance(a: np.ndarray, b: np.ndarray) -> float:
    """llama.cpp's covariance of two means: (Σab/n − mean_a·mean_b)/(n − 1), 0 for n < 10."""
    n = len(a)
    if n < 10:
        return 0.0
    return (float(np.sum(a * b)) / n - float(np.sum(a)) / n * float(np.sum(b)) / n) / (n - 1)


def statistics(seen: Tokens) -> dict[str, float]:
    """llama.cpp's statistics of one candidate (nats; Δp as a fraction, not %)."""
    kl, delta_p = np.concatenate(seen.kl), np.concatenate(seen.delta_p)
    nll_q, nll_p = np.concatenate(seen.nll_q), np.concatenate(seen.nll_p)
    same_top = np.concatenate(seen.same_top)
    n = len(kl)
    out: dict[str, float] = {"n": n}
    out["mean_kl"], out["mean_kl_se"] = mean_and_uncertainty(kl)
    out |= {f"kl_{name}": float(v) for name, v in _quantiles(kl, KL_QUANTILES)}
    out["mean_delta_p"], out["mean_delta_p_se"] = mean_and_uncertainty(delta_p)
    out |= {f"delta_p_{name}": float(v) for name, v in _quantiles(delta_p, DELTA_P_QUANTILES)}
    mse, mse_se = mean_and_uncertainty(delta_p * delta_p)
    out["rms_delta_p"] = math.sqrt(mse)
    out["rms_delta_p_se"] = 0.5 / out["rms_delta_p"] * mse_se if mse > 0 else 0.0
    same = float(np.count_nonzero(same_top)) / n
    out["same_top_p"] = same
    out["same_top_p_se"] = math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0
    log_ppl, log_ppl_se = mean_and_uncertainty(nll_q)
    log_base, log_base_se = mean_and_uncertainty(nll_p)
    cov = covariance(nll_q, nll_p)
    out["ppl"], out["ppl_base"] = math.exp(log_ppl), math.exp(log_base)
    out["ppl_se"], out["ppl_base_se"] = out["ppl"] * log_ppl_se, out["ppl_base"] * log_base_se
    out["cor_ln_ppl"] = cov / (log_ppl_se * log_base_se) if log_ppl_se * log_base_se else 0.0
    out["ln_ppl_ratio"] = log_ppl - log_base
    out["ln_ppl_ratio_se"] = math.sqrt(max(0.0, log_ppl_se**2 + log_base_se**2 - 2 * cov))
    out["ppl_ratio"] = math.exp(out["ln_ppl_ratio"])
    out["ppl_ratio_se"] = out["ppl_ratio"] * out["ln_ppl_ratio_se"]
    out["ppl_diff"] = out["ppl"] - out["ppl_base"]
    ppl_cov = out["ppl"] * out["ppl_base"] * cov
    diff_variance = out["ppl_se"] ** 2 + out["ppl_base_se"] ** 2 - 2 * ppl_cov
    out["ppl_diff_se"] = math.sqrt(max(0.0, diff_variance))
    return out


def _quantiles(
    values: np.ndarray, fractions: tuple[tuple[str, float], ...]
) -> list[tuple[str, float]]:
    at = np.quantile(values, [f for _, f in fractions])  # "linear", as llama.cpp's percentile
    return [(name, float(v)) for (name, _), v in zip(fractions, at, strict=True)]


def summary(model: str, s: dict[str, float]) -> str:
    """llama.cpp's printout of one candidate (its wording, its units: nats and %)."""
    lines = [
        f"====== {model}: {int(s['n'])} tokens ======",
        f"Mean PPL(Q)                   : {s['ppl']:10.6f} ± {s['ppl_se']:10.6f}",
        f"Mean PPL(base)                : {s['ppl_base']:10.6f} ± {s['ppl_base_se']:10.6f}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * s['cor_ln_ppl']:6.2f}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']:10.6f} ± {s['ln_ppl_ratio_se']:10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {s['ppl_ratio']:10.6f} ± {s['ppl_ratio_se']:10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {s['ppl_diff']:10.6f} ± {s['ppl_diff_se']:10.6f}",
        f"Mean    KLD: {s['mean_kl']:10.6f} ± {s['mean_kl_se']:10.6f}",
        *(f"{name:>7} KLD: {s[f'kl_{name}']:10.6f}" for name, _ in KL_QUANTILES),
        f"Mean    Δp: {100 * s['mean_delta_p']:6.3f} ± {100 * s['mean_delta_p_se']:5.3f} %",
        *(f"{name:>7} Δp: {100 * s[f'delta_p_{name}']:6.3f}%" for name, _ in DELTA_P_QUANTILES),
        f"RMS Δp    : {100 * s['rms_delta_p']:6.3f} ± {100 * s['rms_delta_p_se']:5.3f} %",
        f"Same top p: {100 * s['same_top_p']:6.3f} ± {100 * s['same_top_p_se']:5.3f} %",
    ]
    return "\n".join(lines)


def main() -> None:
    """Compute every candidate's statistics; exit 1 if the inputs do not line up."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--batch-values",
        type=int,
        default=DEFAULT_BATCH_VALUES,
        help="values (rows × K) a batch reads; at least one row (default: %(default)s)",
    )
    args = parser.parse_args()
    try:
        tokens = gather(args.labels, candidates(args.predictions), args.batch_values)
    except InputError as error:
        print(f"input error: {error}", file=sys.stderr)
        sys.exit(1)
    report = {model: statistics(seen) for model, seen in tokens.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [{"model": model, **values} for model, values in report.items()]
    pq.write_table(pa.Table.from_pylist(rows), args.out / "report.parquet")
    for model, values in report.items():
        print(summary(model, values), end="\n\n")


if __name__ == "__main__":
    main()
