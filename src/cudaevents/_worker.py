"""Worker: one thread that runs Python tasks once the stream work they depend on has finished.

The GPU side never calls Python: a commit records a blocking-sync :class:`CudaEvent` on the
stream, and the worker's own thread waits for it in ``cuEventSynchronize`` (asleep, GIL
released) before running the batch. Python inside a CUDA host callback (``cuLaunchHostFunc``)
can deadlock between the GIL and the driver's locks, so it is never used here.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from threading import Event as _Marker  # a name of our own, so tests can stand in a failing wait

from ._cpu_stream import CpuStream
from ._errors import ClosedError
from ._event import CudaEvent
from ._stream import as_stream
from ._wait import check_timeout

__all__ = ["Worker"]

_log = logging.getLogger("cudaevents")
_STOP = object()
_names = itertools.count()


class _Shared:
    """What the worker's thread needs; the thread never references the Worker itself, so
    dropping the last reference to a Worker stops its thread."""

    __slots__ = ("queue", "cond", "committed", "processed", "inflight", "errors", "closed", "stopped", "thread")

    def __init__(self):
        self.queue = queue.SimpleQueue()  # (wait, cleanup, tasks) per commit, then _STOP
        self.cond = threading.Condition(threading.Lock())  # guards these and Worker._pending
        self.committed = 0  # commits put on the queue
        self.processed = 0  # commits the thread has finished with
        self.inflight = 0  # commits between taking their batch and putting it on the queue
        self.errors: list[BaseException] = []
        self.closed = False  # refuse add_task() and commit()
        self.stopped = False  # _STOP is on the queue
        self.thread = None


def _run(shared: _Shared) -> None:
    get = shared.queue.get
    cond = shared.cond
    while True:
        item = get()
        if item is _STOP:
            return
        wait, cleanup, tasks = item
        item = None
        _run_batch(shared, wait, cleanup, tasks)
        wait = cleanup = tasks = None
        with cond:
            shared.processed += 1
            cond.notify_all()


def _run_batch(shared: _Shared, wait, cleanup, tasks: list) -> None:
    name = shared.thread.name
    try:
        failure = None
        if wait is not None:
            try:
                wait()
            except BaseException as exc:  # noqa: BLE001 - e.g. a sticky CudaError of the context
                failure = exc
        if failure is not None:
            # The stream work the tasks depend on did not complete: their inputs are not ready.
            shared.errors.extend([failure] * len(tasks))
            _log.error("waiting for the stream work of a commit on worker %s failed; its %d task(s) were not run",
                       name, len(tasks), exc_info=failure)
            failure = None
            return
        for fn, args, kwargs in tasks:
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - kept and logged; later tasks still run
                shared.errors.append(exc)
                _log.error("task %r on worker %s raised", fn, name, exc_info=exc)
        fn = args = kwargs = None
    finally:
        tasks.clear()  # drop the tasks' references now, not at the next commit
        if cleanup is not None:  # the event goes back to the pool after the tasks ran
            try:
                cleanup()
            except BaseException as exc:  # noqa: BLE001 - the thread must survive
                _log.error("worker %s could not release the event of a commit", name, exc_info=exc)


def _take_all(pending: dict) -> list:
    """Every thread's uncommitted tasks, thread by thread in the order the batches began."""
    tasks = []
    for batch in pending.values():
        tasks.extend(batch)
    pending.clear()
    return tasks


def _stop_if_drained(shared: _Shared) -> None:
    """Put the sentinel once closed with no commit in flight (call with ``cond`` held)."""
    if shared.closed and not shared.stopped and shared.inflight == 0:
        shared.stopped = True
        shared.queue.put(_STOP)


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
    later tasks still run. Tasks may call CUDA: they run in an ordinary Python thread, never
    inside a CUDA host callback. Tasks still queued when the interpreter exits are dropped.

    Args:
        name: name of the thread, for debuggers and logs.
    """

    # The uncommitted batches live here, not in _Shared: a pending task that references its
    # worker must not keep the worker alive through the thread.
    __slots__ = ("_shared", "_pending", "__weakref__")

    def __init__(self, name: str | None = None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Worker name must be a str or None, got {type(name).__name__}")
        shared = _Shared()
        shared.thread = threading.Thread(
            target=_run, args=(shared,), name=name or f"cudaevents-worker-{next(_names)}", daemon=True
        )
        self._pending: dict[threading.Thread, list] = {}  # one batch per thread, guarded by cond
        self._shared = shared
        shared.thread.start()

    # -- properties ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The name of the worker's thread."""
        return self._shared.thread.name

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._shared.closed

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions tasks raised so far, oldest first (a new list on every call).

        When waiting for a commit's stream work failed (e.g. a sticky ``CudaError`` of the
        context), that error appears once for every task of the commit, none of which ran.
        The list keeps each exception with its traceback for the life of the worker.
        """
        return list(self._shared.errors)

    def __repr__(self) -> str:
        s = self._shared
        state = "closed" if s.closed else "open"
        return f"<Worker {s.thread.name} {state} unfinished_commits={s.committed - s.processed}>"

    # -- operations ---------------------------------------------------------------------
    def _closed_error(self) -> ClosedError:
        return ClosedError("this Worker was closed; create a new Worker to run more tasks")

    def add_task(self, fn, /, *args, **kwargs) -> None:
        """Add ``fn(*args, **kwargs)`` to the calling thread's pending batch.

        Nothing runs until :meth:`commit` (or :meth:`close`) hands the batch to the worker.

        Raises:
            TypeError: ``fn`` is not callable.
            ClosedError: the worker was closed.
        """
        if not callable(fn):
            raise TypeError(f"Worker.add_task() needs a callable, got {type(fn).__name__}")
        s = self._shared
        me = threading.current_thread()
        with s.cond:
            if s.closed:
                raise self._closed_error()
            batch = self._pending.get(me)
            if batch is None:
                self._pending[me] = batch = []
            batch.append((fn, args, kwargs))

    def commit(self, stream) -> None:
        """Hand the calling thread's pending tasks to the worker, to run after ``stream``.

        The tasks run on the worker's thread, in the order they were added and after every
        earlier commit, once everything enqueued on ``stream`` before this call has finished.
        ``stream`` is anything :func:`as_stream` accepts (a blocking-sync :class:`CudaEvent`
        from the default pool is recorded on it) or a :class:`CpuStream` (a marker task is
        enqueued on it). This call never waits for the stream.

        Committing an empty batch checks ``stream`` and does nothing else: there is nothing
        to order, so no event is recorded and :meth:`synchronize` does not wait for it.
        If recording on the stream fails, the batch stays pending and the error is raised.

        Raises:
            TypeError: ``stream`` is not a stream (from :func:`as_stream`).
            ClosedError: the worker (or the stream) was closed.
        """
        s = self._shared
        if s.closed:
            raise self._closed_error()
        cpu = isinstance(stream, CpuStream)
        gpu = None if cpu else as_stream(stream)
        me = threading.current_thread()
        with s.cond:
            if s.closed:
                raise self._closed_error()
            tasks = self._pending.pop(me, None)
            if not tasks:
                return
            s.inflight += 1
        try:
            if cpu:
                marker = _Marker()
                stream.enqueue(marker.set)
                wait, cleanup = marker.wait, None
            else:
                event = CudaEvent(blocking_sync=True)
                try:
                    event.record(gpu)
                except BaseException:
                    event.close()
                    raise
                wait, cleanup = event.synchronize, event.close
        except BaseException:
            with s.cond:
                s.inflight -= 1
                if s.closed:  # close() ran meanwhile: these tasks run with what it committed
                    s.committed += 1
                    s.queue.put((None, None, tasks))
                else:  # only this thread adds to its own batch, so nothing was added meanwhile
                    self._pending[me] = tasks
                _stop_if_drained(s)
            raise
        with s.cond:
            s.inflight -= 1
            s.committed += 1
            s.queue.put((wait, cleanup, tasks))
            _stop_if_drained(s)

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait until every task committed (by any thread) before this call has run.

        Tasks added but not yet committed are not waited for. Task errors are not raised
        here; :attr:`errors` reports them.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RuntimeError: called from one of this worker's own tasks (it would wait forever).
        """
        timeout = check_timeout(timeout)
        s = self._shared
        if threading.current_thread() is s.thread:
            raise RuntimeError(
                "Worker.synchronize() was called from a task of the same worker, which would wait "
                "forever; wait from another thread, or add the follow-up work as a later task"
            )
        with s.cond:
            target = s.committed
            if not s.cond.wait_for(lambda: s.processed >= target, timeout):
                raise TimeoutError(
                    f"Worker.synchronize() timed out after {timeout:g} s with "
                    f"{target - s.processed} commit(s) unfinished"
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
                thread still runs them, then stops).
        """
        timeout = check_timeout(timeout)
        s = self._shared
        with s.cond:
            if not s.closed:
                s.closed = True
                leftover = _take_all(self._pending)
                if leftover:
                    s.committed += 1
                    s.queue.put((None, None, leftover))
                _stop_if_drained(s)
        if threading.current_thread() is s.thread:
            return
        s.thread.join(timeout)
        if s.thread.is_alive():
            raise TimeoutError(
                f"Worker.close() timed out after {timeout:g} s with {s.committed - s.processed} "
                "commit(s) unfinished; the thread stops after them"
            )

    def __enter__(self) -> "Worker":
        if self._shared.closed:
            raise self._closed_error()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # No lock here: a finalizer may run inside a critical section of the worker's own
        # thread. Nothing else can use a Worker that is being finalized (a commit in flight
        # holds a reference), so plain writes and SimpleQueue.put (made for finalizers)
        # suffice. Uncommitted tasks run as close() would run them.
        s = getattr(self, "_shared", None)  # None if __init__ failed early
        if s is None or s.closed:
            return
        s.closed = True
        leftover = _take_all(self._pending)
        if leftover:
            s.committed += 1
            s.queue.put((None, None, leftover))
        if not s.stopped:
            s.stopped = True
            s.queue.put(_STOP)
