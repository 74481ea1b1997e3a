"""CPU streams: one thread running enqueued callables in order, like a GPU stream does kernels."""

from __future__ import annotations

import itertools
import logging
import queue
import threading

from ._errors import ClosedError
from ._wait import check_timeout

__all__ = ["CpuStream"]

_log = logging.getLogger("cudaevents")
_STOP = object()
_names = itertools.count()


class _Shared:
    """What the stream's thread needs; the thread never references the CpuStream itself, so
    dropping the last reference to a CpuStream stops its thread."""

    __slots__ = ("queue", "cond", "enqueued", "done", "error", "error_tb", "reported", "closed", "thread")

    def __init__(self):
        self.queue = queue.SimpleQueue()
        self.cond = threading.Condition(threading.Lock())
        self.enqueued = 0
        self.done = 0
        self.error = None
        self.error_tb = None
        self.reported = False  # whether the first error reached a caller of synchronize()
        self.closed = False
        self.thread = None


def _run(shared: _Shared) -> None:
    get = shared.queue.get
    cond = shared.cond
    while True:
        item = get()
        if item is _STOP:
            _report_unretrieved(shared)
            return
        fn, args, kwargs = item
        item = None
        try:
            fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - a task's failure must reach the waiters
            if shared.error is None:
                shared.error = exc
                shared.error_tb = exc.__traceback__
            else:  # only the first error is raised by synchronize(); log the others
                _log.error("task %r on %s raised after an earlier failure", fn, shared.thread.name, exc_info=exc)
        fn = args = kwargs = None
        with cond:
            shared.done += 1
            cond.notify_all()


class CpuStream:
    """A thread that runs enqueued callables one at a time, in order.

    The first exception a task raises is kept: :meth:`synchronize` re-raises it, every time,
    from then on (the stream stays failed, as a CUDA context does after a sticky error), and
    later tasks' exceptions are logged to the ``cudaevents`` logger, as is the first one if
    the stream is closed or dropped before any synchronize() raised it, so none is lost.
    Later tasks still run. Tasks still queued when the interpreter exits are dropped.

    Args:
        name: name of the thread, for debuggers and logs.
    """

    __slots__ = ("_shared", "__weakref__")

    def __init__(self, name: str | None = None):
        shared = _Shared()
        shared.thread = threading.Thread(
            target=_run, args=(shared,), name=name or f"cudaevents-cpu-stream-{next(_names)}", daemon=True
        )
        self._shared = shared
        shared.thread.start()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._shared.closed

    @property
    def error(self) -> BaseException | None:
        """The first exception a task raised, or ``None``."""
        return self._shared.error

    def __repr__(self) -> str:
        s = self._shared
        state = "closed" if s.closed else "open"
        return f"<CpuStream {s.thread.name} {state} pending={s.enqueued - s.done}>"

    def enqueue(self, fn, /, *args, **kwargs) -> None:
        """Run ``fn(*args, **kwargs)`` on the stream's thread after everything enqueued before.

        Raises:
            TypeError: ``fn`` is not callable.
            ClosedError: the stream was closed.
        """
        if not callable(fn):
            raise TypeError(f"CpuStream.enqueue() needs a callable, got {type(fn).__name__}")
        s = self._shared
        with s.cond:
            if s.closed:
                raise ClosedError("this CpuStream was closed; create a new CpuStream to run more tasks")
            s.enqueued += 1
            s.queue.put((fn, args, kwargs))

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait until every task enqueued before this call has run.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RuntimeError: called from one of this stream's own tasks (it would wait forever).
            BaseException: the first exception any task of this stream raised.
        """
        timeout = check_timeout(timeout)
        s = self._shared
        if threading.current_thread() is s.thread:
            raise RuntimeError("CpuStream.synchronize() was called from a task of the same stream, which would wait forever")
        with s.cond:
            target = s.enqueued
            if not s.cond.wait_for(lambda: s.done >= target, timeout):
                raise TimeoutError(
                    f"CpuStream.synchronize() timed out after {timeout:g} s with {target - s.done} task(s) unfinished"
                )
        if s.error is not None:
            s.reported = True
            raise s.error.with_traceback(s.error_tb)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new tasks, let the queued ones finish, and stop the thread.

        Closing twice is fine. Task errors are not raised here; :meth:`synchronize` or
        :attr:`error` report them.

        Raises:
            TimeoutError: the queued tasks did not finish within ``timeout`` seconds (the
                thread still stops after them).
        """
        timeout = check_timeout(timeout)
        s = self._shared
        with s.cond:
            if not s.closed:
                s.closed = True
                s.queue.put(_STOP)
        if threading.current_thread() is s.thread:
            return  # closing from a task: the thread stops after that task returns
        s.thread.join(timeout)
        if s.thread.is_alive():
            raise TimeoutError(f"CpuStream.close() timed out after {timeout:g} s with tasks still running")

    def __enter__(self) -> "CpuStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        s = self._shared
        if not s.closed:
            s.closed = True
            s.queue.put(_STOP)


def _report_unretrieved(s: _Shared) -> None:
    if s.error is not None and not s.reported:
        s.reported = True
        _log.error("a task on %s raised and no synchronize() reported it", s.thread.name,
                   exc_info=(type(s.error), s.error, s.error_tb))
