"""Generate the small example data set shipped in examples/data (deterministic: fixed seed).

Soft labels over four classes with a `region` column to slice by, and three models' predictions
in hive-style folders (predictions/model=<name>/part-0.parquet):
- `sharp`: the truth mixed with a little noise (should rank first);
- `blurry`: the truth mixed with a lot of noise;
- `uniform`: the same distribution for every row (a baseline).
"""

import random
import sys
from pathlib import Path

import polars as pl

CLASSES = ("bird", "cat", "dog", "fish")
REGIONS = ("apac", "eu", "us")
N_ROWS = 300


def _normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


def _dirichlet(rng: random.Random, alpha: float) -> list[float]:
    return _normalised([rng.gammavariate(alpha, 1.0) for _ in CLASSES])


def _mix(p: list[float], noise: list[float], weight: float) -> list[float]:
    return _normalised([(1 - weight) * a + weight * b for a, b in zip(p, noise, strict=True)])


def main(out: Path) -> None:
    rng = random.Random(20261126)
    truth = [_dirichlet(rng, 0.5) for _ in range(N_ROWS)]
    labels = pl.DataFrame(
        {
            "id": list(range(1, N_ROWS + 1)),
            "region": [rng.choice(REGIONS) for _ in range(N_ROWS)],
            **{f"prob_{c}": [p[k] for p in truth] for k, c in enumerate(CLASSES)},
        }
    )
    models = {
        "sharp": [_mix(p, _dirichlet(rng, 1.0), 0.1) for p in truth],
        "blurry": [_mix(p, _dirichlet(rng, 1.0), 0.5) for p in truth],
        "uniform": [[0.1, 0.3, 0.4, 0.2] for _ in truth],
    }
    out.mkdir(parents=True, exist_ok=True)
    labels.write_parquet(out / "labels.parquet")
    for name, q in models.items():
        folder = out / "predictions" / f"model={name}"
        folder.mkdir(parents=True, exist_ok=True)
        order = list(range(N_ROWS))
        rng.shuffle(order)  # predictions need not arrive in the labels' order
        frame = pl.DataFrame(
            {
                "id": [i + 1 for i in order],
                **{f"prob_{c}": [q[i][k] for i in order] for k, c in enumerate(CLASSES)},
            }
        )
        frame.write_parquet(folder / "part-0.parquet")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/data"))
