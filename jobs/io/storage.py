"""Where inputs live: local paths, ``file://`` URLs and ``s3://`` buckets.

A local path or ``file://`` URL is listed with the operating system (:mod:`klrank.io.reading`);
an ``s3://`` URL is listed, and its Parquet footers read, with pyarrow's own S3 file system
(pyarrow is a core dependency: no extra install), and its rows are read by Polars. Both take
the credentials, region and endpoint the standard way, from the ``AWS_*`` environment variables
(``AWS_ENDPOINT_URL`` for a server other than AWS, ``AWS_ALLOW_HTTP=true`` for Polars to talk
plain http to it). A URL that carries credentials itself (``s3://KEY:SECRET@bucket/...`` or a
query string) is refused, so that none can reach a log, a message or the manifest.

The listing rules are those of local folders: a file, a folder (a key prefix, read recursively)
or a glob (``*``, ``?``, ``[...]`` within a name, ``**`` across folders); names below the root
that start with ``.`` or ``_`` (``_SUCCESS``, staging folders) are skipped, and so is every file
not named ``*.parquet``; ``key=value`` folders are hive keys.
"""

import fnmatch
import functools
import os
import re
from collections.abc import Sequence
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
READABLE_SCHEMES = ("s3",)  # besides file://, which reads as a local path

Listed = tuple[str, tuple[str, ...]]  # a file, and the folders between it and the hive root


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


def bucket_and_key(url: str) -> tuple[str, str]:
    """The bucket and key (no leading ``/``) of an ``s3://`` URL, checked."""
    found = scheme(url)
    if found not in READABLE_SCHEMES:
        raise UsageError(
            f"cannot read {url!r}: klrank reads s3:// and file:// URLs and local paths "
            f"({found}:// is not supported yet)"
        )
    if not url.lower().startswith(f"{found}://"):
        raise UsageError(f"{url!r} is not a URL: write {found}://bucket/key")
    rest = url[len(found) + 3 :]
    bucket, _, key = rest.partition("/")
    if "@" in bucket or _QUERY.search(url):
        # Never echo the URL here: it may hold a secret.
        raise UsageError(
            f"an {found}:// URL must not carry credentials or options: give them in the "
            "AWS_* environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_ENDPOINT_URL, ...)"
        )
    if not bucket:
        raise UsageError(f"{url!r} names no bucket: write {found}://bucket/key")
    return bucket, key.strip("/")


def aws_environment() -> tuple[tuple[str, str], ...]:
    """The ``AWS_*`` variables, sorted: a key for caching clients per configuration."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


@functools.lru_cache(maxsize=8)
def _s3(bucket: str, environment: tuple[tuple[str, str], ...]) -> Any:
    """The S3 file system of pyarrow for ``bucket``, as the ``AWS_*`` variables set it.

    One a bucket and environment: creating one resolves the bucket's region (a request).
    """
    del environment  # part of the cache's key only: pyarrow reads the variables itself
    try:
        from pyarrow import fs
    except ImportError as error:  # a pyarrow built without S3 (some conda builds)
        raise UsageError(
            f"this pyarrow cannot read s3:// URLs ({one_line(str(error))}): install the "
            "pyarrow wheel from PyPI (pip install --force-reinstall pyarrow)"
        ) from None
    try:
        return fs.FileSystem.from_uri(f"s3://{bucket}")[0]
    except (OSError, ValueError) as error:
        raise StorageError(f"cannot reach the bucket {bucket!r}: {one_line(str(error))}") from None


def _filesystem(url: str) -> tuple[Any, str, str]:
    """The file system of ``url``, its bucket, and its key."""
    bucket, key = bucket_and_key(url)
    return _s3(bucket, aws_environment()), bucket, key


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


def list_files(url: str) -> list[Listed]:
    """The Parquet files an ``s3://`` URL names, in path order, with their hive folders.

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
    base = f"s3://{bucket}"
    try:
        return _listed(filesystem, bucket, key, base, url)
    except OSError as error:
        raise StorageError(f"cannot list {url!r}: {one_line(str(error))}") from None


def _listed(filesystem: Any, bucket: str, key: str, base: str, url: str) -> list[Listed]:
    from pyarrow import fs

    if (
        key
        and _GLOB_CHARS & set(key)
        and filesystem.get_file_info(f"{bucket}/{key}").type == (fs.FileType.NotFound)
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
    info = filesystem.get_file_info(f"{bucket}/{key}".rstrip("/"))
    if info.type == fs.FileType.File:
        return [(url, ())]
    if info.type == fs.FileType.NotFound:
        raise UsageError(f"input path {url!r} does not exist")
    found = [
        parts
        for parts in _files_below(filesystem, bucket, key)
        if parts[-1].endswith(".parquet") and _visible(parts)
    ]
    lead = f"{base}/{key}" if key else base
    return [(f"{lead}/{'/'.join(parts)}", parts[:-1]) for parts in sorted(found)]


def read_metadata(path: str) -> Any:
    """The Parquet footer (``pyarrow.parquet.FileMetaData``) of a local file or an ``s3://`` one."""
    if not is_remote(path):
        return pq.read_metadata(path)
    filesystem, bucket, key = _filesystem(path)
    return pq.read_metadata(f"{bucket}/{key}", filesystem=filesystem)


WRITABLE_SCHEMES = ("s3",)  # publishing: klrank.io.buckets


def output_location(path: "str | os.PathLike[str]", option: str) -> "Path | str":
    """Where an output option points: a local ``Path``, or an ``s3://`` URL (a string).

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
            f"{option}: klrank publishes to local folders and s3:// URLs "
            f"({found}:// is not supported yet)"
        )
    try:
        bucket, key = bucket_and_key(url)
    except UsageError as error:
        raise UsageError(f"{option}: {error}") from None
    if not key:
        raise UsageError(
            f"{option}: {url!r} is a whole bucket; klrank stages a report beside the folder it "
            f"publishes, so name a folder in it (e.g. {found}://{bucket}/reports)"
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
        A scheme other than ``s3://`` or ``file://``, or credentials or options in the URL.
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
    """What is at an ``s3://`` URL: ``"file"``, ``"folder"`` (a prefix holding keys) or ``"none"``.

    Raises
    ------
    StorageError
        The store refused or could not be reached.
    """
    from pyarrow import fs

    filesystem, bucket, key = _filesystem(url)
    try:
        found = filesystem.get_file_info(f"{bucket}/{key}".rstrip("/")).type
    except OSError as error:
        raise StorageError(f"cannot read {url!r}: {one_line(str(error))}") from None
    return {fs.FileType.File: "file", fs.FileType.Directory: "folder"}.get(found, "none")


def folders(url: str) -> list[str]:
    """The names of the folders (key prefixes) directly below an ``s3://`` URL; none if missing."""
    from pyarrow import fs

    filesystem, bucket, key = _filesystem(url)
    root = f"{bucket}/{key}".rstrip("/")
    try:
        infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    except OSError as error:
        raise StorageError(f"cannot list {url!r}: {one_line(str(error))}") from None
    return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory)


def join(url: str, *names: str) -> str:
    """``url`` with ``names`` appended, one ``/`` between each."""
    return "/".join([url.rstrip("/"), *names])
