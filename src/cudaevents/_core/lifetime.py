"""Lifetimes of native handles: interpreter exit, fork, and memory the GPU may still touch.

The rules are written down in ``DESIGN.md`` at the top of the package; this module holds the
mechanisms they rest on:

- :data:`state`: process-wide flags that finalizers read. ``exiting`` is set at interpreter
  exit (and in a child forked from a CUDA-initialized parent): from then on handles are
  leaked, never destroyed, since the driver may already be unloading. ``forked`` is set in
  such a child: nothing there may call the driver.
- :func:`after_fork_in_child`: the one ``os.register_at_fork`` handler of the package runs
  the hooks registered here in registration order. Modules register when imported, and a
  module is imported after the layers below it, so the driver's hook (which decides
  ``state.forked``) runs first and the Worker's last.
- :class:`Quarantine`: resources (counter slots, semaphores) that GPU work enqueued earlier
  may still touch, released only once CUDA events recorded after that work have completed.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import queue
import threading

__all__ = ["state", "after_fork_in_child", "defer", "drain", "Quarantine"]


class _State:
    """Process-wide flags that finalizers read; modules bind this object early, so it
    survives the teardown of module globals at exit."""

    exiting = False  # interpreter exit (or a forked child of a CUDA parent): leak, never destroy
    forked = False  # forked after the parent initialized CUDA: no driver calls at all


state = _State()


@atexit.register
def _mark_exiting() -> None:
    # Other libraries' atexit hooks run in any order, so the driver may already be unloading:
    # from here on handles are left to the process's exit.
    state.exiting = True


_fork_hooks: list = []


def after_fork_in_child(hook):
    """Register ``hook()`` to run in the child of every ``fork()``, after the hooks registered
    before it (those of the layers below). Returns ``hook``, so it serves as a decorator.

    A hook runs with only the forking thread alive: it renews locks that another thread of
    the parent may have held and disowns what the parent's threads or driver state owned. It
    must not drop objects whose finalizers would run inside the fork handler."""
    _fork_hooks.append(hook)
    return hook


def _run_fork_hooks() -> None:
    for hook in _fork_hooks:
        hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_fork_hooks)


def drain(pending):
    """The items finalizers appended to the deque ``pending`` (lock-free), taken out one by
    one by the structure's next caller; a finalizer may append more meanwhile: those come too."""
    while pending:
        try:
            yield pending.popleft()
        except IndexError:  # another thread took the last one meanwhile
            return


_deferred: queue.SimpleQueue = queue.SimpleQueue()  # put() is reentrant: safe inside a finalizer
_closer: threading.Thread | None = None


def defer(fn) -> None:
    """Run ``fn()`` soon on the package's finalizer thread. For finalizers whose work takes
    locks: the collector may run a finalizer inside a critical section of the very thread
    it interrupts, where taking the same lock would deadlock. Never raises."""
    global _closer
    _deferred.put(fn)
    if _closer is None:
        thread = threading.Thread(target=_run_deferred, name="cudaevents-finalizer", daemon=True)
        _closer = thread  # set before start: a second finalizer in between must not start another
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down: what is left goes with the process
            pass


def _run_deferred() -> None:
    while True:
        fn = _deferred.get()
        try:
            fn()
        except Exception:  # reported, never raised into some other thread
            if not state.exiting:
                logging.getLogger("cudaevents").exception("a deferred finalizer failed")
        fn = None


@after_fork_in_child
def _no_finalizer_thread() -> None:
    # The thread did not survive the fork; the next deferral starts one. Work the parent had
    # queued is the parent's: the child's queue starts empty.
    global _deferred, _closer
    _deferred = queue.SimpleQueue()
    _closer = None


class Quarantine:
    """Resources that GPU work may still touch, released once fences (CUDA events recorded
    after that work) have all completed.

    :meth:`add` takes no lock (one deque append), so finalizers may call it, also in a thread
    that holds this quarantine's lock (the garbage collector may run them there): the entries
    it adds wait in a pending list that :meth:`reclaim` takes in under the lock. ``len()``
    counts both."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: list[tuple[list, object]] = []
        self._added: collections.deque = collections.deque()  # from add(), not yet taken in

    def add(self, fences: list, on_done) -> None:
        """Call ``on_done()`` once every event in ``fences`` has completed (now if none).

        Lock-free, safe from finalizers; ``on_done`` runs later in whichever thread reclaims,
        outside every lock of the quarantine (with no fences: here, now, so it must be safe
        where this is called, e.g. :meth:`_Slab.release <cudaevents._sync.counter_storage>`)."""
        if not fences:
            on_done()
            return
        self._added.append((fences, on_done))

    def _take_added(self) -> None:
        """With the lock held: move what :meth:`add` appended into the entries."""
        self._entries.extend(drain(self._added))

    def reclaim(self) -> int:
        """Release what is safe now; returns how many entries were released."""
        with self._lock:
            if self._added:
                self._take_added()
            entries, self._entries = self._entries, []
        keep, done = [], []
        for fences, on_done in entries:
            try:
                finished = all(ev.query() for ev in fences)
            except Exception:  # a failed context: keep the resource forever rather than reuse it
                finished = False
            (done if finished else keep).append((fences, on_done))
        with self._lock:
            self._entries.extend(keep)
        for fences, on_done in done:
            for ev in fences:
                ev.close()
            on_done()
        return len(done)

    def entries(self) -> list:
        """A snapshot of the quarantined ``(fences, on_done)`` entries, pending adds included."""
        with self._lock:
            if self._added:
                self._take_added()
            return list(self._entries)

    def disown(self) -> list:
        """In a forked child: set the parent's entries aside (returned, to be kept untouched)
        and start empty with a fresh lock."""
        self._lock = threading.Lock()
        entries, self._entries = self._entries, []
        added, self._added = self._added, collections.deque()
        return entries + list(added)

    def __len__(self) -> int:
        # lock-free and exact: the entries plus the adds not yet taken in (reclaim() may be
        # moving one between the two at this moment: then it is counted in neither or both)
        return len(self._entries) + len(self._added)
