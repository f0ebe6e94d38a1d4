"""Atomic publishing of a report folder.

On disk, a staging folder beside the target, swapped in whole; in a bucket, the commit protocol
of :mod:`klrank.io.buckets`.
"""

import ctypes
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from klrank.io import buckets, targets
from klrank.io.oserrors import storage
from klrank.io.targets import STAGING_PREFIX
from klrank.io.writing import write_text
from klrank.runtime import interrupts
from klrank.schemas.outputs import SUCCESS_FILE


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step; False where the kernel or libc cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(result == 0)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staging(target: Path, out: Path, run_id: str = "") -> Iterator[Path]:
    """A staging folder to fill; when the block ends, ``_SUCCESS`` is added and it replaces ``target``.

    ``_SUCCESS`` holds ``run_id``, as in a bucket (:mod:`klrank.io.buckets`).

    ``target`` is ``out`` or a folder in it; the staging folder is made in ``out``'s parent,
    outside the reports tree, so that no reader's glob under ``out`` ever lists it (see
    :mod:`klrank.io.targets`). If the block raises, or the process dies, ``target`` is
    untouched; the staging folder is removed on an exception, and the next run of the same target
    removes one that a SIGKILL left. Enter it holding ``target``'s lock.

    >>> with staging(target, out) as folder:  # doctest: +SKIP
    ...     write_text("...", folder / "summary.md")

    Raises
    ------
    StorageError
        The operating system refused a step (no space, read-only, permission); ``target`` is
        untouched.
    """
    with storage(out.parent, "create a staging folder in"):
        target.parent.mkdir(parents=True, exist_ok=True)
        targets.remove_stale_staging(target, out)
    folder = out.parent / f"{STAGING_PREFIX}{targets.staging_key(target, out)}-{uuid.uuid4().hex}"
    try:
        # Made inside the try: a signal just after the mkdir must still remove the folder.
        with storage(out.parent, "create a staging folder in"):
            folder.mkdir()
        yield folder
        _swap_in(folder, target, run_id)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _swap_in(staging: Path, target: Path, run_id: str) -> None:
    write_text(run_id, staging / SUCCESS_FILE)
    with storage(staging, "sync"):
        for file in staging.rglob("*"):  # a folder too: the Ray engine's rows.parquet/
            if file.is_dir():
                _fsync_dir(file)
                continue
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    # A SIGTERM between the two renames of the fallback would leave no report at all.
    with interrupts.deferred(), storage(target, "publish"):
        if not target.exists():
            staging.rename(target)
        elif _exchange(staging, target):
            shutil.rmtree(staging)  # now holds the previous report
        else:
            retired = staging.with_name(f"{staging.name[:-32]}{uuid.uuid4().hex}")
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired)
        _fsync_dir(target.parent)


@contextmanager
def bucket_staging(target: str, out: str, run_id: str, held: buckets.Lease) -> Iterator[Path]:
    """A local folder to fill; when the block ends, it is published to ``target`` in the bucket.

    The protocol of :mod:`klrank.io.buckets`: the folder's files are uploaded to the staging
    prefix of ``run_id``, then committed. Where the block raises, or the upload does, nothing is
    published and the staging prefix is deleted; where the process dies, the next run of the
    target deletes it (or, once committed, finishes it). The local folder is made in the
    system's temporary folder (``TMPDIR``), and always removed. Enter it holding ``held``, the
    target's lease, after :func:`klrank.io.buckets.recover`.

    Raises
    ------
    StorageError
        The store or the local disk refused a step.
    LockBusyError
        The lease was lost before the commit: nothing was published.
    """
    target_place, out_place = buckets.place(target), buckets.place(out)
    staged = buckets.staging_place(target_place, out_place, run_id)
    with storage(Path(tempfile.gettempdir()), "create a staging folder in"):
        folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    try:
        yield folder
        for file in sorted(folder.rglob("*")):  # a folder too: the Ray engine's rows.parquet/
            if file.is_file():
                buckets.upload(file, staged.child(file.relative_to(folder).as_posix()))
        buckets.commit(staged, target_place, held)
    except BaseException:
        buckets.discard(staged)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
