"""Runner: one daemon thread running submitted callables in order, counting what it finished.

CpuStream and Worker are built on it. The thread references only the Runner, never its
owner, so an owner that is dropped can stop it from its finalizer.

Threads do not survive ``fork()``: in a forked child a Runner made before the fork has no
thread (the parent's copy keeps running its items). So in the child of every fork each such
Runner gets a fresh lock and is marked closed, and ``orphaned`` when it was open or had
unfinished items then; its owner refuses to use it (``ClosedError``) rather than queue work
that never runs or wait for it forever. Runners made in the child work normally.
"""

from __future__ import annotations

import queue
import threading
import weakref

from .._core.lifetime import after_fork_in_child

__all__ = ["Runner"]

_STOP = object()


class Runner:
    """Runs ``fn(*args, **kwargs)`` items on its own thread, one at a time, in order.

    ``on_error(exc, fn)`` is called on the thread when an item raises (any BaseException);
    the thread always goes on with the next item. ``on_exit()``, if given, runs on the thread
    after the last item once the runner is stopped (not in a forked child, not at interpreter
    exit); it is not an item: :meth:`pending` and :meth:`wait` do not count it.

    ``orphaned`` is True in a process forked after the Runner was made (while it was open or
    had unfinished items): its thread does not exist there, and ``closed`` is True too.
    """

    __slots__ = ("queue", "cond", "submitted", "done", "closed", "orphaned", "thread", "_on_error", "_on_exit",
                 "__weakref__")

    def __init__(self, name: str, on_error, on_exit=None):
        self.queue = queue.SimpleQueue()
        self.cond = threading.Condition(threading.Lock())
        self.submitted = 0
        self.done = 0
        self.closed = False  # no more submissions; _STOP is on the queue
        self.orphaned = False  # made before a fork of this (child) process: no thread here
        self._on_error = on_error
        self._on_exit = on_exit
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        _runners.add(self)  # before start(): a fork in between must not miss a running thread
        self.thread.start()

    def _loop(self) -> None:
        get, cond = self.queue.get, self.cond
        while True:
            item = get()
            if item is _STOP:
                if self._on_exit is not None:
                    try:
                        self._on_exit()
                    except BaseException as exc:  # noqa: BLE001 - reported through on_error
                        self._on_error(exc, self._on_exit)
                return
            fn, args, kwargs = item
            item = None
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported through on_error
                self._on_error(exc, fn)
            fn = args = kwargs = None
            if self.orphaned:  # that item forked and this is the child: the rest is the parent's
                return
            with cond:
                self.done += 1
                cond.notify_all()

    def submit(self, fn, args=(), kwargs=None) -> bool:
        """Queue an item; returns False (and queues nothing) once the runner is closed."""
        with self.cond:
            if self.closed:
                return False
            self.submitted += 1
            self.queue.put((fn, args, kwargs or {}))
            return True

    def wait(self, timeout: float | None) -> int:
        """Wait until every item submitted before the call has run; returns how many of
        them are still unfinished (0 on success, more when ``timeout`` ran out)."""
        with self.cond:
            target = self.submitted
            if not self.orphaned:  # an orphan's items never finish here: answer at once
                self.cond.wait_for(lambda: self.done >= target, timeout)
            return max(0, target - self.done)

    def pending(self) -> int:
        """Items submitted and not yet finished."""
        return self.submitted - self.done

    def on_thread(self) -> bool:
        """True when called from the runner's own thread."""
        return threading.current_thread() is self.thread

    def stop(self) -> None:
        """Refuse further items; the thread ends after the queued ones. Idempotent."""
        with self.cond:
            if not self.closed:
                self.closed = True
                self.queue.put(_STOP)

    def stop_from_finalizer(self, last=None) -> None:
        """:meth:`stop` without taking the lock (a finalizer may run on the runner's own
        thread while it holds it), queuing the item ``last = (fn, args, kwargs)`` first."""
        if self.closed:
            return
        self.closed = True
        if last is not None:
            self.queue.put(last)
        self.queue.put(_STOP)

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread to end (after :meth:`stop`); returns whether it did."""
        if self.on_thread():
            return False
        if self.orphaned:  # no thread in this process (maybe never started in it)
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()


_runners: weakref.WeakSet = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    """Runs in the child of every ``fork()`` (``os.register_at_fork``).

    Only the forking thread exists in the child, so no Runner made before has its thread
    here (a Runner whose own item forked has it, but must not go on with the parent's queue).
    Each gets a fresh lock, since a thread of the parent may have held it, and is closed;
    one that was open or had unfinished items is ``orphaned``. Its queue is left as it is:
    dropping the parent's items here would run their finalizers inside the fork handler.
    """
    for r in list(_runners):
        r.cond = threading.Condition(threading.Lock())
        if not r.closed or r.done != r.submitted:
            r.orphaned = True
        r.closed = True
