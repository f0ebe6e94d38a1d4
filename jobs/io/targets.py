"""Where a run may publish: the checks that keep klrank from deleting what it did not write.

Publishing swaps a whole folder, the *target*: ``OUT`` without ``--run-date``, ``OUT/run_date=D``
with one. Everything that could make that swap destroy something else is refused up front,
before any data is read:

* an ``--out`` that is an input, holds one, or lies inside an input folder (the next night would
  read the report back as input), and a ``--failures`` file that is or lies inside an input;
* a target that exists and is not klrank's: a folder is klrank's when it holds nothing but what
  its klrank ``manifest.json`` lists as published and klrank's ``_failures`` records (or
  nothing);
* an undated target that holds nightly ``run_date=`` partitions (checked again under the lock,
  as a dated run may publish one meanwhile);
* a target that is a mount point or a symbolic link (a link in ``--out`` itself is followed:
  klrank publishes into the folder it names).

The staging folder of a run lies beside the reports tree, in ``OUT``'s parent, never inside
``OUT``: a reader's glob such as ``OUT/**/report.parquet`` cannot see a half-written report, or
one a SIGKILL left behind. Its name is short and fixed in length
(``.klrank-staging-<key>-<uuid>``, the key a hash of the target), so any ``--out`` name the file
system takes works, and the next run of the same target removes what a killed run left.
"""

import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq
from klrank.pipeline.errors import StorageError, UsageError
from klrank.schemas.outputs import (
    FAILURE_COLUMNS,
    FAILURES_FOLDER,
    FAILURES_MARKER,
    MANIFEST_FILE,
    RUN_DATE_KEY,
    SUCCESS_FILE,
)

STAGING_PREFIX = ".klrank-staging-"
TEMPORARY_PREFIX = ".klrank-tmp-"  # a file being written (write_atomically); fixed length
_GLOB_CHARS = frozenset("*?[")
_UUID = "[0-9a-f]{32}"


def real(path: Path) -> Path:
    """``path`` absolute, every symbolic link followed (as far as the path exists yet)."""
    return Path(os.path.realpath(path))


def input_root(spec: str) -> Path:
    """The file or folder an input names: for a glob, the folder before its first pattern."""
    if Path(spec).exists():  # a name with "[" in it, not a pattern
        return real(Path(spec))
    parts = Path(spec).parts
    fixed = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts))
    return real(Path(*parts[:fixed]) if fixed else Path("."))


def staging_key(target: Path, out: Path) -> str:
    """A short hash naming ``target``'s staging folders beside ``out``."""
    relative = target.relative_to(out.parent).as_posix()
    return hashlib.sha256(relative.encode()).hexdigest()[:12]


def staging_pattern(target: Path, out: Path) -> re.Pattern[str]:
    """Names of ``target``'s staging folders in ``out``'s parent (and of older klranks' ones)."""
    key = re.escape(f"{STAGING_PREFIX}{staging_key(target, out)}-")
    return re.compile(rf"{key}{_UUID}")


def _legacy_pattern(target: Path) -> re.Pattern[str]:
    # Before 0.2, staging folders were named after the target and sat beside it.
    return re.compile(rf"{re.escape(STAGING_PREFIX + target.name)}-{_UUID}(-old)?")


def remove_stale_staging(target: Path, out: Path) -> list[Path]:
    """Remove the staging folders earlier runs of ``target`` left behind (killed by SIGKILL).

    Call it only while holding ``target``'s lock: then no other run of the same target is
    writing one. Only folders named exactly as klrank names them are touched.
    """
    found = []
    for folder, pattern in (
        (out.parent, staging_pattern(target, out)),
        (target.parent, _legacy_pattern(target)),
    ):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
                found.append(entry)
    return found


def is_failures_file(path: Path) -> bool:
    """Whether ``path`` is a failure-cases file klrank wrote (by its footer or its columns)."""
    try:
        metadata = pq.read_metadata(path)
    except (OSError, ValueError):
        return False
    keys = {key.decode() for key in (metadata.metadata or {})}
    return FAILURES_MARKER in keys or tuple(metadata.schema.names) == FAILURE_COLUMNS


def _published_names(path: Path) -> set[str]:
    """What the klrank manifest at ``path`` says its run published (empty if it is not one)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(document, dict) or "klrank_version" not in document:
        return set()
    outputs = document.get("outputs")
    names = {o for o in outputs if isinstance(o, str)} if isinstance(outputs, list) else set()
    return names | {MANIFEST_FILE, SUCCESS_FILE}


def _only_failure_records(folder: Path) -> bool:
    for path in folder.rglob("*"):
        if path.is_symlink():
            return False
        if path.is_file() and not (
            path.name.startswith(TEMPORARY_PREFIX) or is_failures_file(path)
        ):
            return False
    return True


def foreign_entry(folder: Path) -> str | None:
    """The name of something in ``folder`` that klrank did not write, or None if there is none.

    klrank wrote what its ``manifest.json`` lists in ``outputs`` (with the manifest and
    ``_SUCCESS``) and a ``_failures`` folder of failure-cases files; a file a user added to a
    report is not klrank's, so publishing must not delete it with the folder.

    Examples
    --------
    >>> import tempfile
    >>> foreign_entry(Path(tempfile.mkdtemp())) is None
    True
    """
    published = _published_names(folder / MANIFEST_FILE)
    for entry in sorted(folder.iterdir()):
        if entry.name in published:
            continue
        failures = entry.name == FAILURES_FOLDER and entry.is_dir() and not entry.is_symlink()
        if not (failures and _only_failure_records(entry)):
            return entry.name
    return None


def nightly_partitions(folder: Path) -> list[str]:
    """Names of the ``run_date=`` folders in ``folder`` (staging folders of older klranks too)."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if unquote(p.name).lstrip(".").startswith(f"{RUN_DATE_KEY}=")
    )


def check_undated(out: Path) -> None:
    """Refuse an undated run on an ``out`` that holds nightly partitions: it would replace them.

    Raises
    ------
    UsageError
        ``out`` holds a ``run_date=`` partition.
    """
    nights = nightly_partitions(out)
    if nights:
        raise UsageError(
            f"--out: {str(out)!r} holds nightly partitions ({nights[0]!r}, ...): a run without "
            "--run-date would replace them all; give --run-date, or another --out"
        )


def _glob_patterns(spec: str) -> list[tuple[str, ...]]:
    """The glob ``spec`` as absolute path parts, and again for each folder it now reaches by a link.

    ``glob`` follows symbolic links, in the pattern's fixed part and under ``**``, so a link can
    lead an input into ``--out``: each folder the pattern's folder part matches is taken again with
    its links resolved (``.../latest -> /reports`` reads ``/reports/**/*.parquet``).
    """
    pattern = Path(os.path.abspath(spec)).parts
    *folder, name = pattern
    recursive = name == "**" or folder[-1] == "**"
    if name == "**":
        folder.append("**")
    found = [pattern]
    for match in glob.glob(os.path.join(*folder, ""), recursive=True):  # "/": folders only
        found.append((*real(Path(match)).parts, *(("**",) if recursive else ()), name))
    return found


def _globbed_into(folder: Path, pattern: tuple[str, ...]) -> bool:
    """Whether the glob ``pattern`` (absolute path parts) can match a file below ``folder``."""
    for i, part in enumerate(folder.parts):
        if pattern[i] == "**":  # a last "**" too: glob's recursive "**" matches files as well
            return True
        if i >= len(pattern) - 1:  # the pattern's last part names files, not folders
            return False
        if not fnmatch.fnmatchcase(part, pattern[i]):
            return False
    return True


def _is_glob(spec: str) -> bool:
    return bool(_GLOB_CHARS & set(spec)) and not Path(spec).exists()


def _lies_inside(path: Path, spec: str) -> bool:
    """Whether ``path`` (absolute) is below the input ``spec``: a folder it reads, or its glob's."""
    if _is_glob(spec):
        return any(_globbed_into(path, pattern) for pattern in _glob_patterns(spec))
    return input_root(spec) in path.parents


def _check_not_inputs(out: Path, inputs: dict[str, str]) -> None:
    real_out = real(out)
    for name, spec in inputs.items():
        root = input_root(spec)
        if real_out == root or real_out in root.parents:
            raise UsageError(
                f"--out: {str(out)!r} is or holds the {name} input {spec!r}; publishing replaces "
                "the whole folder, so name a folder of its own (e.g. --out reports)"
            )
        if _lies_inside(real_out, spec):
            raise UsageError(
                f"--out: {str(out)!r} lies inside the {name} input {spec!r}; the next run would "
                "read the report as input: publish outside it"
            )


def check_failures(failures: Path, inputs: dict[str, str]) -> None:
    """Refuse a failure-cases path that is an input, lies inside one, or is not klrank's file.

    Raises
    ------
    UsageError
        ``failures`` is or lies inside an input, or exists and was not written by klrank.
    StorageError
        ``failures`` is a folder.
    """
    for name, spec in inputs.items():
        file = real(failures)
        globbed = _is_glob(spec) and any(
            fnmatch.fnmatch(str(file), os.path.join(*pattern)) for pattern in _glob_patterns(spec)
        )
        if file == input_root(spec) or _lies_inside(file, spec) or globbed:
            raise UsageError(
                f"--failures: {str(failures)!r} is or lies inside the {name} input {spec!r}; "
                "write the failure cases elsewhere"
            )
    if failures.is_dir():
        raise StorageError(
            f"--failures: {str(failures)!r} is a directory; name a file (e.g. "
            f"{str(failures / 'failures.parquet')!r})",
            str(failures),
        )
    if failures.exists() and not is_failures_file(failures):
        raise UsageError(
            f"--failures: {str(failures)!r} exists and is not a failure-cases file of klrank; "
            "klrank replaces or deletes that file, so name another one"
        )


def _check_failures_outside(failures: Path, out: Path) -> None:
    """Refuse a failure-cases file that is ``out`` or lies where readers of the reports look.

    Inside ``out`` only a folder named with ``_`` or ``.`` (``OUT/_failures/``, the default)
    keeps it from the readers' ``OUT/**/*.parquet`` and from being taken for a report.
    """
    file, root = real(failures), real(out)
    if file == root or (
        root in file.parents
        and not any(part.startswith(("_", ".")) for part in file.relative_to(root).parts)
    ):
        raise UsageError(
            f"--failures: {str(failures)!r} is --out or lies in it, where readers of the "
            "reports would read it; write the failure cases outside --out (or under OUT/_failures)"
        )


def _check_folder_path(path: Path, flag: str) -> None:
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            raise StorageError(
                f"{flag}: {str(folder)!r} exists and is not a directory", str(folder)
            )


def _mount_points() -> set[str]:
    r"""Every mount point this process sees, bind mounts included ("\040" for a space, ...)."""
    try:
        with open("/proc/self/mountinfo", "rb") as info:
            lines = info.read().splitlines()
    except OSError:  # not Linux: os.path.ismount alone
        return set()
    points = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            unescaped = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
            points.add(os.fsdecode(unescaped))
    return points


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` is a mount point, also a bind mount of a folder of the same file system.

    ``os.path.ismount`` compares devices, so it misses such a bind mount; a rename into it
    still fails (EXDEV, EBUSY), after all the work.
    """
    return os.path.ismount(path) or str(real(path)) in _mount_points()


def check_publishable(
    out: Path,
    target: Path,
    *,
    dated: bool,
    inputs: dict[str, str],
    failures: Path | None = None,
) -> None:
    """Fail early, before any work, when publishing ``target`` could destroy what is not klrank's.

    ``out`` is ``--out`` with its links already followed (:func:`real`); ``target`` is ``out``
    or ``out/run_date=D``; ``inputs`` maps each input's name to its path or glob.

    Raises
    ------
    UsageError
        ``out`` is, holds or lies inside an input; ``target`` exists and is not klrank's, is a
        link or a mount point, or is the working directory or holds it; an undated ``out`` holds
        nightly partitions; ``failures`` is an input, a file klrank did not write, ``out``, or
        a file in ``out`` outside its ``_`` and ``.`` folders.
    StorageError
        ``out`` or a folder above it is a file, or ``failures`` is a folder.
    """
    _check_not_inputs(out, inputs)  # first: an --out that is an input file is said to be one
    _check_folder_path(target, "--out")
    if failures is not None:
        check_failures(failures, inputs)
        _check_failures_outside(failures, out)
    cwd = Path.cwd().resolve()
    if real(target) == cwd or real(target) in cwd.parents:
        raise UsageError(
            f"--out: {str(target)!r} is the working directory or holds it; publishing replaces "
            "the whole folder, so name a folder of its own (e.g. --out reports)"
        )
    if target.is_symlink():
        raise UsageError(
            f"--out: {str(target)!r} is a symbolic link; klrank would replace the link, not the "
            "folder it names: point --out at that folder"
        )
    for folder in (out, target):
        if is_mount_point(folder):
            raise UsageError(
                f"--out: {str(folder)!r} is a mount point; klrank stages a report beside --out "
                "and renames it into place, which cannot cross file systems: name a folder "
                f"inside it (e.g. --out {str(folder / 'klrank')!r})"
            )
    if not dated:
        check_undated(out)
    foreign = foreign_entry(target) if target.is_dir() else None
    if foreign is not None:
        raise UsageError(
            f"--out: {str(target)!r} exists and is not a klrank report: klrank did not write "
            f"{foreign!r} in it (a report holds only what its manifest.json lists); publishing "
            "replaces the whole folder, so name a new or empty folder"
        )
