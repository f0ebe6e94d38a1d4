"""Where a ``--engine ray`` run of the ``2m`` data set spends its time, on this machine.

Starts one local Ray instance (timed), runs the job in this process ``--repeat`` times against
it (so the instance's start and stop are not in these runs), then stops Ray (timed). Prints
each run's wall time and its manifest's ``timings_s``. Generate the data first (``make bench``).

    .venv-user/bin/python benchmarks/ray_breakdown.py --repeat 3
"""

import argparse
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "2m"


def main() -> None:
    """Time Ray's start, the runs against it, and its stop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # as benchmarks/run.py: a token of our own
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    import ray
    from klrank.config import InputOptions, RunOptions
    from klrank.run import run

    start = time.perf_counter()
    ray.init(
        address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False
    )
    print(f"ray start: {time.perf_counter() - start:.2f} s")
    inputs = InputOptions(str(DATA / "labels.parquet"), str(DATA / "predictions"))
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in range(args.repeat):
            out = Path(scratch) / "out"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            summary = run(
                RunOptions(inputs=inputs, out=out, engine="ray", partitions=args.partitions)
            )
            seconds = time.perf_counter() - start
            print(f"run {attempt + 1}: {seconds:.2f} s, timings_s {summary.manifest['timings_s']}")
    start = time.perf_counter()
    ray.shutdown()
    print(f"ray stop: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
