"""The klrank job as a notebook user would write it with pandas and scipy.

Read both inputs with ``pandas.read_parquet`` (the predictions' ``model`` comes from the hive
folders), run the same checks as the DuckDB job (pandas reads a Parquet null as NaN, so nulls and
NaN are one check here), merge on ``id``, compute per-row KL with ``scipy.special.rel_entr`` and
entropy with ``scipy.stats.entropy`` (both handle 0·log 0 = 0; rel_entr gives +inf for p > 0,
q = 0), cross-entropy as H(P) + D(P‖Q), all in bits; write the rows, then per-model aggregates.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import rel_entr
from scipy.stats import entropy

PREFIX = "prob_"


def main() -> None:
    """Run the job; exit 1 if the inputs fail a check."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    labels = pd.read_parquet(args.labels)
    predictions = pd.read_parquet(args.predictions)
    predictions["model"] = predictions["model"].astype(str)
    classes = [c for c in labels.columns if c.startswith(PREFIX)]

    failures = check(labels, predictions, classes, args.tolerance)
    if failures:
        print(f"validation failed: {len(failures)} failed checks", file=sys.stderr)
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)

    merged = predictions.merge(labels, on="id", suffixes=("_q", "_p"), validate="many_to_one")
    p = merged[[f"{c}_p" for c in classes]].to_numpy()
    q = merged[[f"{c}_q" for c in classes]].to_numpy()
    kl = rel_entr(p, q).sum(axis=1) / np.log(2)
    h = entropy(p, base=2, axis=1)
    rows = pd.DataFrame(
        {
            "id": merged["id"],
            "model": merged["model"],
            "kl": kl,
            "cross_entropy": h + kl,
            "entropy": h,
        }
    )
    rows.to_parquet(args.out / "rows.parquet", index=False)

    by_model = rows.groupby("model", sort=True)
    report = by_model["kl"].agg(
        n_rows="size",
        mean_kl="mean",
        std_kl="std",
        median_kl="median",
        p99_kl=lambda kl: kl.quantile(0.99),
        max_kl="max",
    )
    report["mean_cross_entropy"] = by_model["cross_entropy"].mean()
    report["mean_entropy"] = by_model["entropy"].mean()
    report.sort_values("mean_kl").reset_index().to_parquet(args.out / "report.parquet", index=False)


def check(
    labels: pd.DataFrame, predictions: pd.DataFrame, classes: list[str], tolerance: float
) -> list[str]:
    """Every failed check of both inputs, one line each."""
    missing_columns = set(classes) ^ {c for c in predictions.columns if c.startswith(PREFIX)}
    if not classes or missing_columns:
        return [f"class sets differ: {sorted(missing_columns)}"]
    failures = []
    tables = {"labels": labels} | {
        f"model {name}": frame for name, frame in predictions.groupby("model", sort=True)
    }
    for what, frame in tables.items():
        probs = frame[classes]
        counts = {
            "no rows": int(len(frame) == 0),
            "null id": frame["id"].isna().sum(),
            "duplicate id": frame["id"].duplicated().sum(),
            "null or NaN probability": probs.isna().any(axis=1).sum(),
            "probability outside [0, 1]": ((probs < 0) | (probs > 1)).any(axis=1).sum(),
            "row sum not 1": ((probs.sum(axis=1) - 1).abs() > tolerance).sum(),
        }
        failures += [f"{what}: {check}: {n} rows" for check, n in counts.items() if n]
    label_ids = labels["id"]
    for model, frame in predictions.groupby("model", sort=True):
        missing = (~label_ids.isin(frame["id"])).sum()
        extra = (~frame["id"].isin(label_ids)).sum()
        if missing:
            failures.append(f"model {model}: label ids without a prediction: {missing} ids")
        if extra:
            failures.append(f"model {model}: predicted ids not in the labels: {extra} ids")
    return failures


if __name__ == "__main__":
    main()
