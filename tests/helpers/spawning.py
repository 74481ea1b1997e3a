"""Children started with multiprocessing's 'spawn' method, for the tests and scripts whose
processes share counters or interprocess events: started (with two queues to talk to them, for
the ``spawned`` fixture), joined with a deadline, expected errors, and who is attached to a
shared counter."""

from __future__ import annotations

import multiprocessing

T = 30  # seconds any wait of those scripts may take before the scenario fails


def spawn(target, *args):
    """Start ``target(*args)`` in a new process ('spawn': the arguments are pickled)."""
    p = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    p.start()
    return p


def with_queues(target, *args):
    """Start ``target(*args, inbox, outbox)`` with two new queues (to the child and from it);
    returns ``(process, inbox, outbox)``."""
    ctx = multiprocessing.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    return spawn(target, *args, inbox, outbox), inbox, outbox


def joined(p, code: int = 0) -> None:
    """Join ``p`` within :data:`T` seconds (killed past it) and check its exit code."""
    p.join(T)
    if p.is_alive():
        p.kill()
        p.join(T)
        raise AssertionError(f"{p.name} hung")
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
