"""A real S3 API server on loopback for the tests: moto's, as tests/conftest.py starts it."""

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Dummy credentials, distinctive enough to look for in every file and line a run writes.
S3_ACCESS_KEY_ID = "KLRANKTESTKEYID0001"
S3_SECRET_ACCESS_KEY = "klrank-test-secret-Zq7x"


@dataclass(frozen=True)
class S3Server:
    """moto's standalone S3 server, started for the session on a free loopback port."""

    endpoint: str
    _buckets: Iterator[int]

    @property
    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables a reader of this server needs (what a user would set)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
            "AWS_ALLOW_HTTP": "true",  # plain http on loopback, for Polars
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata look-ups
        }

    def client(self) -> Any:
        """A boto3 S3 client of this server (boto3 comes with moto): the tests' own uploader."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        """A new, empty bucket: each test its own, on the one server."""
        name = f"klrank-test-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, folder: Path, bucket: str, prefix: str) -> None:
        """Upload every file below ``folder`` to ``s3://bucket/prefix/`` under its relative path."""
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/")
                client.upload_file(str(path), bucket, key)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
