"""Files of shared memory that processes map (a shared counter's page, an exporter's
acknowledgement slots): where they live, and making one with its space reserved."""

from __future__ import annotations

import errno
import os
import tempfile

__all__ = ["folder", "create"]


def folder() -> str:
    """``/dev/shm`` (memory), or the temporary folder where it is missing."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def create(name: str, size: int) -> tuple[str, int]:
    """A new file ``name`` of ``size`` bytes in :func:`folder`, opened read-write:
    ``(path, fd)``. Its space is reserved now: a full ``/dev/shm`` fails here, with an
    ``OSError`` that says what to do, instead of killing the process with SIGBUS at its first
    store into the mapping (tmpfs files made by ``ftruncate`` alone are sparse)."""
    path = os.path.join(folder(), name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except AttributeError:  # not on this system (macOS): the file stays sparse
            os.ftruncate(fd, size)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            os.ftruncate(fd, size)  # a file system without reservations
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        if exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no room for {size} bytes of shared memory in {folder()}: enlarge it "
                          "(e.g. docker run --shm-size=1g), free what fills it, or close shared counters and "
                          "release interprocess sends no longer used") from exc
        raise
    return path, fd
