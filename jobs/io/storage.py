"""Where inputs live: local paths, ``file://`` URLs, ``s3://``, ``az://`` and ``gs://`` stores.

A local path or ``file://`` URL is listed with the operating system (:mod:`klrank.io.reading`);
an object-store URL is listed, and its Parquet footers read, with pyarrow's own file system of
its store (pyarrow is a core dependency: no extra install), and its rows are read by Polars.
Each store is one entry of ``STORES``: its URL scheme, what it calls a bucket, the environment
variables that configure it, and how pyarrow's file system is made from them. Polars (reads)
and obstore or Google's client (publishing, :mod:`klrank.io.buckets`) read the same variables
themselves.

- ``s3://bucket/key``: the ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for a server other than
  AWS, ``AWS_ALLOW_HTTP=true`` for Polars to talk plain http to it).
- ``az://container/key``: the ``AZURE_STORAGE_*`` variables (``AZURE_STORAGE_ACCOUNT_NAME``,
  ``AZURE_STORAGE_ACCOUNT_KEY`` or ``AZURE_STORAGE_SAS_KEY``; without a key, Azure's default
  credential chain; ``AZURE_STORAGE_USE_EMULATOR=true`` and ``AZURITE_BLOB_STORAGE_URL`` for
  the Azurite emulator).
- ``gs://bucket/key``: Google's default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, the
  gcloud CLI's, or the metadata server's); ``STORAGE_EMULATOR_HOST`` for an emulator (no
  credentials), as Google's own clients read it. Polars does not read that variable: klrank
  passes it to Polars's options (:func:`polars_options`).

The ``[storage]`` table of a config file sets the variables the environment does not
(:func:`configure`). A URL that carries credentials itself (``s3://KEY:SECRET@bucket/...`` or a
query string) is refused, so that none can reach a log, a message or the manifest.

The listing rules are those of local folders: a file, a folder (a key prefix, read recursively)
or a glob (``*``, ``?``, ``[...]`` within a name, ``**`` across folders); names below the root
that start with ``.`` or ``_`` (``_SUCCESS``, staging folders) are skipped, and so is every file
not named ``*.parquet``; ``key=value`` folders are hive keys.
"""

import datetime as dt
import fnmatch
import functools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow.parquet as pq
from klrank.pipeline.errors import StorageError, UsageError
from klrank.pipeline.text import one_line

_GLOB_CHARS = frozenset("*?[")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")  # two letters at least: not C:/
# A query string (pyarrow reads "?access_key=...&secret_key=..."), not a "?" of a glob.
_QUERY = re.compile(r"\?[A-Za-z_]+=[^/]*$")
# Azurite's account and key: public, the same in every copy of the emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "SAS")
EMULATOR_HOST = "STORAGE_EMULATOR_HOST"  # a GCS emulator's URL, as Google's clients read it
# How long pyarrow's GCS retries a failed request (its own default is 15 minutes).
GCS_RETRY_S = 15.0

Listed = tuple[str, tuple[str, ...]]  # a file, and the folders between it and the hive root
Settings = tuple[tuple[str, str], ...]  # a store's variables, sorted: a cache key


@dataclass(frozen=True)
class Store:
    """One kind of object store: how its URLs are named and its clients configured."""

    scheme: str
    bucket: str  # what the store calls a bucket
    prefixes: tuple[str, ...]  # of the environment variables that configure it
    variables: str  # the main ones, for messages
    filesystem: Callable[[str, Mapping[str, str]], Any]  # pyarrow's, for a bucket and settings


def _s3_filesystem(bucket: str, settings: Mapping[str, str]) -> Any:
    from pyarrow import fs

    del settings  # pyarrow's S3 reads the AWS_* variables itself
    return fs.FileSystem.from_uri(f"s3://{bucket}")[0]


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _azure_filesystem(bucket: str, settings: Mapping[str, str]) -> Any:
    """The Azure file system of pyarrow, from the variables obstore and Polars read themselves."""
    from pyarrow import fs

    del bucket  # pyarrow's Azure file system is the whole account
    emulator = _is_true(settings.get("AZURE_STORAGE_USE_EMULATOR"))
    account = settings.get("AZURE_STORAGE_ACCOUNT_NAME") or (AZURITE_ACCOUNT if emulator else "")
    if not account:
        raise UsageError(
            "az:// URLs need the storage account: set AZURE_STORAGE_ACCOUNT_NAME (or "
            "azure_storage_account_name in the [storage] table of the config file)"
        )
    # Without a key or SAS token, pyarrow takes Azure's default credential chain (AZURE_CLIENT_ID
    # and the rest, a managed identity, the az CLI), as obstore and Polars do.
    options: dict[str, str] = {}
    key = settings.get("AZURE_STORAGE_ACCOUNT_KEY") or settings.get("AZURE_STORAGE_ACCESS_KEY")
    sas = settings.get("AZURE_STORAGE_SAS_KEY") or settings.get("AZURE_STORAGE_SAS_TOKEN")
    if key:
        options["account_key"] = key
    elif sas:  # pyarrow appends it to each URL as it is: it must start with "?"
        options["sas_token"] = f"?{sas.removeprefix('?')}"
    elif emulator and account == AZURITE_ACCOUNT:
        options["account_key"] = AZURITE_KEY
    if emulator:  # as object_store: path-style URLs on http://127.0.0.1:10000 unless told
        url = urlsplit(settings.get("AZURITE_BLOB_STORAGE_URL") or "http://127.0.0.1:10000")
        for service in ("blob", "dfs"):
            options[f"{service}_storage_authority"] = url.netloc
            options[f"{service}_storage_scheme"] = url.scheme or "http"
    return fs.AzureFileSystem(account, **options)


def _emulator_url(settings: Mapping[str, str]) -> str | None:
    """The GCS emulator's URL (``http://host:port``) in ``STORAGE_EMULATOR_HOST``, if any."""
    host = (settings.get(EMULATOR_HOST) or "").strip().rstrip("/")
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def _gcs_filesystem(bucket: str, settings: Mapping[str, str]) -> Any:
    """The GCS file system of pyarrow: Google's default credentials, or the emulator's endpoint."""
    from pyarrow import fs

    del bucket  # pyarrow's GCS file system is every bucket the credentials reach
    retry = dt.timedelta(seconds=GCS_RETRY_S)
    emulator = _emulator_url(settings)
    if emulator is None:
        return fs.GcsFileSystem(retry_time_limit=retry)
    url = urlsplit(emulator)
    return fs.GcsFileSystem(
        anonymous=True, endpoint_override=url.netloc, scheme=url.scheme, retry_time_limit=retry
    )


def polars_options(path: str) -> dict[str, str] | None:
    """The ``storage_options`` Polars needs to read ``path``: None but for a GCS emulator.

    Polars (Rust's object_store) ignores ``STORAGE_EMULATOR_HOST``; it reaches an emulator
    through a service-account key that names the endpoint and turns authentication off.
    """
    emulator = _emulator_url(os.environ) if scheme(path) == "gs" else None
    if emulator is None:
        return None
    key = {"gcs_base_url": emulator, "disable_oauth": True}
    key |= {"client_email": "", "private_key": "", "private_key_id": ""}
    return {"google_service_account_key": json.dumps(key)}


STORES = {
    store.scheme: store
    for store in (
        Store(
            "s3",
            "bucket",
            ("AWS_",),
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...",
            _s3_filesystem,
        ),
        Store(
            "az",
            "container",
            ("AZURE_", "AZURITE_"),
            "AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, ...",
            _azure_filesystem,
        ),
        Store(
            "gs",
            "bucket",
            ("GOOGLE_", EMULATOR_HOST),
            "GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST, ...",
            _gcs_filesystem,
        ),
    )
}
READABLE_SCHEMES = tuple(STORES)  # besides file://, which reads as a local path
WRITABLE_SCHEMES = tuple(STORES)  # publishing: klrank.io.buckets


def scheme(path: str) -> str | None:
    """The URL scheme of ``path`` (lower case), or None for a local path.

    Also for a URL that went through ``pathlib.Path``, which folds ``s3://b`` into ``s3:/b``.

    >>> scheme("s3://bucket/labels/"), scheme("data/labels.parquet")
    ('s3', None)
    """
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store URL (``file://`` and local paths are not)."""
    found = scheme(path)
    return found is not None and found != "file"


def local_path(url: str) -> str:
    """The local path a ``file://`` URL names (``file:///data/x`` or ``file://localhost/...``)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment or not parts.path:
        raise UsageError(f"{url!r} is not a local file URL: use file:///absolute/path")
    return unquote(parts.path)


def _schemes(names: Sequence[str]) -> str:
    return ", ".join(f"{n}://" for n in names)


def store_of(url: str) -> Store:
    """The store of an object-store URL.

    Raises
    ------
    UsageError
        A scheme klrank does not read.
    """
    found = scheme(url)
    if found not in STORES:
        raise UsageError(
            f"cannot read {url!r}: klrank reads {_schemes(READABLE_SCHEMES)} and file:// URLs "
            f"and local paths ({found}:// is not supported yet)"
        )
    return STORES[found]


def bucket_and_key(url: str) -> tuple[str, str]:
    """The bucket and key (no leading ``/``) of an object-store URL, checked."""
    store = store_of(url)
    found = store.scheme
    if not url.lower().startswith(f"{found}://"):
        raise UsageError(f"{url!r} is not a URL: write {found}://{store.bucket}/key")
    rest = url[len(found) + 3 :]
    bucket, _, key = rest.partition("/")
    if "@" in bucket or _QUERY.search(url):
        # Never echo the URL here: it may hold a secret.
        raise UsageError(
            f"an {found}:// URL must not carry credentials or options: give them in the "
            f"environment variables ({store.variables}) or the [storage] table of the config file"
        )
    if not bucket:
        raise UsageError(f"{url!r} names no {store.bucket}: write {found}://{store.bucket}/key")
    return bucket, key.strip("/")


# --- settings: the environment, and the [storage] table of a config file -----------------------

# The [storage] table: variable -> (its value in the file, whether the environment had its own)
_configured: dict[str, tuple[str, bool]] = {}


def configure(table: Mapping[str, Any], source: str) -> None:
    """Take the ``[storage]`` table of a config file: store variables the environment lacks.

    Keys are the variables' names in any case (``azure_storage_account_name``); the environment
    wins over the file, as it does for klrank's own options. Each is set in this process's
    environment, where Polars, obstore and pyarrow (and Ray's local workers) read it.

    Raises
    ------
    UsageError
        A key that configures no store, or a value that is a table or an array.
    """
    prefixes = tuple(p for store in STORES.values() for p in store.prefixes)
    for key, value in table.items():
        name = key.upper().replace("-", "_")
        if not name.startswith(prefixes):
            raise UsageError(
                f"config file {source!r}: [storage] {key!r} configures no store; its keys are "
                f"the stores' environment variables ({', '.join(f'{p}*' for p in prefixes)})"
            )
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise UsageError(f"config file {source!r}: [storage] {key}: give a string")
        ours = name in _configured and not _configured[name][1]  # set by an earlier file
        own = name in os.environ and not ours
        _configured[name] = (text, own)
        if not own:
            os.environ[name] = text


def is_secret(name: str) -> bool:
    """Whether a store variable holds a secret (never printed: ``klrank config show``)."""
    return any(word in name.upper() for word in _SECRET_WORDS)


def configured() -> list[tuple[str, str, str]]:
    """(key, value, source) of each ``[storage]`` variable, secrets masked: for ``config show``."""
    shown = []
    for name, (text, own) in sorted(_configured.items()):
        value = os.environ.get(name, text) if own else text
        source = f"environment {name}" if own else "config file"
        shown.append((name.lower(), "***" if is_secret(name) else value, source))
    return shown


def settings(store: Store) -> Settings:
    """The variables of ``store``, sorted: what configures its clients, and their cache key."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(store.prefixes)))


@functools.lru_cache(maxsize=8)
def _cached_filesystem(store: Store, bucket: str, environment: Settings) -> Any:
    """The pyarrow file system of ``bucket``, as ``environment`` configures it.

    One a bucket and environment: creating one may resolve the bucket's region (a request).
    """
    try:
        return store.filesystem(bucket, dict(environment))
    except (ImportError, AttributeError) as error:  # a pyarrow built without it (some conda)
        raise UsageError(
            f"this pyarrow cannot read {store.scheme}:// URLs ({one_line(str(error))}): install "
            "the pyarrow wheel from PyPI (pip install --force-reinstall pyarrow)"
        ) from None
    except (OSError, ValueError) as error:
        raise StorageError(
            f"cannot reach the {store.bucket} {bucket!r}: {one_line(str(error))}"
        ) from None


def _filesystem(url: str) -> tuple[Any, str, str]:
    """The file system of ``url``, its bucket, and its key."""
    store = store_of(url)
    bucket, key = bucket_and_key(url)
    return _cached_filesystem(store, bucket, settings(store)), bucket, key


def _visible(parts: Sequence[str]) -> bool:
    # As for local folders: Spark, Hive and Polars skip names that start with "." or "_".
    return not any(part.startswith((".", "_")) for part in parts)


def _matches(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether the path ``parts`` match the glob ``pattern`` (both split at ``/``).

    As Python's ``glob(recursive=True)``: ``*``, ``?`` and ``[...]`` match within one name,
    ``**`` alone as a name matches any number of folders (none included).
    """
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and (
        fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(pattern[1:], parts[1:])
    )


def _files_below(filesystem: Any, bucket: str, prefix: str) -> list[tuple[str, ...]]:
    """The keys of the files below the folder ``prefix``, split at ``/``, relative to it."""
    from pyarrow import fs

    root = f"{bucket}/{prefix}".rstrip("/")
    selector = fs.FileSelector(root, recursive=True, allow_not_found=True)
    infos = filesystem.get_file_info(selector)
    return [
        tuple(info.path[len(root) + 1 :].split("/"))
        for info in infos
        if info.type == fs.FileType.File
    ]


def _type(filesystem: Any, path: str) -> Any:
    """What pyarrow finds at ``path`` (``FileType``), a folder it misses included.

    pyarrow's Azure file system (flat namespace) asks for the first blob whose name starts with
    ``path`` and calls the folder missing if that one is not inside it: ``model=a`` is missed
    when ``model=a b/...`` sorts first. Listing the folder itself finds it.
    """
    from pyarrow import fs

    found = filesystem.get_file_info(path).type
    if found == fs.FileType.NotFound and filesystem.get_file_info(
        fs.FileSelector(path, allow_not_found=True)
    ):
        return fs.FileType.Directory
    return found


def list_files(url: str) -> list[Listed]:
    """The Parquet files an object-store URL names, in path order, with their hive folders.

    The rules, and the order, of :func:`klrank.io.reading._list_files` for local paths: a glob
    is ordered by its matches' names, a folder's files as paths compare, part by part.

    Raises
    ------
    UsageError
        Nothing is at ``url``, or it is a URL klrank does not read.
    StorageError
        The store refused or could not be reached.
    """
    filesystem, bucket, key = _filesystem(url)
    base = f"{store_of(url).scheme}://{bucket}"
    try:
        return _listed(filesystem, bucket, key, base, url)
    except OSError as error:
        raise StorageError(f"cannot list {url!r}: {one_line(str(error))}") from None


def _listed(filesystem: Any, bucket: str, key: str, base: str, url: str) -> list[Listed]:
    from pyarrow import fs

    if (
        key
        and _GLOB_CHARS & set(key)
        and _type(filesystem, f"{bucket}/{key}") == fs.FileType.NotFound
    ):
        parts = key.split("/")
        fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
        prefix = "/".join(parts[:fixed])
        pattern = parts[fixed:]
        below = _files_below(filesystem, bucket, prefix)
        lead = f"{base}/{prefix}" if prefix else base
        matched = sorted(
            (f"{lead}/{'/'.join(found)}", found)
            for found in below
            if _matches(pattern, found) and found[-1].endswith(".parquet") and _visible(found)
        )
        return [(file, found[:-1]) for file, found in matched]
    found = _type(filesystem, f"{bucket}/{key}".rstrip("/"))
    if found == fs.FileType.File:
        return [(url, ())]
    if found == fs.FileType.NotFound:
        raise UsageError(f"input path {url!r} does not exist")
    found = [
        parts
        for parts in _files_below(filesystem, bucket, key)
        if parts[-1].endswith(".parquet") and _visible(parts)
    ]
    lead = f"{base}/{key}" if key else base
    return [(f"{lead}/{'/'.join(parts)}", parts[:-1]) for parts in sorted(found)]


def parquet_file(path: str, buffer_size: int) -> pq.ParquetFile:
    """A streaming pyarrow reader of a local file or an object-store URL.

    No pre-buffering: pages are read ``buffer_size`` bytes at a time as they are decoded.
    """
    if not is_remote(path):
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=buffer_size)
    filesystem, bucket, key = _filesystem(path)
    return pq.ParquetFile(
        f"{bucket}/{key}", filesystem=filesystem, pre_buffer=False, buffer_size=buffer_size
    )


def read_metadata(path: str) -> Any:
    """The Parquet footer (``pyarrow.parquet.FileMetaData``) of a local file or an object-store URL."""
    if not is_remote(path):
        return pq.read_metadata(path)
    filesystem, bucket, key = _filesystem(path)
    return pq.read_metadata(f"{bucket}/{key}", filesystem=filesystem)


def output_location(path: "str | os.PathLike[str]", option: str) -> "Path | str":
    """Where an output option points: a local ``Path``, or an object-store URL (a string).

    A ``file://`` URL is its local path; ``path`` may have gone through ``pathlib.Path``, which
    folds ``s3://b`` into ``s3:/b``.

    Raises
    ------
    UsageError
        A URL klrank does not write to, one naming no bucket or key, or one with credentials.
    """
    text = os.fspath(path)
    found = scheme(text)
    if found is None:
        return Path(text)
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/+", r"\1://", text)
    if found == "file":
        try:
            return Path(local_path(url))
        except UsageError as error:
            raise UsageError(f"{option}: {error}") from None
    if found not in WRITABLE_SCHEMES:
        raise UsageError(
            f"{option}: klrank publishes to local folders and to {_schemes(WRITABLE_SCHEMES)} URLs "
            f"({found}:// is not supported yet)"
        )
    try:
        bucket, key = bucket_and_key(url)
    except UsageError as error:
        raise UsageError(f"{option}: {error}") from None
    if not key:
        raise UsageError(
            f"{option}: {url!r} is a whole {STORES[found].bucket}; klrank stages a report beside "
            f"the folder it publishes, so name a folder in it (e.g. {found}://{bucket}/reports)"
        )
    return f"{found}://{bucket}/{key}"


def refuse_url_output(path: "str | os.PathLike[str]", option: str) -> None:
    """Refuse an output at a URL (``--chart``): it is written to local folders only, for now.

    ``path`` may have gone through ``pathlib.Path``, which folds ``s3://b`` into ``s3:/b``.

    Raises
    ------
    UsageError
        ``path`` is a URL (``s3://``, ``file://``, ...).
    """
    text = os.fspath(path)
    if scheme(text) is None:
        return
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/+", r"\1://", text)
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        url = f"{scheme(text)}://..."  # never echo credentials
    raise UsageError(f"{option} {url!r}: give a local file (this output is not written to URLs)")


def check_input(path: str, option: str) -> None:
    """Refuse, before anything logs it, an input URL that klrank cannot read or that holds secrets.

    Raises
    ------
    UsageError
        A scheme klrank does not read, or credentials or options in the URL.
    """
    found = scheme(path)
    if found is None:
        return
    try:
        if found == "file":
            local_path(path)
        else:
            bucket_and_key(path)
    except UsageError as error:
        raise UsageError(f"{option}: {error}") from None


def kind(url: str) -> str:
    """What is at an object-store URL: ``"file"``, ``"folder"`` (a prefix holding keys) or ``"none"``.

    Raises
    ------
    StorageError
        The store refused or could not be reached.
    """
    from pyarrow import fs

    filesystem, bucket, key = _filesystem(url)
    try:
        found = _type(filesystem, f"{bucket}/{key}".rstrip("/"))
    except OSError as error:
        raise StorageError(f"cannot read {url!r}: {one_line(str(error))}") from None
    return {fs.FileType.File: "file", fs.FileType.Directory: "folder"}.get(found, "none")


def folders(url: str) -> list[str]:
    """The names of the folders (key prefixes) directly below an object-store URL; none if missing."""
    from pyarrow import fs

    filesystem, bucket, key = _filesystem(url)
    root = f"{bucket}/{key}".rstrip("/")
    try:
        if store_of(url).scheme == "gs":
            # pyarrow's GCS lists one level down only the folders that have a marker object
            # (as its create_dir writes): these are found from the keys below.
            below = _files_below(filesystem, bucket, key)
            return sorted({parts[0] for parts in below if len(parts) > 1})
        infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    except OSError as error:
        raise StorageError(f"cannot list {url!r}: {one_line(str(error))}") from None
    return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory)


def join(url: str, *names: str) -> str:
    """``url`` with ``names`` appended, one ``/`` between each."""
    return "/".join([url.rstrip("/"), *names])
