"""``pipeline.lock``: the per-partition ``flock``, taken twice within this one process.

``flock`` locks belong to an open file description, so a second ``open`` of the lock file in
the same process conflicts exactly as another process would.
"""

import os
from pathlib import Path

import pytest
from klrank.pipeline.errors import LockBusyError
from klrank.runtime.lock import lock_path, partition_lock


def test_lock_file_is_hidden_beside_the_partition(tmp_path: Path) -> None:
    target = tmp_path / "out" / "run_date=2026-01-02"
    assert lock_path(target) == tmp_path / "out" / ".run_date=2026-01-02.klrank.lock"


def test_second_holder_fails_naming_the_pid_then_succeeds_after_release(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with partition_lock(target, timeout=0):
        with pytest.raises(LockBusyError, match=f"pid {os.getpid()}"):
            with partition_lock(target, timeout=0):
                pass
        with pytest.raises(LockBusyError, match=r"after 0.05 s \(--lock-timeout\)"):
            with partition_lock(target, timeout=0.05):
                pass
    with partition_lock(target, timeout=0):
        assert lock_path(target).read_bytes() == b""  # the file stays empty
    assert not target.exists()  # the lock never creates the partition itself


def test_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), partition_lock(tmp_path / "out", timeout=0):
        raise RuntimeError("boom")
    with partition_lock(tmp_path / "out", timeout=0):
        pass
