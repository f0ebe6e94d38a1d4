"""Run one command and record its wall time and peak RSS as JSON: a small launcher process.

Why not measure from the harness directly: on Linux a child's ``ru_maxrss`` starts at the
high-water RSS of the address space it was forked from (``exec`` records the old mm's peak), so
a child of the harness, which has imported Polars and may have just generated gigabytes of
data, would report at least the harness's own peak. This launcher imports only the standard
library, so that floor is a few MiB, far below any contender.

Usage: ``python measure.py RESULT.json LOG TIMEOUT_S -- COMMAND...``; the command's stdout and
stderr go to LOG, it is killed after TIMEOUT_S seconds (0: never), and the launcher exits with the
command's exit code.
"""

import json
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    """Run the command after ``--``; write its seconds, CPU seconds, peak RSS and exit code."""
    result, log, timeout_s, separator, *argv = sys.argv[1:]
    if separator != "--" or not argv:
        sys.exit(__doc__)
    timed_out = False
    with open(log, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)

        def kill(signum: int, frame: object) -> None:
            nonlocal timed_out
            timed_out = True
            process.kill()

        signal.signal(signal.SIGALRM, kill)
        signal.alarm(int(timeout_s))
        # wait4 rather than Popen.wait: it returns the rusage of this child (and its children).
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        signal.alarm(0)
    process.returncode = os.waitstatus_to_exitcode(status)
    with open(result, "w") as sink:
        json.dump(
            {
                "seconds": seconds,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_kib": usage.ru_maxrss,  # KiB on Linux
                "returncode": process.returncode,
                "timed_out": timed_out,
            },
            sink,
        )
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
