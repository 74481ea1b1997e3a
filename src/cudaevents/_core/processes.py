"""Other processes: who they are and whether they still run, for what processes share
(interprocess events, shared counters).

A process is named by its pid and its start time (``/proc/<pid>/stat`` field 22, in clock
ticks since boot), so a pid the kernel gave to a new process after the old one died does not
pass for the old one. Where ``/proc`` is missing (not Linux) the start time is 0 and only the
pid is checked.
"""

from __future__ import annotations

import os
import select
import threading

__all__ = ["Identity", "me", "alive"]

Identity = tuple  # (pid, start time)

_me: tuple[int, tuple] | None = None  # (the pid it was taken in, the identity)


def _start_time(pid: int) -> int | None:
    """The start time of ``pid``; ``None`` when it does not exist or is a zombie; 0 without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None if os.path.isdir("/proc") else 0
    except OSError:
        return 0
    rest = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 3
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])  # field 22


def me() -> Identity:
    """This process's identity (a fork child gets its own)."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:
        start = _start_time(pid)
        _me = (pid, (pid, start or 0))
    return _me[1]


def alive(identity: Identity) -> bool:
    """Whether the process ``identity`` names still runs (a zombie has ended).

    The first look at another process opens a pidfd on it where the system has them (Linux
    5.3 and later): from then on a look is one ``poll`` of that descriptor (about a
    microsecond: it is on every use of a received interprocess event) instead of a read of
    ``/proc``. A pidfd names one process, so a reused pid cannot pass for it either."""
    pid, start = identity
    if pid == os.getpid():
        return start == me()[1]
    fd = _pidfds.get(identity)
    if fd is None:
        fd = _open_pidfd(identity)
        if fd is None:
            return _alive_by_proc(identity)
    if fd < 0:
        return False
    if not _ended(fd):
        return True
    with _pidfd_lock:  # ended: the descriptor is not needed any more
        if _pidfds.get(identity) == fd:
            _pidfds[identity] = _ENDED
            os.close(fd)
    return False


_pidfds: dict[Identity, int] = {}  # other processes looked at -> their pidfd, or _ENDED
_pidfd_lock = threading.Lock()
_ENDED = -1
_POLL_IN = getattr(select, "POLLIN", 1)


def _open_pidfd(identity: Identity) -> int | None:
    """A pidfd of the process ``identity`` (kept for later looks), ``_ENDED`` when it has
    ended, or ``None`` where pidfds are missing."""
    open_pidfd = getattr(os, "pidfd_open", None)
    if open_pidfd is None or not hasattr(select, "poll"):
        return None
    pid, start = identity
    with _pidfd_lock:
        fd = _pidfds.get(identity)
        if fd is not None:
            return fd
        try:
            fd = open_pidfd(pid)
        except ProcessLookupError:
            fd = _ENDED
        except OSError:  # no pidfds in this kernel, or not allowed: /proc it is
            return None
        else:
            # the descriptor names whatever has the pid now: the process asked for, if the
            # start time still matches (read after opening)
            now = _start_time(pid)
            if now is None or (start != 0 and now != 0 and now != start):
                os.close(fd)
                fd = _ENDED
        for other, kept in _pidfds.items():  # processes that ended unlooked-at keep no descriptor
            if kept >= 0 and _ended(kept):
                os.close(kept)
                _pidfds[other] = _ENDED
        _pidfds[identity] = fd
        return fd


def _ended(fd: int) -> bool:
    """Whether the process of pidfd ``fd`` has ended (the descriptor reads as ready)."""
    poller = select.poll()
    poller.register(fd, _POLL_IN)
    return bool(poller.poll(0))


def _alive_by_proc(identity: Identity) -> bool:
    pid, start = identity
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _start_time(pid)
    return now is not None and (start == 0 or now == 0 or now == start)
