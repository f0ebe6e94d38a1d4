"""Publishing to object storage (``s3://``, ``az://``, ``gs://``): a commit protocol without rename.

An object store has no rename and no lock, but it writes each object whole (a reader sees the
old object or the new one, never a part), and it has conditional writes: create only if absent,
replace only if unchanged since read (``If-None-Match`` and ``If-Match`` in S3 and Azure Blob,
``ifGenerationMatch`` in Google Cloud Storage). On those, a run
publishing ``OUT/run_date=D/`` (the target) does this, and nothing else:

1. **Lease.** It creates the lease object ``OUT/.run_date=D.klrank.lock`` (beside the target,
   hidden, as the local lock file) only if it is absent, and renews it every third of its
   time to live by a write conditional on its own last version. A run that finds it held
   waits; a lease left unchanged for its whole time to live, as the waiting run observes it on
   its own clock, belonged to a dead run, and is taken over by a conditional write (so two
   waiting runs cannot both take it). ``--lock-timeout`` passed: exit 75, as on disk.
2. **Recover.** Under the lease it finishes what a killed run of the target committed (step 4)
   and deletes what a killed run staged but did not commit.
3. **Stage.** The run's files are written to the staging prefix
   ``OUT/../.klrank-staging-<key>-<run id>/``, beside ``OUT``, never inside it, so no reader's
   ``OUT/*/report.parquet`` or ``OUT/**/*.parquet`` can list them. A run that fails, is
   stopped, or finds invalid data has touched nothing else: the target's files are those of
   the previous run, and ``_SUCCESS`` still names it.
4. **Commit.** Having renewed its lease once more, it writes ``_COMMITTED`` (naming the target
   and the files) into the staging prefix: from here the run is published, and a run killed
   after this point is finished by the next run of the target (step 2). Then: delete the
   target's ``_SUCCESS``; copy each staged file to the target, ``report.parquet`` last of the
   data files; delete the target's klrank files this run does not publish; copy
   ``manifest.json``; write ``_SUCCESS`` holding the run id; delete the staging prefix.

The rule for readers: a night is complete when its ``_SUCCESS`` exists; it holds the run id of
the ``manifest.json`` beside it, and the night's files are those the manifest lists. Each
published object is at every moment absent or a whole file of one run; while a run commits
(server-side copies, a fraction of a second for a report without rows) ``_SUCCESS`` is absent.
A reader that reads ``_SUCCESS`` before and after its files, and finds the same run id both
times, has read that run's files.

The library is `obstore <https://developmentseed.org/obstore/>`_ (Rust's ``object_store``): it
has the conditional writes pyarrow's file systems lack, multipart uploads, and no dependencies;
it takes credentials and the endpoint from the same variables as Polars and pyarrow (``AWS_*``
for S3, ``AZURE_STORAGE_*`` for Azure: :data:`klrank.io.storage.STORES`).

For ``gs://`` it is Google's client, ``google-cloud-storage`` (the ``gcs`` extra), through
GCS's JSON API (``ifGenerationMatch``): obstore writes to GCS with its XML API, which no GCS
emulator that installs for the tests serves with its conditions, so it could not be tested
there. :class:`_GcsBucket` answers the few obstore calls the protocol makes.
"""

import datetime as dt
import functools
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from klrank.io import storage
from klrank.io.targets import STAGING_PREFIX
from klrank.pipeline.errors import LockBusyError, StorageError, UsageError
from klrank.pipeline.text import one_line
from klrank.runtime import events, interrupts
from klrank.runtime.lock import LOCK_SUFFIX, POLL_S
from klrank.schemas.outputs import (
    FAILURES_FOLDER,
    MANIFEST_FILE,
    OUTPUT_FILES,
    REPORT_FILE,
    SUCCESS_FILE,
)

COMMITTED_FILE = "_COMMITTED"  # in a staging prefix: the run is published; finish its copies
LEASE_TTL_S = 60.0  # a lease not renewed for this long belonged to a dead run
_RUN_ID = re.compile(r"[0-9a-f]{32}")
T = TypeVar("T")


@dataclass(frozen=True)
class Place:
    """An object-store location: the store of its bucket and the key (no ``/`` at either end)."""

    url: str  # scheme://bucket/key, as the user wrote it less any "/" at the end
    bucket_url: str
    key: str

    def child(self, *names: str) -> "Place":
        """The location ``names`` below this one."""
        key = "/".join((self.key, *names)).strip("/")
        return Place(f"{self.bucket_url}/{key}", self.bucket_url, key)

    @property
    def parent(self) -> "Place":
        """The location one folder up (the bucket itself for a key without ``/``)."""
        key = self.key.rpartition("/")[0]
        return Place(f"{self.bucket_url}/{key}".rstrip("/"), self.bucket_url, key)

    @property
    def name(self) -> str:
        """The last part of the key."""
        return self.key.rpartition("/")[2]


def place(url: str) -> Place:
    """The location an object-store URL names, checked as inputs are (no credentials in it).

    Raises
    ------
    UsageError
        Not a URL klrank publishes to, or one that names no bucket or carries credentials.
    """
    bucket, key = storage.bucket_and_key(url)
    found = storage.scheme(url)
    bucket_url = f"{found}://{bucket}"
    return Place(f"{bucket_url}/{key}".rstrip("/"), bucket_url, key)


@functools.lru_cache(maxsize=8)
def _store(bucket_url: str, environment: tuple[tuple[str, str], ...]) -> Any:
    del environment  # part of the cache's key only: obstore reads the variables itself
    from obstore.store import from_url

    try:
        if storage.scheme(bucket_url) == "gs":
            return _GcsBucket.of(bucket_url.removeprefix("gs://"))
        return from_url(bucket_url)
    except UsageError:
        raise
    except Exception as error:  # obstore's configuration errors have no common base
        raise StorageError(f"cannot reach the bucket {bucket_url!r}: {_brief(error)}") from None


def _store_of(where: Place) -> Any:
    return _store(where.bucket_url, storage.settings(storage.store_of(where.bucket_url)))


def _api(store: Any) -> Any:
    """The functions acting on ``store``: obstore's, or :class:`_GcsBucket`'s, which mirror them."""
    import obstore

    return _GcsBucket if isinstance(store, _GcsBucket) else obstore


class _Fetched(bytes):
    """An object's bytes, read as obstore's ``get(...).bytes()`` reads them."""

    def bytes(self) -> "_Fetched":
        return self


class _Listing(list[dict[str, Any]]):
    """Objects listed, collected as obstore's ``list(...).collect()`` collects them."""

    def collect(self) -> "_Listing":
        return self


@dataclass(frozen=True)
class _GcsBucket:
    """A GCS bucket, with the obstore functions the protocol calls as its methods (JSON API).

    ``_GcsBucket.put(bucket, ...)`` answers ``obstore.put(store, ...)``, and so on: same
    arguments, same results (an object's version, its ``e_tag``, is its GCS generation), same
    errors (obstore's). Google's client reads ``GOOGLE_APPLICATION_CREDENTIALS`` and the rest of
    Google's default credentials, and ``STORAGE_EMULATOR_HOST`` (then no credentials at all).
    """

    bucket: Any  # google.cloud.storage.Bucket

    @staticmethod
    def of(name: str) -> "_GcsBucket":
        """The bucket ``name``, with a client configured by the environment.

        Raises
        ------
        UsageError
            ``google-cloud-storage`` (the ``gcs`` extra) is not installed.
        """
        try:
            from google.cloud import storage as gcs
        except ImportError:
            raise UsageError(
                "publishing to gs:// URLs needs Google's client: pip install 'klrank[gcs]'"
            ) from None
        # No project: objects need none, and Google's client would refuse credentials without one.
        return _GcsBucket(gcs.Client(project=None).bucket(name))

    @staticmethod
    def _errors(step: Callable[[], T], key: str) -> T:
        """Run ``step``, with Google's errors raised as obstore's."""
        from google.api_core import exceptions as google
        from obstore.exceptions import GenericError, NotFoundError, PreconditionError

        try:
            return step()
        except google.NotFound:
            raise NotFoundError(f"no object {key!r}") from None
        except google.PreconditionFailed:
            raise PreconditionError(f"the object {key!r} changed") from None
        except google.GoogleAPIError as error:
            raise GenericError(one_line(str(error))) from None

    def put(self, key: str, data: "bytes | Path", *, mode: Any = None) -> dict[str, Any]:
        """Write an object; ``mode`` "create" (only if absent) or ``{"e_tag": generation}``."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        blob = self.bucket.blob(key)
        match = 0 if mode == "create" else None if mode is None else int(mode["e_tag"])

        def write() -> None:
            if isinstance(data, Path):
                blob.upload_from_filename(str(data), if_generation_match=match, retry=_gcs_retry())
            else:
                blob.upload_from_string(data, if_generation_match=match, retry=_gcs_retry())

        try:
            self._errors(write, key)
        except PreconditionError:
            if match == 0:  # obstore's error for a create that found the object there
                raise AlreadyExistsError(f"the object {key!r} exists") from None
            raise
        return {"e_tag": str(blob.generation)}

    def get(self, key: str) -> _Fetched:
        """The object's bytes."""
        blob = self.bucket.blob(key)
        return _Fetched(self._errors(lambda: blob.download_as_bytes(retry=_gcs_retry()), key))

    def head(self, key: str) -> dict[str, Any]:
        """The object's metadata: its ``e_tag`` (generation)."""
        from obstore.exceptions import NotFoundError

        blob = self._errors(lambda: self.bucket.get_blob(key, retry=_gcs_retry()), key)
        if blob is None:
            raise NotFoundError(f"no object {key!r}")
        return {"path": key, "e_tag": str(blob.generation), "size": blob.size}

    def list(self, prefix: str | None = None) -> _Listing:
        """The objects whose keys start with ``prefix``."""

        def listed() -> _Listing:
            found = self.bucket.list_blobs(prefix=prefix, retry=_gcs_retry())
            return _Listing({"path": b.name, "e_tag": str(b.generation)} for b in found)

        return self._errors(listed, prefix or "")

    def list_with_delimiter(self, prefix: str | None = None) -> dict[str, Any]:
        """The "folders" (``common_prefixes``) directly below ``prefix``."""

        def listed() -> dict[str, Any]:
            found = self.bucket.list_blobs(prefix=prefix, delimiter="/", retry=_gcs_retry())
            objects = [{"path": b.name} for b in found]  # iterating fills found.prefixes
            return {"common_prefixes": sorted(found.prefixes), "objects": objects}

        return self._errors(listed, prefix or "")

    def delete(self, keys: "str | Sequence[str]") -> None:
        """Delete objects; a key with no object is no error (as S3)."""
        from obstore.exceptions import NotFoundError

        for key in [keys] if isinstance(keys, str) else keys:
            try:
                self._errors(
                    functools.partial(self.bucket.blob(key).delete, retry=_gcs_retry()), key
                )
            except NotFoundError:
                pass

    def copy(self, source: str, target: str) -> None:
        """Copy an object within the bucket, on the server (a rewrite: any size)."""

        def rewrite() -> None:
            token = None
            while True:
                blob = self.bucket.blob(target)
                token, _, _ = blob.rewrite(
                    self.bucket.blob(source), token=token, retry=_gcs_retry()
                )
                if token is None:
                    return

        self._errors(rewrite, source)


def _gcs_retry() -> Any:
    """Google's retries of a failed request, for :data:`storage.GCS_RETRY_S` at most."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(storage.GCS_RETRY_S)


def _call(where: Place, doing: str, step: Callable[[], T]) -> T:
    """Run one request; a refusal or an unreachable store is a StorageError (exit 74)."""
    from obstore.exceptions import BaseError

    try:
        return step()
    except (BaseError, OSError) as error:  # OSError: a connection refused, a timeout
        raise StorageError(f"cannot {doing} {where.url!r}: {_brief(error)}") from None


def _brief(error: Exception) -> str:
    """The message of an obstore error without its debugging dump (nested structures)."""
    return one_line(str(error).split("\n\nDebug source:", 1)[0])[:500]


def read_bytes(where: Place) -> bytes | None:
    """The object at ``where``, or None if there is none."""
    from obstore.exceptions import NotFoundError

    store = _store_of(where)

    def get() -> bytes | None:
        try:
            return bytes(_api(store).get(store, where.key).bytes())
        except (NotFoundError, FileNotFoundError):
            return None

    return _call(where, "read", get)


def put_bytes(where: Place, data: bytes) -> None:
    """Write one whole object (it replaces any object at ``where`` in one step)."""
    store = _store_of(where)
    _call(where, "write", lambda: _api(store).put(store, where.key, data))


def upload(file: Path, where: Place) -> None:
    """Copy a local file to ``where``, in parts when it is large; it appears whole, or not."""
    store = _store_of(where)
    _call(where, "upload to", lambda: _api(store).put(store, where.key, file))


def keys_below(where: Place) -> list[str]:
    """The keys of the objects below the folder ``where``, relative to it, in order."""
    store = _store_of(where)

    def listed() -> list[str]:
        found = _api(store).list(store, f"{where.key}/").collect()
        return sorted(str(o["path"])[len(where.key) + 1 :] for o in found)

    return _call(where, "list", listed)


def _delete(where: Place, keys: Sequence[str]) -> None:
    """Delete the objects ``keys`` below ``where``; a key with no object is no error."""
    from obstore.exceptions import NotFoundError

    full = [f"{where.key}/{k}" for k in keys]
    store = _store_of(where)

    def delete() -> None:
        try:
            _api(store).delete(store, full)
        except (NotFoundError, FileNotFoundError):
            # Azure's 404 for a missing blob fails its whole batch (S3 deletes nothing quietly).
            for key in full:
                try:
                    _api(store).delete(store, key)
                except (NotFoundError, FileNotFoundError):
                    pass

    if full:
        _call(where, "delete in", delete)


def _copy(source: Place, target: Place) -> None:
    store = _store_of(target)
    _call(target, "copy to", lambda: _api(store).copy(store, source.key, target.key))


def delete_object(where: Place) -> None:
    """Delete one object (nothing happens if there is none)."""
    _delete(where.parent, [where.name])


# --- the lease --------------------------------------------------------------------------------


def lease_place(target: Place) -> Place:
    """The lease object of the target: ``.<name>.klrank.lock`` beside it."""
    return target.parent.child(f".{target.name}{LOCK_SUFFIX}")


@dataclass
class Lease:
    """A held lease: its object, its version, and whether a renewal found it taken."""

    where: Place
    ttl: float
    e_tag: str
    body: bytes
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def renew(self) -> None:
        """Rewrite the lease, conditional on its last version; raises LockBusyError if taken."""
        from obstore.exceptions import NotFoundError, PreconditionError

        with self.lock:
            if self.lost.is_set():
                raise self._taken()
            store = _store_of(self.where)
            try:
                done = _api(store).put(store, self.where.key, self.body, mode={"e_tag": self.e_tag})
            except (PreconditionError, NotFoundError):
                self.lost.set()
                raise self._taken() from None
            except Exception as error:  # unreachable for now: the next renewal tries again
                events.emit("lease.renewal_failed", lease=self.where.url, error=_brief(error))
                return
            self.e_tag = str(done["e_tag"])

    def _taken(self) -> LockBusyError:
        return LockBusyError(
            f"the lease {self.where.url!r} was taken over by another run after this one failed "
            f"to renew it for {self.ttl:g} s; nothing was published: retry"
        )

    def keep_renewed(self) -> None:
        """Renew every third of the time to live until stopped (run in a thread)."""
        while not self.stop.wait(self.ttl / 3):
            try:
                self.renew()
            except (LockBusyError, StorageError):
                return


def _lease_body(ttl: float) -> bytes:
    return json.dumps(
        {
            "run_id": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ttl_s": ttl,
            "taken_at": dt.datetime.now(dt.UTC).isoformat(),
        }
    ).encode()


def _holder(body: bytes | None) -> str:
    try:
        found = json.loads(body or b"")
        return f" (pid {found['pid']} on {found['host']})"
    except (ValueError, KeyError, TypeError):
        return ""


def _try_take(where: Place, body: bytes, seen: dict[str, Any] | None) -> str | None:
    """Create the lease (``seen`` None) or replace the stale version ``seen``; its e-tag, or None."""
    from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

    store = _store_of(where)
    mode: Any = "create" if seen is None else {"e_tag": seen["e_tag"]}

    def put() -> str | None:
        try:
            return str(_api(store).put(store, where.key, body, mode=mode)["e_tag"])
        except (AlreadyExistsError, PreconditionError, NotFoundError):
            return None

    return _call(where, "take the lease", put)


def _current(where: Place) -> dict[str, Any] | None:
    """The lease object's metadata (its e-tag), or None if there is none."""
    from obstore.exceptions import NotFoundError

    store = _store_of(where)

    def head() -> dict[str, Any] | None:
        try:
            return dict(_api(store).head(store, where.key))
        except (NotFoundError, FileNotFoundError):
            return None

    return _call(where, "read the lease", head)


def _acquire(where: Place, ttl: float, timeout: float) -> Lease:
    body = _lease_body(ttl)
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] | None = None
    seen_since = time.monotonic()
    waited = False
    while True:
        e_tag = _try_take(where, body, None)
        if e_tag is None:
            current = _current(where)
            if current is not None and (seen is None or current["e_tag"] != seen["e_tag"]):
                seen, seen_since = current, time.monotonic()  # alive, or new: watch it afresh
            elif current is not None and time.monotonic() - seen_since >= ttl:
                e_tag = _try_take(where, body, seen)
                if e_tag is not None:
                    events.emit("lease.expired", lease=where.url, unchanged_s=round(ttl, 3))
        if e_tag is not None:
            events.emit("lock.acquired", lock=where.url, waited=waited)
            return Lease(where, ttl, e_tag, body)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockBusyError(
                f"another run{_holder(read_bytes(where))} is publishing "
                f"{where.url.removesuffix(LOCK_SUFFIX)!r}: its lease {where.url!r} was still held "
                f"after {timeout:g} s (--lock-timeout); retry later"
            )
        if not waited:
            waited = True
            events.emit(
                "lock.waiting", lock=where.url, holder=_holder(read_bytes(where)), timeout_s=timeout
            )
        time.sleep(min(POLL_S, remaining))


@contextmanager
def lease(target: Place, *, ttl: float, timeout: float) -> Iterator[Lease]:
    """Hold the lease of ``target`` for the block, renewed in a thread; released at the end.

    Raises
    ------
    LockBusyError
        Another live run held it for ``timeout`` seconds.
    StorageError
        The store refused or could not be reached.
    """
    held = _acquire(lease_place(target), ttl, timeout)
    renewer = threading.Thread(target=held.keep_renewed, name="klrank-lease", daemon=True)
    renewer.start()
    try:
        yield held
    finally:
        held.stop.set()
        renewer.join()
        with held.lock:
            current = _current(held.where) if not held.lost.is_set() else None
            if current is not None and current["e_tag"] == held.e_tag:
                delete_object(held.where)


# --- staging and committing -------------------------------------------------------------------


def staging_key(target: Place, out: Place) -> str:
    """A short hash naming ``target``'s staging prefixes beside ``out`` (as on disk)."""
    relative = target.key[len(out.parent.key) :].strip("/")
    return hashlib.sha256(relative.encode()).hexdigest()[:12]


def staging_place(target: Place, out: Place, run_id: str) -> Place:
    """Where a run stages its files: beside ``out``, hidden, named by target and run."""
    return out.parent.child(f"{STAGING_PREFIX}{staging_key(target, out)}-{run_id}")


def _staged_runs(target: Place, out: Place) -> list[Place]:
    """The staging prefixes of earlier runs of ``target`` that are still there."""
    parent = out.parent
    prefix = f"{parent.key}/" if parent.key else ""
    lead = f"{STAGING_PREFIX}{staging_key(target, out)}-"

    def listed() -> list[str]:
        store = _store_of(parent)
        found = _api(store).list_with_delimiter(store, prefix or None)
        return [str(p)[len(prefix) :].rstrip("/") for p in found["common_prefixes"]]

    names = _call(parent, "list", listed)
    return [
        parent.child(name)
        for name in sorted(names)
        if name.startswith(lead) and _RUN_ID.fullmatch(name[len(lead) :])
    ]


def _is_published_name(relative: str) -> bool:
    """Whether a key below a target is one of the files klrank publishes there."""
    top = relative.split("/", 1)[0]
    return top in (*OUTPUT_FILES, SUCCESS_FILE)


def _commit_order(files: Sequence[str]) -> list[str]:
    """The staged files in the order they are copied: data, report.parquet, then the manifest."""
    data = [f for f in files if f not in (REPORT_FILE, MANIFEST_FILE)]
    return [*data, *[f for f in (REPORT_FILE,) if f in files]]


def _finish(staged: Place, record: dict[str, Any]) -> None:
    """Copy a committed run's staged files over its target, then delete the staging prefix.

    Idempotent: a run killed in the middle is finished by running this again.
    """
    target = Place(record["target"], staged.bucket_url, record["target_key"])
    run_id, files = record["run_id"], list(record["files"])
    if read_bytes(target.child(SUCCESS_FILE)) != run_id.encode():
        delete_object(target.child(SUCCESS_FILE))
        for name in _commit_order(files):
            _copy(staged.child(name), target.child(name))
        stale = [k for k in keys_below(target) if _is_published_name(k) and k not in files]
        _delete(target, [k for k in stale if k != SUCCESS_FILE])
        _copy(staged.child(MANIFEST_FILE), target.child(MANIFEST_FILE))
        put_bytes(target.child(SUCCESS_FILE), run_id.encode())
    leftover = [k for k in keys_below(staged) if k != COMMITTED_FILE]
    _delete(staged, leftover)
    delete_object(staged.child(COMMITTED_FILE))  # last: until it goes, the run is finished again


def recover(target: Place, out: Place) -> None:
    """Finish the committed runs of ``target`` that were killed; delete the uncommitted ones.

    Call it holding ``target``'s lease.
    """
    for staged in _staged_runs(target, out):
        record = read_bytes(staged.child(COMMITTED_FILE))
        if record is None:
            _delete(staged, keys_below(staged))
            events.emit("staging.removed", staging=staged.url)
            continue
        _finish(staged, json.loads(record))
        events.emit("commit.finished", staging=staged.url, target=target.url)


def commit(staged: Place, target: Place, held: Lease) -> None:
    """Publish what is staged at ``staged`` to ``target`` (steps 4 of the protocol above).

    Raises
    ------
    LockBusyError
        The lease was lost (another run took it over): nothing is published.
    StorageError
        The store refused a step; before ``_COMMITTED`` nothing changed, after it the next run
        of ``target`` finishes the commit.
    """
    files = keys_below(staged)
    manifest = json.loads(read_bytes(staged.child(MANIFEST_FILE)) or b"{}")
    record = {
        "target": target.url,
        "target_key": target.key,
        "run_id": manifest["run_id"],
        "files": files,
    }
    held.renew()  # still ours at this moment: no other run can have committed meanwhile
    clock = time.perf_counter()
    with interrupts.deferred():  # a SIGTERM waits for the copies (a SIGKILL: recover())
        put_bytes(staged.child(COMMITTED_FILE), json.dumps(record).encode())
        _finish(staged, record)
    events.emit("commit.done", target=target.url, seconds=round(time.perf_counter() - clock, 4))


def discard(staged: Place) -> None:
    """Delete an uncommitted staging prefix (a failed run's); best effort.

    A committed one is left for the next run of its target to finish (:func:`recover`).
    """
    try:
        if read_bytes(staged.child(COMMITTED_FILE)) is None:
            _delete(staged, keys_below(staged))
    except StorageError as error:
        events.emit("staging.unremoved", staging=staged.url, error=str(error))


# --- checks before any work -------------------------------------------------------------------


def foreign_key(target: Place) -> str | None:
    """The first key below ``target`` that klrank did not publish there, or None."""
    for key in keys_below(target):
        if not (_is_published_name(key) or key.split("/", 1)[0] == FAILURES_FOLDER):
            return key
    return None
