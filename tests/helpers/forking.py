"""For scripts that fork (tests/scripts/fork): run a child with a deadline, and check what the
child is refused there.

Importing this module silences the DeprecationWarning that ``os.fork()`` of a multi-threaded
process gives, since the scenarios must leave stderr empty.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings

from cudaevents import ClosedError
from cudaevents._core.errors import CudaUnavailableError

warnings.filterwarnings("ignore", category=DeprecationWarning)  # fork() of a multi-threaded process


def expect_fork_error(what, fn, *args, **kwargs):
    """``fn(*args)`` must raise CudaUnavailableError explaining fork and 'spawn'."""
    try:
        fn(*args, **kwargs)
    except CudaUnavailableError as exc:
        msg = str(exc)
        assert "fork" in msg and "'spawn'" in msg, f"{what}: unclear message {msg!r}"
        print("child: refused:", what, flush=True)
        return
    raise AssertionError(f"{what}: no CudaUnavailableError in the forked child")


def expect_closed_by_fork(what, fn, *args, **kwargs):
    """``fn(*args)`` on an object created before the fork must raise ClosedError saying so, at
    once; returns the message."""
    start = time.monotonic()
    try:
        fn(*args, **kwargs)
    except ClosedError as exc:
        msg = str(exc)
        assert "before os.fork()" in msg and "create a new" in msg, f"{what}: unclear message {msg!r}"
        assert time.monotonic() - start < 5, f"{what}: took {time.monotonic() - start:.1f} s"
        print("child: closed:", what, flush=True)
        return msg
    raise AssertionError(f"{what}: no ClosedError in the forked child")


def wait_for_child(pid: int, timeout: float, what: str = "the forked child") -> int:
    """Wait for the child ``pid`` with a deadline (killing it if it passes); returns its
    wait status."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"{what} hung: killed after {timeout} s")
        time.sleep(0.005)


def fork_and_wait(child, timeout: float = 60.0) -> int:
    """Run ``child()`` in a forked process and return its exit code (0 if it returned, 1 if it
    raised, with the traceback on stderr). The child leaves through the interpreter's normal
    exit (SystemExit), so atexit hooks and the finalizers of everything it inherited run there
    too. A child still running after ``timeout`` seconds is killed."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:  # noqa: BLE001 - the child reports whatever it raised
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)  # the child's normal interpreter exit
    code = os.waitstatus_to_exitcode(wait_for_child(pid, timeout))
    print("parent: child exit code", code, flush=True)
    return code
