"""Worker: one thread that runs Python tasks once the stream work they depend on has finished.

The GPU side never calls Python: a commit records a plain :class:`CudaEvent` (no timing, not
blocking-sync) on the stream, a kind of record the driver queues without limit behind
unfinished work, so the committing thread never waits for the GPU (with a blocking-sync event
per commit, the 57th commit behind a busy stream blocked until the GPU caught up, on an H200).
The worker's own thread sleeps until it completes in ``cuEventSynchronize`` (GIL released) on
one blocking-sync event of its own at a time, recorded on a stream of its own that waits for
the commit's event (:class:`_Sleeper`). Python inside a CUDA host callback
(``cuLaunchHostFunc``) can deadlock between the GIL and the driver's locks, so it is never used
here.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import weakref
from threading import (
    Event as _Marker,  # a name of our own, so tests can stand in a failing wait
)

from .._core.cuda_event import CudaEvent
from .._core.errors import ClosedError
from .._core.lifetime import after_fork_in_child
from .._core.streams import GpuStream, as_stream
from .._core.wait import check_timeout
from .cpu_stream import CpuStream
from .runner import Runner

__all__ = ["Worker"]

_log = logging.getLogger("cudaevents")
_names = itertools.count()


def _run_batch(errors: list, name: str, wait, cleanup, tasks: list) -> None:
    """One commit, on the worker's thread: wait for its stream work, then run its tasks."""
    try:
        if wait is not None:
            try:
                wait()
            except BaseException as exc:  # noqa: BLE001 - e.g. a sticky CudaError of the context
                # The stream work the tasks depend on did not complete: their inputs are not ready.
                errors.extend([exc] * len(tasks))
                _log.error("waiting for the stream work of a commit on worker %s failed; its %d task(s) were not run",
                           name, len(tasks), exc_info=exc)
                return
        for fn, args, kwargs in tasks:
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - kept and logged; later tasks still run
                errors.append(exc)
                _log.error("task %r on worker %s raised", fn, name, exc_info=exc)
        fn = args = kwargs = None
    finally:
        tasks.clear()  # drop the tasks' references now, not at the next commit
        if cleanup is not None:  # the event goes back to the pool after the tasks ran
            try:
                cleanup()
            except BaseException as exc:  # noqa: BLE001 - the thread must survive
                _log.error("worker %s could not release the event of a commit", name, exc_info=exc)


class _Sleeper:
    """How the worker's thread sleeps until a commit's plain event completes: if it has not, a
    stream of the worker's own on that device waits for it, a blocking-sync event is recorded
    there and the thread sleeps in its ``cuEventSynchronize``. Only the worker's thread uses
    it, one wait at a time, so each of its streams holds at most one wait and one record: far
    below any limit of the driver's queues."""

    __slots__ = ("_by_device",)

    def __init__(self):
        self._by_device: dict[int, tuple[GpuStream, CudaEvent]] = {}

    def wait(self, event: CudaEvent) -> None:
        if event.query():
            return
        pair = self._by_device.get(event._device)
        if pair is None:
            pair = self._by_device[event._device] = (GpuStream(event._device),
                                                     CudaEvent(event._device, blocking_sync=True))
        stream, sleep_on = pair
        event.wait(stream)
        sleep_on.record(stream)
        sleep_on.synchronize()

    def close(self) -> None:
        pairs, self._by_device = list(self._by_device.values()), {}
        for stream, sleep_on in pairs:
            sleep_on.close()
            stream.close()


def _take_all(pending: dict) -> list:
    """Every thread's uncommitted tasks, thread by thread in the order the batches began."""
    tasks = []
    for batch in pending.values():
        tasks.extend(batch)
    pending.clear()
    return tasks


def _unexpected(exc: BaseException, fn) -> None:  # _run_batch catches everything itself
    _log.error("worker batch %r raised", fn, exc_info=exc)


class Worker:
    """A thread that runs Python tasks after the stream work they depend on has finished.

    Add tasks with :meth:`add_task`, then hand them over with :meth:`commit`: they run on the
    worker's thread once everything enqueued on the stream before the commit has finished,
    without the committing thread waiting for anything. Typical tasks release buffers, read
    results copied to the host, or hand them on::

        w = Worker()
        w.add_task(print, "batch 1 is on the host")
        w.commit(stream)        # a GpuStream, anything as_stream() accepts, or a CpuStream

    Commits from any number of streams run strictly in commit order: a later commit on a
    fast stream waits behind an earlier one on a slow stream. Tasks are batched per thread:
    :meth:`commit` hands over the tasks the *calling* thread added since its last commit,
    so threads sharing a worker never commit each other's tasks behind the wrong stream.

    A task's exception is logged to the ``cudaevents`` logger and kept in :attr:`errors`;
    later tasks still run. A commit on a :class:`CpuStream` whose earlier task raised still
    runs its tasks (as the stream runs its own later tasks), so clean-up tasks are never
    lost; a task that must not run on a failed producer's output waits on an :class:`Event`
    that stream signals, which carries the error (or checks ``stream.error``). Tasks may
    call CUDA: they run in an ordinary Python thread, never inside a CUDA host callback.
    Tasks still queued when the interpreter exits are dropped.

    The worker's thread does not survive ``fork()``: in a forked child, a worker created
    before the fork is closed and refuses :meth:`add_task`, :meth:`commit` and
    :meth:`synchronize` with :class:`ClosedError` (create a new worker there); :meth:`close`
    raises it too when commits or tasks were unfinished at the fork (they never run in the
    child; the parent's worker runs them), and otherwise does nothing.

    Args:
        name: name of the thread, for debuggers and logs.
    """

    # The thread holds only the Runner and the items it runs, never the Worker, so a pending
    # task that references its worker cannot keep the worker alive through the thread.
    __slots__ = ("_runner", "_pending", "_cond", "_inflight", "_closed", "_errors", "_sleeper", "__weakref__")

    def __init__(self, name: str | None = None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Worker name must be a str or None, got {type(name).__name__}")
        self._pending: dict[threading.Thread, list] = {}  # one batch per thread, guarded by _cond
        self._cond = threading.Condition(threading.Lock())
        self._inflight = 0  # commits between taking their batch and submitting it
        self._closed = False
        self._errors: list[BaseException] = []
        self._sleeper = _Sleeper()  # used by the worker's thread only
        self._runner = Runner(name or f"cudaevents-worker-{next(_names)}", _unexpected, self._sleeper.close)
        _workers.add(self)

    # -- properties ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The name of the worker's thread."""
        return self._runner.thread.name

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions tasks raised so far, oldest first (a new list on every call).

        When waiting for a commit's stream work failed (e.g. a sticky ``CudaError`` of the
        context), that error appears once for every task of the commit, none of which ran.
        The list keeps each exception with its traceback for the life of the worker.
        """
        return list(self._errors)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Worker {self.name} {state} unfinished_commits={self._runner.pending()}>"

    # -- operations ---------------------------------------------------------------------
    def _closed_error(self) -> ClosedError:
        if self._runner.orphaned:
            return ClosedError(
                "this Worker was created before os.fork(); its thread does not exist in this process: "
                "create a new one here"
            )
        return ClosedError("this Worker was closed; create a new Worker to run more tasks")

    def add_task(self, fn, /, *args, **kwargs) -> None:
        """Add ``fn(*args, **kwargs)`` to the calling thread's pending batch.

        Nothing runs until :meth:`commit` (or :meth:`close`) hands the batch to the worker.

        Raises:
            TypeError: ``fn`` is not callable.
            ClosedError: the worker was closed, or this process was forked after it was created.
        """
        if not callable(fn):
            raise TypeError(f"Worker.add_task() needs a callable, got {type(fn).__name__}")
        me = threading.current_thread()
        with self._cond:
            if self._closed:
                raise self._closed_error()
            batch = self._pending.get(me)
            if batch is None:
                self._pending[me] = batch = []
            batch.append((fn, args, kwargs))

    def commit(self, stream) -> None:
        """Hand the calling thread's pending tasks to the worker, to run after ``stream``.

        The tasks run on the worker's thread, in the order they were added and after every
        earlier commit, once everything enqueued on ``stream`` before this call has finished.
        ``stream`` is anything :func:`as_stream` accepts (a :class:`CudaEvent` without timing
        from the default pool is recorded on it) or a :class:`CpuStream` (a marker task is
        enqueued on it). This call never waits for the stream, however many commits are in
        flight behind unfinished work: the driver queues records of such events without limit
        (none blocked up to 6,000 behind a held stream on an H200), where a blocking-sync record
        blocks at the 57th and a kernel launch at the 1,022nd.

        Committing an empty batch checks ``stream`` and does nothing else: there is nothing
        to order, so no event is recorded and :meth:`synchronize` does not wait for it.
        If recording on the stream fails, the batch stays pending and the error is raised.

        Raises:
            TypeError: ``stream`` is not a stream (from :func:`as_stream`).
            ClosedError: the worker (or the stream) was closed, or this process was forked
                after it was created.
        """
        if self._closed:
            raise self._closed_error()
        cpu = isinstance(stream, CpuStream)
        gpu = None if cpu else as_stream(stream)
        me = threading.current_thread()
        with self._cond:
            if self._closed:
                raise self._closed_error()
            tasks = self._pending.pop(me, None)
            if not tasks:
                return
            self._inflight += 1  # close() waits for us before it takes the leftovers
        try:
            try:
                if cpu:
                    marker = _Marker()
                    stream.enqueue(marker.set)
                    wait, cleanup = marker.wait, None
                else:
                    event = CudaEvent()
                    try:
                        event.record(gpu)
                    except BaseException:
                        event.close()
                        raise
                    wait, cleanup = functools.partial(self._sleeper.wait, event), event.close
            except BaseException:
                with self._cond:  # only this thread adds to its own batch: nothing came meanwhile
                    self._pending[me] = tasks
                raise
            if not self._runner.submit(_run_batch, (self._errors, self.name, wait, cleanup, tasks)):
                # the runner closed under us (never while the worker is open and in this
                # process): say so rather than drop the batch, which stays pending
                with self._cond:
                    self._pending[me] = tasks
                if cleanup is not None:
                    cleanup()
                raise self._closed_error()
        finally:
            with self._cond:
                self._inflight -= 1
                if self._inflight == 0 and self._closed:
                    self._stop_locked()  # a close() that gave up waiting for us left the stop to us
                self._cond.notify_all()

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait until every task committed (by any thread) before this call has run.

        Tasks added but not yet committed are not waited for. Task errors are not raised
        here; :attr:`errors` reports them.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RuntimeError: called from one of this worker's own tasks (it would wait forever).
            ClosedError: called in a process forked after the worker was created (its thread
                does not exist there).
        """
        timeout = check_timeout(timeout)
        if self._runner.orphaned:
            raise self._closed_error()
        if self._runner.on_thread():
            raise RuntimeError(
                "Worker.synchronize() was called from a task of the same worker, which would wait "
                "forever; wait from another thread, or add the follow-up work as a later task"
            )
        unfinished = self._runner.wait(timeout)
        if unfinished:
            raise TimeoutError(
                f"Worker.synchronize() timed out after {timeout:g} s with {unfinished} commit(s) unfinished"
            )

    def close(self, timeout: float | None = None) -> None:
        """Refuse new tasks, commit the pending ones, let everything run, stop the thread.

        Tasks added but never committed are committed with no stream dependency: they run
        right after all earlier commits (batches of different threads in the order the
        batches began), whatever their streams have done by then. Closing twice is fine;
        closing from a task of this worker returns at once and the thread stops after the
        queued work.

        Raises:
            TimeoutError: the queued tasks did not finish within ``timeout`` seconds (the
                thread still runs them, then stops), or a commit of another thread still in
                flight did not end in that time (its tasks still run: that commit queues them
                and stops the thread).
            ClosedError: called in a process forked after the worker was created while commits
                or tasks were unfinished (they never run there).
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        r = self._runner
        if r.orphaned:
            self._close_orphan()
            return
        with self._cond:
            self._closed = True
            # a commit in flight is brief, unless its record blocks (e.g. behind a full stream)
            if not self._cond.wait_for(lambda: self._inflight == 0, timeout):
                raise TimeoutError(
                    f"Worker.close() timed out after {timeout:g} s waiting for a commit in flight on another "
                    "thread; that commit's tasks still run, then the thread stops"
                )
            self._stop_locked()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not r.on_thread() and not r.join(remaining):
            raise TimeoutError(
                f"Worker.close() timed out after {timeout:g} s with {r.pending()} commit(s) unfinished; "
                "the thread stops after them"
            )

    def _close_orphan(self) -> None:
        """close() in a process forked after the worker was created: there is no thread to
        run anything, so raise when anything was left to run at the fork."""
        with self._cond:
            self._closed = True
            uncommitted = sum(len(batch) for batch in self._pending.values())
            # a commit of another thread of the parent was between its batch and the runner
            inflight = self._inflight
        unfinished = self._runner.pending()
        if unfinished or uncommitted or inflight:
            raise ClosedError(
                f"this Worker was created before os.fork() and had {unfinished + inflight} commit(s) unfinished "
                f"and {uncommitted} task(s) uncommitted then; its thread does not exist in this process, so they "
                "never run here (the parent's worker runs them): create a new Worker here for work of this process"
            )

    def _stop_locked(self) -> None:
        """With ``_cond`` held, closed and no commit in flight: queue the uncommitted tasks and
        stop the thread after them (once)."""
        r = self._runner
        if r.closed:
            return
        leftover = _take_all(self._pending)
        if leftover:
            r.submit(_run_batch, (self._errors, self.name, None, None, leftover))
        r.stop()

    def __enter__(self) -> "Worker":
        if self._closed:
            raise self._closed_error()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # No lock here: a finalizer may run inside a critical section of the worker's own
        # thread. Nothing else can use a Worker that is being finalized (a commit in flight
        # holds a reference). Uncommitted tasks run as close() would run them.
        r = getattr(self, "_runner", None)  # None if __init__ failed early
        if r is None or self._closed:
            return
        self._closed = True
        leftover = _take_all(self._pending)
        last = (_run_batch, (self._errors, r.thread.name, None, None, leftover), {}) if leftover else None
        r.stop_from_finalizer(last)


_workers: weakref.WeakSet = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    """Runs in the child of every ``fork()``, after the Runners' handler (``_runner`` is
    imported, and registers its handler, first): a thread of the parent may have held a
    worker's lock, and a worker whose thread is gone here is closed."""
    for w in list(_workers):
        w._cond = threading.Condition(threading.Lock())
        if w._runner.orphaned:
            w._closed = True
