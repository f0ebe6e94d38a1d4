"""Real object-store servers on loopback for the tests, as tests/conftest.py starts them.

moto's S3 server, Azurite's Blob server and fake-gcs-server, behind one small surface
(:class:`S3Server`, :class:`AzuriteServer`, :class:`GcsServer`): a new bucket, uploads, the
objects with their e-tags, and the environment variables a user would set. The tests' own
client of each is independent of the code under test's configuration: boto3 for S3, obstore
configured explicitly for Azure, Google's client with an explicit endpoint for GCS.
"""

import base64
import datetime as dt
import hashlib
import hmac
import json
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Dummy credentials, distinctive enough to look for in every file and line a run writes.
S3_ACCESS_KEY_ID = "KLRANKTESTKEYID0001"
S3_SECRET_ACCESS_KEY = "klrank-test-secret-Zq7x"
# Azurite serves the accounts of AZURITE_ACCOUNTS ("name:base64 key"): one of the tests' own.
AZURE_ACCOUNT = "klranktestacct"
AZURE_ACCOUNT_KEY = "a2xyYW5rLXRlc3QtYXp1cmUta2V5LVFtNHY="  # base64 of klrank-test-azure-key-Qm4v


@dataclass(frozen=True)
class S3Server:
    """moto's standalone S3 server, started for the session on a free loopback port."""

    endpoint: str
    _buckets: Iterator[int]
    scheme = "s3"
    secrets = (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY)

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

    def unreachable_env(self) -> dict[str, str]:
        """The variables of a server that is not there (a free port)."""
        return self.env | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}

    def polars_options(self) -> None:
        """No ``storage_options``: Polars reads this server from the variables of :attr:`env`."""
        return None

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

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write one object."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        """The bytes of one object."""
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def objects(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Every object's key and e-tag below ``prefix``."""
        client, found, token = self.client(), {}, None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **extra)
            found |= {o["Key"]: o["ETag"] for o in page.get("Contents", [])}
            token = page.get("NextContinuationToken")
            if not token:
                return found


@dataclass(frozen=True)
class AzuriteServer:
    """Azurite's Blob server (Azure's own emulator), started for the session on loopback."""

    endpoint: str
    _containers: Iterator[int]
    scheme = "az"
    secrets = (AZURE_ACCOUNT_KEY,)

    @property
    def env(self) -> dict[str, str]:
        """The ``AZURE_STORAGE_*`` variables a reader of this server needs."""
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": AZURE_ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": AZURE_ACCOUNT_KEY,
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": self.endpoint,
        }

    def unreachable_env(self) -> dict[str, str]:
        """The variables of a server that is not there (a free port)."""
        return self.env | {"AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{free_port()}"}

    def polars_options(self) -> None:
        """No ``storage_options``: Polars reads this server from the variables of :attr:`env`."""
        return None

    def sas_token(self) -> str:
        """An account SAS token of the tests' account (read, write, list, delete; for an hour).

        Signed as Azure documents it (version 2019-12-12), with the account key.
        """
        fields = {
            "sv": "2019-12-12",
            "ss": "b",  # the Blob service
            "srt": "sco",  # service, containers, objects
            "sp": "rwdlac",
            "se": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "spr": "https,http",
        }
        f = fields
        signed = f"{AZURE_ACCOUNT}\n{f['sp']}\n{f['ss']}\n{f['srt']}\n\n{f['se']}\n\n{f['spr']}\n"
        signed += f"{f['sv']}\n"
        key = base64.b64decode(AZURE_ACCOUNT_KEY)
        digest = hmac.new(key, signed.encode(), hashlib.sha256).digest()
        return urllib.parse.urlencode(fields | {"sig": base64.b64encode(digest).decode()})

    def _store(self, container: str) -> Any:
        from obstore.store import AzureStore

        return AzureStore(  # an explicit endpoint: no AZURE_* variable of this process counts
            container,
            account_name=AZURE_ACCOUNT,
            account_key=AZURE_ACCOUNT_KEY,
            endpoint=f"{self.endpoint}/{AZURE_ACCOUNT}",
            client_options={"allow_http": True},
        )

    def new_bucket(self) -> str:
        """A new, empty container (Azure's bucket): each test its own, on the one server."""
        from pyarrow import fs

        name = f"klrank-test-{next(self._containers)}"
        host = self.endpoint.removeprefix("http://")
        filesystem = fs.AzureFileSystem(
            AZURE_ACCOUNT,
            account_key=AZURE_ACCOUNT_KEY,
            blob_storage_authority=host,
            blob_storage_scheme="http",
            dfs_storage_authority=host,
            dfs_storage_scheme="http",
        )
        filesystem.create_dir(name)  # the account is its root: a top folder is a container
        return name

    def upload(self, folder: Path, bucket: str, prefix: str) -> None:
        """Upload every file below ``folder`` to ``az://bucket/prefix/`` under its relative path."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/")
                self.put(bucket, key, path.read_bytes())

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write one object (a block blob)."""
        import obstore

        obstore.put(self._store(bucket), key, data)

    def get(self, bucket: str, key: str) -> bytes:
        """The bytes of one object."""
        import obstore

        return bytes(obstore.get(self._store(bucket), key).bytes())

    def objects(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Every object's key and e-tag below ``prefix``."""
        import obstore

        listed = obstore.list(self._store(bucket), prefix or None).collect()
        return {str(o["path"]): str(o["e_tag"]) for o in listed}


@dataclass(frozen=True)
class GcsServer:
    """fake-gcs-server (a GCS emulator, JSON and XML APIs), started for the session on loopback."""

    endpoint: str
    _buckets: Iterator[int]
    scheme = "gs"
    # An emulator takes no credentials: this one is for the tests that put a secret in a URL.
    secrets = ("klrank-test-gcs-secret-Wp5s",)

    @property
    def env(self) -> dict[str, str]:
        """The variable a reader of this server needs: Google's clients read it themselves."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def unreachable_env(self) -> dict[str, str]:
        """The variables of a server that is not there (a free port)."""
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}"}

    def polars_options(self) -> dict[str, str]:
        """The ``storage_options`` that let Polars read this server (it ignores the variable)."""
        key = {"gcs_base_url": self.endpoint, "disable_oauth": True}
        key |= {"client_email": "", "private_key": "", "private_key_id": ""}
        return {"google_service_account_key": json.dumps(key)}

    def client(self) -> Any:
        """A client of this server, whatever this process's environment says."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="klrank-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def new_bucket(self) -> str:
        """A new, empty bucket: each test its own, on the one server."""
        name = f"klrank-test-{next(self._buckets)}"
        self.client().create_bucket(name)
        return name

    def upload(self, folder: Path, bucket: str, prefix: str) -> None:
        """Upload every file below ``folder`` to ``gs://bucket/prefix/`` under its relative path."""
        target = self.client().bucket(bucket)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/")
                target.blob(key).upload_from_filename(str(path))

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write one object."""
        self.client().bucket(bucket).blob(key).upload_from_string(data)

    def get(self, bucket: str, key: str) -> bytes:
        """The bytes of one object."""
        return bytes(self.client().bucket(bucket).blob(key).download_as_bytes())

    def objects(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Every object's key and version (its generation: new at each write) below ``prefix``."""
        found = self.client().list_blobs(bucket, prefix=prefix or None)
        return {b.name: str(b.generation) for b in found}


ObjectServer = S3Server | AzuriteServer | GcsServer


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
