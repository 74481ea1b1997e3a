"""Other processes: who they are and whether they still run, for what processes share
(interprocess events, shared counters).

A process is named by its pid and its start time (``/proc/<pid>/stat`` field 22, in clock
ticks since boot), so a pid the kernel gave to a new process after the old one died does not
pass for the old one. Where ``/proc`` is missing (not Linux) the start time is 0 and only the
pid is checked.
"""

from __future__ import annotations

import os

__all__ = ["Identity", "me", "alive"]

Identity = tuple  # (pid, start time)

_me: tuple[int, tuple] | None = None  # (the pid it was taken in, the identity)


def _start_time(pid: int) -> int | None:
    """The start time of ``pid``; ``None`` when it does not exist or is a zombie; 0 without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
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
    """Whether the process ``identity`` names still runs (a zombie has ended)."""
    pid, start = identity
    if pid == os.getpid():
        return start == me()[1]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _start_time(pid)
    return now is not None and (start == 0 or now == 0 or now == start)
