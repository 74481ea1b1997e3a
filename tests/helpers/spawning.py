"""Children started with multiprocessing's 'spawn' method, for the tests and scripts whose
processes share counters or interprocess events: started (with two queues to talk to them, for
the ``spawned`` fixture), joined with a deadline, expected errors, and who is attached to a
shared counter."""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import signal
import time

T = 30  # seconds any wait of those scripts may take before the scenario fails
STACKS = signal.SIGUSR1  # a spawned child prints every thread's stack to its stderr on it


def spawn(target, *args):
    """Start ``target(*args)`` in a new process ('spawn': the arguments are pickled)."""
    p = multiprocessing.get_context("spawn").Process(target=_traced, args=(target, *args), daemon=True)
    p.start()
    return p


def _traced(target, *args):
    """In the child: print the stacks on :data:`STACKS` (from C, also while a thread holds
    the GIL in a driver call), then ``target(*args)``."""
    faulthandler.register(STACKS, all_threads=True)
    target(*args)


def with_queues(target, *args):
    """Start ``target(*args, inbox, outbox)`` with two new queues (to the child and from it);
    returns ``(process, inbox, outbox)``."""
    ctx = multiprocessing.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    return spawn(target, *args, inbox, outbox), inbox, outbox


def joined(p, code: int = 0, timeout: float = T) -> None:
    """Join ``p`` within ``timeout`` seconds and check its exit code. A child still running
    then prints its threads' stacks (where it hangs) before it is killed: its peers' errors
    about its death (PeerError) are the consequence, not the cause."""
    p.join(timeout)
    if p.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, STACKS)
        time.sleep(1)  # the dump is written from the signal handler, at once
        p.kill()
        p.join(T)
        raise AssertionError(f"{p.name} hung: killed after {timeout:g} s (where it was: its stacks above, "
                             "on stderr; errors of other processes about its death followed from the kill)")
    assert p.exitcode == code, f"{p.name} exited with {p.exitcode}"


def expect(exc_type, fn, *args, match: str = "", **kwargs):
    """``fn(*args, **kwargs)`` must raise ``exc_type`` with ``match`` in its message; returns it."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        assert match in str(exc), f"unclear message: {exc}"
        return exc
    raise AssertionError(f"{fn} raised no {exc_type.__name__}")


def attached_pids(counter) -> set:
    """The pids in a shared counter's table of attached processes."""
    with counter._cell.locked() as page:
        return {slot[0] for slot in page.attached if slot[0]}
