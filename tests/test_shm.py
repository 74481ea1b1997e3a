"""Shared-memory files (cudaevents._core.shm): made with their space reserved, and a full
/dev/shm refused at once with what to do, leaving no file behind."""

from __future__ import annotations

import errno
import os

import pytest

from cudaevents._core import shm


def test_a_file_is_made_whole_and_private():
    path, fd = shm.create(f"cudaevents-test-{os.getpid()}", 4096)
    try:
        st = os.fstat(fd)
        assert st.st_size == 4096 and st.st_mode & 0o777 == 0o600
        if hasattr(os, "posix_fallocate") and path.startswith("/dev/shm/"):
            assert st.st_blocks * 512 >= 4096  # reserved, not sparse
        with pytest.raises(FileExistsError):
            shm.create(os.path.basename(path), 4096)  # never someone else's file
    finally:
        os.close(fd)
        os.unlink(path)


def test_no_room_is_an_error_that_says_what_to_do_and_leaves_no_file(monkeypatch):
    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    name = f"cudaevents-test-full-{os.getpid()}"
    with pytest.raises(OSError, match=r"no room for 4096 bytes of shared memory in .*--shm-size") as info:
        shm.create(name, 4096)
    assert info.value.errno == errno.ENOSPC
    assert not os.path.exists(os.path.join(shm.folder(), name))


def test_a_file_system_without_reservations_still_gets_its_size(monkeypatch):
    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    path, fd = shm.create(f"cudaevents-test-sparse-{os.getpid()}", 8192)
    try:
        assert os.fstat(fd).st_size == 8192
    finally:
        os.close(fd)
        os.unlink(path)
