"""Fixtures shared across the test folders: a real S3 API server on loopback."""

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from s3_helpers import S3Server, answers, free_port


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API server (``python -m moto.server``) on loopback, for the whole session.

    It fails loudly if moto is missing or the server does not start: such a test is never
    skipped (moto comes with the ``test`` extra).
    """
    log = tmp_path_factory.mktemp("moto") / "server.log"
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
    try:
        for _ in range(300):  # it starts in about a second; a dead server ends the wait at once
            if process.poll() is not None or answers(port):
                break
            time.sleep(0.1)
        if process.poll() is not None or not answers(port):
            pytest.fail(f"the moto S3 server did not start on port {port}:\n{log.read_text()}")
        yield S3Server(f"http://127.0.0.1:{port}", itertools.count())
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
